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
//! - A row is **late** when its window ended at or before the newest event its own partition had
//!   shown before it (rows are judged in offset order) less the lateness, or at or before the closed
//!   boundary of any partition ([`late_rows`]). Judged row by row in offset order, lateness is a
//!   function of the partition's own sequence: a backfill or a reconcile over the lake finds the
//!   same late rows as the stream did.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::WindowSpec;
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
}

/// Which of one partition's rows (event times in offset order; `None` for a null time) are late
/// for windows of `spec`: a row whose window ends at or before the newest event time seen before
/// it (`seen`: committed before these rows, then each earlier row) less `lateness_ms`, or at or
/// before `closed`.
pub fn late_rows(
    times: impl IntoIterator<Item = Option<i64>>,
    spec: &WindowSpec,
    lateness_ms: i64,
    mut seen: Option<i64>,
    closed: Option<i64>,
) -> Vec<bool> {
    times
        .into_iter()
        .map(|t| {
            let Some(t) = t else { return false };
            let end = spec.end_of(spec.start_of(t));
            let late = seen.is_some_and(|m| end <= m.saturating_sub(lateness_ms))
                || closed.is_some_and(|c| end <= c);
            seen = Some(seen.map_or(t, |m| m.max(t)));
            late
        })
        .collect()
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
    fn rows_are_judged_in_offset_order_against_everything_seen_before_them() {
        let spec = WindowSpec {
            column: "sold_at".into(),
            width_ms: 60_000,
            origin_ms: 0,
        };
        let m = 60_000;
        // lateness 2 min: after an event at minute 10, a row of minute 7 (ends at 8) is late, one
        // of minute 8 (ends at 9 > 8) is not; the earlier rows of the batch count.
        let times = [
            Some(10 * m),
            Some(7 * m + 5),
            Some(8 * m),
            None,
            Some(5 * m),
        ];
        assert_eq!(
            late_rows(times, &spec, 2 * m, None, None),
            vec![false, true, false, false, true]
        );
        // What was committed before the batch counts too, and so does a closed boundary.
        assert_eq!(
            late_rows([Some(7 * m)], &spec, 2 * m, Some(10 * m), None),
            vec![true]
        );
        assert_eq!(
            late_rows([Some(20 * m)], &spec, 2 * m, None, Some(21 * m)),
            vec![true]
        );
    }
}
