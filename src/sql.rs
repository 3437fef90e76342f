//! `carflow sql`: the DataFusion CLI over the lake.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use carflow_engine::catalog::register_lake;
use carflow_engine::config::Config;
use carflow_engine::storage::Location;
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
    let runtime = carflow_engine::catalog::lake_runtime()
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

/// How often a query that failed on a merged-away file is run again.
const MERGED_AWAY_RETRIES: usize = 3;

/// Run one `-c` statement; a query (`SELECT`/`WITH`) that failed on a merged-away file runs
/// again, up to [`MERGED_AWAY_RETRIES`] times. Safe because a bounded query prints nothing
/// before it has all its rows (datafusion-cli collects them first), and a query writes nothing.
async fn run_retrying<F, Fut>(
    statement: &str,
    quiet: bool,
    mut run: F,
) -> Result<(), datafusion::error::DataFusionError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), datafusion::error::DataFusionError>>,
{
    let head = statement.trim_start().to_ascii_lowercase();
    let query = head.starts_with("select") || head.starts_with("with");
    let mut attempt = 0;
    loop {
        match run().await {
            Err(e)
                if query
                    && attempt < MERGED_AWAY_RETRIES
                    && carflow_engine::catalog::is_merged_away(&e.to_string()) =>
            {
                attempt += 1;
                if !quiet {
                    eprintln!(
                        "note: a merge of small lake files replaced a file this query had listed; \
                         running it again ({attempt} of {MERGED_AWAY_RETRIES})"
                    );
                }
            }
            other => return other,
        }
    }
}

/// A query that listed files a merge then replaced (lake.compact_files) fails with "not found":
/// say so, and that running it again is right.
fn merged_away(e: datafusion::error::DataFusionError) -> anyhow::Error {
    let text = e.to_string();
    if carflow_engine::catalog::is_merged_away(&text) {
        anyhow::anyhow!(
            "{text}\nA merge of small lake files (lake.compact_files) replaced files this query had \
             listed; the lake is consistent and the query is right when run again."
        )
    } else {
        anyhow::Error::from(e)
    }
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
        for statement in args.command {
            run_retrying(&statement, args.quiet, || {
                exec_from_commands(&ctx, vec![statement.clone()], &print)
            })
            .await
            .map_err(merged_away)?;
        }
        let files = args.file.iter().map(|p| p.display().to_string()).collect();
        exec_from_files(&ctx, files, &print)
            .await
            .map_err(merged_away)?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn write(lake: &std::path::Path, name: &str, rows: i64) {
        let dir = lake.join("cars/dt=2026-01-01");
        std::fs::create_dir_all(&dir).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap();
        let bytes = carflow_engine::sink::lake::encode_parquet(
            &batch,
            &parquet::file::properties::WriterProperties::default(),
        )
        .unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    async fn count(ctx: &datafusion::prelude::SessionContext) -> i64 {
        let b = ctx
            .sql("SELECT count(*) FROM cars")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        b[0].column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    }

    fn gone() -> datafusion::error::DataFusionError {
        datafusion::error::DataFusionError::Execution(
            "Object at location cars/dt=2026-01-01/part-t-0-00000000000000000000-00000000000000000009.parquet not found".into(),
        )
    }

    /// A query that failed on a file a merge removed runs again (at most 3 times); a statement
    /// that is not a query, or another error, is not repeated.
    #[tokio::test]
    async fn a_query_that_met_a_merged_away_file_runs_again() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = AtomicUsize::new(0);
        let flaky = |fails: usize| {
            let calls = &calls;
            move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move { if n < fails { Err(gone()) } else { Ok(()) } }
            }
        };
        super::run_retrying("SELECT count(*) FROM cars", true, flaky(2))
            .await
            .unwrap();
        assert_eq!(calls.swap(0, Ordering::SeqCst), 3);
        assert!(
            super::run_retrying("  with x AS (SELECT 1) SELECT * FROM x", true, flaky(9))
                .await
                .is_err()
        );
        assert_eq!(
            calls.swap(0, Ordering::SeqCst),
            4,
            "three retries, then the error"
        );
        assert!(
            super::run_retrying("COPY cars TO 'x.parquet'", true, flaky(1))
                .await
                .is_err()
        );
        assert_eq!(
            calls.swap(0, Ordering::SeqCst),
            1,
            "a statement that writes is not repeated"
        );
        let other = || async {
            Err::<(), _>(datafusion::error::DataFusionError::Plan(
                "no table x".into(),
            ))
        };
        assert!(
            super::run_retrying("SELECT * FROM x", true, other)
                .await
                .is_err()
        );
        let msg = super::merged_away(gone()).to_string();
        assert!(msg.contains("right when run again"), "{msg}");
    }

    /// A `carflow sql` session is long (the REPL): each query must see what was committed
    /// before it, not the files of the session's first query.
    #[tokio::test]
    async fn a_long_session_sees_later_commits() {
        let tmp = tempfile::tempdir().unwrap();
        let lake = tmp.path().join("lake");
        write(
            &lake,
            "part-t-0-00000000000000000000-00000000000000000009.parquet",
            10,
        );
        let (ctx, _, tables) = super::lake_session(&lake.display().to_string())
            .await
            .unwrap();
        assert_eq!(tables, ["cars"]);
        assert_eq!(count(&ctx).await, 10);
        write(
            &lake,
            "part-t-0-00000000000000000010-00000000000000000014.parquet",
            5,
        );
        assert_eq!(count(&ctx).await, 15, "the second commit is seen");
        // A merge of both: its sources are skipped as soon as it is listed, even when a reader
        // (on HDFS) lists it before the sources are deleted.
        write(
            &lake,
            "part-t-0-00000000000000000000-00000000000000000014.parquet",
            15,
        );
        assert_eq!(
            count(&ctx).await,
            15,
            "a merged file and its sources count once"
        );
    }
}
