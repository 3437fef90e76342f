//! What the benchmarks share: the generated transactions they measure.

use std::sync::Arc;

use carflow_engine::generator::{Clock, Generator, GeneratorConfig};
use carflow_engine::source::Message;

/// `n` generated transactions (seed 42, the end-to-end harness's seed) as messages of one
/// partition, offsets from 0.
pub fn messages(n: usize) -> Vec<Message> {
    let mut g = Generator::new(GeneratorConfig {
        seed: 42,
        clock: Clock::Simulated {
            start_ms: 1_767_225_600_000,
            mean_per_hour: 30_000.0,
        },
    });
    let topic: Arc<str> = Arc::from("bench");
    (0..n)
        .map(|i| {
            let mut payload = Vec::with_capacity(512);
            g.write_json(&mut payload);
            Message {
                topic: Arc::clone(&topic),
                partition: 0,
                offset: i as i64,
                timestamp_ms: Some(0),
                payload: Some(payload.into()),
            }
        })
        .collect()
}
