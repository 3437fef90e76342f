//! The open windows of one Kafka partition: per windowed query, per window, the partial
//! aggregate state rows; and how they are committed inside the partition's ledger entry (an Arrow
//! IPC stream, base64) and read back.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use base64::Engine as _;
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

    /// As committed: every window's rows in one Arrow IPC stream, in base64.
    pub fn to_blob(&self, q: &WindowQuery, fingerprint: &str) -> Result<WindowBlob> {
        let schema = q.state_schema();
        let all = concat_batches(&schema, self.windows.values())?;
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &schema)?;
            w.write(&all)?;
            w.finish()?;
        }
        Ok(WindowBlob {
            fingerprint: fingerprint.to_string(),
            ipc: base64::engine::general_purpose::STANDARD.encode(buf),
        })
    }

    /// Read back what [`QueryState::to_blob`] wrote (the schema must be the query's state
    /// schema).
    pub fn from_blob(q: &WindowQuery, blob: &WindowBlob) -> Result<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&blob.ipc)
            .map_err(|e| DataFusionError::Execution(format!("window state is not base64: {e}")))?;
        let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
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
        .map(|(s, v)| Ok((s, concat_batches(&q.state_schema(), &v)?)))
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
