//! Open event-time windows: the rows each windowed Influx query needs to rewrite its points whole.
//!
//! A [`WindowStore`] keeps, for one [`WindowSpec`], the rows of every window that is still open.
//! After each batch, the windows the batch touched are recomputed from all their rows, so a point
//! is right however many batches its window spans. A window closes when the watermark passes its
//! end: the watermark is the smallest, over active partitions, of the newest event time seen in
//! that partition minus the allowed lateness. A row whose window has already closed is late: it
//! is counted (and kept in the lake) but not applied. The store also tells, per partition, the
//! lowest offset still held (`low_water`): the source commits no further than that, so after a
//! crash the replay from the committed offset rebuilds every open window.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimeUnit, TimestampMillisecondType};
use arrow::error::ArrowError;

use crate::schema::{COL_OFFSET, COL_PARTITION, COL_TOPIC};
use crate::transform::window::WindowSpec;

/// A (topic, partition) key.
pub type TopicPartition = (Arc<str>, i32);

/// Event-time progress of one partition.
#[derive(Debug, Clone)]
struct PartitionClock {
    /// Newest event time seen (or restored), if any.
    max_event_ms: Option<i64>,
    /// The idle clock when a message of it was last seen (or when it was assigned).
    last_active: Duration,
}

/// Watermark bookkeeping over the partitions this process owns.
///
/// Idleness is measured on an *idle clock* the pipeline advances only while the source had nothing
/// more to give (a batch that closed on linger time, not because it was full). A partition that
/// is merely queued behind others during a backlog, or while a slow sink holds the pipeline, is
/// therefore never mistaken for idle; one that truly sends nothing stops holding windows open.
#[derive(Debug, Clone)]
pub struct Watermarks {
    lateness_ms: i64,
    idle: Duration,
    clock: Duration,
    clocks: HashMap<TopicPartition, PartitionClock>,
}

impl Watermarks {
    /// Watermarks with `lateness` and an idle timeout.
    pub fn new(lateness: Duration, idle: Duration) -> Self {
        Self {
            lateness_ms: lateness.as_millis() as i64,
            idle,
            clock: Duration::ZERO,
            clocks: HashMap::new(),
        }
    }

    /// Advance the idle clock by time the source spent with nothing more to deliver.
    pub fn advance_idle_clock(&mut self, waited: Duration) {
        self.clock += waited;
    }

    /// A partition was assigned: it holds the watermark back until its first events are seen.
    pub fn assign(&mut self, tp: TopicPartition) {
        let now = self.clock;
        let c = self.clocks.entry(tp).or_insert(PartitionClock {
            max_event_ms: None,
            last_active: now,
        });
        c.last_active = now;
    }

    /// A partition was revoked.
    pub fn revoke(&mut self, tp: &TopicPartition) {
        self.clocks.remove(tp);
    }

    /// Record the newest event time of a partition in a batch.
    pub fn observe(&mut self, tp: TopicPartition, max_event_ms: i64) {
        let now = self.clock;
        let c = self.clocks.entry(tp).or_insert(PartitionClock {
            max_event_ms: None,
            last_active: now,
        });
        c.max_event_ms = Some(c.max_event_ms.map_or(max_event_ms, |m| m.max(max_event_ms)));
        c.last_active = now;
    }

    /// The newest event time of a partition (what a commit stores).
    pub fn max_event_ms(&self, tp: &TopicPartition) -> Option<i64> {
        self.clocks.get(tp).and_then(|c| c.max_event_ms)
    }

    /// Per partition: newest event time and seconds since it was last active (for logs).
    pub fn describe(&self) -> String {
        let now = self.clock;
        let mut v: Vec<String> = self
            .clocks
            .iter()
            .map(|((t, p), c)| {
                format!(
                    "{t}/{p}: max={:?} idle={}s",
                    c.max_event_ms,
                    now.saturating_sub(c.last_active).as_secs()
                )
            })
            .collect();
        v.sort();
        v.join(", ")
    }

