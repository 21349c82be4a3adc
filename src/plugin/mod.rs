//! `kubectl compute`: the kubectl plugin that asks the operator for a power action on one instance and follows it,
//! and shows, pauses or overrides fleets and schedules.
//!
//! Pure parts (object naming, the applied spec, progress tracking, error advice, the status report) are separate
//! from the thin I/O in `cli.rs`, so they are table-tested without a cluster.

pub mod advice;
pub mod cli;
mod cli_fleets;
pub mod fleet_report;
pub mod naming;
pub mod ownership;
pub mod progress;
pub mod report;

/// The field manager of every change the plugin makes (visible in `managedFields`).
pub const FIELD_MANAGER: &str = "kubectl-compute";
