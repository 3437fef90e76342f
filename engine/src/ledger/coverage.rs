//! Which offsets of a partition each lake dataset holds, recorded in every ledger entry.
//!
//! A lake query writes its dataset from the batch it was loaded in onwards; a query removed stops
//! it, one added again starts it afresh. So a dataset holds, per Kafka partition, a few runs of
//! offsets. Each ledger entry carries them ([`Coverage`]), advanced by each commit from the
//! previous entry's, so pruning old entries loses nothing. `carflow backfill` of a `lake.*` query
//! writes exactly the offsets outside these runs (and outside earlier backfills), so a dataset
//! never holds an offset twice, whatever runs while it is backfilled.
//!
//! Entries written by a carflow that did not record coverage leave the offsets below the first
//! recording unknown ([`Coverage::known_from`]); a backfill leaves them alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A run of offsets `[from, to)` a dataset holds; `to` is `None` while its query runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// First offset.
    pub from: i64,
    /// End (exclusive); `None`: still being written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<i64>,
}

impl Span {
    /// The span's end, reading a running span as ending at `now`.
    pub fn end_or(&self, now: i64) -> i64 {
        self.to.unwrap_or(now).max(self.from)
    }
}

/// The runs of offsets of one partition each lake dataset holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Offsets below this predate the recording of coverage (written by an older carflow):
    /// which datasets hold them is unknown.
    #[serde(default)]
    pub known_from: i64,
    /// Per dataset, its runs in ascending order.
    #[serde(default)]
    pub datasets: BTreeMap<String, Vec<Span>>,
}

impl Coverage {
    /// The coverage after a commit of offsets from `start` on with the lake queries of
    /// `active` running. `previous` is the partition's latest entry's coverage; `had_entries`
    /// says whether the partition had any entry (without coverage: an older carflow wrote it).
    pub fn advance(
        previous: Option<&Coverage>,
        had_entries: bool,
        start: i64,
        active: &[String],
    ) -> Coverage {
        let mut next = match previous {
            Some(c) => c.clone(),
            None => Coverage {
                known_from: if had_entries { start } else { 0 },
                datasets: BTreeMap::new(),
            },
        };
        for (name, spans) in next.datasets.iter_mut() {
            if !active.contains(name)
                && let Some(last) = spans.last_mut()
                && last.to.is_none()
            {
                last.to = Some(start.max(last.from));
            }
        }
        for name in active {
            let spans = next.datasets.entry(name.clone()).or_default();
            if spans.last().is_none_or(|s| s.to.is_some()) {
                spans.push(Span {
                    from: start,
                    to: None,
                });
            }
        }
        next
    }

    /// The runs of `dataset` as closed intervals, a running one ending at `now`.
    pub fn runs(&self, dataset: &str, now: i64) -> Vec<(i64, i64)> {
        self.datasets
            .get(dataset)
            .map(|s| s.iter().map(|s| (s.from, s.end_or(now))).collect())
            .unwrap_or_default()
    }
}

/// `within` less every interval of `minus` (all `[from, to)`), in ascending order.
pub fn subtract(within: &[(i64, i64)], minus: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut cut: Vec<(i64, i64)> = minus.iter().copied().filter(|(a, b)| a < b).collect();
    cut.sort_unstable();
    let mut out = Vec::new();
    for &(mut a, b) in within {
        for &(c, d) in &cut {
            if d <= a || c >= b {
                continue;
            }
            if c > a {
                out.push((a, c));
            }
            a = a.max(d);
            if a >= b {
                break;
            }
        }
        if a < b {
            out.push((a, b));
        }
    }
    out
}

/// The intersection of two sets of `[from, to)` intervals, in ascending order.
pub fn intersect(a: &[(i64, i64)], b: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for &(x, y) in a {
        for &(u, v) in b {
            let (s, e) = (x.max(u), y.min(v));
            if s < e {
                out.push((s, e));
            }
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_query_added_removed_and_added_again_leaves_two_runs() {
        let c = Coverage::advance(None, false, 0, &names(&["cars"]));
        assert_eq!(c.known_from, 0);
        let c = Coverage::advance(Some(&c), true, 100, &names(&["cars", "x"]));
        let c = Coverage::advance(Some(&c), true, 250, &names(&["cars"]));
        let c = Coverage::advance(Some(&c), true, 300, &names(&["cars"]));
        let c = Coverage::advance(Some(&c), true, 400, &names(&["cars", "x"]));
        assert_eq!(c.runs("x", 500), vec![(100, 250), (400, 500)]);
        assert_eq!(c.runs("cars", 500), vec![(0, 500)]);
        assert_eq!(c.runs("y", 500), vec![]);
    }

    #[test]
    fn entries_of_an_older_carflow_leave_what_is_below_unknown() {
        let c = Coverage::advance(None, true, 700, &names(&["cars"]));
        assert_eq!(c.known_from, 700);
        assert_eq!(c.runs("cars", 800), vec![(700, 800)]);
    }

    #[test]
    fn subtract_and_intersect_intervals() {
        assert_eq!(
            subtract(&[(0, 100)], &[(10, 20), (50, 60), (90, 200)]),
            vec![(0, 10), (20, 50), (60, 90)]
        );
        assert_eq!(subtract(&[(0, 100)], &[(0, 100)]), vec![]);
        assert_eq!(
            subtract(&[(0, 10), (20, 30)], &[(5, 25)]),
            vec![(0, 5), (25, 30)]
        );
        assert_eq!(
            intersect(&[(0, 10), (20, 30)], &[(5, 25)]),
            vec![(5, 10), (20, 25)]
        );
    }

    #[test]
    fn entries_without_coverage_still_parse() {
        let c: Coverage = serde_json::from_str("{}").unwrap();
        assert_eq!(c, Coverage::default());
    }
}
