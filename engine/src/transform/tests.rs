use std::path::Path;

use super::*;

fn queries_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries")
}

#[tokio::test]
async fn every_shipped_query_file_plans() {
    let planner = Planner::new().unwrap();
    // With the shipped reference tables, as the engine has them.
    let mut reference = crate::reference::ReferenceTables::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../reference"),
    );
    let loaded = reference.refresh(&planner.batch_ctx).await;
    assert!(loaded.refused.is_empty(), "{loaded:?}");
    let mut set = TransformSet::default();
    let report = set
        .reload(&planner, &queries_dir(), &mut OpenGate)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    let files = std::fs::read_dir(queries_dir()).unwrap().filter(|e| {
        e.as_ref()
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "sql")
    });
    assert_eq!(set.len(), files.count());
    let cars = set.iter().find(|t| t.name == "cars").unwrap();
    assert_eq!(
        cars.target,
        Target::Lake {
            dataset: "cars".into(),
            partition_by: vec!["dt".into()]
        }
    );
    let brand = set.iter().find(|t| t.name == "sales_by_brand").unwrap();
    let Target::Influx {
        windowing,
        measurement,
        ..
    } = &brand.target
    else {
        panic!()
    };
    assert_eq!(measurement, "sales_by_brand");
    assert_eq!(
        windowing,
        &Windowing::Windowed(window::WindowSpec {
            column: "sold_at".into(),
            width_ms: 60_000,
            origin_ms: 0
        })
    );
    let pct = set.iter().find(|t| t.name == "price_percentiles").unwrap();
    assert!(
        matches!(&pct.target, Target::Influx { windowing: Windowing::Windowed(w), .. } if w.width_ms == 300_000)
    );
}

/// Each file in testdata/invalid_queries starts with `-- expect: <line>: <text>`: the file must be
/// refused at that line with that text in the message.
#[tokio::test]
async fn every_invalid_query_is_refused_with_its_file_and_line() {
    let planner = Planner::new().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/invalid_queries");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let sql = std::fs::read_to_string(&path).unwrap();
        let expect = sql
            .lines()
            .next()
            .unwrap()
            .strip_prefix("-- expect: ")
            .unwrap();
        let (line, text) = expect.split_once(": ").unwrap();
        let err = planner
            .plan_file(&path, &sql)
            .await
            .expect_err(&path.display().to_string());
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("{}:{line}:", path.display())),
            "{shown}"
        );
        assert!(shown.contains(text), "{shown} lacks {text:?}");
        n += 1;
    }
    assert!(n >= 10);
}

#[tokio::test]
async fn a_bad_file_added_later_leaves_the_running_ones_alone() {
    let planner = Planner::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = "INSERT INTO lake.cars SELECT * FROM transactions;";
    std::fs::write(dir.path().join("cars.sql"), good).unwrap();
    let mut set = TransformSet::default();
    assert!(
        set.reload(&planner, dir.path(), &mut OpenGate)
            .await
            .unwrap()
            .errors
            .is_empty()
    );
    std::fs::write(
        dir.path().join("bad.sql"),
        "INSERT INTO lake.x SELECT nope FROM transactions;",
    )
    .unwrap();
    let r = set
        .reload(&planner, dir.path(), &mut OpenGate)
        .await
        .unwrap();
    assert_eq!(r.errors.len(), 1);
    assert!(
        r.errors[0].to_string().contains("bad.sql:1:"),
        "{}",
        r.errors[0]
    );
    assert_eq!(set.len(), 1, "cars still runs");
    // A file edited into a broken state keeps its last good version.
    std::fs::write(
        dir.path().join("cars.sql"),
        "INSERT INTO lake.cars SELECT * FROM nowhere_at_all;",
    )
    .unwrap();
    let r = set
        .reload(&planner, dir.path(), &mut OpenGate)
        .await
        .unwrap();
    assert_eq!(r.errors.len(), 1);
    assert_eq!(
        set.iter().next().unwrap().select,
        "SELECT * FROM transactions"
    );
    // Unchanged broken files are reported once, not every batch.
    assert!(
        set.reload(&planner, dir.path(), &mut OpenGate)
            .await
            .unwrap()
            .errors
            .is_empty()
    );
    std::fs::remove_file(dir.path().join("cars.sql")).unwrap();
    let r = set
        .reload(&planner, dir.path(), &mut OpenGate)
        .await
        .unwrap();
    assert_eq!(r.removed.len(), 1);
    assert!(set.is_empty());
}

#[tokio::test]
async fn two_files_cannot_write_one_dataset() {
    let planner = Planner::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.sql"),
        "INSERT INTO lake.cars SELECT * FROM transactions;",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.sql"),
        "INSERT INTO lake.cars SELECT brand FROM transactions;",
    )
    .unwrap();
    let mut set = TransformSet::default();
    let r = set
        .reload(&planner, dir.path(), &mut OpenGate)
        .await
        .unwrap();
    assert_eq!(r.errors.len(), 1);
    assert!(
        r.errors[0].message.contains("already written by"),
        "{}",
        r.errors[0]
    );
}

#[tokio::test]
async fn renaming_a_file_moves_its_dataset_with_it() {
    let planner = Planner::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sql = "INSERT INTO lake.cars SELECT * FROM transactions;";
    std::fs::write(dir.path().join("cars.sql"), sql).unwrap();
    let mut set = TransformSet::default();
    set.reload(&planner, dir.path(), &mut OpenGate)
        .await
        .unwrap();
    std::fs::rename(dir.path().join("cars.sql"), dir.path().join("10_cars.sql")).unwrap();
    let r = set
        .reload(&planner, dir.path(), &mut OpenGate)
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(set.len(), 1);
    let t = set.iter().next().unwrap();
    assert!(t.file.ends_with("10_cars.sql"));
    assert_eq!(t.target_name(), "lake.cars");
    // And back again, after the refusal of a clash was once reported.
    std::fs::write(dir.path().join("cars.sql"), sql).unwrap();
    let r = set
        .reload(&planner, dir.path(), &mut OpenGate)
        .await
        .unwrap();
    assert_eq!(
        r.errors.len(),
        1,
        "two files for one dataset: {:?}",
        r.errors
    );
    std::fs::remove_file(dir.path().join("10_cars.sql")).unwrap();
    let r = set
        .reload(&planner, dir.path(), &mut OpenGate)
        .await
        .unwrap();
    assert!(r.refused.is_empty(), "{:?}", r.refused);
    assert!(set.iter().next().unwrap().file.ends_with("cars.sql"));
}

#[tokio::test]
async fn the_dead_letter_dataset_is_reserved() {
    let planner = Planner::new().unwrap();
    let err = planner
        .plan_file(
            Path::new("dl.sql"),
            "INSERT INTO lake.dead_letters SELECT * FROM transactions;",
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("reserved"), "{err}");
}

#[tokio::test]
async fn an_output_parquet_cannot_store_is_refused_when_loaded() {
    let planner = Planner::new().unwrap();
    let err = planner
        .plan_file(
            Path::new("iv.sql"),
            "INSERT INTO lake.iv SELECT transaction_id, INTERVAL '1 day' AS span FROM transactions;",
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("Parquet"), "{err}");
}
