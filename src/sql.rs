//! `carflow sql`: the DataFusion CLI over the lake.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use carflow_engine::catalog::register_lake;
use carflow_engine::config::Config;
use carflow_engine::storage::Location;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_cli::catalog::DynamicObjectStoreCatalog;
use datafusion_cli::exec::{exec_from_commands, exec_from_files, exec_from_repl};
use datafusion_cli::functions::ParquetMetadataFunc;
use datafusion_cli::object_storage::instrumented::InstrumentedObjectStoreRegistry;
use datafusion_cli::print_format::PrintFormat;
use datafusion_cli::print_options::{MaxRows, PrintOptions};

use crate::cli::{Global, SqlArgs};

/// A session with the lake's store and every dataset registered, and the CLI's table functions.
pub async fn lake_session(
    root: &str,
) -> anyhow::Result<(
    SessionContext,
    Arc<InstrumentedObjectStoreRegistry>,
    Vec<String>,
)> {
    let registry = Arc::new(InstrumentedObjectStoreRegistry::new());
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(registry.clone())
        .build_arc()?;
    let config = SessionConfig::from_env()?.with_information_schema(true);
    let ctx = SessionContext::new_with_config_rt(config, runtime).enable_url_table();
    ctx.register_catalog_list(Arc::new(DynamicObjectStoreCatalog::new(
        ctx.state().catalog_list().clone(),
        ctx.state_weak_ref(),
    )));
    ctx.register_udtf("parquet_metadata", Arc::new(ParquetMetadataFunc {}));
    let location = Location::open(root).with_context(|| format!("opening the lake at {root}"))?;
    let found = register_lake(&ctx, &location).await.with_context(|| {
        format!(
            "listing the lake at {} (is the store reachable?)",
            location.url
        )
    })?;
    Ok((ctx, registry, found.into_iter().map(|d| d.name).collect()))
}

pub async fn run(global: &Global, args: SqlArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(global.config.as_deref())?;
    let root = args.lake.clone().unwrap_or(config.lake.root.clone());
    let (ctx, registry, tables) = lake_session(&root).await?;
    let format: PrintFormat = args
        .format
        .parse()
        .map_err(|e| anyhow::anyhow!("--format {}: {e}", args.format))?;
    let mut print = PrintOptions {
        format,
        quiet: args.quiet,
        maxrows: if args.command.is_empty() && args.file.is_empty() {
            MaxRows::Limited(40)
        } else {
            MaxRows::Unlimited
        },
        color: false,
        instrumented_registry: registry,
    };
    if !args.command.is_empty() || !args.file.is_empty() {
        exec_from_commands(&ctx, args.command, &print).await?;
        let files = args.file.iter().map(|p| p.display().to_string()).collect();
        exec_from_files(&ctx, files, &print).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if tables.is_empty() {
        eprintln!(
            "The lake at {root} has no datasets yet (run `carflow demo` or `carflow run` first)."
        );
    } else {
        eprintln!(
            "carflow sql on {root}: tables {}. \\d lists tables, \\q quits.",
            tables.join(", ")
        );
    }
    exec_from_repl(&ctx, &mut print)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ExitCode::SUCCESS)
}
