//! The pure decision: (spec, status, observed instance, peers, now) -> the next step. No I/O here.
//!
//! How an action is judged (departure from the starting status, evidence for unclear answers, the settle
//! rule for invisible restarts) lives in [`super::judge`]; what follows a POST in [`super::after_post`].

use std::time::Duration;

use chrono::{DateTime, Utc};

pub use super::after_post::{after_post, first_look, merge_action_record, not_sent};
pub use super::judge::count_recent_one_shots;
use super::judge::{self, Completion, completion, departed, push_history, remember_one_shot};
use crate::api::{ApiError, Instance, InstanceStatus, PowerAction};
pub use crate::controllers::change::Hold;
use crate::controllers::conditions::{Verdict, apply_verdict};
use crate::crd::instance_action::{
    ActionRecord, ActionState, ComputeInstanceActionSpec, ComputeInstanceActionStatus, DesiredState, Enforcement,
    ObservedInstance, Phase,
};

/// What the GET of the instance gave, if one was made.
// One short-lived value per reconcile: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Observation {
    Instance(Instance),
    Failed(ApiError),
}

/// Another object that names the same instance, as far as this decision cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// `namespace/name`, for messages.
    pub key: String,
    pub desired: DesiredState,
    pub enforcement: Enforcement,
    pub suspended: bool,
    /// Its status holds an action that is not finished (Requested or Accepted).
    pub acting: bool,
}

/// Tunables of the decision.
#[derive(Clone, Debug)]
pub struct PlanSettings {
    /// Re-check of a settled object, to notice drift.
    pub resync: Duration,
    /// How long `running` must be reported after a restart/reset was accepted, when no transition was seen.
    pub settle: Duration,
    /// First poll delay after an action; doubles each poll up to `poll_max`. Short, because a restart or
    /// reset that ends before the first poll leaves nothing to see and must wait the settle time.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Retry delay for refused actions and unreachable credentials.
    pub slow_retry: Duration,
    /// Global dry run (the `--dry-run` flag).
    pub dry_run: bool,
    /// Loop protection: at most this many restart/reset actions per instance in `one_shot_window`.
    pub max_one_shots: u32,
    pub one_shot_window: Duration,
}

impl Default for PlanSettings {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            settle: Duration::from_secs(15),
            poll_min: Duration::from_millis(100),
            poll_max: Duration::from_secs(5),
            slow_retry: Duration::from_secs(60),
            dry_run: false,
            max_one_shots: 5,
            one_shot_window: Duration::from_secs(3600),
        }
    }
}

/// Everything the decision looks at.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    pub spec: &'a ComputeInstanceActionSpec,
    pub generation: i64,
    pub status: &'a ComputeInstanceActionStatus,
    pub observation: &'a Observation,
    pub peers: &'a [Peer],
    pub now: DateTime<Utc>,
    pub settings: &'a PlanSettings,
    /// Why the access policy denies this object, if it does.
    pub policy_denial: Option<&'a str>,
    /// Restart/reset actions sent to this instance (by any object) within the loop-protection window.
    pub recent_one_shots: u32,
    /// What change control (maintenance windows, disruption budgets) holds back now, per action.
    pub holds: &'a Holds,
}

/// When to look again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    After(Duration),
    /// At this delay and no other (not spread): a maintenance window opens then.
    Exactly(Duration),
    /// Per-object exponential backoff, at least the server's `Retry-After`.
    Backoff {
        retry_after: Option<Duration>,
    },
}

pub use crate::controllers::events::Note;

/// The decision: the status to hold, an action to POST (after the status with its intent is persisted), when
/// to come back, and what to tell.
#[derive(Clone, Debug)]
pub struct Plan {
    pub status: ComputeInstanceActionStatus,
    pub post: Option<PowerAction>,
    pub requeue: Requeue,
    pub events: Vec<Note>,
}

/// The status for a suspended object: nothing is called, the record stays as it is.
pub fn plan_suspended(
    input_status: &ComputeInstanceActionStatus,
    generation: i64,
    now: DateTime<Utc>,
) -> ComputeInstanceActionStatus {
    let mut status = input_status.clone();
    // Settled on purpose, so `kubectl wait` and GitOps health checks do not hang on it; Argo CD's health check
    // reads the reason and answers `Suspended`.
    let verdict = Verdict::ready(
        "Suspended",
        "spec.suspend is true: no admin API calls until it is false",
    );
    finish(&mut status, &verdict, Phase::Suspended, generation, now);
    status
}

