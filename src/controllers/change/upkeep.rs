//! Keeps change control's own objects current: each budget's matching set counted through the list endpoint's
//! filters (paced within the list budget, the instance view's share of `--api-rate`), and the status of every
//! window and budget written by the lease holder only (a fenced write, like every other).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};

use super::budgets::Budget;
use super::gate::{ChangeGate, Counted};
use super::windows::MaintenanceWindow;
use crate::api::AdminClient;
use crate::controllers::conditions::{Verdict, apply_verdict};
use crate::controllers::runtime::lookups::lookups_of_match;
use crate::controllers::runtime::walk::{SELECTION_TIMEOUT, WALK_ATTEMPTS, WalkRules, walk};
use crate::controllers::runtime::{ListBudget, bounded};
use crate::crd::disruption_budget::{ComputeDisruptionBudget, ComputeDisruptionBudgetStatus};
use crate::crd::maintenance_window::{ComputeMaintenanceWindow, ComputeMaintenanceWindowStatus};
use crate::leader::Fence;

/// A budget's matching set is counted again this often (and at once when the budget changes).
pub const RECOUNT: Duration = Duration::from_secs(60);
/// Statuses are brought up to date this often.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// What the upkeep needs.
pub struct Upkeep {
    /// Weak: the upkeep ends with the gate (the gate aborts it when dropped, and it never keeps the gate).
    pub gate: std::sync::Weak<ChangeGate>,
    pub kube: Client,
    pub api: AdminClient,
    pub lists: Arc<ListBudget>,
    pub fence: Arc<Fence>,
}

impl Upkeep {
    /// Runs for as long as the gate lives.
    pub fn start(self) {
        if let Some(gate) = self.gate.upgrade() {
            gate.add_task(tokio::spawn(self.run()));
        }
    }

    async fn run(self) {
        let Some(recount) = self.gate.upgrade().map(|g| g.recount.clone()) else {
            return;
        };
        loop {
            let Some(gate) = self.gate.upgrade() else {
                return;
            };
            let now = Utc::now();
            let mut changed = false;
            for b in gate.budget_objects() {
                if due(gate.count_of(&b.name_any()).as_ref(), b.metadata.generation, now) {
                    changed |= self.count(&gate, &b).await;
                }
            }
            if changed {
                // Actions waiting for a first count, or a count that moved, decide again.
                gate.nudge_all();
            }
            if self.fence.may_act() {
                self.write_budget_statuses(&gate, now).await;
                self.write_window_statuses(&gate, now).await;
            }
            drop(gate);
            tokio::select! {
                _ = tokio::time::sleep(STATUS_EVERY) => {}
                _ = recount.notified() => {}
            }
        }
    }

    /// Counts one budget's matching instances; true when the count changed.
    async fn count(&self, gate: &ChangeGate, b: &ComputeDisruptionBudget) -> bool {
        let name = b.name_any();
        let m = b.spec.instances.clone();
        let keep = move |i: &crate::api::Instance| m.matches(&i.id, Some(i));
        let rules = WalkRules {
            keep: &keep,
            keep_missing: false,
            attempts: WALK_ATTEMPTS,
            held: None,
        };
        let lookups = lookups_of_match(&b.spec.instances);
        let walked = tokio::time::timeout(SELECTION_TIMEOUT, walk(&self.api, &self.lists, &lookups, &rules)).await;
        let listed = match walked {
            Ok(Ok(listed)) => listed,
            Ok(Err(e)) => {
                tracing::warn!(budget = %name, error = %e, "counting a disruption budget's instances failed");
                return false;
            }
            Err(_) => {
                tracing::warn!(budget = %name, "counting a disruption budget's instances timed out");
                return false;
            }
        };
        let ids: HashSet<String> = listed.members.into_iter().map(|(id, _)| id).collect();
        let before = gate.count_of(&name);
        let changed = before
            .as_ref()
            .is_none_or(|c| *c.ids != ids || c.generation != b.metadata.generation);
        gate.record_count(
            &name,
            Counted {
                generation: b.metadata.generation,
                ids: Arc::new(ids),
                at: listed.listed_at,
            },
        );
        changed
    }

