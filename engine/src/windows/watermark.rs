//! Event-time progress over every partition of the topic, and the rules derived from it.
//!
//! - The **watermark** of an event-time column is the smallest, over every partition of the
//!   topic — owned by this engine or not, read already or not — of (newest event time of the
//!   partition − allowed lateness). A partition whose progress is unknown (nothing committed yet)
//!   while it has messages holds the watermark back entirely. A partition is left out only when it
//!   is **idle**: everything up to its end has been processed (by whoever owns it) and has stayed
//!   so for `idle_timeout`; being unassigned or unread never makes a partition idle. When every
//!   partition is idle, the watermark is the newest event anywhere less the lateness.
//! - Windows ending at or before the watermark are **closed**: their state is dropped.
//! - A row is **late** when its window ended at or before its own partition's newest event (before
//!   the batch) less the lateness, or at or before the closed boundary of any partition.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::source::TopicPartition;

/// What is known of one partition's progress (from memory for owned partitions, from the latest
/// ledger entry for the others).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Every offset below this is processed.
    pub next_offset: i64,
    /// Newest event time seen, per event-time column.
    pub max_event_ms: BTreeMap<String, i64>,
    /// Windows ending at or before this were closed, per column.
    pub closed_before_ms: BTreeMap<String, i64>,
}

/// Watermark bookkeeping over a topic.
#[derive(Debug, Clone)]
pub struct TopicClock {
    lateness_ms: i64,
    idle: Duration,
    caught_up_since: HashMap<TopicPartition, Instant>,
}

