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

/// The open windows of one partition for one query: window start (ms) → state rows.
#[derive(Debug, Clone, Default)]
pub struct QueryState {
    /// State rows per window start.
    pub windows: BTreeMap<i64, RecordBatch>,
}

impl QueryState {
    /// State rows held.
    pub fn rows(&self) -> usize {
        self.windows.values().map(RecordBatch::num_rows).sum()
    }

    /// Bytes held (approximately).
    pub fn bytes(&self) -> usize {
        self.windows
            .values()
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }

    /// Split state rows by window start and put them in (replacing those windows).
    pub fn replace(&mut self, q: &WindowQuery, rows: &[RecordBatch]) -> Result<BTreeSet<i64>> {
        let mut touched = BTreeSet::new();
        for (start, b) in split_by_window(q, rows)? {
            touched.insert(start);
            self.windows.insert(start, b);
        }
        Ok(touched)
    }

    /// Drop the windows ending at or before `closed_before`; returns how many.
    pub fn drop_closed(&mut self, width_ms: i64, closed_before: i64) -> usize {
        let before = self.windows.len();
        self.windows
            .retain(|start, _| start.saturating_add(width_ms) > closed_before);
        before - self.windows.len()
    }

    /// As committed: every window's rows in one Arrow IPC stream of one batch (a batch per
    /// window costs each window its own IPC header, more than the rows of a small window).
    pub fn to_blob(&self, q: &WindowQuery, fingerprint: &str) -> Result<WindowBlob> {
        let schema = q.state_schema();
        let all = concat_batches(&schema, self.windows.values())?;
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

/// State rows grouped by window start.
pub fn split_by_window(
    q: &WindowQuery,
    rows: &[RecordBatch],
) -> Result<BTreeMap<i64, RecordBatch>> {
    let mut out: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    for b in rows.iter().filter(|b| b.num_rows() > 0) {
        let starts = q.window_starts(b)?;
        let mut idx: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, s) in starts.iter().enumerate() {
            // A null window (a null event time) cannot be placed; it is not a point.
            if let Some(s) = s {
                idx.entry(*s).or_default().push(i as u32);
            }
        }
        for (s, i) in idx {
            out.entry(s)
                .or_default()
                .push(take_record_batch(b, &UInt32Array::from(i))?);
        }
    }
    out.into_iter()
        .map(|(s, mut v)| {
            // A window's rows usually come from one batch: taken already, no second copy.
            let rows = match v.len() {
                1 => v.pop().expect("one batch"),
                _ => concat_batches(&q.state_schema(), &v)?,
            };
            Ok((s, rows))
        })
        .collect()
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
                payload: Some(g.next_transaction().to_json().into_bytes()),
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
            a.windows.keys().collect::<Vec<_>>(),
            b.windows.keys().collect::<Vec<_>>()
        );
        for (start, rows) in &a.windows {
            let other = &b.windows[start];
            assert_eq!(rows.columns(), other.columns(), "window {start}");
        }
    }

    #[tokio::test]
    async fn window_state_reads_back_from_its_entry_json() {
        let (q, state) = state_of_a_query().await;
        assert!(state.windows.len() > 3, "{} windows", state.windows.len());
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
        let all = concat_batches(&schema, state.windows.values()).unwrap();
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