    async fn write_budget_statuses(&self, gate: &ChangeGate, now: DateTime<Utc>) {
        let api: Api<ComputeDisruptionBudget> = Api::all(self.kube.clone());
        let budgets = gate.budgets();
        if budgets.is_empty() {
            // Nothing to write, and nothing to count for.
            return;
        }
        let disrupted = gate.disrupted(None);
        for obj in gate.budget_objects() {
            let Some(budget) = budgets.iter().find(|b| b.name == obj.name_any()) else {
                continue;
            };
            let counted_at = gate.count_of(&budget.name).map(|c| c.at);
            let next = budget_status(&obj, budget, budget.count(&disrupted), counted_at, now);
            if obj.status.as_ref() != Some(&next) {
                patch_status(&api, &self.fence, &obj.name_any(), &next).await;
            }
        }
    }

    async fn write_window_statuses(&self, gate: &ChangeGate, now: DateTime<Utc>) {
        let api: Api<ComputeMaintenanceWindow> = Api::all(self.kube.clone());
        for obj in gate.windows() {
            let next = window_status(&obj, now);
            if obj.status.as_ref() != Some(&next) {
                patch_status(&api, &self.fence, &obj.name_any(), &next).await;
            }
        }
    }
}

/// Is a budget's count missing, of another generation, or old?
pub fn due(count: Option<&Counted>, generation: Option<i64>, now: DateTime<Utc>) -> bool {
    count.is_none_or(|c| c.generation != generation || (now - c.at).to_std().unwrap_or_default() >= RECOUNT)
}

/// A budget's status: its counts, and `Ready` once counted.
pub fn budget_status(
    obj: &ComputeDisruptionBudget,
    budget: &Budget,
    disrupted: u32,
    counted_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> ComputeDisruptionBudgetStatus {
    let mut status = obj.status.clone().unwrap_or_default();
    let matching = budget
        .matching
        .as_ref()
        .map(|m| u32::try_from(m.len()).unwrap_or(u32::MAX));
    let allowed = budget.allowed();
    let verdict = match (matching, allowed) {
        (Some(m), Some(a)) => Verdict::ready(
            "Counted",
            format!("{disrupted} of {m} matching instances disrupted; {a} allowed at once"),
        ),
        _ => Verdict::reconciling("Counting", "counting the matching instances through the admin API"),
    };
    status.observed_generation = obj.metadata.generation;
    status.matching = matching;
    status.disrupted = Some(disrupted);
    status.allowed = allowed;
    status.counted_at = counted_at;
    let mut conditions = status.conditions.clone();
    apply_verdict(&mut conditions, &verdict, obj.metadata.generation, now);
    // Only the texts move the transition time: an unchanged verdict keeps the old conditions (no write).
    status.conditions = conditions;
    status
}

/// A window's status: open now or not, when that changes, and whether it reads at all.
pub fn window_status(obj: &ComputeMaintenanceWindow, now: DateTime<Utc>) -> ComputeMaintenanceWindowStatus {
    let mut status = obj.status.clone().unwrap_or_default();
    let read = MaintenanceWindow::new(&obj.name_any(), &obj.spec);
    let verdict = match read.error() {
        Some(e) => Verdict::stalled(
            "InvalidSpec",
            format!("{e}; every action this window covers is held back until it is fixed"),
        ),
        None => Verdict::ready("Valid", "the windows read as a calendar"),
    };
    status.observed_generation = obj.metadata.generation;
    status.open = Some(read.open_at(now));
    status.next_change = read.next_change(now);
    apply_verdict(&mut status.conditions, &verdict, obj.metadata.generation, now);
    status
}

/// Field manager of the change-control statuses.
const FIELD_MANAGER: &str = "compute-operator-change-control";

/// A merge patch of `.status` under [`FIELD_MANAGER`], bounded, only while the fence is open (checked right
/// before each write: a round over many objects outlives a lease that was open when it began); failures are
/// logged (the next round tries again).
async fn patch_status<K>(api: &Api<K>, fence: &Fence, name: &str, status: &impl serde::Serialize)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if !fence.may_act() {
        return;
    }
    let body = serde_json::json!({ "status": status });
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    if let Err(e) = bounded(api.patch_status(name, &pp, &Patch::Merge(&body))).await {
        tracing::debug!(object = %name, error = %e, "could not write a change-control status");
    }
}
