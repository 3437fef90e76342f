//! A batch's lake commit going on while the next batch is processed.
//!
//! On HDFS a commit waits on the store (about half a second, most of it the client's pause
//! before a new file's close is confirmed), not on CPU. When this engine is alone on the topic
//! and behind it (a batch read ahead, or two batches or more left to read), the commit of batch
//! *i* goes on in the background ([`super::lake_step`]) and batch *i + 1* is decoded, transformed, folded into the windows and
//! encoded meanwhile. What keeps this exact:
//!
//! - Batch *i*'s state (next offset, event-time progress, open windows) becomes the owned state
//!   when its commit starts, and windows close in memory after it as before; batch *i + 1* builds
//!   on it. Nothing of it is visible outside until the commit lands.
//! - Commits stay in order: batch *i + 1*'s commit is published only after *i*'s landed (its
//!   ledger entry is the next one) and after the window points of *i - 1* landed. Its files and
//!   entry may be staged before, while *i* lands (`lake.prestage`): against the ledger *i* leaves
//!   when it lands as expected, published only if it did, else discarded and staged again
//!   ([`super::lake_step`]); a staged commit is invisible until published. It does not wait for
//!   *i*'s points: the windows the close after batch *i* dropped are still in its entry, with the
//!   boundary before that close ([`super::partitions::Held`]), so a crash before *i*'s points
//!   land leaves them open in the ledger and the restart writes their points again.
//! - Window points of batch *i* are merged from the state the commit carries and written only
//!   after it lands; source positions are recorded only after both.
//! - A partition whose commit was fenced (another writer moved its ledger on) is reloaded; its
//!   messages of batch *i* are processed again together with the batch in progress, whose work
//!   is redone from the reloaded state, and the windows batch *i* touched are written again from
//!   the state now held.
//! - Anything that changes ownership or the queries' state, the end of a run, a stalled batch or
//!   catching up with the source lands the commit first (a stream the engine keeps up with never
//!   waits a batch for its points).

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::Done;
use super::lake_step::{CommitResult, LedgersAfter};
use super::{Pipeline, PipelineError, Stop, WindowSet};
use crate::sink::lake::LakeError;
use crate::source::{Message, Source, TopicPartition};

/// A batch whose commit is going on.
pub(super) struct InFlight {
    /// The commit.
    pub task: JoinHandle<Vec<CommitResult>>,
    /// The ledgers it leaves when it lands as expected (the next commit is staged against them).
    pub after: LedgersAfter,
    /// The batch's messages (those of a fenced partition are processed again).
    pub messages: Arc<Vec<Message>>,
    /// The merged points of the windows the batch touched, written once the commit lands.
    pub body: String,
    /// Points of the batch (per-row ones, written already, and `body`'s).
    pub points: u64,
    /// The windows the batch touched.
    pub touched: WindowSet,
    /// The batch's counts per partition (recorded for the partitions whose commit landed).
    pub tallies: Vec<(TopicPartition, Done)>,
    /// Bytes of the batch's messages.
    pub bytes: u64,
    /// When the batch began.
    pub started: Instant,
}

impl<S: Source> Pipeline<S> {
    /// Wait for the commit in flight, if any (reading ahead meanwhile), and record it: ledgers,
    /// window points (started; they land before the next commit), counts. Returns true when
    /// some partition's commit was fenced: those partitions are reloaded and their messages wait
    /// in `self.redo`.
    pub(super) async fn land(&mut self, shutdown: &CancellationToken) -> Result<bool, Stop> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(false);
        };
        let mut at = std::time::Instant::now();
        let InFlight {
            task,
            after: _,
            messages,
            body,
            points,
            touched,
            tallies,
            bytes,
            started,
        } = flight;
        let results = match reading_ahead!(self, task).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => {
                return Err(Stop::Failed(PipelineError::Lake(LakeError::Encode {
                    dataset: "(commit)".into(),
                    message: format!("the lake commit task ended without an answer: {e}"),
                })));
            }
        };
        self.metrics.step("lake_commit", &mut at);
        let fenced = self.record_commits(results)?;
        let mut done = Done::default();
        done.add_batch(bytes, if fenced.is_empty() { points } else { 0 }, started);
        for (tp, d) in tallies {
            if !fenced.contains(&tp) {
                done.absorb(d);
            }
        }
        if fenced.is_empty() {
            // The points of the batch before land first: the next commit records the windows
            // closed after that batch (it holds those closed after this one; see `Held`).
            self.settle_points().await?;
            self.write_influx_later(body, false, shutdown);
        }
        if self.pending_points.is_some() {
            self.unfinished.push(done);
        } else {
            self.record(done).await;
        }
        if fenced.is_empty() {
            return Ok(false);
        }
        for tp in &fenced {
            tracing::warn!(partition = %tp, "the partition's ledger moved on under this engine (another writer) while its commit went on; reloading it and processing its messages again");
            self.reload_fenced(tp, shutdown).await?;
            self.redo.extend(
                messages
                    .iter()
                    .filter(|m| m.partition == tp.partition && *m.topic == *tp.topic)
                    .cloned(),
            );
        }
        // The merged points of the batch held the fenced partitions' uncommitted state: write
        // its windows again from what is held now.
        self.write_windows(touched, shutdown).await?;
        Ok(true)
    }

    /// Land the commit in flight and process what a fence left to redo, until neither is left
    /// (nothing is redone once `shutdown` fired).
    pub(super) async fn drain(&mut self, shutdown: &CancellationToken) -> Result<(), Stop> {
        loop {
            self.land(shutdown).await?;
            if self.redo.is_empty() || shutdown.is_cancelled() {
                return Ok(());
            }
            let none = Arc::new(Vec::new());
            self.process(&none, &mut None, shutdown).await?;
        }
    }
}
