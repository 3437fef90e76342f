//! `carflow`: the command line. A thin layer over `carflow-engine` and `carflow-api`.

mod api;
mod backfill;
mod check;
mod cli;
mod dead_letters;
mod demo;
mod generate;
mod history;
mod memory;
mod reconcile;
mod run;
mod sql;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command};

fn main() -> ExitCode {
    memory::tune();
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_inner(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_inner(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(&cli.global, args).await,
        Command::Sql(args) => sql::run(&cli.global, args).await,
        Command::Check(args) => check::run(&cli.global, args).await,
        Command::Run(args) => run::run(&cli.global, args).await,
        Command::Generate(args) => generate::run(&cli.global, args).await,
        Command::Api(args) => api::run(&cli.global, args).await,
        Command::Backfill(args) => backfill::run(&cli.global, args).await,
        Command::Reconcile(args) => reconcile::run(&cli.global, args).await,
        Command::DeadLetters(args) => dead_letters::run(&cli.global, args).await,
    }
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match (&cli.command, cli.global.verbose) {
        (_, v) if v >= 2 => "debug",
        (_, 1) => "info",
        (
            Command::Demo(_)
            | Command::Sql(_)
            | Command::Check(_)
            | Command::Generate(_)
            | Command::Backfill(_)
            | Command::Reconcile(_)
            | Command::DeadLetters(_),
            _,
        ) => "warn",
        (Command::Run(_), _) => "info",
        (Command::Api(_), _) => "info",
    };
    let filter = EnvFilter::try_from_env("CARFLOW_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,carflow={default},carflow_engine={default},carflow_api={default}"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
