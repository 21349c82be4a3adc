//! The controllers, one folder each, and what they share (kstatus conditions).
//!
//! `instance` acts on one instance per ComputeInstanceAction; fleets and schedules compose it.
pub mod conditions;
pub mod fleet;
pub mod instance;
pub mod schedule;
