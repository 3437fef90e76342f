//! carflow's HTTP service: a live stream of generated car-sale transactions and the intake that
//! puts posted transactions into Kafka.
//!
//! ```text
//! GET  /api/stream_car_transactions   NDJSON or SSE, paced, reproducible with ?seed=  (stream)
//! POST /api/logs                      JSON or NDJSON → validated → Kafka, acks awaited  (intake)
//! GET  /health  /metrics  /openapi.json
//! ```
//!
//! What it guarantees:
//! - **Same rules as the engine.** Posted records are checked by the engine's own decoder
//!   ([`carflow_engine::batcher::decode_batch`]) with the engine's `batch.max_message_bytes`; a
//!   rejected line carries the reason the engine would have given its dead letter.
//! - **Acknowledged means in Kafka.** A record is reported accepted only after Kafka acknowledged
//!   it (`acks=all`, idempotent producer, keyed by `dealer_id`); records Kafka did not take are
//!   listed by line and the answer is 503.
//! - **Bounded.** Request bodies (`api.max_body_bytes`), body bytes being read or processed over
//!   all requests (`api.max_in_flight_body_bytes`, beyond which the answer is 503 with
//!   `Retry-After`), records in flight to Kafka (`api.max_in_flight`, 503 with `Retry-After`),
//!   open streams (`api.max_streams`, 429 with `Retry-After`), and the buffer between the stream
//!   generator and a slow client. See [`limits`].
//! - **Authenticated writes.** With `api.token` set, everything that writes to Kafka needs
//!   `Authorization: Bearer <token>`; the token is compared in constant time and never logged.
//!
//! [`serve`] runs it on a listener until a cancellation token fires, then waits for open requests,
//! ends streams and flushes the producer. Tests start it on `127.0.0.1:0`.

#![warn(missing_docs)]

pub mod auth;
pub mod error;
pub mod intake;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod routes;
pub mod settings;
pub mod state;
pub mod stream;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::{HttpError, ServeError};
pub use settings::ApiSettings;

use crate::auth::BearerAuth;
use crate::kafka::KafkaWriter;
use crate::limits::{BodyBudget, StreamSlots};
use crate::metrics::ApiMetrics;
use crate::state::Service;

/// Serve the API on `listener` until `shutdown` fires.
///
/// Refuses to start when the settings cannot work (e.g. a non-loopback listener without a token)
/// or the producer cannot be created; a broker that is down is not a start-up error (`/health`
/// says 503 and the intake answers 503 until it is back). On shutdown: stops accepting, ends the
/// open streams, lets the requests in progress finish (each waits at most the delivery timeout
/// for Kafka), then flushes the producer.
pub async fn serve(
    settings: ApiSettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    settings.validate(addr).map_err(ServeError::Settings)?;
    let metrics = Arc::new(ApiMetrics::new());
    let writer = KafkaWriter::new(&settings, Arc::clone(&metrics)).map_err(|source| {
        ServeError::Producer {
            brokers: settings.brokers.clone(),
            source,
        }
    })?;
    let svc = Arc::new(Service {
        auth: BearerAuth::new(settings.token.clone()),
        streams: StreamSlots::new(settings.max_streams),
        body_budget: BodyBudget::new(settings.max_in_flight_body_bytes),
        settings,
        writer,
        metrics,
        shutdown: shutdown.clone(),
        health: Default::default(),
    });
    tracing::info!(
        %addr,
        brokers = %svc.settings.brokers,
        topic = %svc.settings.topic,
        auth = svc.auth.enabled(),
        max_in_flight = svc.settings.max_in_flight,
        max_streams = svc.settings.max_streams,
        max_in_flight_body_bytes = svc.settings.max_in_flight_body_bytes,
        "carflow api listening"
    );
    warp::serve(routes::routes(Arc::clone(&svc)))
        .incoming(listener)
        .graceful(shutdown.cancelled_owned())
        .run()
        .await;
    let timeout = svc.settings.delivery_timeout + Duration::from_secs(1);
    let flushed = tokio::task::spawn_blocking(move || svc.writer.flush(timeout)).await;
    match flushed {
        Ok(Ok(())) => tracing::info!("carflow api stopped; producer flushed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "carflow api stopped; producer flush failed"),
        Err(e) => tracing::warn!(error = %e, "carflow api stopped; producer flush task failed"),
    }
    Ok(())
}
