//! The ComputeFleetAction controller: many instances through child ComputeInstanceActions.
pub mod resource;

pub use resource::{ComputeFleetAction, ComputeFleetActionSpec, ComputeFleetActionStatus};