    /// The current watermark, or `None` while an active partition has no event time yet.
    pub fn current(&self) -> Option<i64> {
        let now = self.clock;
        let mut wm: Option<i64> = None;
        for c in self.clocks.values() {
            if now.saturating_sub(c.last_active) > self.idle {
                continue;
            }
            let m = c.max_event_ms? - self.lateness_ms;
            wm = Some(wm.map_or(m, |w| w.min(m)));
        }
        if wm.is_none() {
            // Every partition is idle: the newest event anywhere, less lateness.
            wm = self
                .clocks
                .values()
                .filter_map(|c| c.max_event_ms)
                .max()
                .map(|m| m - self.lateness_ms);
        }
        wm
    }
}

#[derive(Debug, Default)]
struct OpenWindow {
    batches: Vec<RecordBatch>,
    rows: usize,
    min_offset: HashMap<TopicPartition, i64>,
}

/// What adding a batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AddOutcome {
    /// Window starts that received rows.
    pub touched: BTreeSet<i64>,
    /// Rows whose window had already closed.
    pub late_rows: usize,
    /// Replayed rows (after a restart or rebalance) whose window had already closed.
    pub late_replayed: usize,
}

/// The rows of the open windows of one [`WindowSpec`].
#[derive(Debug)]
pub struct WindowStore {
    spec: WindowSpec,
    windows: BTreeMap<i64, OpenWindow>,
    rows: usize,
    /// Windows ending at or before this are closed for good.
    closed_before: Option<i64>,
}

