//! Errors: [`HttpError`], the JSON error answer of every endpoint, and [`ServeError`], why the
//! service could not start.
//!
//! Every error answer has the body `{"error": "<what went wrong>", "detail": <JSON or null>}` and
//! a status code that says whose fault it is (4xx: the request, 5xx: the service or Kafka).

use serde::Serialize;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

/// An error answer: status, message, optional detail and extra headers.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    /// The status code.
    pub status: StatusCode,
    /// What went wrong, in words a person can act on.
    pub error: String,
    /// Structured detail (e.g. the offending parameter, or the lines Kafka did not take).
    pub detail: serde_json::Value,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
    /// Whether to send `WWW-Authenticate: Bearer`.
    pub challenge: bool,
    /// Whether to send `Connection: close`: the request body was not read to its end, so the
    /// connection cannot carry another request.
    pub close: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    detail: &'a serde_json::Value,
}

impl HttpError {
    /// An error with no detail.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            detail: serde_json::Value::Null,
            retry_after: None,
            challenge: false,
            close: false,
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error)
    }

    /// 400 for a query parameter, named in the detail.
    pub fn bad_param(param: &str, error: impl Into<String>) -> Self {
        Self::bad_request(error).with_detail(serde_json::json!({ "parameter": param }))
    }

    /// 401 Unauthorized, with a `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized(error: impl Into<String>) -> Self {
        Self {
            challenge: true,
            ..Self::new(StatusCode::UNAUTHORIZED, error)
        }
    }

    /// 503 Service Unavailable with `Retry-After`.
    pub fn unavailable(error: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, error)
        }
    }

    /// 429 Too Many Requests with `Retry-After`.
    pub fn too_many_requests(error: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, error)
        }
    }

    /// The same error, closing the connection (answered before the body was read to its end).
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The same error with `detail`.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response {
        let body = Body {
            error: &self.error,
            detail: &self.detail,
        };
        let mut r = json_response(self.status, &body);
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.close {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.challenge {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"carflow\""),
            );
        }
        r
    }
}

impl warp::Reply for HttpError {
    fn into_response(self) -> Response {
        HttpError::into_response(self)
    }
}

/// A JSON response with `status`.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| {
        format!("{{\"error\":\"cannot encode the answer: {e}\",\"detail\":null}}").into_bytes()
    });
    let mut r = Response::new(bytes.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The settings cannot work.
    #[error("{}", .0.join("; "))]
    Settings(Vec<String>),
    /// The Kafka producer could not be created.
    #[error("kafka producer for {brokers}: {source}")]
    Producer {
        /// Bootstrap servers.
        brokers: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}
