//! compute-operator: declare the power state of compute instances from Kubernetes.
//!
//! The simulator, the local control plane and the benchmark harness are behind the `dev-tools` feature (on by
//! default); the production image is built without it.
pub mod api;
#[cfg(feature = "dev-tools")]
pub mod benchkit;
pub mod config;
pub mod controllers;
pub mod crd;
#[cfg(feature = "dev-tools")]
pub mod devenv;
pub mod health;
pub mod kube_client;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod plugin;
#[cfg(feature = "dev-tools")]
pub mod sim;
pub mod telemetry;
