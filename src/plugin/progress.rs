//! Following one request: turns successive versions of the object into progress lines (accepted, transition
//! seen, done) and a final outcome. Pure: the caller feeds it what the watch delivers.

use crate::api::InstanceStatus;
use crate::crd::instance_action::{ActionRecord, ComputeInstanceAction, ComputeInstanceActionStatus, DesiredState};

/// What the plugin asked for: the spec generation its write produced and, for one-shots, its `requestId`.
#[derive(Clone, Debug)]
pub struct Target {
    pub generation: i64,
    pub desired: DesiredState,
    pub request_id: Option<String>,
    pub dry_run: bool,
}

/// How following the request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Ready (or, for `--dry-run`, the dry-run report).
    Done(String),
    /// Stalled, failed or suspended: nothing more will happen without a change by someone.
    Failed { reason: String, message: String },
}

/// Remembers which milestones were printed so each is printed once, in order.
#[derive(Debug)]
pub struct Tracker {
    target: Target,
    accepted: bool,
    transition: bool,
    last_note: Option<(String, String)>,
}

/// Reasons whose progress the milestones already tell; other reasons are printed as notes when they change.
const MILESTONE_REASONS: [&str; 2] = ["ActionRequested", "ActionAccepted"];

/// Settled reasons under which nothing was sent: `Expired` (past `notAfter`), `AlreadyRun` (that requestId ran
/// before), and `DryRun` when the command did not ask for one (spec.dryRun set by someone else, or the operator's
/// `--dry-run`). `--wait` reports them as failures: the person asked for an action and none happened.
pub fn nothing_ran(reason: &str, asked_dry_run: bool) -> bool {
    matches!(reason, "Expired" | "AlreadyRun") || (reason == "DryRun" && !asked_dry_run)
}

impl Tracker {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            accepted: false,
            transition: false,
            last_note: None,
        }
    }

    /// Lines to print for this version of the object, and the outcome once there is one. Versions whose status
    /// describes an older spec (before the plugin's write) are ignored.
    pub fn observe(&mut self, object: &ComputeInstanceAction) -> (Vec<String>, Option<Outcome>) {
        let mut lines = Vec::new();
        let Some(status) = object.status.as_ref() else {
            return (lines, None);
        };
        if status.observed_generation.unwrap_or(0) < self.target.generation {
            return (lines, None);
        }
        let record = self.own_record(status);
        if let Some((r, accepted_at)) = record.and_then(|r| r.accepted_at.map(|t| (r, t)))
            && !self.accepted
        {
            self.accepted = true;
            lines.push(format!(
                "accepted: the admin API accepted {} at {} (attempt {})",
                r.action,
                accepted_at.format("%H:%M:%S"),
                r.attempts
            ));
        }
        let observed = status.instance.as_ref().map(|i| i.status.as_str()).unwrap_or("");
        let moving = !observed.is_empty() && InstanceStatus::parse(observed).is_transitional();
        if self.accepted && !self.transition && (record.is_some_and(|r| r.saw_transition) || moving) {
            self.transition = true;
            // Progress is not written while an action runs (fewer writes): the record may tell it only at the end.
            let line = match (moving, record.and_then(|r| r.from_status.as_deref())) {
                (true, _) => format!("transition seen: instance is {observed}"),
                (false, Some(from)) => format!("transition seen: instance left {from}"),
                (false, None) => "transition seen: instance is in transition".to_owned(),
            };
            lines.push(line);
        }
        let condition = |type_: &str| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")
        };
        if let Some(ready) = condition("Ready") {
            // Settled on purpose, but nothing happens until someone sets spec.suspend back to false.
            if ready.reason == "Suspended" || nothing_ran(&ready.reason, self.target.dry_run) {
                return (lines, Some(failed(&ready.reason, &ready.message)));
            }
            lines.push(format!("done: {}", ready.message));
            return (lines, Some(Outcome::Done(ready.message.clone())));
        }
        if let Some(stalled) = condition("Stalled") {
            return (lines, Some(failed(&stalled.reason, &stalled.message)));
        }
        if let Some(busy) = condition("Reconciling") {
            match busy.reason.as_str() {
                "DryRun" if self.target.dry_run => {
                    lines.push(format!("done: {}", busy.message));
                    return (lines, Some(Outcome::Done(busy.message.clone())));
                }
                "DryRun" => return (lines, Some(failed(&busy.reason, &busy.message))),
                // Nothing happens until someone sets spec.suspend back to false: waiting would only time out.
                "Suspended" => return (lines, Some(failed(&busy.reason, &busy.message))),
                reason if MILESTONE_REASONS.contains(&reason) => {}
                reason => {
                    let note = (reason.to_owned(), busy.message.clone());
                    if self.last_note.as_ref() != Some(&note) {
                        lines.push(format!("waiting: {reason}: {}", busy.message));
                        self.last_note = Some(note);
                    }
                }
            }
        }
        (lines, None)
    }

    /// The action record that answers this request: the one-shot's `requestId`, or the level's generation.
    fn own_record<'s>(&self, status: &'s ComputeInstanceActionStatus) -> Option<&'s ActionRecord> {
        let t = &self.target;
        status.action.as_ref().filter(|a| {
            a.action == t.desired.action()
                && if t.desired.is_level() {
                    a.generation >= t.generation
                } else {
                    a.request_id == t.request_id
                }
        })
    }
}

