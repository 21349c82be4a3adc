//! The controllers: the shared runtime (`runtime`: gates, list budget, status writer, CRD check, backoff),
//! what every kind reads and writes the same way (kstatus `conditions`, `events`), and one folder per kind,
//! each a pure planner and a thin reconciler.
//!
//! `instance` acts on one instance per ComputeInstanceAction; fleets and schedules compose it.
pub mod change;
pub mod conditions;
pub mod events;
pub mod fleet;
pub mod instance;
pub mod runtime;
pub mod schedule;

/// `namespace/name` of any object: the key every controller uses for logs, backoff, locks and the index.
pub fn object_key<K: kube::ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}
