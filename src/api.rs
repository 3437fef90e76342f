//! `carflow api`: the HTTP service (`carflow-api`) from the shared configuration.

use std::process::ExitCode;

use anyhow::Context;
use carflow_api::ApiSettings;
use carflow_engine::config::Config;
use tokio_util::sync::CancellationToken;

use crate::cli::{ApiArgs, Global};

pub async fn run(global: &Global, args: ApiArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load(global.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut settings = ApiSettings::from_config(&config);
    if let Some(b) = args.brokers {
        settings.brokers = b;
    }
    if let Some(t) = args.topic {
        settings.topic = t;
    }
    settings.delivery_timeout = args.delivery_timeout;
    let listen = match args.listen {
        Some(a) => a,
        None => config
            .api
            .listen
            .parse()
            .with_context(|| format!("api.listen `{}` is not ip:port", config.api.listen))?,
    };
    if let Err(problems) = settings.validate(listen) {
        eprintln!("cannot serve the API:");
        for p in problems {
            eprintln!("  {p}");
        }
        return Ok(ExitCode::from(2));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "api.listen {listen}: cannot listen (in use? set --listen or CARFLOW_API_LISTEN)"
            )
        })?;
    let shutdown = CancellationToken::new();
    crate::run::spawn_signal_handler(shutdown.clone());
    carflow_api::serve(settings, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
