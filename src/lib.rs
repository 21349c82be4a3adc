//! compute-operator: declare the power state of compute instances from Kubernetes.
pub mod api;
pub mod benchkit;
pub mod config;
pub mod controllers;
pub mod devenv;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod policy;
pub mod resource;
pub mod selection;
pub mod sim;
pub mod telemetry;
