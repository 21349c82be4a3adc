//! What a fleet's status says, purely: the condition for its counts, the dry-run and policy-denied messages,
//! and the Events a status change deserves.

use super::plan::{Counts, Note};
use crate::controllers::conditions::Verdict;
use crate::crd::fleet_action::{ComputeFleetActionSpec, ComputeFleetActionStatus, DryRunReport, Snapshot};

pub(super) fn rollout_verdict(
    spec: &ComputeFleetActionSpec,
    status: &ComputeFleetActionStatus,
    c: Counts,
    cap: usize,
    done: bool,
    budget_exceeded: bool,
) -> Verdict {
    let selected = status.selected;
    let denied = if c.denied > 0 {
        format!(" ({} denied by policy since selected)", c.denied)
    } else {
        String::new()
    };
    let incomplete = if status.snapshot.as_ref().is_some_and(|s| s.incomplete) {
        format!(
            "; the selection kept changing over {} walks: the snapshot may miss instances",
            crate::controllers::runtime::walk::WALK_ATTEMPTS
        )
    } else {
        String::new()
    };
    let waiting = if c.waiting > 0 {
        format!(" ({} waiting for a maintenance window or disruption budget)", c.waiting)
    } else {
        String::new()
    };
    let progress = format!(
        "{} succeeded, {} failed, {} in progress{waiting}, {} pending of {selected} selected{denied}; maxConcurrent {cap}{incomplete}",
        c.succeeded, c.failed, c.in_progress, c.pending
    );
    if budget_exceeded {
        Verdict::stalled(
            "FailureBudgetExceeded",
            format!(
                "{} failed, more than maxFailures {}: no new instance is started ({}); {progress}",
                c.failed,
                spec.strategy.max_failures(),
                status.failed_ids.join(", ")
            ),
        )
    } else if spec.suspend {
        // Settled like a suspended ComputeInstanceAction (kubectl wait and Argo CD's `Suspended` do not hang).
        Verdict::ready(
            "Suspended",
            format!("spec.suspend is true: no admin API calls; {progress}"),
        )
    } else if done && c.expired > 0 {
        Verdict::ready(
            "Expired",
            format!(
                "{} instances were not started before notAfter (skipped as late); {progress}",
                c.expired
            ),
        )
    } else if done && selected == 0 {
        Verdict::ready("NothingSelected", "the selector matches no instance")
    } else if done && c.failed > 0 {
        Verdict::ready(
            "CompletedWithFailures",
            format!(
                "{} failed (within maxFailures {}): {}; {progress}",
                c.failed,
                spec.strategy.max_failures(),
                status.failed_ids.join(", ")
            ),
        )
    } else if done {
        Verdict::ready("Succeeded", progress)
    } else if spec.paused {
        Verdict::reconciling(
            "Paused",
            format!("spec.paused is true: no new instance is started; {progress}"),
        )
    } else {
        Verdict::reconciling("RollingOut", progress)
    }
}

/// Names the namespace and what the fleet asked for, nothing about any instance.
pub(super) fn policy_denied_message(namespace: &str, spec: &ComputeFleetActionSpec) -> String {
    format!(
        "no ComputeAccessPolicy allows namespace {namespace} to set instances to `{}` (this fleet asked for {}); nothing is listed or sent: a cluster administrator must add or widen one",
        spec.desired_state.as_str(),
        spec.selector.describe()
    )
}

pub(super) fn dry_run_message(spec: &ComputeFleetActionSpec, report: &DryRunReport, selected: u32) -> String {
    let shown = report.first_ids.join(", ");
    let more = if report.would_act as usize > report.first_ids.len() {
        ", ..."
    } else {
        ""
    };
    let held = if report.held_back > 0 {
        format!("; a maintenance window holds back {} of them now", report.held_back)
    } else {
        String::new()
    };
    format!(
        "dry run: would {} {} of {selected} selected instances{}{held}",
        spec.desired_state.action(),
        report.would_act,
        if shown.is_empty() {
            String::new()
        } else {
            format!(": {shown}{more}")
        }
    )
}

/// The Events a status change deserves: a new run's snapshot, and a run that finished or stopped.
pub fn events_between(old: &ComputeFleetActionStatus, new: &ComputeFleetActionStatus) -> Vec<Note> {
    let mut events = Vec::new();
    let key = |s: &Snapshot| (s.request_id.clone(), s.desired_state, s.selector.clone(), s.taken_at);
    if let Some(snap) = new.snapshot.as_ref()
        && old.snapshot.as_ref().map(key) != Some(key(snap))
    {
        let run = if snap.request_id.is_empty() {
            "run".to_owned()
        } else {
            format!("requestId {}", snap.request_id)
        };
        events.push(Note {
            warning: snap.incomplete,
            reason: "RunStarted".into(),
            message: format!(
                "{run}: {} instances selected{}",
                snap.instance_ids.len(),
                if snap.incomplete {
                    " (the selection kept changing while it was walked: it may miss instances)"
                } else {
                    ""
                }
            ),
        });
    }
    let reason_of = |s: &ComputeFleetActionStatus, type_: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
            .map(|c| c.reason.clone())
    };
    let message = new.message.clone().unwrap_or_default();
    let became = |type_: &str| {
        let now = reason_of(new, type_);
        (now.is_some() && now != reason_of(old, type_)).then_some(now).flatten()
    };
    if let Some(reason) = became(crate::controllers::conditions::READY) {
        events.push(Note {
            warning: reason == "CompletedWithFailures" || reason == "Expired",
            reason,
            message: message.clone(),
        });
    }
    if let Some(reason) = became(crate::controllers::conditions::STALLED) {
        events.push(Note {
            warning: true,
            reason,
            message,
        });
    }
    events
}
