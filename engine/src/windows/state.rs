//! The open windows of one Kafka partition: per windowed query, per window, the partial
//! aggregate state rows; and how they are committed inside the partition's ledger entry (an Arrow
//! IPC stream, base64 in the entry's JSON) and read back.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::error::{DataFusionError, Result};

use super::aggregate::WindowQuery;
use crate::ledger::WindowBlob;

/// Window start → (first row, rows) in a batch ordered by window start.
type Ranges = BTreeMap<i64, (usize, usize)>;

/// The open windows of one partition for one query: window start (ms) → state rows.
///
/// Every open window's rows live in one batch, ordered by window start, with an index of where
/// each window's rows are: a window is a zero-copy slice of it. (A batch per window cost each
/// window its own set of column buffers, more than the few rows of a small window hold, and made
/// a merge feed DataFusion thousands of tiny batches.) Clones share the batch.
#[derive(Debug, Clone, Default)]
pub struct QueryState {
    /// The rows of every window in `index` (and, until the next rebuild, of windows closed
    /// since).
    rows: Option<RecordBatch>,
    /// Window start → (first row, rows) in `rows`.
    index: Ranges,
    /// Rows of `index`'s windows.
    live: usize,
}

impl QueryState {
    /// State rows held.
    pub fn rows(&self) -> usize {
        self.live
    }

    /// Bytes held (approximately).
    pub fn bytes(&self) -> usize {
        self.rows
            .as_ref()
            .map_or(0, RecordBatch::get_array_memory_size)
    }

    /// The state rows of the window starting at `start`.
    pub fn get(&self, start: i64) -> Option<RecordBatch> {
        let (at, n) = *self.index.get(&start)?;
        Some(self.rows.as_ref()?.slice(at, n))
    }

