//! What a failed API call was, as a type: callers decide retries and back-off by the
//! variant, never by matching message text.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

/// The `Status` an API server answered a failed call with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// HTTP status code.
    pub code: u16,
    /// The Status `reason` (`NotFound`, `Conflict`, ...).
    pub reason: String,
    /// The Status `message`.
    pub message: String,
}

impl fmt::Display for Status {
    /// The way kubectl prints a `Status`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error from server ({}): {}", self.reason, self.message)
    }
}

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// 404: the object (or its namespace) does not exist.
    #[error("{0}")]
    NotFound(Status),
    /// 409 on a stale `resourceVersion`: read again and retry.
    #[error("{0}")]
    Conflict(Status),
    /// 409 on a create whose name is taken.
    #[error("{0}")]
    AlreadyExists(Status),
    /// 410: a watch or list continue older than the server's history; list again.
    #[error("{0}")]
    Gone(Status),
    /// 429: too many requests (or watches) for now; retry after the server's hint.
    #[error("{status}")]
    TooManyRequests { status: Status, retry_after: Option<Duration> },
    /// 507: the server's disk is full; writes resume by themselves once space returns.
    #[error("{0}")]
    InsufficientStorage(Status),
    /// Any other refusal.
    #[error("{0}")]
    Status(Status),
    /// The request never got an answer (connection refused or reset, TLS).
    #[error("{0}")]
    Transport(String),
}

/// Upstream's default wait when a 429 names none.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a writer waits at least while the server's disk is full.
const FULL_DISK_WAIT: Duration = Duration::from_secs(5);

impl ClientError {
    /// The error a non-2xx answer carries, from its code, its `Retry-After` header and its
    /// `Status` body (or the raw body when it is not one).
    pub fn from_answer(code: u16, retry_after: Option<Duration>, body: &[u8]) -> ClientError {
        let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let status = Status {
            code,
            reason: value["reason"].as_str().unwrap_or("Unknown").to_string(),
            message: match value["message"].as_str() {
                Some(m) => m.to_string(),
                None => String::from_utf8_lossy(body).trim().to_string(),
            },
        };
        match code {
            404 => ClientError::NotFound(status),
            409 if status.reason == "AlreadyExists" => ClientError::AlreadyExists(status),
            409 => ClientError::Conflict(status),
            410 => ClientError::Gone(status),
            429 => {
                let from_body = value["details"]["retryAfterSeconds"].as_u64().map(Duration::from_secs);
                ClientError::TooManyRequests { status, retry_after: retry_after.or(from_body) }
            }
            507 => ClientError::InsufficientStorage(status),
            _ => ClientError::Status(status),
        }
    }

    /// The server's Status, when there was an answer.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::NotFound(s)
            | ClientError::Conflict(s)
            | ClientError::AlreadyExists(s)
            | ClientError::Gone(s)
            | ClientError::InsufficientStorage(s)
            | ClientError::Status(s)
            | ClientError::TooManyRequests { status: s, .. } => Some(s),
            ClientError::Transport(_) => None,
        }
    }

    /// The least a caller should wait before trying again, when the server said so (429)
    /// or the failure cannot clear sooner (a full disk).
    pub fn retry_hint(&self) -> Option<Duration> {
        match self {
            ClientError::TooManyRequests { retry_after, .. } => Some(retry_after.unwrap_or(DEFAULT_RETRY_AFTER)),
            ClientError::InsufficientStorage(_) => Some(FULL_DISK_WAIT),
            _ => None,
        }
    }
}

/// The `Retry-After` header of an answer, in seconds as upstream sends it.
pub fn retry_after_header(headers: &http::HeaderMap) -> Option<Duration> {
    headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok().map(Duration::from_secs)
}

fn client_error(e: &anyhow::Error) -> Option<&ClientError> {
    e.downcast_ref::<ClientError>()
}

