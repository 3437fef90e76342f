//! [`MemorySource`]: a fixed list of messages as a source, for tests and benchmarks.
//!
//! Commits are recorded so a test can check what the pipeline made durable and when. A test can
//! ask for rebalances after given numbers of delivered messages: every partition is revoked and
//! assigned again, and delivery resumes from a committed position, as Kafka does — the one before
//! the last, as when the last asynchronous commit had not landed yet.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use super::{
    Message, PartitionCommit, Source, SourceError, SourceEvent, TopicPartition, TopicView,
};

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
    announced: bool,
    stale_after: Option<usize>,
    skip_after_rebalance: usize,
    /// Where each partition's delivery started (its committed position when assigned).
    starts: HashMap<TopicPartition, i64>,
    /// Every rewind asked for, in order.
    pub rewinds: Vec<(TopicPartition, i64)>,
}

impl MemorySource {
    /// Serve `messages` in order, every partition assigned at the start.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            queue: messages.clone().into(),
            all: messages,
            ..Self::default()
        }
    }

    /// Revoke and re-assign every partition after these counts of delivered messages.
    pub fn with_rebalances(mut self, after: Vec<usize>) -> Self {
        self.rebalance_at = after;
        self
    }

    /// Answer views allowed to be cached (`max_age` > 0) with the ends of only the first `n`
    /// messages, as a view read before the rest were produced; a view asked for fresh
    /// (`max_age` 0) has the true ends.
    pub fn with_stale_views_after(mut self, n: usize) -> Self {
        self.stale_after = Some(n);
        self
    }

    /// After each rebalance, leave the first `n` messages of each partition's re-delivery out
    /// (they are still delivered after a [`Source::rewind`] to them).
    pub fn with_skips_after_rebalance(mut self, n: usize) -> Self {
        self.skip_after_rebalance = n;
        self
    }

    fn partitions(&self) -> Vec<TopicPartition> {
        let mut tps: Vec<TopicPartition> = self
            .all
            .iter()
            .map(Message::topic_partition)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        tps.sort();
        tps
    }

    fn rebalance(&mut self) {
        let landed = self.commits.len().saturating_sub(1);
        let mut committed: HashMap<TopicPartition, i64> = HashMap::new();
        for c in self.commits[..landed].iter().flatten() {
            committed.insert(c.tp.clone(), c.next_offset);
        }
        let tps = self.partitions();
        self.starts = committed.clone();
        self.events.push(SourceEvent::Revoked(tps.clone()));
        self.events.push(SourceEvent::Assigned(tps));
        let mut skip: HashMap<TopicPartition, usize> = HashMap::new();
        self.queue = self
            .all
            .iter()
            .filter(|m| {
                let tp = m.topic_partition();
                if m.offset < committed.get(&tp).copied().unwrap_or(0) {
                    return false;
                }
                let skipped = skip.entry(tp).or_default();
                *skipped += 1;
                *skipped > self.skip_after_rebalance
            })
            .cloned()
            .collect();
    }

    /// A source over `messages` that starts where `commits` (of an earlier run) left off.
    pub fn resume(messages: Vec<Message>, commits: &[Vec<PartitionCommit>]) -> Self {
        let mut start: HashMap<TopicPartition, i64> = HashMap::new();
        for c in commits.iter().flatten() {
            start.insert(c.tp.clone(), c.next_offset);
        }
        let queue = messages
            .iter()
            .filter(|m| m.offset >= start.get(&m.topic_partition()).copied().unwrap_or(0))
            .cloned()
            .collect();
        Self {
            queue,
            all: messages,
            starts: start,
            ..Self::default()
        }
    }

    /// The last committed position of every partition.
    pub fn committed_positions(&self) -> HashMap<TopicPartition, i64> {
        let mut out = HashMap::new();
        for c in self.commits.iter().flatten() {
            out.insert(c.tp.clone(), c.next_offset);
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
        self.commits.push(commits.to_vec());
        Ok(())
    }

    fn take_events(&mut self) -> Vec<SourceEvent> {
        if !self.announced {
            self.announced = true;
            self.events
                .insert(0, SourceEvent::Assigned(self.partitions()));
        }
        std::mem::take(&mut self.events)
    }

    async fn start_of(&mut self, tp: &TopicPartition) -> Result<Option<i64>, SourceError> {
        // The committed position, else the partition's first message.
        Ok(self.starts.get(tp).copied().or_else(|| {
            self.all
                .iter()
                .filter(|m| m.topic_partition() == *tp)
                .map(|m| m.offset)
                .min()
        }))
    }

    async fn rewind(&mut self, tp: &TopicPartition, offset: i64) -> Result<bool, SourceError> {
        self.rewinds.push((tp.clone(), offset));
        // Each partition's queued messages are the tail of its messages: keep the others'
        // tails, and `tp`'s messages from `offset` on, in the order of `all`.
        let mut from: HashMap<TopicPartition, i64> = HashMap::new();
        for m in &self.queue {
            from.entry(m.topic_partition()).or_insert(m.offset);
        }
        from.insert(tp.clone(), offset);
        self.queue = self
            .all
            .iter()
            .filter(|m| {
                from.get(&m.topic_partition())
                    .is_some_and(|start| m.offset >= *start)
            })
            .cloned()
            .collect();
        Ok(true)
    }

    async fn topic_view(&mut self, max_age: Duration) -> Result<TopicView, SourceError> {
        let mut ends: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let known = match self.stale_after {
            Some(n) if !max_age.is_zero() => &self.all[..n.min(self.all.len())],
            _ => &self.all[..],
        };
        for tp in self.partitions() {
            ends.insert(tp, 0);
        }
        for m in known {
            let e = ends.entry(m.topic_partition()).or_insert(0);
            *e = (*e).max(m.offset + 1);
        }
        Ok(TopicView {
            ends,
            ids: BTreeMap::new(),
        })
    }
}