    /// Every open window with its rows (a slice each), in window order.
    fn pieces(&self) -> impl Iterator<Item = (i64, RecordBatch)> + '_ {
        self.starts().filter_map(|s| self.get(s).map(|b| (s, b)))
    }

    /// The starts of the open windows, in order.
    pub fn starts(&self) -> impl Iterator<Item = i64> + '_ {
        self.index.keys().copied()
    }

    /// How many windows are open.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// No window open.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Split state rows by window start and put them in (replacing those windows).
    pub fn replace(&mut self, q: &WindowQuery, rows: &[RecordBatch]) -> Result<BTreeSet<i64>> {
        let Some((fresh, ranges)) = by_window(q, rows)? else {
            return Ok(BTreeSet::new());
        };
        let touched: BTreeSet<i64> = ranges.keys().copied().collect();
        let mut pieces: Vec<(i64, RecordBatch)> = self
            .pieces()
            .filter(|(start, _)| !ranges.contains_key(start))
            .chain(ranges.iter().map(|(s, (at, n))| (*s, fresh.slice(*at, *n))))
            .collect();
        pieces.sort_by_key(|(start, _)| *start);
        self.rebuild(pieces)?;
        Ok(touched)
    }

    /// Add the windows of `other` this state does not hold (those it holds stay as they are).
    pub fn fill_from(&mut self, other: &QueryState) -> Result<()> {
        if other.starts().all(|s| self.index.contains_key(&s)) {
            return Ok(());
        }
        let mut pieces: Vec<(i64, RecordBatch)> = self
            .pieces()
            .chain(other.pieces().filter(|(s, _)| !self.index.contains_key(s)))
            .collect();
        pieces.sort_by_key(|(start, _)| *start);
        self.rebuild(pieces)
    }

    /// Drop the windows ending at or before `closed_before`; returns how many.
    pub fn drop_closed(&mut self, width_ms: i64, closed_before: i64) -> usize {
        let before = self.index.len();
        self.index
            .retain(|start, _| start.saturating_add(width_ms) > closed_before);
        let dropped = before - self.index.len();
        if dropped > 0 {
            self.live = self.index.values().map(|(_, n)| n).sum();
            let held = self.rows.as_ref().map_or(0, RecordBatch::num_rows);
            // The closed windows' rows go with the next rebuild, or now when they are most of it.
            if held > 2 * self.live {
                let pieces: Vec<(i64, RecordBatch)> = self.pieces().collect();
                // Concatenating slices of a batch that holds them cannot fail; keep it as it is
                // if it somehow does.
                let _ = self.rebuild(pieces);
            }
        }
        dropped
    }

    /// Hold `pieces` (in window order) as one batch.
    fn rebuild(&mut self, pieces: Vec<(i64, RecordBatch)>) -> Result<()> {
        let Some((_, first)) = pieces.first() else {
            *self = Self::default();
            return Ok(());
        };
        let rows = concat_batches(&first.schema(), pieces.iter().map(|(_, b)| b))?;
        let mut index = BTreeMap::new();
        let mut at = 0;
        for (start, b) in &pieces {
            index.insert(*start, (at, b.num_rows()));
            at += b.num_rows();
        }
        *self = Self {
            rows: Some(rows),
            index,
            live: at,
        };
        Ok(())
    }

    /// As committed: every window's rows in one Arrow IPC stream of one batch (a batch per
    /// window costs each window its own IPC header, more than the rows of a small window).
    pub fn to_blob(&self, q: &WindowQuery, fingerprint: &str) -> Result<WindowBlob> {
        let schema = q.state_schema();
        let all = match &self.rows {
            // Nothing closed since the last rebuild: the batch as it is.
            Some(rows) if rows.num_rows() == self.live => rows.clone(),
            _ => concat_batches(&schema, &self.pieces().map(|(_, b)| b).collect::<Vec<_>>())?,
        };
        let all = RecordBatch::try_new(schema.clone(), all.columns().to_vec())?;
        // The rows' buffers plus room for the IPC schema and batch headers (a few hundred bytes
        // per column, nested state columns included): a Vec that overflows doubles.
        let mut buf = Vec::with_capacity(all.get_array_memory_size() + 8192);
        {
            let mut w = StreamWriter::try_new(&mut buf, &schema)?;
            w.write(&all)?;
            w.finish()?;
        }
        if buf.capacity() > buf.len() + buf.len() / 4 {
            buf.shrink_to_fit();
        }
        Ok(WindowBlob {
            fingerprint: fingerprint.to_string(),
            ipc: bytes::Bytes::from(buf),
        })
    }

    /// Read back what [`QueryState::to_blob`] wrote (the schema must be the query's state
    /// schema).
    pub fn from_blob(q: &WindowQuery, blob: &WindowBlob) -> Result<Self> {
        let reader = StreamReader::try_new(Cursor::new(&blob.ipc[..]), None)?;
        let want = q.state_schema();
        let same = |a: &arrow::datatypes::Schema| {
            a.fields().len() == want.fields().len()
                && a.fields()
                    .iter()
                    .zip(want.fields())
                    .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
        };
        if !same(&reader.schema()) {
            return Err(DataFusionError::Execution(
                "committed window state has another layout".into(),
            ));
        }
        let mut batches = Vec::new();
        for b in reader {
            let b = b?;
            batches.push(RecordBatch::try_new(want.clone(), b.columns().to_vec())?);
        }
        let mut s = Self::default();
        s.replace(q, &batches)?;
        Ok(s)
    }
}

/// State rows ordered by window start, as one batch, with each window's (first row, rows) in it
/// (`None`: no row with a window; a null window, from a null event time, cannot be placed and is
/// not a point).
fn by_window(q: &WindowQuery, rows: &[RecordBatch]) -> Result<Option<(RecordBatch, Ranges)>> {
    let rows: Vec<&RecordBatch> = rows.iter().filter(|b| b.num_rows() > 0).collect();
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let all = match rows.as_slice() {
        [only] => (*only).clone(),
        _ => concat_batches(&first.schema(), rows.iter().copied())?,
    };
    let starts = q.window_starts(&all)?;
    let mut idx: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (i, s) in starts.iter().enumerate() {
        if let Some(s) = s {
            idx.entry(*s).or_default().push(i as u32);
        }
    }
    if idx.is_empty() {
        return Ok(None);
    }
    let mut order = Vec::with_capacity(all.num_rows());
    let mut ranges = BTreeMap::new();
    for (s, i) in idx {
        ranges.insert(s, (order.len(), i.len()));
        order.extend(i);
    }
    Ok(Some((
        take_record_batch(&all, &UInt32Array::from(order))?,
        ranges,
    )))
}

