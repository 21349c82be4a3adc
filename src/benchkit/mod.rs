//! Proof under load and faults: the harness behind the `bench` and `faults` binaries and their tests.
//!
//! Both run the operator the way it runs in production, as its own `compute-operator run` process, against
//! a real local control plane (kube-apiserver + etcd) and the admin API simulator.
//! - [`run_bench`] creates a burst of objects and measures throughput, creation->Ready latency, admin API
//!   requests, status writes and Events per action, the controller's CPU and memory (from `/proc`); compares
//!   the throughput with a minimal client doing the protocol minimum against the same API server (the strict
//!   limit); then an open loop (objects arriving at a steady rate), objects at rest over a resync interval,
//!   and a policy change over all of them.
//! - [`run_faults`] runs restart/reset/start/stop actions while killing the controller, restarting the API
//!   server, dropping connections after the admin API accepted an action, injecting 503 bursts and latency,
//!   and changing the leader; then checks that no one-shot ran twice for one requestId, that every object
//!   settles (Ready, or Stalled with a reason), and that no process is left behind.
//!
//! - [`fleet_memory::measure`] sizes what the fleet controller keeps for many fleets (in-process, counted).
//! - [`run_fleet_bench`] restarts N instances through one ComputeFleetAction and stops N through one
//!   ComputePowerSchedule event, against the ideal time and with admin API requests per instance.
//!
//! Module map: [`runs`] the bench run top to bottom, [`fleet`] the fleet and schedule runs and
//! [`fleet_report`] their figures, [`stack`] what it starts, [`load`] the objects it
//! creates, [`limit`] the minimal client it is compared with, [`rest`] objects at rest and the policy change,
//! [`report`] its figures and table; [`faults`] the fault run, [`faults_drive`] its driver and controllers,
//! [`faults_judge`] its verdict; shared: [`controller`] (the operator process), [`objects`] (objects and the
//! settle watch), [`measure`] (/proc, metrics).

pub mod controller;
pub mod faults;
pub mod faults_drive;
pub mod faults_fleet;
pub mod faults_judge;
pub mod faults_report;
pub mod fleet;
pub mod fleet_memory;
pub mod fleet_report;
pub mod limit;
pub mod load;
pub mod measure;
pub mod objects;
pub mod report;
pub mod rest;
pub mod runs;
pub mod stack;

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use serde::Serialize;

pub use controller::{ControllerProcess, ControllerSpec, local_http, sibling_operator_binary};
pub use faults::{FaultsOptions, run_faults};
pub use faults_report::{FaultCounts, FaultsReport};
pub use fleet::{FleetOptions, run_fleet_bench};
pub use fleet_report::FleetBenchReport;
pub use load::DesiredMix;
pub use measure::{Spread, clock_ticks, cpu_seconds, metric_sum, percentile, process_present, status_kib};
pub use objects::{Settled, instance, new_object, settled};
pub use report::BenchReport;
pub use runs::{BenchOptions, run_bench};

/// The simulator's admin token (its default), handed to the controller as `COMPUTE_API_TOKEN`.
pub const SIM_TOKEN: &str = "dev-admin-token";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes a report as pretty JSON.
pub fn write_json(path: &Path, report: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