/// Whether `e` is the server saying 404.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(client_error(e), Some(ClientError::NotFound(_)))
}

/// Whether `e` is a 403: authorization (or an admission rule) refused the request.
pub fn is_forbidden(e: &anyhow::Error) -> bool {
    client_error(e).and_then(ClientError::status).is_some_and(|s| s.code == 403)
}

/// Whether `e` is a compare-and-swap that lost (409 on a stale `resourceVersion`).
pub fn is_conflict(e: &anyhow::Error) -> bool {
    matches!(client_error(e), Some(ClientError::Conflict(_)))
}

/// Whether `e` is a create whose name is taken.
pub fn is_already_exists(e: &anyhow::Error) -> bool {
    matches!(client_error(e), Some(ClientError::AlreadyExists(_)))
}

/// The least wait before retrying after `e` (see [`ClientError::retry_hint`]).
pub fn retry_hint(e: &anyhow::Error) -> Option<Duration> {
    client_error(e).and_then(ClientError::retry_hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"kind": "Status", "code": code, "reason": reason, "message": "m"}))
            .unwrap()
    }

    #[test]
    fn answers_are_told_apart_by_code_and_reason() {
        type Is = fn(&ClientError) -> bool;
        let cases: &[(u16, &str, Is)] = &[
            (404, "NotFound", |e| matches!(e, ClientError::NotFound(_))),
            (409, "Conflict", |e| matches!(e, ClientError::Conflict(_))),
            (409, "AlreadyExists", |e| matches!(e, ClientError::AlreadyExists(_))),
            (410, "Expired", |e| matches!(e, ClientError::Gone(_))),
            (429, "TooManyRequests", |e| matches!(e, ClientError::TooManyRequests { .. })),
            (507, "InsufficientStorage", |e| matches!(e, ClientError::InsufficientStorage(_))),
            (422, "Invalid", |e| matches!(e, ClientError::Status(_))),
            (500, "InternalError", |e| matches!(e, ClientError::Status(_))),
        ];
        for (code, reason, is) in cases {
            let e = ClientError::from_answer(*code, None, &status(*code, reason));
            assert!(is(&e), "{code} {reason} became {e:?}");
            assert_eq!(e.status().map(|s| s.code), Some(*code));
            assert_eq!(e.to_string(), format!("Error from server ({reason}): m"));
        }
        let raw = ClientError::from_answer(502, None, b"bad gateway\n");
        assert_eq!(raw.status().map(|s| s.message.as_str()), Some("bad gateway"));
    }

    #[test]
    fn retry_hints_come_from_the_header_the_body_or_the_kind_of_failure() {
        let body =
            serde_json::to_vec(&serde_json::json!({"reason": "TooManyRequests", "details": {"retryAfterSeconds": 3}}))
                .unwrap();
        let e = ClientError::from_answer(429, Some(Duration::from_secs(7)), &body);
        assert_eq!(e.retry_hint(), Some(Duration::from_secs(7)), "the header first");
        let e = ClientError::from_answer(429, None, &body);
        assert_eq!(e.retry_hint(), Some(Duration::from_secs(3)));
        let e = ClientError::from_answer(429, None, b"");
        assert_eq!(e.retry_hint(), Some(DEFAULT_RETRY_AFTER));
        let e = ClientError::from_answer(507, None, &status(507, "InsufficientStorage"));
        assert_eq!(e.retry_hint(), Some(FULL_DISK_WAIT));
        assert_eq!(ClientError::from_answer(409, None, &status(409, "Conflict")).retry_hint(), None);
        // Through anyhow with context, as callers hold it.
        let wrapped =
            anyhow::Error::from(ClientError::from_answer(404, None, &status(404, "NotFound"))).context("GET x");
        assert!(is_not_found(&wrapped) && !is_conflict(&wrapped));
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("2"));
        assert_eq!(retry_after_header(&headers), Some(Duration::from_secs(2)));
    }
}
