//! The one error type of the Kusto boundary, and the one place where an HTTP status becomes an
//! error kind.

use std::fmt;
use std::time::Duration;

/// What went wrong, coarsely: enough to decide what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 429: the cluster refused the request before running it.
    Throttled,
    /// 5xx (and Kusto's 520): the service failed or is overloaded.
    ServiceUnavailable,
    /// A client-side timeout, 408 or 504: the request may or may not have run.
    Timeout,
    /// The connection could not be opened: the request was never sent.
    Connect,
    /// The connection broke while the request was in flight (reset, truncated answer).
    ConnectionLost,
    /// 400 and other 4xx: the request itself is wrong.
    BadRequest,
    /// 401/403: the identity lacks a token or the rights.
    Unauthorized,
    /// 404: no such endpoint, database or operation.
    NotFound,
    /// 409: a conflicting entity or operation already exists.
    Conflict,
    /// An error reported by Kusto inside a 200 answer (v2 `HasErrors`, error rows).
    Query,
    /// The answer could not be understood.
    Protocol,
    /// Our own validation refused the input (identifier, URL, literal).
    InvalidInput,
    /// A token could not be obtained from the credential.
    Credential,
}

impl ErrorKind {
    /// The single mapping from an HTTP status to a kind.
    pub fn from_status(status: u16) -> ErrorKind {
        match status {
            429 => ErrorKind::Throttled,
            408 | 504 => ErrorKind::Timeout,
            401 | 403 => ErrorKind::Unauthorized,
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            500..=599 => ErrorKind::ServiceUnavailable,
            _ => ErrorKind::BadRequest,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::ServiceUnavailable => "service unavailable",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Connect => "could not connect",
            ErrorKind::ConnectionLost => "connection lost",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Query => "query failed",
            ErrorKind::Protocol => "unexpected response",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Credential => "no token",
        };
        f.write_str(text)
    }
}

/// Whether waiting and trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// The same request may succeed later.
    Transient,
    /// Trying the same request again will fail the same way.
    Permanent,
}

/// An error from a Kusto endpoint, with everything needed to correlate it with the
/// service's own logs. Never holds a token or a SAS: messages come from the service or from
/// redacted command text.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Kusto {kind}{}: {message}{}", status_text(.status), correlation(.code, .activity_id, .client_request_id))]
pub struct KustoError {
    pub kind: ErrorKind,
    /// HTTP status, when an answer arrived.
    pub status: Option<u16>,
    /// Kusto's error code (`error.code`, e.g. `General_BadRequest`, `LimitsExceeded`).
    pub code: Option<String>,
    pub message: String,
    /// `x-ms-activity-id` of the answer (or `@context.activityId` of the error).
    pub activity_id: Option<String>,
    /// The `x-ms-client-request-id` we sent.
    pub client_request_id: Option<String>,
    /// Kusto's own verdict (`@permanent`), which overrides the status when present.
    pub permanent: Option<bool>,
    /// How long the service asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
}

fn status_text(status: &Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

fn correlation(
    code: &Option<String>,
    activity: &Option<String>,
    request: &Option<String>,
) -> String {
    let mut out = String::new();
    if let Some(code) = code {
        out.push_str(&format!(" [code {code}]"));
    }
    if let Some(activity) = activity {
        out.push_str(&format!(" [activity {activity}]"));
    }
    if let Some(request) = request {
        out.push_str(&format!(" [client request {request}]"));
    }
    out
}

impl KustoError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        KustoError {
            kind,
            status: None,
            code: None,
            message: message.into(),
            activity_id: None,
            client_request_id: None,
            permanent: None,
            retry_after: None,
        }
    }

    pub(crate) fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, message)
    }

    /// Whether waiting can help. `@permanent` from Kusto wins over the status.
    pub fn retry_class(&self) -> RetryClass {
        if self.permanent == Some(true) {
            return RetryClass::Permanent;
        }
        let transient = match self.kind {
            ErrorKind::Throttled
            | ErrorKind::ServiceUnavailable
            | ErrorKind::Timeout
            | ErrorKind::Connect
            | ErrorKind::ConnectionLost => true,
            // An error inside a 200 is only worth repeating when Kusto says so explicitly.
            ErrorKind::Query => self.permanent == Some(false),
            _ => false,
        };
        if transient {
            RetryClass::Transient
        } else {
            RetryClass::Permanent
        }
    }

    pub fn is_transient(&self) -> bool {
        self.retry_class() == RetryClass::Transient
    }

    /// False only when we know the service did not run the request, so that repeating a
    /// non-idempotent command (`.export`, `.move`, `.ingest`) cannot do its work twice.
    pub fn may_have_executed(&self) -> bool {
        !matches!(
            self.kind,
            ErrorKind::Throttled | ErrorKind::Connect | ErrorKind::InvalidInput | ErrorKind::Credential
        )
    }

    pub(crate) fn with_client_request_id(mut self, id: &str) -> Self {
        if self.client_request_id.is_none() {
            self.client_request_id = Some(id.to_string());
        }
        self
    }

    pub(crate) fn with_activity_id(mut self, id: Option<String>) -> Self {
        if id.is_some() {
            self.activity_id = id;
        }
        self
    }

    /// An error for an HTTP answer that was not a success, from its status and body.
    pub fn from_http(status: u16, body: &[u8]) -> Self {
        let mut err = match crate::kusto::response::parse_error_body(body) {
            Some(one) => KustoError {
                kind: ErrorKind::from_status(status),
                status: Some(status),
                ..one
            },
            None => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    format!("HTTP {status} with an empty body")
                } else {
                    // Gateways answer HTML or plain text; keep it short.
                    text.chars().take(500).collect()
                };
                KustoError::new(ErrorKind::from_status(status), message)
            }
        };
        err.status = Some(status);
        err
    }

    /// An error for a failed transport (no HTTP answer, or a body that broke mid-way).
    /// A transport failure not from reqwest (an in-process transport's): `kind` is one of
    /// `Timeout`, `Connect` (never sent) or `ConnectionLost` (may have run).
    pub fn transport(kind: ErrorKind, message: impl Into<String>) -> Self {
        KustoError { kind, status: None, code: None, message: message.into(), activity_id: None, client_request_id: None, permanent: None, retry_after: None }
    }

    pub(crate) fn from_transport(err: &reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            ErrorKind::Timeout
        } else if err.is_connect() {
            ErrorKind::Connect
        } else {
            ErrorKind::ConnectionLost
        };
        // reqwest's Display includes the URL; ours never carry secrets (SAS go in bodies only).
        let mut message = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(inner) = source {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            source = inner.source();
        }
        KustoError::new(kind, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping_and_retry_class() {
        let transient = [429u16, 500, 502, 503, 504, 520, 408];
        for s in transient {
            assert!(KustoError::from_http(s, b"").is_transient(), "{s}");
        }
        for s in [400u16, 401, 403, 404, 409] {
            assert!(!KustoError::from_http(s, b"").is_transient(), "{s}");
        }
    }

    #[test]
    fn permanent_flag_wins() {
        let body = br#"{"error":{"code":"X","message":"m","@permanent":true}}"#;
        let err = KustoError::from_http(503, body);
        assert_eq!(err.retry_class(), RetryClass::Permanent);
        assert_eq!(err.code.as_deref(), Some("X"));
    }
}
