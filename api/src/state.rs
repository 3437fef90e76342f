//! What every request handler shares.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::BearerAuth;
use crate::kafka::KafkaWriter;
use crate::limits::{BodyBudget, StreamSlots};
use crate::metrics::ApiMetrics;
use crate::settings::ApiSettings;

/// The running service: settings, authentication, the Kafka writer, metrics and the shutdown
/// signal (streams end when it fires, so a graceful shutdown is not held open by them).
#[derive(Debug)]
pub struct Service {
    /// The settings it runs with.
    pub settings: ApiSettings,
    /// Bearer-token check.
    pub auth: BearerAuth,
    /// Producer and in-flight limiter.
    pub writer: KafkaWriter,
    /// Metrics.
    pub metrics: Arc<ApiMetrics>,
    /// Fires on shutdown.
    pub shutdown: CancellationToken,
    /// Open-stream slots (`api.max_streams`).
    pub streams: StreamSlots,
    /// Body bytes being read or processed (`api.max_in_flight_body_bytes`).
    pub body_budget: BodyBudget,
    /// The last Kafka check of `/health` and when it ran: one check at a time, reused for a
    /// second, so a flood of `/health` requests does not become a flood of Kafka clients.
    pub health: tokio::sync::Mutex<Option<(std::time::Instant, Result<usize, String>)>>,
}
