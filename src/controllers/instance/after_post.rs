//! What follows the answer to a POST whose intent was persisted: accepted, refused (safe to try again),
//! or an answer that proves nothing (kept open and confirmed by evidence, never resent for one-shots).

use chrono::{DateTime, Utc};

use super::judge::departed;
use super::plan::{Note, Plan, PlanSettings, Requeue, finish};
use crate::api::{ApiError, InstanceStatus};
use crate::controllers::conditions::Verdict;
use crate::crd::instance_action::{ActionState, ComputeInstanceActionSpec, ComputeInstanceActionStatus, Phase};

/// What a look at the instance right after an accepted restart/reset adds: the instance already left
/// `fromStatus` (a transition under way, or even over) is proof that the action ran. Without it, a transition
/// shorter than the time to the first poll (a loaded controller, a fast hypervisor) leaves nothing to see and
/// completion waits for the settle time.
pub fn first_look(status: &ComputeInstanceActionStatus, seen: &InstanceStatus) -> ComputeInstanceActionStatus {
    let mut status = status.clone();
    if let Some(a) = status.action.as_mut()
        && a.state == ActionState::Accepted
        && a.action.is_one_shot()
        && departed(a.from_status.as_deref(), seen)
    {
        a.saw_transition = true;
    }
    status
}

/// What follows the answer to a POST whose intent was persisted.
pub fn after_post(
    status: &ComputeInstanceActionStatus,
    spec: &ComputeInstanceActionSpec,
    generation: i64,
    result: &Result<(), ApiError>,
    now: DateTime<Utc>,
    settings: &PlanSettings,
) -> Plan {
    let mut status = status.clone();
    let mut events = Vec::new();
    let Some(action) = status.action.clone() else {
        let verdict = Verdict::reconciling("ActionRequested", "no action record");
        finish(&mut status, &verdict, Phase::Pending, generation, now);
        return Plan {
            status,
            post: None,
            requeue: Requeue::After(settings.poll_min),
            events,
        };
    };
    let id = &spec.instance_id;
    let set = |status: &mut ComputeInstanceActionStatus, state: ActionState, reason: Option<&str>| {
        if let Some(a) = status.action.as_mut() {
            a.state = state;
            a.reason = reason.map(str::to_owned);
            match state {
                ActionState::Accepted => a.accepted_at = Some(now),
                s if s.is_terminal() => a.completed_at = Some(now),
                _ => {}
            }
        }
    };
    let (verdict, phase, requeue) = match result {
        Ok(()) => {
            // No Event: "requested" and "completed" tell the story (at most two Events per action).
            set(&mut status, ActionState::Accepted, None);
            let note = format!("{} of instance {id} accepted by the admin API", action.action);
            (
                Verdict::reconciling("ActionAccepted", note),
                Phase::InProgress,
                Requeue::After(settings.poll_min),
            )
        }
        Err(ApiError::NotFound) => {
            set(&mut status, ActionState::Failed, Some("InstanceNotFound"));
            let note = format!("instance {id} does not exist in the admin API");
            events.push(Note {
                warning: true,
                reason: "ActionFailed".into(),
                message: note.clone(),
            });
            (
                Verdict::stalled("InstanceNotFound", note),
                Phase::Failed,
                Requeue::After(settings.resync),
            )
        }
        Err(ApiError::BadRequest(_) | ApiError::InvalidInstanceId(_)) => {
            let err = result.as_ref().err().map(ToString::to_string).unwrap_or_default();
            set(&mut status, ActionState::Failed, Some("BadRequest"));
            events.push(Note {
                warning: true,
                reason: "ActionFailed".into(),
                message: err.clone(),
            });
            (
                Verdict::stalled("BadRequest", err),
                Phase::Failed,
                Requeue::After(settings.resync),
            )
        }
        Err(e @ (ApiError::Unauthorized | ApiError::Forbidden | ApiError::Credentials(_))) => {
            set(&mut status, ActionState::Rejected, Some(e.reason()));
            let note = format!(
                "{} of instance {id} refused: {e}; retrying every {}s",
                action.action,
                settings.slow_retry.as_secs()
            );
            events.push(Note {
                warning: true,
                reason: "ActionFailed".into(),
                message: note.clone(),
            });
            (
                Verdict::stalled(e.reason(), note),
                Phase::Failed,
                Requeue::After(settings.slow_retry),
            )
        }
        Err(ApiError::Conflict) => {
            // 409: look again. Not carried out, so it may be tried again after a fresh read.
            set(&mut status, ActionState::Rejected, Some("Conflict"));
            let note = format!(
                "admin API answered 409 to {} of instance {id}; re-reading the instance",
                action.action
            );
            (
                Verdict::reconciling("InstanceBusy", note),
                Phase::InProgress,
                Requeue::Backoff { retry_after: None },
            )
        }
        Err(e) if !e.may_have_reached_server() => {
            set(&mut status, ActionState::Rejected, Some(e.reason()));
            let note = format!("{} of instance {id} not carried out: {e}; retrying", action.action);
            (
                Verdict::reconciling("AdminApiUnavailable", note),
                Phase::InProgress,
                Requeue::Backoff {
                    retry_after: e.retry_after(),
                },
            )
        }
        Err(e) if action.action.is_one_shot() => {
            // The answer proves nothing (a gateway may answer 503 after the action ran): never resend, look
            // for evidence instead. The record stays `Requested` until the instance departs from its status
            // (accepted) or the settle time passes without it (outcome unknown).
            set(&mut status, ActionState::Requested, Some(e.reason()));
            let note = format!(
                "{} of instance {id} got no clear answer ({e}); it is not resent: watching the instance for {}s for evidence that it ran",
                action.action,
                settings.settle.as_secs()
            );
            // Look at the instance soon: the evidence (a departure) may be short-lived. The answer's Retry-After
            // is about resending the POST, which never happens here.
            (
                Verdict::reconciling("ConfirmingAction", note),
                Phase::InProgress,
                Requeue::After(settings.poll_min),
            )
        }
        Err(e) => {
            // A level: the instance will tell. Keep the intent open and re-read it.
            let note = format!("{} of instance {id}: {e}; re-reading the instance", action.action);
            (
                Verdict::reconciling("AdminApiUnavailable", note),
                Phase::InProgress,
                Requeue::Backoff {
                    retry_after: e.retry_after(),
                },
            )
        }
    };
    finish(&mut status, &verdict, phase, generation, now);
    Plan {
        status,
        post: None,
        requeue,
        events,
    }
}