/// The window state of one partition: every windowed query's open windows.
#[derive(Debug, Clone, Default)]
pub struct PartitionWindows {
    /// Per windowed query key (`influx.<measurement>`).
    pub queries: BTreeMap<String, QueryState>,
}

impl PartitionWindows {
    /// State rows held over all queries.
    pub fn rows(&self) -> usize {
        self.queries.values().map(QueryState::rows).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::transform::{Planner, Target};
    use crate::windows::Windowing;

    /// Generated transactions over a few hours of event time, decoded as the engine does.
    fn rows() -> RecordBatch {
        let mut g = crate::generator::Generator::new(crate::generator::GeneratorConfig {
            seed: 5,
            ..Default::default()
        });
        let messages: Vec<crate::source::Message> = (0..5_000)
            .map(|i| crate::source::Message {
                topic: Arc::from("t"),
                partition: 0,
                offset: i,
                timestamp_ms: None,
                payload: Some(g.next_transaction().to_json().into_bytes().into()),
            })
            .collect();
        crate::batcher::decode_batch(&messages, 1 << 20)
            .unwrap()
            .rows
    }

    async fn state_of_a_query() -> (WindowQuery, QueryState) {
        let planner = Planner::new().unwrap();
        let sql = "INSERT INTO influx.s SELECT date_bin(INTERVAL '1 minute', sold_at) AS time, brand, \
            count(*) AS sales, sum(price) AS revenue, \
            approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY CAST(price AS DOUBLE)) AS p50 \
            FROM transactions GROUP BY 1, 2";
        let t = planner
            .plan_file(std::path::Path::new("s.sql"), sql)
            .await
            .unwrap();
        let Target::Influx {
            windowing: Windowing::Windowed(spec),
            ..
        } = &t.target
        else {
            panic!("not windowed: {:?}", t.target)
        };
        let q = WindowQuery::new(&t.plan, spec.clone(), &planner.batch_ctx)
            .await
            .unwrap();
        planner.batch.set(vec![rows()]);
        let partial = q.partial(&planner.batch_ctx).await.unwrap();
        let mut state = QueryState::default();
        state.replace(&q, &partial).unwrap();
        (q, state)
    }

    fn same_windows(a: &QueryState, b: &QueryState) {
        assert_eq!(
            a.starts().collect::<Vec<_>>(),
            b.starts().collect::<Vec<_>>()
        );
        for start in a.starts() {
            let (rows, other) = (a.get(start).unwrap(), b.get(start).unwrap());
            assert_eq!(rows.columns(), other.columns(), "window {start}");
        }
    }

    #[tokio::test]
    async fn open_windows_are_slices_of_one_batch_and_replacing_some_keeps_the_others() {
        let (q, mut state) = state_of_a_query().await;
        let starts: Vec<i64> = state.starts().collect();
        assert!(starts.len() > 3, "{} windows", starts.len());
        let before: Vec<RecordBatch> = starts.iter().map(|s| state.get(*s).unwrap()).collect();
        // Every window is a view of the same buffers (no set of buffers per window).
        let buffer = |b: &RecordBatch| b.column(0).to_data().buffers()[0].data_ptr();
        assert!(before.iter().all(|b| buffer(b) == buffer(&before[0])));
        assert_eq!(
            state.rows(),
            before.iter().map(RecordBatch::num_rows).sum::<usize>()
        );
        // Replace the second window with the rows of the first window moved to it: the others
        // keep their rows, in window order.
        let (first, second) = (starts[0], starts[1]);
        let moved = {
            let b = state.get(first).unwrap();
            let mut cols = b.columns().to_vec();
            use arrow::compute::cast;
            use arrow::datatypes::{DataType, TimeUnit};
            let at = q.time_index();
            let ms = cast(&cols[at], &DataType::Timestamp(TimeUnit::Millisecond, None)).unwrap();
            let ms = cast(&ms, &DataType::Int64).unwrap();
            let shift = arrow::array::Int64Array::from(vec![second - first; b.num_rows()]);
            let t = arrow::compute::kernels::numeric::add(&ms, &shift).unwrap();
            let t = cast(&t, &DataType::Timestamp(TimeUnit::Millisecond, None)).unwrap();
            cols[at] = cast(&t, b.column(at).data_type()).unwrap();
            RecordBatch::try_new(b.schema(), cols).unwrap()
        };
        let touched = state.replace(&q, std::slice::from_ref(&moved)).unwrap();
        assert_eq!(touched, BTreeSet::from([second]));
        assert_eq!(state.starts().collect::<Vec<_>>(), starts);
        assert_eq!(state.get(second).unwrap().columns(), moved.columns());
        for (s, b) in starts.iter().zip(&before).filter(|(s, _)| **s != second) {
            assert_eq!(state.get(*s).unwrap().columns(), b.columns(), "window {s}");
        }
        // Closing windows drops them and their rows, whatever is left reads the same.
        let width = q.spec.width_ms;
        let dropped = state.drop_closed(width, starts[2].saturating_add(width));
        assert_eq!(dropped, 3);
        assert_eq!(state.starts().collect::<Vec<_>>(), starts[3..]);
        for (s, b) in starts.iter().zip(&before).skip(3) {
            assert_eq!(state.get(*s).unwrap().columns(), b.columns(), "window {s}");
        }
        assert_eq!(
            state.rows(),
            before[3..].iter().map(RecordBatch::num_rows).sum::<usize>()
        );
        let back = QueryState::from_blob(&q, &state.to_blob(&q, "v1").unwrap()).unwrap();
        same_windows(&state, &back);
        assert_eq!(state.drop_closed(width, i64::MAX), starts.len() - 3);
        assert!(state.is_empty() && state.rows() == 0);
    }

    #[tokio::test]
    async fn window_state_reads_back_from_its_entry_json() {
        let (q, state) = state_of_a_query().await;
        assert!(state.len() > 3, "{} windows", state.len());
        let blob = state.to_blob(&q, "v1").unwrap();
        let json = serde_json::to_string(&blob).unwrap();
        // In the entry, the IPC stream is one base64 string (as entries have always held it).
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let text = v["ipc"].as_str().unwrap();
        use base64::Engine as _;
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap(),
            &blob.ipc[..]
        );
        let back: WindowBlob = serde_json::from_str(&json).unwrap();
        assert_eq!(back, blob);
        same_windows(&state, &QueryState::from_blob(&q, &back).unwrap());
    }

    #[tokio::test]
    async fn window_state_written_as_one_batch_by_an_older_carflow_still_reads() {
        let (q, state) = state_of_a_query().await;
        // Older entries held every window concatenated in a single batch.
        let schema = q.state_schema();
        let windows: Vec<RecordBatch> = state.starts().map(|s| state.get(s).unwrap()).collect();
        let all = concat_batches(&schema, &windows).unwrap();
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &schema).unwrap();
            w.write(&all).unwrap();
            w.finish().unwrap();
        }
        use base64::Engine as _;
        let json = format!(
            r#"{{"fingerprint":"v0","ipc":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(&buf)
        );
        let blob: WindowBlob = serde_json::from_str(&json).unwrap();
        same_windows(&state, &QueryState::from_blob(&q, &blob).unwrap());
        let bad: Result<WindowBlob, _> = serde_json::from_str(r#"{"fingerprint":"v0","ipc":"**"}"#);
        assert!(
            bad.unwrap_err().to_string().contains("not base64"),
            "a corrupt blob names the problem"
        );
    }
}