/// Decides the next step.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut b = Builder::new(input);
    // Before anything about the instance is recorded: a denied object shows nothing of it.
    if let Some(denial) = input.policy_denial {
        return b.denied(denial);
    }
    let instance = match input.observation {
        Observation::Failed(err) => return b.observation_failed(err),
        Observation::Instance(i) => i,
    };
    b.observe(instance);
    if let Some(conflict) = contradicting_peer(input) {
        return b.stalled(
            "Conflict",
            format!(
                "{} also enforces `{}` on instance {}: neither acts until one is changed or deleted",
                conflict.key,
                conflict.desired.as_str(),
                input.spec.instance_id
            ),
            // Look again soon: the other object may be changed or deleted, which does not wake this one.
            Requeue::After(input.settings.slow_retry),
        );
    }
    match input.status.action.as_ref().filter(|a| !a.state.is_terminal()) {
        Some(open) => b.continue_action(open.clone(), instance),
        None => b.start_if_needed(instance),
    }
}

/// Another continuous level enforcer on the same instance that wants the opposite.
fn contradicting_peer<'a>(input: &'a PlanInput<'_>) -> Option<&'a Peer> {
    let mine = input.spec.desired_state;
    if !mine.is_level() || input.spec.enforcement != Enforcement::Continuous {
        return None;
    }
    input
        .peers
        .iter()
        .find(|p| !p.suspended && p.desired.is_level() && p.desired != mine && p.enforcement == Enforcement::Continuous)
}

/// Does the admin API accept `action` from this status? (A guess to avoid pointless 409s; the API decides.)
fn action_allowed_from(action: PowerAction, status: &InstanceStatus) -> bool {
    use InstanceStatus as S;
    match action {
        PowerAction::Stop => matches!(status, S::Running | S::Error),
        PowerAction::Start => matches!(status, S::Stopped | S::Error),
        PowerAction::Restart => matches!(status, S::Running),
        PowerAction::Reset => matches!(status, S::Running | S::Error),
    }
}

/// Poll delay: fast first, then doubling, capped.
pub fn poll_delay(settings: &PlanSettings, since_accept: Duration) -> Duration {
    let mut delay = settings.poll_min;
    let mut elapsed = Duration::ZERO;
    while elapsed + delay <= since_accept && delay < settings.poll_max {
        elapsed += delay;
        delay = (delay * 2).min(settings.poll_max);
    }
    delay
}

fn since(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or(Duration::ZERO)
}

struct Builder<'i, 'a> {
    input: &'i PlanInput<'a>,
    status: ComputeInstanceActionStatus,
    events: Vec<Note>,
    /// Set when change control holds the action back: by what (`status.heldBy`), until when (`heldUntil`).
    held: Option<(String, Option<DateTime<Utc>>)>,
}

impl<'i, 'a> Builder<'i, 'a> {
    fn new(input: &'i PlanInput<'a>) -> Self {
        Self {
            input,
            status: input.status.clone(),
            events: Vec::new(),
            held: None,
        }
    }

