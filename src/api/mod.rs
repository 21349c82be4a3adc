//! The compute admin API: wire types, credentials, and the client. Knows nothing of Kubernetes.
pub mod backoff;
pub mod client;
pub mod credentials;
pub mod error;
pub mod limiter;
pub mod types;

pub use client::{AdminClient, ClientConfig, DEFAULT_BASE_URL, Endpoint, Repeat, RequestObserver};
pub use credentials::{CredentialSource, Credentials, CredentialsError, Secret};
pub use error::ApiError;
pub use types::{Instance, InstancePage, InstanceStatus, ListFilter, Pagination, PowerAction};