fn failed(reason: &str, message: &str) -> Outcome {
    Outcome::Failed {
        reason: reason.to_owned(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PowerAction;
    use crate::crd::instance_action::{
        ActionState, ComputeInstanceActionSpec, Condition, Enforcement, ObservedInstance,
    };
    use chrono::{TimeZone, Utc};

    fn object(generation: i64, observed: Option<i64>, cond: Option<(&str, &str, &str)>) -> ComputeInstanceAction {
        let mut o = ComputeInstanceAction::new(
            "instance-i-1",
            ComputeInstanceActionSpec {
                instance_id: "i-1".into(),
                desired_state: DesiredState::Restarted,
                request_id: Some("r2".into()),
                timeout_seconds: 600,
                enforcement: Enforcement::Continuous,
                dry_run: false,
                suspend: false,
                not_after: None,
                escalation: None,
            },
        );
        o.metadata.generation = Some(generation);
        let mut status = ComputeInstanceActionStatus {
            observed_generation: observed,
            ..Default::default()
        };
        if let Some((type_, reason, message)) = cond {
            status.conditions.push(Condition {
                type_: type_.into(),
                status: "True".into(),
                observed_generation: observed,
                last_transition_time: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
                reason: reason.into(),
                message: message.into(),
            });
        }
        o.status = Some(status);
        o
    }

    fn with_record(
        mut o: ComputeInstanceAction,
        rid: &str,
        state: ActionState,
        transition: bool,
    ) -> ComputeInstanceAction {
        let t = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let s = o.status.as_mut().unwrap();
        s.action = Some(ActionRecord {
            action: PowerAction::Restart,
            request_id: Some(rid.into()),
            generation: 2,
            state,
            intent_at: t,
            accepted_at: (state != ActionState::Requested).then_some(t),
            completed_at: None,
            attempts: 1,
            from_status: Some("running".into()),
            saw_transition: transition,
            reason: None,
            drift: false,
        });
        o
    }

    fn with_instance(mut o: ComputeInstanceAction, status: &str) -> ComputeInstanceAction {
        o.status.as_mut().unwrap().instance = Some(ObservedInstance {
            status: status.into(),
            ..Default::default()
        });
        o
    }

    fn restart_target() -> Target {
        Target {
            generation: 2,
            desired: DesiredState::Restarted,
            request_id: Some("r2".into()),
            dry_run: false,
        }
    }

    #[test]
    fn a_restart_is_followed_from_acceptance_to_done_each_line_once() {
        let mut t = Tracker::new(restart_target());
        // The status of the previous request (generation 1, Ready) is not this request's answer.
        let old = with_record(
            object(2, Some(1), Some(("Ready", "Succeeded", "old"))),
            "r1",
            ActionState::Succeeded,
            true,
        );
        assert_eq!(t.observe(&old), (vec![], None));
        let requested = with_record(
            object(2, Some(2), Some(("Reconciling", "ActionRequested", "restart"))),
            "r2",
            ActionState::Requested,
            false,
        );
        assert_eq!(t.observe(&requested), (vec![], None));
        let accepted = with_record(
            object(2, Some(2), Some(("Reconciling", "ActionAccepted", "polling"))),
            "r2",
            ActionState::Accepted,
            false,
        );
        let (lines, outcome) = t.observe(&accepted);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("accepted: the admin API accepted restart at "),
            "{lines:?}"
        );
        assert_eq!(outcome, None);
        assert_eq!(t.observe(&accepted), (vec![], None), "printed twice");
        let moving = with_instance(accepted.clone(), "restarting");
        assert_eq!(t.observe(&moving).0, vec!["transition seen: instance is restarting"]);
        assert_eq!(t.observe(&moving).0, Vec::<String>::new());
        let done = with_record(
            object(2, Some(2), Some(("Ready", "Succeeded", "instance i-1 restarted"))),
            "r2",
            ActionState::Succeeded,
            true,
        );
        let (lines, outcome) = t.observe(&done);
        assert_eq!(lines, vec!["done: instance i-1 restarted"]);
        assert_eq!(outcome, Some(Outcome::Done("instance i-1 restarted".into())));
    }

    #[test]
    fn a_transition_only_recorded_in_the_status_is_shown_before_done() {
        let mut t = Tracker::new(restart_target());
        let done = with_record(
            object(2, Some(2), Some(("Ready", "Succeeded", "ok"))),
            "r2",
            ActionState::Succeeded,
            true,
        );
        let (lines, _) = t.observe(&done);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("accepted:"));
        assert_eq!(lines[1], "transition seen: instance left running");
        assert_eq!(lines[2], "done: ok");
    }

    #[test]
    fn final_and_waiting_conditions() {
        type Case<'a> = (Option<(&'a str, &'a str, &'a str)>, bool, Vec<&'a str>, Option<Outcome>);
        let table: [Case<'_>; 11] = [
            (
                Some(("Stalled", "PolicyDenied", "no policy allows it")),
                false,
                vec![],
                Some(failed("PolicyDenied", "no policy allows it")),
            ),
            (
                Some(("Reconciling", "Suspended", "spec.suspend is true")),
                false,
                vec![],
                Some(failed("Suspended", "spec.suspend is true")),
            ),
            (
                Some(("Reconciling", "DryRun", "dry run: would restart")),
                true,
                vec!["done: dry run: would restart"],
                Some(Outcome::Done("dry run: would restart".into())),
            ),
            // A dry-run report the plugin did not ask for (the operator runs with --dry-run, or someone else set
            // spec.dryRun): nothing ran, so --wait fails.
            (
                Some(("Reconciling", "DryRun", "dry run: would restart")),
                false,
                vec![],
                Some(failed("DryRun", "dry run: would restart")),
            ),
            (
                Some(("Ready", "DryRun", "dry run: would restart")),
                false,
                vec![],
                Some(failed("DryRun", "dry run: would restart")),
            ),
            (
                Some(("Ready", "DryRun", "dry run: would restart")),
                true,
                vec!["done: dry run: would restart"],
                Some(Outcome::Done("dry run: would restart".into())),
            ),
            // Settled, but nothing was sent.
            (
                Some(("Ready", "Expired", "not sent before notAfter")),
                false,
                vec![],
                Some(failed("Expired", "not sent before notAfter")),
            ),
            (
                Some(("Ready", "AlreadyRun", "ran before")),
                false,
                vec![],
                Some(failed("AlreadyRun", "ran before")),
            ),
            (
                Some(("Ready", "Succeeded", "restarted")),
                false,
                vec!["done: restarted"],
                Some(Outcome::Done("restarted".into())),
            ),
            (
                Some(("Reconciling", "WaitingForOtherAction", "ns/x is acting")),
                false,
                vec!["waiting: WaitingForOtherAction: ns/x is acting"],
                None,
            ),
            (None, false, vec![], None),
        ];
        for (cond, dry_run, want_lines, want_outcome) in table {
            let mut t = Tracker::new(Target {
                dry_run,
                ..restart_target()
            });
            let (lines, outcome) = t.observe(&object(2, Some(2), cond));
            assert_eq!(lines, want_lines, "{cond:?}");
            assert_eq!(outcome, want_outcome, "{cond:?}");
        }
    }

    #[test]
    fn a_level_counts_its_generation_not_a_request_id() {
        let mut t = Tracker::new(Target {
            generation: 3,
            desired: DesiredState::Stopped,
            request_id: None,
            dry_run: false,
        });
        let mut o = object(3, Some(3), Some(("Reconciling", "ActionAccepted", "stopping")));
        o = with_record(o, "ignored", ActionState::Accepted, false);
        let r = o.status.as_mut().unwrap().action.as_mut().unwrap();
        r.action = PowerAction::Stop;
        r.generation = 3;
        r.request_id = None;
        let o = with_instance(o, "stopping");
        let (lines, _) = t.observe(&o);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("accepted: the admin API accepted stop"));
        assert_eq!(lines[1], "transition seen: instance is stopping");
        // A record from an older generation is not this request's.
        let mut t = Tracker::new(Target {
            generation: 4,
            desired: DesiredState::Stopped,
            request_id: None,
            dry_run: false,
        });
        let mut stale = o.clone();
        stale.status.as_mut().unwrap().observed_generation = Some(4);
        assert_eq!(t.observe(&stale).0, Vec::<String>::new());
    }
}