    fn spec(&self) -> &'a ComputeInstanceActionSpec {
        self.input.spec
    }

    fn event(&mut self, warning: bool, reason: &'static str, note: String) {
        self.events.push(Note {
            warning,
            reason: reason.into(),
            message: note,
        });
    }

    /// Records the observed instance; `lastSeen` moves only when something else in it changed.
    fn observe(&mut self, i: &Instance) {
        let fresh = ObservedInstance {
            status: i.status.as_str().to_owned(),
            name: i.name.clone(),
            zone: i.zone.clone(),
            last_seen: None,
        };
        let changed = self
            .status
            .instance
            .as_ref()
            .is_none_or(|old| old.status != fresh.status || old.name != fresh.name || old.zone != fresh.zone);
        if changed {
            self.status.instance = Some(ObservedInstance {
                last_seen: Some(self.input.now),
                ..fresh
            });
        }
    }

    fn done(mut self, verdict: Verdict, phase: Phase, post: Option<PowerAction>, requeue: Requeue) -> Plan {
        finish(&mut self.status, &verdict, phase, self.input.generation, self.input.now);
        self.status.held_by = self.held.as_ref().map(|(by, _)| by.clone());
        self.status.held_until = self.held.and_then(|(_, until)| until);
        Plan {
            status: self.status,
            post,
            requeue,
            events: self.events,
        }
    }

    fn stalled(self, reason: &str, message: String, requeue: Requeue) -> Plan {
        let phase = Phase::Failed;
        self.done(Verdict::stalled(reason, message), phase, None, requeue)
    }

    fn denied(mut self, message: &str) -> Plan {
        self.close_open_action(ActionState::Failed, "PolicyDenied");
        self.status.instance = None;
        let was_denied = self
            .input
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.reason == "PolicyDenied");
        if !was_denied {
            self.event(true, "PolicyDenied", message.to_owned());
        }
        // Denied objects do not poll: a policy or spec change wakes them, else the resync.
        let retry = self.input.settings.resync;
        self.stalled("PolicyDenied", message.to_owned(), Requeue::After(retry))
    }

    fn observation_failed(mut self, err: &ApiError) -> Plan {
        let s = self.input.settings;
        let id = &self.spec().instance_id;
        let message = format!("reading instance {id}: {err}");
        match err {
            ApiError::NotFound => {
                self.close_open_action(ActionState::Failed, "InstanceNotFound");
                self.stalled(
                    "InstanceNotFound",
                    format!("instance {id} does not exist in the admin API"),
                    Requeue::After(s.resync),
                )
            }
            ApiError::Unauthorized | ApiError::Forbidden | ApiError::Credentials(_) => {
                self.stalled(err.reason(), message, Requeue::After(s.slow_retry))
            }
            ApiError::BadRequest(_) | ApiError::InvalidInstanceId(_) => {
                self.stalled(err.reason(), message, Requeue::After(s.resync))
            }
            _ => {
                // Transient, or a garbled answer: say so, keep the record, back off.
                let phase = self.status.phase.unwrap_or(Phase::Pending);
                let verdict = Verdict::reconciling("AdminApiUnavailable", format!("{message}; retrying"));
                if let Some(timeout) = self.timed_out_action() {
                    return self.stalled("Timeout", timeout, Requeue::After(s.resync));
                }
                self.done(
                    verdict,
                    phase,
                    None,
                    Requeue::Backoff {
                        retry_after: err.retry_after(),
                    },
                )
            }
        }
    }

    /// If an open action has run past the timeout, closes it as failed and says why.
    fn timed_out_action(&mut self) -> Option<String> {
        let timeout = Duration::from_secs(u64::from(self.spec().timeout_seconds));
        let now = self.input.now;
        let open = self.status.action.as_ref().filter(|a| !a.state.is_terminal())?;
        if since(now, open.intent_at) <= timeout {
            return None;
        }
        let message = format!(
            "{} of instance {} did not complete within {}s",
            open.action,
            self.spec().instance_id,
            timeout.as_secs()
        );
        self.close_open_action(ActionState::Failed, "Timeout");
        self.event(true, "ActionFailed", message.clone());
        Some(message)
    }

    fn close_open_action(&mut self, state: ActionState, reason: &str) {
        if let Some(a) = self.status.action.as_mut().filter(|a| !a.state.is_terminal()) {
            a.state = state;
            a.completed_at = Some(self.input.now);
            a.reason = Some(reason.to_owned());
        }
    }

    /// Plans a POST: a new (or renewed) intent record, unless someone else is acting or this is a dry run.
    fn request(mut self, action: PowerAction, instance: &Instance, drift: bool) -> Plan {
        let s = self.input.settings;
        let spec = self.spec().clone();
        let now = self.input.now;
        if let Some(not_after) = spec.not_after.filter(|t| now > *t) {
            // Never sent, and too late now: a re-created one-shot (GitOps rebuild, restore) does not run again,
            // and a level (a schedule event's child) does not act hours after its event.
            self.close_open_action(ActionState::Failed, "Expired");
            let message = expired_message(action, &spec, not_after);
            return self.done(
                Verdict::ready("Expired", message),
                Phase::Skipped,
                None,
                Requeue::After(s.resync),
            );
        }
        let hold = self.input.holds.of(action);
        if spec.dry_run || s.dry_run {
            let mut message = format!(
                "dry run: would {action} instance {} (now {}); nothing was sent",
                spec.instance_id, instance.status
            );
            if let Some(hold) = hold {
                message.push_str(&format!("; held back now: {}", hold.message));
            }
            if self.status.message.as_deref() != Some(message.as_str()) {
                self.event(false, "DryRun", message.clone());
            }
            return self.done(
                Verdict::ready("DryRun", message),
                Phase::Skipped,
                None,
                Requeue::After(s.resync),
            );
        }
        if let Some(peer) = self.input.peers.iter().find(|p| p.acting) {
            let verdict = Verdict::reconciling(
                "WaitingForOtherAction",
                format!(
                    "{} is acting on instance {}; {action} waits for it",
                    peer.key, spec.instance_id
                ),
            );
            return self.done(verdict, Phase::Pending, None, Requeue::After(s.poll_max));
        }
        if let Some(hold) = hold {
            let phase = if drift { Phase::Succeeded } else { Phase::Pending };
            return self.held(hold, phase);
        }
        // Renew a refused/re-read intent of the same kind; otherwise start a new record.
        let renew = self
            .status
            .action
            .as_ref()
            .is_some_and(|a| !a.state.is_terminal() && a.action == action && a.request_id == spec.request_id);
        if renew {
            if let Some(a) = self.status.action.as_mut() {
                a.state = ActionState::Requested;
                a.attempts = a.attempts.saturating_add(1);
                a.reason = None;
                a.from_status = Some(instance.status.as_str().to_owned());
            }
        } else {
            if let Some(prev) = self.status.action.take() {
                push_history(&mut self.status.history, prev);
            }
            let request_id = action.is_one_shot().then(|| spec.request_id.clone()).flatten();
            self.status.action = Some(ActionRecord {
                from_status: Some(instance.status.as_str().to_owned()),
                drift,
                ..ActionRecord::intent(action, request_id, self.input.generation, now)
            });
        }
        if action.is_one_shot() {
            // From the intent on, it may run: remembered for good (bounded), so this requestId never runs again.
            remember_one_shot(&mut self.status, action, spec.request_id.as_deref());
        }
        let note = if drift {
            format!(
                "instance {} drifted to {}; requesting {action}",
                spec.instance_id, instance.status
            )
        } else {
            format!(
                "requesting {action} of instance {} (now {})",
                spec.instance_id, instance.status
            )
        };
        self.event(
            false,
            if drift { "DriftDetected" } else { "ActionRequested" },
            note.clone(),
        );
        self.done(
            Verdict::reconciling("ActionRequested", note),
            Phase::InProgress,
            Some(action),
            Requeue::After(s.poll_min),
        )
    }
}