impl WindowStore {
    /// An empty store for `spec`.
    pub fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            windows: BTreeMap::new(),
            rows: 0,
            closed_before: None,
        }
    }

    /// The window this store keeps.
    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Windows open.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Add the rows of `batch` (the `transactions` schema) to their windows.
    ///
    /// `replay_below` gives, per partition, the first offset not processed before (the lake's
    /// ledger position): a late row below it is a replay of a row that was already counted late
    /// (or applied to a window since closed), so it is reported apart, as `late_replayed`.
    pub fn add(
        &mut self,
        batch: &RecordBatch,
        replay_below: &HashMap<TopicPartition, i64>,
    ) -> Result<AddOutcome, ArrowError> {
        let mut out = AddOutcome::default();
        if batch.num_rows() == 0 {
            return Ok(out);
        }
        let time = column(batch, &self.spec.column)?;
        let time = arrow::compute::cast(time, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
        let time = time.as_primitive::<TimestampMillisecondType>();
        let topics = column(batch, COL_TOPIC)?.as_string::<i32>();
        let partitions = column(batch, COL_PARTITION)?.as_primitive::<Int32Type>();
        let offsets = column(batch, COL_OFFSET)?.as_primitive::<Int64Type>();
        let replayed = |i: usize| {
            replay_below.iter().any(|((t, p), below)| {
                *p == partitions.value(i) && &**t == topics.value(i) && offsets.value(i) < *below
            })
        };
        let mut groups: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            if time.is_null(i) {
                continue;
            }
            let start = self.spec.start_of(time.value(i));
            if self
                .closed_before
                .is_some_and(|c| start + self.spec.width_ms <= c)
            {
                if replayed(i) {
                    out.late_replayed += 1;
                } else {
                    out.late_rows += 1;
                }
                continue;
            }
            groups.entry(start).or_default().push(i as u32);
        }
        for (start, idx) in groups {
            let mut mins: HashMap<(&str, i32), i64> = HashMap::new();
            for &i in &idx {
                let i = i as usize;
                let o = offsets.value(i);
                mins.entry((topics.value(i), partitions.value(i)))
                    .and_modify(|m| *m = (*m).min(o))
                    .or_insert(o);
            }
            let w = self.windows.entry(start).or_default();
            for ((t, p), o) in mins {
                w.min_offset
                    .entry((Arc::from(t), p))
                    .and_modify(|m| *m = (*m).min(o))
                    .or_insert(o);
            }
            let rows = take_record_batch(batch, &UInt32Array::from(idx))?;
            w.rows += rows.num_rows();
            self.rows += rows.num_rows();
            w.batches.push(rows);
            out.touched.insert(start);
        }
        Ok(out)
    }

    /// The rows of the given windows, for recomputing them.
    pub fn rows_of(&self, windows: &BTreeSet<i64>) -> Vec<RecordBatch> {
        windows
            .iter()
            .filter_map(|w| self.windows.get(w))
            .flat_map(|w| w.batches.iter().cloned())
            .collect()
    }

    /// Close every window that ends at or before `watermark`; then, if more than `max_rows` are
    /// held, close the oldest until under it. Returns (closed by watermark, closed early).
    pub fn close(&mut self, watermark: Option<i64>, max_rows: usize) -> (usize, usize) {
        let mut by_watermark = 0;
        if let Some(wm) = watermark {
            // [s, s + width) is closed once s + width <= wm, i.e. s <= wm - width.
            let open = self.windows.split_off(&(wm - self.spec.width_ms + 1));
            for w in std::mem::replace(&mut self.windows, open).into_values() {
                self.rows -= w.rows;
                by_watermark += 1;
            }
            self.closed_before = Some(self.closed_before.map_or(wm, |c| c.max(wm)));
        }
        let mut early = 0;
        while self.rows > max_rows {
            let Some((s, w)) = self.windows.pop_first() else {
                break;
            };
            self.rows -= w.rows;
            early += 1;
            let end = s + self.spec.width_ms;
            self.closed_before = Some(self.closed_before.map_or(end, |c| c.max(end)));
        }
        (by_watermark, early)
    }

    /// Windows ending at or before this are closed (what a commit records).
    pub fn closed_before(&self) -> Option<i64> {
        self.closed_before
    }

    /// Restore the closed boundary committed before a restart: windows ending at or before
    /// `boundary` stay closed, so replayed rows for them are late, not a partial rewrite.
    pub fn restore_closed(&mut self, boundary: i64) {
        self.closed_before = Some(self.closed_before.map_or(boundary, |c| c.max(boundary)));
        let open = self.windows.split_off(&(boundary - self.spec.width_ms + 1));
        for w in std::mem::replace(&mut self.windows, open).into_values() {
            self.rows -= w.rows;
        }
    }

    /// The lowest offset of `tp` still held, if any.
    pub fn low_water(&self, tp: &TopicPartition) -> Option<i64> {
        self.windows
            .values()
            .filter_map(|w| w.min_offset.get(tp))
            .min()
            .copied()
    }

    /// Forget the rows of a partition that was revoked (its new owner rebuilds them).
    pub fn drop_partition(&mut self, tp: &TopicPartition) -> Result<(), ArrowError> {
        for w in self.windows.values_mut() {
            if w.min_offset.remove(tp).is_none() {
                continue;
            }
            let mut kept = Vec::with_capacity(w.batches.len());
            for b in w.batches.drain(..) {
                let t = column(&b, COL_TOPIC)?.as_string::<i32>().clone();
                let p = column(&b, COL_PARTITION)?
                    .as_primitive::<Int32Type>()
                    .clone();
                let mask: arrow::array::BooleanArray = (0..b.num_rows())
                    .map(|i| Some(!(p.value(i) == tp.1 && t.value(i) == &*tp.0)))
                    .collect();
                kept.push(filter_record_batch(&b, &mask)?);
            }
            let before = w.rows;
            w.rows = kept.iter().map(RecordBatch::num_rows).sum();
            self.rows -= before - w.rows;
            w.batches = kept;
        }
        self.windows.retain(|_, w| w.rows > 0);
        Ok(())
    }
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::ArrayRef, ArrowError> {
    b.column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("no column {name}")))
}

#[cfg(test)]
mod tests;
