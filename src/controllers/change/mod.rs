//! Change control: the administrator-owned gates every power action passes right before its intent, next to
//! the access policy and the lease fence. Maintenance windows (when) and disruption budgets (how many at once)
//! are pure rules here; `gate` watches their objects and answers in memory.
pub mod budgets;
pub mod gate;
pub mod upkeep;
pub mod windows;

pub use gate::{ChangeGate, Hold, WAITING_FOR_BUDGET, WAITING_FOR_WINDOW};
