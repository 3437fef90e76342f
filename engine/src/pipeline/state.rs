//! What the pipeline stores with each committed offset, and restores after a restart.
//!
//! Kafka keeps a small metadata string with each committed offset. carflow puts there, per window
//! store, the boundary below which windows were closed. After a restart it is restored, so a
//! replay does not reopen a finished window (its rows were applied and its point written before).
//! The event-time high-water of each partition is deliberately *not* restored: a partition
//! replays from its committed offset, and until its replay catches up its event time is where
//! the replay is, not where it was before the crash. Restoring the old high-water would let it
//! stop holding back the watermark, and windows it is still refilling would close early.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::transform::window::WindowSpec;

/// Metadata committed with a partition's offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMeta {
    /// Format version.
    pub v: u32,
    /// Windows ending at or before this were closed, per window store key.
    #[serde(default)]
    pub closed: BTreeMap<String, i64>,
}

impl CommitMeta {
    /// Parse metadata; anything unreadable (e.g. written by another tool) is treated as absent.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }

    /// As the committed string.
    pub fn render(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The key of a window store in [`CommitMeta::closed`].
pub fn store_key(spec: &WindowSpec) -> String {
    format!("{}:{}:{}", spec.column, spec.width_ms, spec.origin_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_tolerates_foreign_strings() {
        let mut m = CommitMeta {
            v: 1,
            ..Default::default()
        };
        m.closed.insert(
            store_key(&WindowSpec {
                column: "sold_at".into(),
                width_ms: 60_000,
                origin_ms: 0,
            }),
            5,
        );
        assert_eq!(CommitMeta::parse(&m.render()), Some(m));
        assert_eq!(CommitMeta::parse(""), None);
        assert_eq!(CommitMeta::parse("written by kcat"), None);
    }
}
