//! What the pipeline stores with each committed offset, and restores after a restart.
//!
//! Kafka keeps a small metadata string with each committed offset. carflow puts there, per
//! partition, the newest event time seen (per event-time column) and, per window store, the
//! boundary below which windows were closed. After a restart the watermark and the closed
//! windows are restored from it, so a replay neither reopens a finished window nor treats an
//! open one as late.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::transform::window::WindowSpec;

/// Metadata committed with a partition's offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMeta {
    /// Format version.
    pub v: u32,
    /// Newest event time of the partition, per event-time column.
    #[serde(default)]
    pub events: BTreeMap<String, i64>,
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
        m.events.insert("sold_at".into(), 1_767_225_600_000);
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
