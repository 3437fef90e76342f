//! Property tests of the SQL file loader, `Planner::plan_file`: for random SQL-ish text,
//! token soups and mutations of the shipped queries (queries/*.sql) it never panics, and every
//! error points into the file: line ≥ 1 and column ≥ 1, the line exists, and the column is at
//! most one past the end of that line (in characters).
//!
//! Cases: `PROPTEST_CASES` (default 256).

// The engine's API under test: keep these imports together (module paths may move).
use carflow_engine::transform::{Planner, QueryError};

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::test_runner::Config;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
});

/// A planner with the shipped reference tables registered, as the engine has them.
static PLANNER: LazyLock<Planner> = LazyLock::new(|| {
    let planner = Planner::new().expect("planner");
    let mut reference = carflow_engine::reference::ReferenceTables::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../reference"),
    );
    let loaded = RUNTIME.block_on(reference.refresh(&planner.batch_ctx));
    assert!(loaded.refused.is_empty(), "reference tables: {loaded:?}");
    planner
});

/// The shipped queries, by file name.
static SHIPPED: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("query file"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no queries in {}", dir.display());
    files
});

fn plan(name: &str, sql: &str) -> Result<(), QueryError> {
    let file = PathBuf::from(name);
    RUNTIME.block_on(PLANNER.plan_file(&file, sql)).map(|_| ())
}

/// The lines of `sql` split at `\n`, and split at any of `\r\n`, `\r`, `\n` (SQL parsers count
/// a lone `\r` as a line break): an error position is inside the file under either convention.
fn position_is_inside(sql: &str, line: u64, column: u64) -> bool {
    let by_lf: Vec<&str> = sql.split('\n').collect();
    let by_any: Vec<&str> = sql
        .split("\r\n")
        .flat_map(|l| l.split(['\r', '\n']))
        .collect();
    [by_lf, by_any].iter().any(|lines| {
        line >= 1
            && column >= 1
            && (line as usize) <= lines.len()
            && column as usize <= lines[line as usize - 1].chars().count() + 1
    })
}

fn check(name: &str, sql: &str) -> Result<(), TestCaseError> {
    if let Err(e) = plan(name, sql) {
        prop_assert_eq!(e.file, PathBuf::from(name));
        prop_assert!(!e.message.is_empty());
        prop_assert!(
            position_is_inside(sql, e.line, e.column),
            "{}:{}:{} is outside the file ({}): {:?}",
            name,
            e.line,
            e.column,
            e.message,
            sql
        );
    }
    Ok(())
}

const TOKENS: &[&str] = &[
    "INSERT",
    "INTO",
    "lake.",
    "influx.",
    "lake.cars",
    "influx.sales",
    "SELECT",
    "FROM",
    "transactions",
    "WHERE",
    "GROUP BY",
    "ORDER BY",
    "PARTITION",
    "(",
    ")",
    ",",
    ";",
    "*",
    "=",
    "AS",
    "time",
    "dt",
    "brand",
    "price",
    "sold_at",
    "dealer_id",
    "customer_age",
    "count(*)",
    "sum(price)",
    "avg(price)",
    "approx_percentile_cont(price, 0.5)",
    "date_bin(INTERVAL '1 minute', sold_at)",
    "date_trunc('day', sold_at)",
    "CAST(sold_at AS DATE)",
    "nofield",
    "nosuch_fn(",
    "'",
    "\"",
    "'str'",
    "\"quoted id\"",
    "--",
    "/*",
    "*/",
    "\n",
    "\r\n",
    "\r",
    "\t",
    " ",
    "1",
    "-1",
    "1e309",
    "0.5",
    "NULL",
    "TRUE",
    "İ",
    "ß",
    "😀",
    "\u{0}",
    "\u{301}",
    "$1",
    "?",
    "OVER (",
    "JOIN",
    "UNION ALL",
    "LIMIT",
    "HAVING",
    "CASE WHEN",
    "END",
    "::",
    "[",
    "]",
    "{",
    "}",
    "`",
    "\\",
    "WITH x AS (",
    "VALUES (1)",
    "lake.\"\"",
    "influx.\"\"",
];

fn token_soup() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "",
            "INSERT INTO lake.x SELECT ",
            "INSERT INTO influx.m SELECT ",
            "INSERT INTO lake.x PARTITION (dt) SELECT ",
        ]),
        prop::collection::vec(prop::sample::select(TOKENS), 0..24),
    )
        .prop_map(|(head, tokens)| {
            let mut s = head.to_string();
            for t in tokens {
                s.push_str(t);
                s.push(' ');
            }
            s
        })
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, char),
    Duplicate(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1..12usize).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(a, t)| Edit::Insert(a, t.into())),
        (any::<usize>(), any::<String>()).prop_map(|(a, t)| Edit::Insert(a, t)),
        (any::<usize>(), any::<char>()).prop_map(|(a, c)| Edit::Replace(a, c)),
        (any::<usize>(), 1..40usize).prop_map(|(a, n)| Edit::Duplicate(a, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(sql: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = sql.chars().collect();
    for e in edits {
        let at = |p: usize| {
            if chars.is_empty() {
                0
            } else {
                p % (chars.len() + 1)
            }
        };
        match e {
            Edit::Delete(a, n) => {
                let a = at(*a);
                let b = (a + n).min(chars.len());
                chars.drain(a..b);
            }
            Edit::Insert(a, t) => {
                let a = at(*a);
                chars.splice(a..a, t.chars());
            }
            Edit::Replace(a, c) => {
                if !chars.is_empty() {
                    let a = a % chars.len();
                    chars[a] = *c;
                }
            }
            Edit::Duplicate(a, n) => {
                let a = at(*a);
                let b = (a + n).min(chars.len());
                let copy: Vec<char> = chars[a..b].to_vec();
                chars.splice(b..b, copy);
            }
            Edit::Truncate(a) => {
                let a = at(*a);
                chars.truncate(a);
            }
        }
    }
    chars.into_iter().collect()
}

fn mutated_query() -> impl Strategy<Value = (String, String)> {
    (0..SHIPPED.len(), prop::collection::vec(edit(), 1..5)).prop_map(|(i, edits)| {
        let (name, sql) = &SHIPPED[i];
        (name.clone(), apply(sql, &edits))
    })
}

#[test]
fn the_shipped_queries_plan() {
    for (name, sql) in SHIPPED.iter() {
        if let Err(e) = plan(name, sql) {
            panic!("{e}");
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_shipped_queries_fail_inside_the_file((name, sql) in mutated_query()) {
        check(&name, &sql)?;
    }

    #[test]
    fn token_soup_fails_inside_the_file(sql in token_soup()) {
        check("soup.sql", &sql)?;
    }

    #[test]
    fn any_text_fails_inside_the_file(sql in any::<String>()) {
        check("any.sql", &sql)?;
    }
}
