//! Change control: the administrator-owned gates every power action passes right before its intent, next to
//! the access policy and the lease fence. Maintenance windows (when) and disruption budgets (how many at once)
//! are pure rules here; `gate` watches their objects and answers in memory.
pub mod budgets;
pub mod gate;
pub mod upkeep;
pub mod windows;

pub use gate::{ChangeGate, CountedObject, Hold, WAITING_FOR_BUDGET, WAITING_FOR_WINDOW, observed_instance};

use crate::crd::instance_action::{ComputeInstanceActionStatus, Condition};

/// Does the status say a window or budget holds its action back (nothing sent, nothing to look at yet)?
pub fn is_held(status: &ComputeInstanceActionStatus) -> bool {
    status.conditions.iter().any(is_hold)
}

/// Is this the condition a window or budget sets while it holds an action back?
pub fn is_hold(c: &Condition) -> bool {
    c.type_ == "Reconciling" && c.status == "True" && (c.reason == WAITING_FOR_WINDOW || c.reason == WAITING_FOR_BUDGET)
}
