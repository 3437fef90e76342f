use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{Field, Schema};

use super::*;

fn rows(items: &[(i32, i64, i64)]) -> RecordBatch {
    // (partition, offset, sold_at ms)
    let schema = Arc::new(Schema::new(vec![
        Field::new(
            "sold_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new(COL_TOPIC, DataType::Utf8, false),
        Field::new(COL_PARTITION, DataType::Int32, false),
        Field::new(COL_OFFSET, DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(
                TimestampMillisecondArray::from(items.iter().map(|r| r.2).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec!["t"; items.len()])),
            Arc::new(Int32Array::from(
                items.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                items.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn store() -> WindowStore {
    WindowStore::new(WindowSpec {
        column: "sold_at".into(),
        width_ms: 60_000,
        origin_ms: 0,
    })
}

fn tp(p: i32) -> TopicPartition {
    (Arc::from("t"), p)
}

#[test]
fn a_window_keeps_its_rows_across_batches() {
    let mut s = store();
    let a = s
        .add_fresh(&rows(&[(0, 10, 1_000), (1, 5, 61_000)]))
        .unwrap();
    assert_eq!(a.touched, BTreeSet::from([0, 60_000]));
    let b = s.add_fresh(&rows(&[(0, 11, 59_999)])).unwrap();
    assert_eq!(b.touched, BTreeSet::from([0]));
    let r = s.rows_of(&b.touched);
    assert_eq!(
        r.iter().map(RecordBatch::num_rows).sum::<usize>(),
        2,
        "both batches' rows of minute 0"
    );
    assert_eq!(s.rows(), 3);
    assert_eq!(s.low_water(&tp(0)), Some(10));
    assert_eq!(s.low_water(&tp(1)), Some(5));
}

#[test]
fn closed_windows_are_dropped_and_later_rows_for_them_are_late() {
    let mut s = store();
    s.add_fresh(&rows(&[(0, 1, 1_000), (0, 2, 61_000), (0, 3, 130_000)]))
        .unwrap();
    let (closed, early) = s.close(Some(120_000), usize::MAX);
    assert_eq!(
        (closed, early),
        (2, 0),
        "minutes 0 and 1 end at or before the watermark"
    );
    assert_eq!(s.open_windows(), 1);
    assert_eq!(
        s.low_water(&tp(0)),
        Some(3),
        "offsets of closed windows need no replay"
    );
    let late = s
        .add_fresh(&rows(&[(0, 4, 5_000), (0, 5, 121_000)]))
        .unwrap();
    assert_eq!(late.late_rows, 1);
    assert_eq!(late.touched, BTreeSet::from([120_000]));
}

#[test]
fn too_many_rows_close_the_oldest_windows_early() {
    let mut s = store();
    s.add_fresh(&rows(&[(0, 1, 1_000), (0, 2, 2_000), (0, 3, 61_000)]))
        .unwrap();
    assert_eq!(s.close(None, 1), (0, 1));
    assert_eq!(s.rows(), 1);
    assert_eq!(s.add_fresh(&rows(&[(0, 4, 3_000)])).unwrap().late_rows, 1);
}

#[test]
fn a_revoked_partition_leaves_no_rows_behind() {
    let mut s = store();
    s.add_fresh(&rows(&[(0, 1, 1_000), (1, 1, 2_000), (1, 2, 70_000)]))
        .unwrap();
    s.drop_partition(&tp(1)).unwrap();
    assert_eq!(s.rows(), 1);
    assert_eq!(s.open_windows(), 1);
    assert_eq!(s.low_water(&tp(1)), None);
}

#[test]
fn the_watermark_follows_the_slowest_active_partition() {
    let mut w = Watermarks::new(Duration::from_secs(60), Duration::from_secs(30));
    w.assign(tp(0));
    w.assign(tp(1));
    w.observe(tp(0), 200_000);
    assert_eq!(
        w.current(),
        None,
        "a partition without event time holds windows open"
    );
    w.observe(tp(1), 500_000);
    assert_eq!(w.current(), Some(140_000));
    w.observe(tp(1), 100_000);
    assert_eq!(
        w.max_event_ms(&tp(1)),
        Some(500_000),
        "the high-water never goes back"
    );
    // Time spent busy (a backlog, a slow sink) never makes a partition idle...
    for _ in 0..100 {
        w.observe(tp(1), 900_000);
    }
    assert_eq!(w.current(), Some(140_000));
    // ...time the source spent with nothing to give does.
    w.advance_idle_clock(Duration::from_secs(31));
    w.observe(tp(1), 900_000);
    assert_eq!(
        w.current(),
        Some(840_000),
        "an idle partition stops holding the watermark"
    );
    w.revoke(&tp(1));
    assert_eq!(
        w.current(),
        Some(140_000),
        "only idle partitions left: the newest of them"
    );
}

impl WindowStore {
    fn add_fresh(&mut self, b: &RecordBatch) -> Result<AddOutcome, ArrowError> {
        self.add(b, &HashMap::new())
    }
}

#[test]
fn late_replays_are_told_apart_from_late_arrivals() {
    let mut s = store();
    s.add_fresh(&rows(&[(0, 1, 1_000), (0, 2, 130_000)]))
        .unwrap();
    s.close(Some(120_000), usize::MAX);
    let replay_below = HashMap::from([(tp(0), 3)]);
    let out = s
        .add(&rows(&[(0, 1, 1_000), (0, 4, 2_000)]), &replay_below)
        .unwrap();
    assert_eq!((out.late_replayed, out.late_rows), (1, 1));
}
