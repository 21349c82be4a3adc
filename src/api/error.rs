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
    #[error("instance ID {0:?} is not a safe path segment")]
    InvalidInstanceId(String),
    #[error("admin API credentials: {0}")]
    Credentials(String),
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
            Self::InvalidInstanceId(_) => "InvalidInstanceId",
            Self::Credentials(_) => "CredentialsError",
        }
    }
}
