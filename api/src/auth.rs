//! Bearer-token authentication of the endpoints that write to Kafka.
//!
//! When `api.token` is set, a request must carry `Authorization: Bearer <token>`. The comparison
//! takes the same time wherever the first differing byte is, and the token never reaches a log
//! line or an error message.

use carflow_engine::config::Secret;

use crate::error::HttpError;

/// The configured token (empty: authentication is off).
#[derive(Clone, Debug)]
pub struct BearerAuth {
    token: Secret,
}

impl BearerAuth {
    /// Authentication with `token`; an empty token lets every request through.
    pub fn new(token: Secret) -> Self {
        Self { token }
    }

    /// Whether a token is required.
    pub fn enabled(&self) -> bool {
        !self.token.0.is_empty()
    }

    /// Check the `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), HttpError> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(value) = authorization else {
            return Err(HttpError::unauthorized(
                "missing Authorization header; send `Authorization: Bearer <api.token>`",
            ));
        };
        let presented = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                HttpError::unauthorized("the Authorization header must be `Bearer <api.token>`")
            })?;
        if constant_time_eq(presented.as_bytes(), self.token.0.as_bytes()) {
            Ok(())
        } else {
            Err(HttpError::unauthorized("wrong bearer token"))
        }
    }
}

/// Equality whose time depends only on the lengths, not on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn a_set_token_is_required() {
        let auth = BearerAuth::new(Secret("s3cret".into()));
        assert!(auth.check(Some("Bearer s3cret")).is_ok());
        for bad in [
            None,
            Some("Bearer nope"),
            Some("Basic czNjcmV0"),
            Some("s3cret"),
        ] {
            let e = auth.check(bad).unwrap_err();
            assert_eq!(e.status, 401);
            assert!(!e.error.contains("s3cret"), "{}", e.error);
        }
        assert!(BearerAuth::new(Secret::default()).check(None).is_ok());
    }
}
