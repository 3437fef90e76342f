//! [`GeneratorSource`]: the built-in transaction generator as a source, in process.
//!
//! It is one pseudo-partition (topic `generator`, partition 0) whose offsets count from 0, so
//! the lake's ledger and the window bookkeeping work exactly as with Kafka. It can be paced to a
//! rate (transactions per second of wall time) and bounded by a count.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Message, PartitionCommit, Source, SourceError, SourceEvent, TopicPartition, TopicView,
};
use crate::generator::Generator;

/// The pseudo-topic of generated messages.
pub const TOPIC: &str = "generator";

/// Generated transactions as a source.
#[derive(Debug)]
pub struct GeneratorSource {
    generator: Generator,
    topic: Arc<str>,
    rate: f64,
    count: u64,
    emitted: u64,
    started: Option<Instant>,
    announced: bool,
}

impl GeneratorSource {
    /// Emit `count` transactions (0: no limit) at `rate` per second (0: as fast as possible).
    pub fn new(generator: Generator, rate: f64, count: u64) -> Self {
        Self {
            generator,
            topic: Arc::from(TOPIC),
            rate,
            count,
            emitted: 0,
            started: None,
            announced: false,
        }
    }

    /// How many transactions were emitted.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }
}

impl Source for GeneratorSource {
    async fn next_message(&mut self) -> Result<Option<Message>, SourceError> {
        if self.count > 0 && self.emitted >= self.count {
            return Ok(None);
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        if self.rate > 0.0 {
            let due = started + Duration::from_secs_f64(self.emitted as f64 / self.rate);
            if due > Instant::now() + Duration::from_millis(2) {
                tokio::time::sleep_until(due).await;
            }
        }
        let mut payload = Vec::with_capacity(512);
        self.generator.write_json(&mut payload);
        let offset = self.emitted as i64;
        self.emitted += 1;
        Ok(Some(Message {
            topic: Arc::clone(&self.topic),
            partition: 0,
            offset,
            timestamp_ms: Some(chrono::Utc::now().timestamp_millis()),
            payload: Some(payload.into()),
        }))
    }

    async fn commit(&mut self, _commits: &[PartitionCommit]) -> Result<(), SourceError> {
        Ok(())
    }

    async fn topic_view(&mut self, _max_age: Duration) -> Result<TopicView, SourceError> {
        let mut view = TopicView::default();
        view.ends.insert(
            TopicPartition::new(Arc::clone(&self.topic), 0),
            self.emitted as i64,
        );
        Ok(view)
    }

    fn take_events(&mut self) -> Vec<SourceEvent> {
        if std::mem::replace(&mut self.announced, true) {
            Vec::new()
        } else {
            vec![SourceEvent::Assigned(vec![TopicPartition::new(
                Arc::clone(&self.topic),
                0,
            )])]
        }
    }
}
