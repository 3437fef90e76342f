//! Retrying what fails for a while: exponential backoff with a cap, interrupted by shutdown.
//!
//! Sinks and sources report whether an error is worth retrying; [`retry`] keeps trying those
//! (a sink that is down stops the pipeline from consuming, it does not drop data) and returns
//! the others at once.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Backoff between attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub initial: Duration,
    /// The longest wait between attempts.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

/// Whether an error may go away by itself.
pub trait Transient {
    /// True if trying again later may succeed.
    fn is_transient(&self) -> bool;
}

/// Why [`retry`] gave up.
#[derive(Debug)]
pub enum RetryError<E> {
    /// The error is permanent.
    Permanent(E),
    /// Shutdown was requested while waiting; the last error is attached.
    Shutdown(Option<E>),
}

/// Run `op` until it succeeds, it fails permanently, or `shutdown` fires while waiting to retry.
///
/// Each transient failure is logged with `what` and the attempt number, then waited out with
/// exponential backoff up to `backoff.max`.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    backoff: &Backoff,
    shutdown: &CancellationToken,
    op: F,
) -> Result<T, RetryError<E>>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_reporting(what, backoff, shutdown, |_: &E| {}, op).await
}

/// How long an attempt in progress may still run once shutdown was requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// [`retry`], calling `report` with every failed attempt (to count it and show it in `/health`).
///
/// Every call gets its attempts even during shutdown so a batch in flight can finish, but an
/// attempt still running [`SHUTDOWN_GRACE`] after shutdown was requested is abandoned (the
/// callers' operations are safe to abandon: nothing becomes visible before a commit point).
pub async fn retry_reporting<T, E, F, Fut, R>(
    what: &str,
    backoff: &Backoff,
    shutdown: &CancellationToken,
    mut report: R,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    E: Transient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: FnMut(&E),
{
    let mut wait = backoff.initial;
    let mut attempt = 1u32;
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::pin!(grace);
    loop {
        let outcome = tokio::select! {
            r = op() => r,
            _ = &mut grace => return Err(RetryError::Shutdown(None)),
        };
        let e = match outcome {
            Ok(v) => {
                if attempt > 1 {
                    tracing::info!(what, attempt, "recovered");
                }
                return Ok(v);
            }
            Err(e) => {
                report(&e);
                if !e.is_transient() {
                    return Err(RetryError::Permanent(e));
                }
                e
            }
        };
        tracing::warn!(what, attempt, error = %e, retry_in_ms = wait.as_millis() as u64, "failed; will retry");
        tokio::select! {
            _ = shutdown.cancelled() => return Err(RetryError::Shutdown(Some(e))),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(backoff.max);
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(bool);
    impl Transient for E {
        fn is_transient(&self) -> bool {
            self.0
        }
    }
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "e")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let mut n = 0;
        let out = retry("t", &Backoff::default(), &CancellationToken::new(), || {
            n += 1;
            let ok = n >= 4;
            async move { if ok { Ok(n) } else { Err(E(true)) } }
        })
        .await;
        assert!(matches!(out, Ok(4)));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_and_shutdown_stop_retrying() {
        let out = retry(
            "t",
            &Backoff::default(),
            &CancellationToken::new(),
            || async { Err::<(), _>(E(false)) },
        )
        .await;
        assert!(matches!(out, Err(RetryError::Permanent(_))));
        let token = CancellationToken::new();
        token.cancel();
        let out = retry("t", &Backoff::default(), &token, || async {
            Err::<(), _>(E(true))
        })
        .await;
        assert!(matches!(out, Err(RetryError::Shutdown(_))));
    }
}
