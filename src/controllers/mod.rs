//! The controllers, one folder each, and what they share (kstatus conditions, the instance index, the fleet view
//! from the list endpoint).
//!
//! `instance` acts on one instance per ComputeInstanceAction; fleets and schedules compose it.
pub mod conditions;
pub mod events;
pub mod fleet;
pub mod fleet_view;
pub mod index;
pub mod instance;
pub mod schedule;

/// `namespace/name` of any object: the key every controller uses for logs, backoff, locks and the index.
pub fn object_key<K: kube::ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}
