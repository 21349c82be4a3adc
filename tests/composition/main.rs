//! The composed kinds on the real API server, in one test binary (one link of the library, one control plane):
//! ComputeFleetAction (`fleet`, and `fleet_promises`: every promise of a single action kept at fleet scale) and
//! ComputePowerSchedule (`schedule`, and `schedule_chain` down to the instances).
#[path = "../support/mod.rs"]
mod support;

mod fleet;
mod fleet_promises;
mod schedule;
mod schedule_chain;
