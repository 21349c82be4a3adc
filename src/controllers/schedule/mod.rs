//! The ComputePowerSchedule controller: a pure calendar and planner, the resource, and a thin reconciler that
//! creates one child ComputeFleetAction per event.
pub mod calendar;
pub mod children;
pub mod plan;
pub mod resource;