impl TopicClock {
    /// A clock with `lateness` and an idle timeout.
    pub fn new(lateness: Duration, idle: Duration) -> Self {
        Self {
            lateness_ms: i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX),
            idle,
            caught_up_since: HashMap::new(),
        }
    }

    /// The allowed lateness in milliseconds.
    pub fn lateness_ms(&self) -> i64 {
        self.lateness_ms
    }

    /// Note which partitions have nothing left to read (`ends`: the end of every partition of
    /// the topic; `progress`: what is known of each). Call once per batch.
    pub fn observe(
        &mut self,
        ends: &BTreeMap<TopicPartition, i64>,
        progress: &dyn Fn(&TopicPartition) -> Option<PartitionProgress>,
        now: Instant,
    ) {
        self.caught_up_since.retain(|tp, _| ends.contains_key(tp));
        for (tp, end) in ends {
            let processed = progress(tp).map_or(0, |p| p.next_offset);
            if processed >= *end {
                self.caught_up_since.entry(tp.clone()).or_insert(now);
            } else {
                self.caught_up_since.remove(tp);
            }
        }
    }

    /// Is `tp` idle at `now` (caught up for at least the idle timeout)?
    pub fn is_idle(&self, tp: &TopicPartition, now: Instant) -> bool {
        self.caught_up_since
            .get(tp)
            .is_some_and(|since| now.saturating_duration_since(*since) >= self.idle)
    }

    /// The watermark of `column` over every partition of `ends` (see the module docs).
    pub fn watermark(
        &self,
        column: &str,
        ends: &BTreeMap<TopicPartition, i64>,
        progress: &dyn Fn(&TopicPartition) -> Option<PartitionProgress>,
        now: Instant,
    ) -> Option<i64> {
        let mut wm: Option<i64> = None;
        let mut newest: Option<i64> = None;
        let mut active = 0;
        for tp in ends.keys() {
            let max = progress(tp).and_then(|p| p.max_event_ms.get(column).copied());
            if let Some(m) = max {
                newest = Some(newest.map_or(m, |n| n.max(m)));
            }
            if self.is_idle(tp, now) {
                continue;
            }
            active += 1;
            let m = max?.saturating_sub(self.lateness_ms);
            wm = Some(wm.map_or(m, |w| w.min(m)));
        }
        if active == 0 {
            return newest.map(|n| n.saturating_sub(self.lateness_ms));
        }
        wm
    }

    /// Rows of a partition whose windows end at or before this are late: its newest event (before
    /// the batch) less the lateness, or the newest closed boundary of any partition.
    pub fn late_before(&self, own_max_event: Option<i64>, closed: Option<i64>) -> Option<i64> {
        let own = own_max_event.map(|m| m.saturating_sub(self.lateness_ms));
        match (own, closed) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    fn progress(next: i64, max: Option<i64>) -> PartitionProgress {
        PartitionProgress {
            next_offset: next,
            max_event_ms: max
                .map(|m| [("sold_at".to_string(), m)].into())
                .unwrap_or_default(),
            closed_before_ms: BTreeMap::new(),
        }
    }

    #[test]
    fn the_watermark_waits_for_every_partition_owned_or_not() {
        let clock = TopicClock::new(Duration::from_secs(60), Duration::from_secs(30));
        let ends: BTreeMap<_, _> = [(tp(0), 100), (tp(1), 100), (tp(2), 100)].into();
        let now = Instant::now();
        // Partition 2 has messages nobody has processed yet: nothing may close.
        let known = |t: &TopicPartition| match t.partition {
            0 => Some(progress(50, Some(1_000_000))),
            1 => Some(progress(40, Some(900_000))),
            _ => None,
        };
        assert_eq!(clock.watermark("sold_at", &ends, &known, now), None);
        let all = |t: &TopicPartition| match t.partition {
            0 => Some(progress(50, Some(1_000_000))),
            1 => Some(progress(40, Some(900_000))),
            _ => Some(progress(10, Some(950_000))),
        };
        assert_eq!(clock.watermark("sold_at", &ends, &all, now), Some(840_000));
    }

    #[test]
    fn only_a_partition_with_nothing_left_to_read_for_the_idle_timeout_is_left_out() {
        let mut clock = TopicClock::new(Duration::from_secs(60), Duration::from_secs(30));
        let ends: BTreeMap<_, _> = [(tp(0), 100), (tp(1), 40)].into();
        let p = |t: &TopicPartition| match t.partition {
            0 => Some(progress(60, Some(1_000_000))),
            _ => Some(progress(40, Some(500_000))),
        };
        let t0 = Instant::now();
        clock.observe(&ends, &p, t0);
        // Caught up, but not for long enough: it still holds the watermark.
        assert_eq!(clock.watermark("sold_at", &ends, &p, t0), Some(440_000));
        let later = t0 + Duration::from_secs(31);
        clock.observe(&ends, &p, later);
        assert_eq!(clock.watermark("sold_at", &ends, &p, later), Some(940_000));
        // New messages in partition 1: it holds the watermark again at once.
        let ends2: BTreeMap<_, _> = [(tp(0), 100), (tp(1), 41)].into();
        clock.observe(&ends2, &p, later);
        assert_eq!(clock.watermark("sold_at", &ends2, &p, later), Some(440_000));
        // Partition 0 is merely unassigned (progress from its ledger), with messages left: it
        // is never idle.
        assert!(!clock.is_idle(&tp(0), later + Duration::from_secs(3600)));
    }

    #[test]
    fn when_everything_is_idle_the_newest_event_less_lateness_is_the_watermark() {
        let mut clock = TopicClock::new(Duration::from_secs(60), Duration::from_secs(0));
        let ends: BTreeMap<_, _> = [(tp(0), 10), (tp(1), 0)].into();
        let p = |t: &TopicPartition| match t.partition {
            0 => Some(progress(10, Some(1_000_000))),
            _ => None,
        };
        let now = Instant::now();
        clock.observe(&ends, &p, now);
        assert_eq!(clock.watermark("sold_at", &ends, &p, now), Some(940_000));
    }

    #[test]
    fn late_rows_are_judged_by_their_own_partition_and_every_closed_window() {
        let clock = TopicClock::new(Duration::from_secs(60), Duration::from_secs(30));
        assert_eq!(clock.late_before(Some(1_000_000), None), Some(940_000));
        assert_eq!(
            clock.late_before(Some(1_000_000), Some(990_000)),
            Some(990_000)
        );
        assert_eq!(clock.late_before(None, Some(5)), Some(5));
        assert_eq!(clock.late_before(None, None), None);
        assert_eq!(
            TopicClock::new(Duration::from_secs(60), Duration::ZERO)
                .late_before(Some(i64::MIN), None),
            Some(i64::MIN)
        );
    }
}
