//! Bounds on what many clients can hold at once: open streams and request-body bytes.
//!
//! - [`StreamSlots`]: at most `api.max_streams` streams of `GET /api/stream_car_transactions`
//!   are open; a slot is taken before the stream starts and given back when its generator task
//!   ends (client gone, `count` reached, or shutdown). Beyond it: 429 + `Retry-After`.
//! - [`BodyBudget`]: at most `api.max_in_flight_body_bytes` bytes of `POST /api/logs` bodies are
//!   being read, validated or produced at once. A body with a `Content-Length` reserves its whole
//!   size before a byte is read; a chunked body reserves each chunk as it arrives. A request that
//!   does not get its bytes is answered 503 + `Retry-After` at once (nothing was sent to Kafka)
//!   and its bytes are released; nothing waits in a queue, so nothing piles up.
//!
//! Neither ever waits: a full service answers at once, which is what a client that retries with
//! back-off needs, and a slow client cannot hold a queue position.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Open-stream slots.
#[derive(Debug)]
pub struct StreamSlots {
    slots: Arc<Semaphore>,
    max: usize,
}

/// A taken stream slot; given back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
}

impl StreamSlots {
    /// `max` slots (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A free slot, or `None` when `max` streams are open.
    pub fn try_take(&self) -> Option<StreamSlot> {
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .ok()
            .map(|p| StreamSlot { _permit: p })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// The shared budget of body bytes.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    max: usize,
}

/// Bytes held by one request; released when dropped.
#[derive(Debug)]
pub struct BodyBytes {
    bytes: Arc<Semaphore>,
    held: AtomicUsize,
}

/// The budget had not enough bytes left: nothing was taken by this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// Bytes asked for.
    pub wanted: usize,
    /// Bytes that were free.
    pub available: usize,
}

impl BodyBudget {
    /// A budget of `max` bytes (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// An empty holding for one request.
    pub fn holder(&self) -> BodyBytes {
        BodyBytes {
            bytes: Arc::clone(&self.bytes),
            held: AtomicUsize::new(0),
        }
    }

    /// Bytes held by all requests now.
    pub fn in_use(&self) -> usize {
        self.max - self.bytes.available_permits()
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl BodyBytes {
    /// Take `n` more bytes, all or nothing, without waiting.
    pub fn try_add(&self, n: usize) -> Result<(), OverBudget> {
        if n == 0 {
            return Ok(());
        }
        let over = || OverBudget {
            wanted: n,
            available: self.bytes.available_permits(),
        };
        let permits = u32::try_from(n).map_err(|_| over())?;
        let permit = self.bytes.try_acquire_many(permits).map_err(|_| over())?;
        permit.forget();
        self.held.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes this request holds.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for BodyBytes {
    fn drop(&mut self) {
        let n = *self.held.get_mut();
        if n > 0 {
            self.bytes.add_permits(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_slots_are_given_back_when_dropped() {
        let s = StreamSlots::new(2);
        let a = s.try_take().unwrap();
        let _b = s.try_take().unwrap();
        assert!(s.try_take().is_none());
        assert_eq!(s.open(), 2);
        drop(a);
        assert_eq!(s.open(), 1);
        assert!(s.try_take().is_some());
    }

    #[test]
    fn body_bytes_are_all_or_nothing_and_released_on_drop() {
        let b = BodyBudget::new(100);
        let one = b.holder();
        one.try_add(60).unwrap();
        one.try_add(30).unwrap();
        let two = b.holder();
        assert_eq!(
            two.try_add(20),
            Err(OverBudget {
                wanted: 20,
                available: 10
            })
        );
        assert_eq!(two.held(), 0);
        two.try_add(10).unwrap();
        assert_eq!(b.in_use(), 100);
        drop(one);
        assert_eq!(b.in_use(), 10);
        drop(two);
        assert_eq!(b.in_use(), 0);
        // More than a u32 of bytes is refused, not truncated.
        let big = BodyBudget::new(usize::MAX);
        assert!(big.holder().try_add(u32::MAX as usize + 1).is_err());
    }
}
