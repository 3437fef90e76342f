//! [`MemorySource`]: a fixed list of messages as a source, for tests and benchmarks.
//!
//! Commits are recorded so a test can check what the pipeline made durable and when.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::{Message, PartitionCommit, Source, SourceError, SourceEvent};

/// Messages served from memory, in order.
#[derive(Debug, Default)]
pub struct MemorySource {
    queue: VecDeque<Message>,
    all: Vec<Message>,
    delivered: usize,
    rebalance_at: Vec<usize>,
    events: Vec<SourceEvent>,
    /// Every commit call, in order.
    pub commits: Vec<Vec<PartitionCommit>>,
    metadata: HashMap<(String, i32), (i64, String)>,
    announced: HashSet<(Arc<str>, i32)>,
}

impl MemorySource {
    /// A source that yields `messages` and then ends.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            queue: messages.clone().into(),
            all: messages,
            ..Self::default()
        }
    }

    /// After delivering each of these message counts, act like a consumer-group rebalance that
    /// gives every partition back: revoke and assign all of them (reported inside the next
    /// receive, as librdkafka does) and re-deliver each partition from its committed offset.
    pub fn with_rebalances(mut self, after: Vec<usize>) -> Self {
        self.rebalance_at = after;
        self
    }

    fn rebalance(&mut self) {
        let committed = self.committed_positions();
        let tps: Vec<(Arc<str>, i32)> = self
            .all
            .iter()
            .map(|m| (Arc::clone(&m.topic), m.partition))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        self.events.push(SourceEvent::Revoked(tps.clone()));
        self.events.push(SourceEvent::Assigned(tps));
        let from = |m: &Message| {
            committed
                .get(&(m.topic.to_string(), m.partition))
                .copied()
                .unwrap_or(0)
        };
        self.queue = self
            .all
            .iter()
            .filter(|m| m.offset >= from(m))
            .cloned()
            .collect();
    }

    /// Like a consumer restarting from committed positions: each partition starts at its last
    /// committed offset, and that commit's metadata is what [`Source::committed`] gives.
    pub fn resume(messages: Vec<Message>, commits: &[Vec<PartitionCommit>]) -> Self {
        let mut metadata = HashMap::new();
        let mut start: HashMap<(String, i32), i64> = HashMap::new();
        for c in commits.iter().flatten() {
            start.insert((c.topic.to_string(), c.partition), c.next_offset);
            metadata.insert(
                (c.topic.to_string(), c.partition),
                (c.next_offset, c.metadata.clone()),
            );
        }
        let queue = messages
            .iter()
            .filter(|m| {
                m.offset
                    >= start
                        .get(&(m.topic.to_string(), m.partition))
                        .copied()
                        .unwrap_or(0)
            })
            .cloned()
            .collect();
        Self {
            queue,
            all: messages,
            metadata,
            ..Self::default()
        }
    }

    /// The last committed position of each partition.
    pub fn committed_positions(&self) -> HashMap<(String, i32), i64> {
        let mut out = HashMap::new();
        for c in self.commits.iter().flatten() {
            out.insert((c.topic.to_string(), c.partition), c.next_offset);
        }
        out
    }
}

impl Source for MemorySource {
    async fn next_message(&mut self) -> Result<Option<Message>, SourceError> {
        if self.rebalance_at.first() == Some(&self.delivered) {
            self.rebalance_at.remove(0);
            self.rebalance();
        }
        let m = self.queue.pop_front();
        self.delivered += usize::from(m.is_some());
        Ok(m)
    }

    fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    async fn commit(&mut self, commits: &[PartitionCommit]) -> Result<(), SourceError> {
        for c in commits {
            self.metadata.insert(
                (c.topic.to_string(), c.partition),
                (c.next_offset, c.metadata.clone()),
            );
        }
        self.commits.push(commits.to_vec());
        Ok(())
    }

    async fn committed(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<(i64, String)>, SourceError> {
        Ok(self.metadata.get(&(topic.to_string(), partition)).cloned())
    }

    fn take_events(&mut self) -> Vec<SourceEvent> {
        if !self.events.is_empty() {
            return std::mem::take(&mut self.events);
        }
        let new: Vec<_> = self
            .queue
            .iter()
            .map(|m| (Arc::clone(&m.topic), m.partition))
            .filter(|tp| !self.announced.contains(tp))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if new.is_empty() {
            return Vec::new();
        }
        self.announced.extend(new.iter().cloned());
        vec![SourceEvent::Assigned(new)]
    }
}
