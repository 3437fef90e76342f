//! Running a transform so that rows it cannot process do not take good rows with them.
//!
//! [`run_isolating`] runs a transform over a batch; when that fails, over its halves, down to
//! single rows. Parts that succeed give their output; a row that fails on its own is a *poison*
//! row, returned with the transform's error (the pipeline turns it into a dead letter naming the
//! transform). When every row of a batch fails on its own the transform itself may be broken
//! rather than the data: [`Canary`] runs it on a few generated transactions that any sensible
//! transform handles; if it fails on each of them too, the transform is broken and the pipeline
//! stops consuming (and says so) instead of dead-lettering good data.

use std::future::Future;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use datafusion::error::DataFusionError;

use crate::batcher::decode_batch;
use crate::generator::{Generator, GeneratorConfig};
use crate::source::Message;

/// The outcome of [`run_isolating`].
#[derive(Debug, Default)]
pub struct Isolated {
    /// Output of every part that succeeded, in input order.
    pub outputs: Vec<RecordBatch>,
    /// Rows (index into the input) that failed on their own, with the error.
    pub poison: Vec<(usize, String)>,
}

impl Isolated {
    /// Every input row failed on its own.
    pub fn all_failed(&self, rows: usize) -> bool {
        rows > 0 && self.poison.len() == rows
    }
}

/// Run `run` over `rows`; on failure over halves, down to single rows.
pub async fn run_isolating<F, Fut>(rows: &RecordBatch, mut run: F) -> Isolated
where
    F: FnMut(RecordBatch) -> Fut,
    Fut: Future<Output = Result<Vec<RecordBatch>, DataFusionError>>,
{
    let mut out = Isolated::default();
    if rows.num_rows() == 0 {
        return out;
    }
    // Ranges still to run, in input order (last = next).
    let mut todo = vec![(0usize, rows.num_rows())];
    while let Some((start, len)) = todo.pop() {
        match run(rows.slice(start, len)).await {
            Ok(batches) => out.outputs.extend(batches),
            Err(e) if len == 1 => out.poison.push((start, e.find_root().to_string())),
            Err(_) => {
                let half = len / 2;
                todo.push((start + half, len - half));
                todo.push((start, half));
            }
        }
    }
    out
}

/// A few generated transactions, decoded like real ones: a transform that fails on each of them
/// is broken, whatever the data.
#[derive(Debug, Clone)]
pub struct Canary {
    rows: RecordBatch,
}

/// How many sample rows the canary holds.
const CANARY_ROWS: usize = 8;

impl Canary {
    /// The canary rows (seed 1, the generator's default start).
    pub fn new() -> Result<Self, ArrowError> {
        let mut g = Generator::new(GeneratorConfig {
            seed: 1,
            ..GeneratorConfig::default()
        });
        let topic: Arc<str> = Arc::from("canary");
        let messages: Vec<Message> = (0..CANARY_ROWS as i64)
            .map(|offset| Message {
                topic: Arc::clone(&topic),
                partition: 0,
                offset,
                timestamp_ms: None,
                payload: Some(g.next_transaction().to_json().into_bytes().into()),
            })
            .collect();
        let decoded = decode_batch(&messages, 1 << 20)?;
        Ok(Self { rows: decoded.rows })
    }

    /// The sample rows.
    pub fn rows(&self) -> &RecordBatch {
        &self.rows
    }

    /// `Some(error)` when `run` fails on every sample row on its own: the transform is broken.
    pub async fn broken<F, Fut>(&self, mut run: F) -> Option<String>
    where
        F: FnMut(RecordBatch) -> Fut,
        Fut: Future<Output = Result<Vec<RecordBatch>, DataFusionError>>,
    {
        let mut last = None;
        for i in 0..self.rows.num_rows() {
            match run(self.rows.slice(i, 1)).await {
                Ok(_) => return None,
                Err(e) => last = Some(e.find_root().to_string()),
            }
        }
        last
    }
}
