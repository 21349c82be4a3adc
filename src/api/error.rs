//! The one error type of the admin API client, with variants a caller can act on.

use std::time::Duration;

/// What went wrong talking to the admin API. Messages never contain credentials or response bodies beyond
/// a short, sanitized excerpt.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    #[error("admin API rejected the request as invalid (400): {0}")]
    BadRequest(String),
    #[error("admin API credentials are missing or invalid (401)")]
    Unauthorized,
    #[error("admin API credentials lack the compute_admin role (403)")]
    Forbidden,
    #[error("instance not found (404)")]
    NotFound,
    #[error("instance is not in a state that allows this action (409)")]
    Conflict,
    #[error("admin API is rate limiting (429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("admin API server error ({status})")]
    Server { status: u16, retry_after: Option<Duration> },
    #[error("admin API request timed out")]
    Timeout { sent: bool },
    #[error("admin API transport error: {message}")]
    Transport { message: String, sent: bool },
    #[error("admin API answered with an unexpected response: {0}")]
    Malformed(String),
    /// A status the spec does not list (a redirect, 408, 422, ... from a gateway or proxy in front of it).
    #[error("admin API answered with unexpected status {0}")]
    UnexpectedStatus(u16),
    #[error("instance ID {0:?} is not a safe path segment")]
    InvalidInstanceId(String),
    #[error("admin API credentials: {0}")]
    Credentials(String),
    /// Held back by the caller at the last moment (this replica no longer holds the leader lease).
    #[error("not sent: this replica no longer holds the leader lease")]
    NotSent,
}

impl ApiError {
    /// Transient failures worth another try: transport, timeout, 429 and 5xx.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Server { .. } | Self::Timeout { .. } | Self::Transport { .. }
        )
    }

    /// The server's own advice on when to come back.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Could the request have reached the server and been acted on? Decides whether a POST outcome is known.
    pub fn may_have_reached_server(&self) -> bool {
        match self {
            Self::Timeout { sent } | Self::Transport { sent, .. } => *sent,
            // Any 5xx, 503 included, may come from a gateway in front of the service after the action was
            // carried out: it proves nothing about the action. Only the service's own 4xx answers do.
            Self::Server { .. } => true,
            // A status outside the spec proves a refusal only when it is a client error (4xx): a redirect or an
            // informational answer says nothing about whether the action ran behind it.
            Self::UnexpectedStatus(status) => !(400..500).contains(status),
            // 429 and every other answer say the request was refused, not half-done.
            _ => false,
        }
    }

    /// A short machine-readable reason, used for conditions and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "InstanceNotFound",
            Self::Conflict => "Conflict",
            Self::RateLimited { .. } => "RateLimited",
            Self::Server { .. } => "ServerError",
            Self::Timeout { .. } => "Timeout",
            Self::Transport { .. } => "TransportError",
            Self::Malformed(_) => "MalformedResponse",
            Self::UnexpectedStatus(_) => "UnexpectedStatus",
            Self::InvalidInstanceId(_) => "InvalidInstanceId",
            Self::Credentials(_) => "CredentialsError",
            Self::NotSent => "NotLeader",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;

    #[test]
    fn only_answers_that_prove_a_refusal_say_the_request_did_not_reach_the_server() {
        let server = |status| ApiError::Server {
            status,
            retry_after: None,
        };
        let table = [
            (ApiError::BadRequest("x".into()), false),
            (ApiError::Unauthorized, false),
            (ApiError::Forbidden, false),
            (ApiError::NotFound, false),
            (ApiError::Conflict, false),
            (ApiError::RateLimited { retry_after: None }, false),
            (ApiError::UnexpectedStatus(408), false),
            (ApiError::NotSent, false),
            (ApiError::UnexpectedStatus(422), false),
            (ApiError::Timeout { sent: false }, false),
            (
                ApiError::Transport {
                    message: "refused".into(),
                    sent: false,
                },
                false,
            ),
            (server(500), true),
            (server(502), true),
            (server(503), true),
            (server(504), true),
            (ApiError::UnexpectedStatus(302), true),
            (ApiError::UnexpectedStatus(101), true),
            (ApiError::Timeout { sent: true }, true),
            (
                ApiError::Transport {
                    message: "reset".into(),
                    sent: true,
                },
                true,
            ),
        ];
        for (err, may_have_run) in table {
            assert_eq!(err.may_have_reached_server(), may_have_run, "{err:?}");
        }
    }
}