fn expired_message(action: PowerAction, spec: &ComputeInstanceActionSpec, not_after: DateTime<Utc>) -> String {
    let again = if action.is_one_shot() {
        "set a new spec.requestId and notAfter to run it"
    } else {
        "set a later spec.notAfter (or remove it) to act again"
    };
    format!(
        "{action} of instance {} was not run: spec.notAfter ({}) passed before it was sent; {again}",
        spec.instance_id,
        not_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

use plan_escalate::{ESCALATED, escalated_suffix, is_escalation_of};

/// Closing reason of a restart/reset judged complete by the settle rule (no departure was ever visible).
const COMPLETED_ASSUMED: &str = "CompletedAssumed";

fn assumed_suffix(settle: Duration) -> String {
    format!(
        "; no status change was visible, so completion was assumed after the settle time ({}s of `running`)",
        settle.as_secs()
    )
}

fn success_message(
    spec: &ComputeInstanceActionSpec,
    status: &InstanceStatus,
    assumed: bool,
    settings: &PlanSettings,
) -> String {
    match spec.desired_state {
        DesiredState::Running | DesiredState::Stopped => {
            format!("instance {} is {status}", spec.instance_id)
        }
        d => {
            let suffix = if assumed {
                assumed_suffix(settings.settle)
            } else {
                String::new()
            };
            format!(
                "instance {} was {} and is {status}{suffix}",
                spec.instance_id,
                d.as_str()
            )
        }
    }
}

/// Fills in phase, message, conditions and observed generation.
pub(crate) fn finish(
    status: &mut ComputeInstanceActionStatus,
    verdict: &Verdict,
    phase: Phase,
    generation: i64,
    now: DateTime<Utc>,
) {
    status.phase = Some(phase);
    status.message = Some(verdict.message().to_owned());
    status.observed_generation = Some(generation);
    apply_verdict(&mut status.conditions, verdict, Some(generation), now);
}

#[path = "plan_open.rs"]
mod open;

#[path = "plan_escalate.rs"]
mod plan_escalate;

#[path = "plan_hold.rs"]
mod plan_hold;
pub use plan_hold::{HOLD_MARGIN, Holds};

#[path = "plan_start.rs"]
mod plan_start;

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