/// The status for an action that was planned but not sent after all (the lease was lost, `notAfter` passed):
/// the record says it was refused before it left, so whoever decides next may decide afresh.
pub fn not_sent(status: &ComputeInstanceActionStatus, reason: &str, now: DateTime<Utc>) -> ComputeInstanceActionStatus {
    let mut status = status.clone();
    if let Some(a) = status.action.as_mut().filter(|a| a.state == ActionState::Requested) {
        a.state = ActionState::Rejected;
        a.reason = Some(reason.to_owned());
        // Never sent: it does not count as a sent one-shot.
        let digest = super::judge::one_shot_digest(a.action, a.request_id.as_deref());
        if status.sent_one_shots.last() == Some(&digest) {
            status.sent_one_shots.pop();
        }
    }
    let message = format!("action not sent ({reason}); deciding again");
    let generation = status.observed_generation.unwrap_or(0);
    finish(
        &mut status,
        &Verdict::reconciling("NotSent", message),
        Phase::Pending,
        generation,
        now,
    );
    status
}

/// After a conflicting write, the object as re-read with only this action's record taken from `ours`: `None`
/// when someone else (a successor after a lease change) already recorded an outcome for it, or replaced it.
pub fn merge_action_record(
    current: &ComputeInstanceActionStatus,
    ours: &ComputeInstanceActionStatus,
) -> Option<ComputeInstanceActionStatus> {
    let mine = ours.action.as_ref()?;
    let theirs = current.action.as_ref()?;
    let same_action = theirs.action == mine.action && theirs.intent_at == mine.intent_at;
    if !same_action || theirs.state != ActionState::Requested {
        return None;
    }
    let mut merged = current.clone();
    merged.action = Some(mine.clone());
    for digest in &ours.sent_one_shots {
        if !merged.sent_one_shots.contains(digest) {
            merged.sent_one_shots.push(digest.clone());
        }
    }
    Some(merged)
}
