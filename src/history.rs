//! What `carflow backfill` and `carflow reconcile` share: the lake opened as history, the
//! planner the queries run on, the range of windows, the progress bar and the output format.

use std::time::{Duration, Instant};

use anyhow::Context;
use carflow_engine::config::Config;
use carflow_engine::history::{History, Range};
use carflow_engine::reconcile::{
    Boundary, HistoryQuery, Points, boundary, closed_range, parse_time,
};
use carflow_engine::storage::Location;
use carflow_engine::transform::Planner;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::{Format, Global, HistoryArgs};

/// The lake opened for a history command.
pub struct Job {
    pub config: Config,
    pub location: Location,
    pub history: History,
    pub planner: Planner,
    pub lateness: Duration,
    pub format: Format,
    pub include_open: bool,
    pub range: Range,
}

impl Job {
    pub async fn open(global: &Global, args: &HistoryArgs) -> anyhow::Result<Self> {
        let config = Config::load(global.config.as_deref())?;
        let root = args.lake.clone().unwrap_or(config.lake.root.clone());
        let location =
            Location::open(&root).with_context(|| format!("opening the lake at {root}"))?;
        let history = History::open(&location, &config.lake.raw_dataset)
            .await
            .with_context(|| format!("reading the lake at {root}"))?;
        let planner = crate::check::planner(&config).await?;
        let parse = |s: &Option<String>, what: &str| -> anyhow::Result<Option<i64>> {
            s.as_deref()
                .map(parse_time)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--{what}: {e}"))
        };
        let range = Range {
            from: parse(&args.from, "from")?,
            to: parse(&args.to, "to")?,
        };
        Ok(Self {
            lateness: config.windows.allowed_lateness.0,
            config,
            location,
            history,
            planner,
            format: args.format,
            include_open: args.include_open,
            range,
        })
    }

    /// The range of window starts (windowed) or event times (per row) to work on, with the live
    /// engine's boundary.
    pub async fn plan(&self, q: &HistoryQuery) -> anyhow::Result<(Range, Boundary)> {
        let Some(spec) = q.spec() else {
            return Ok((self.range, Boundary::default()));
        };
        let b = boundary(&self.location, &spec.column, self.lateness)
            .await
            .context("reading the ledger's closed boundary")?;
        let range = if self.include_open {
            self.range
        } else {
            closed_range(spec, self.range, b.closed_before.or(Some(i64::MIN)))
        };
        Ok((range, b))
    }

    /// The points `q` gives over `range` from the lake, in steps (for the progress bar).
    pub async fn expected(
        &self,
        q: &HistoryQuery,
        range: Range,
        bar: &ProgressBar,
    ) -> anyhow::Result<(Points, usize)> {
        let column = q
            .spec()
            .map(|s| s.column.clone())
            .unwrap_or_else(|| carflow_engine::schema::EVENT_TIME.to_string());
        let width = q.spec().map(|s| s.width_ms).unwrap_or(1);
        // Event times of the windows starting in `range`.
        let events = match q.spec() {
            Some(s) => Range {
                from: range.from,
                to: range.to.map(|t| s.end_of(s.start_of(t.saturating_sub(1)))),
            },
            None => range,
        };
        let (min, max, total) = self.history.span(&column, events).await?;
        let (Some(min), Some(max)) = (min, max) else {
            return Ok((Points::new(), 0));
        };
        bar.set_length(total);
        let align = |t: i64| q.spec().map_or(t, |s| s.start_of(t));
        let from = range.from.unwrap_or(align(min));
        let to = range.to.unwrap_or(align(max).saturating_add(width));
        // About 50 steps, each a whole number of windows.
        let step = ((to.saturating_sub(from)) / 50).max(width);
        let step = step.div_euclid(width).max(1) * width;
        let mut points = Points::new();
        let mut rows = 0;
        let mut at = from;
        while at < to {
            let end = at.saturating_add(step).min(to);
            let (p, n) = q
                .expected(
                    &self.history,
                    &self.planner,
                    self.lateness,
                    Range {
                        from: Some(at),
                        to: Some(end),
                    },
                )
                .await?;
            points.extend(p);
            rows += n;
            bar.inc(n as u64);
            at = end;
        }
        Ok((points, rows))
    }

    /// A progress bar with rows/s and ETA on a terminal (hidden for JSON or when not a terminal).
    pub fn bar(&self, what: &str) -> ProgressBar {
        let bar = ProgressBar::new(0);
        if self.format == Format::Json {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:28} [{bar:30}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        bar
    }
}

/// Elapsed time and rows/s for summaries.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    pub seconds: f64,
    pub rows_per_second: f64,
}

impl Timing {
    pub fn of(started: Instant, rows: usize) -> Self {
        let seconds = started.elapsed().as_secs_f64();
        Self {
            seconds: (seconds * 1000.0).round() / 1000.0,
            rows_per_second: if seconds > 0.0 {
                (rows as f64 / seconds).round()
            } else {
                0.0
            },
        }
    }
}

/// What `q` covers in `r`, for people: the windows from the start of the first to the end of
/// the last (`2026-01-01T00:00:00Z .. 2026-01-01T00:33:00Z`), or the event times of a per-row
/// query.
pub fn show_range(q: &HistoryQuery, r: Range) -> String {
    use carflow_engine::reconcile::show_time;
    let to = match q.spec() {
        Some(s) => r.to.map(|t| s.end_of(s.start_of(t.saturating_sub(1)))),
        None => r.to,
    };
    format!(
        "{} {} .. {}",
        if q.spec().is_some() {
            "windows"
        } else {
            "event times"
        },
        r.from.map_or("the oldest".into(), show_time),
        to.map_or("the newest".into(), show_time)
    )
}

/// Where the boundary came from, for people.
pub fn show_boundary(b: &Boundary, include_open: bool) -> String {
    use carflow_engine::reconcile::show_time;
    match (include_open, b.closed_before) {
        (true, _) => "open windows included (--include-open): they may still change".into(),
        (false, None) => {
            "no window is closed yet (no ledger with event times): nothing to do".into()
        }
        (false, Some(c)) if b.committed => format!(
            "closed windows only: before {} (committed by the live engine)",
            show_time(c)
        ),
        (false, Some(c)) => format!(
            "closed windows only: before {} (the oldest partition's newest event less the allowed lateness)",
            show_time(c)
        ),
    }
}
