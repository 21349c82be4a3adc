//! Deciding whether an action is needed when none is open: a level against the instance's status (drift
//! included), a one-shot against everything it answered or sent before. Part of the pure planner.

use super::*;

impl Builder<'_, '_> {
    /// No action open: decide whether one is needed.
    pub(super) fn start_if_needed(self, instance: &Instance) -> Plan {
        if self.spec().desired_state.is_level() {
            self.level(instance)
        } else {
            self.one_shot(instance)
        }
    }

    fn level(mut self, instance: &Instance) -> Plan {
        let s = self.input.settings;
        let spec = self.spec().clone();
        let target = spec.desired_state.level_target().unwrap_or(InstanceStatus::Running);
        let action = spec.desired_state.action();
        let last = self.status.action.as_ref();
        // Converged before for this generation: a wrong state now is drift.
        let converged_before = last.is_some_and(|a| {
            a.state == ActionState::Succeeded && a.generation == self.input.generation && a.action == action
        }) || (self.status.observed_generation == Some(self.input.generation)
            && self.status.phase == Some(Phase::Succeeded));
        if instance.status == target {
            // A re-read intent (crash, lost answer) whose level is reached is done.
            self.close_open_action(ActionState::Succeeded, "Completed");
            let verdict = Verdict::ready("Succeeded", success_message(&spec, &instance.status, false, s));
            return self.done(verdict, Phase::Succeeded, None, Requeue::After(s.resync));
        }
        if instance.status.is_transitional() {
            let verdict = Verdict::reconciling(
                "WaitingForInstance",
                format!(
                    "instance {} is {}; waiting for it to settle",
                    spec.instance_id, instance.status
                ),
            );
            let phase = if converged_before {
                Phase::Succeeded
            } else {
                Phase::InProgress
            };
            return self.done(verdict, phase, None, Requeue::After(s.poll_max));
        }
        if converged_before && spec.enforcement == Enforcement::Once {
            let mut b = self;
            b.close_open_action(ActionState::Failed, "Superseded");
            let message = format!(
                "instance {} drifted to {} after converging to {}; enforcement is once, so it is left alone",
                spec.instance_id, instance.status, target
            );
            if b.status.phase == Some(Phase::Succeeded)
                && b.status
                    .instance
                    .as_ref()
                    .is_some_and(|i| i.last_seen == Some(b.input.now))
            {
                b.event(false, "DriftIgnored", message.clone());
            }
            return b.done(
                Verdict::ready("ConvergedOnce", message),
                Phase::Succeeded,
                None,
                Requeue::After(s.resync),
            );
        }
        if instance.status == InstanceStatus::Deleting {
            return self.stalled(
                "InstanceDeleting",
                format!("instance {} is being deleted", spec.instance_id),
                Requeue::After(s.resync),
            );
        }
        self.request(action, instance, converged_before)
    }

    fn one_shot(self, instance: &Instance) -> Plan {
        let s = self.input.settings;
        let spec = self.spec().clone();
        let action = spec.desired_state.action();
        // At most once per (object, action, requestId): any record that already answered it, then the digests
        // of every one-shot this object ever sent (the history is short, the digests are not).
        // The newest first: after an escalation, the reset's record answers the request, not the restart's.
        let answered = self
            .status
            .action
            .iter()
            .chain(self.status.history.iter().rev())
            .find(|a| {
                (a.action == action || is_escalation_of(&spec, a))
                    && a.request_id == spec.request_id
                    && a.state.is_terminal()
                    && a.reason.as_deref() != Some(ESCALATED)
            })
            .cloned();
        let rid = spec.request_id.as_deref().unwrap_or("<none>");
        // A refused attempt of this very request (409, not sent) is renewed, not "already run".
        let renewing = self
            .status
            .action
            .as_ref()
            .is_some_and(|a| !a.state.is_terminal() && a.action == action && a.request_id == spec.request_id);
        if !renewing && answered.is_none() && judge::one_shot_was_sent(&self.status, action, spec.request_id.as_deref())
        {
            let message = format!(
                "{action} for requestId {rid} already ran on this object (or may have); it never runs twice: set a new spec.requestId to run it again"
            );
            return self.done(
                Verdict::ready("AlreadyRun", message),
                Phase::Skipped,
                None,
                Requeue::After(s.resync),
            );
        }
        if let Some(record) = answered {
            return match record.state {
                ActionState::Succeeded => {
                    // The same message as at completion, so a resync finds nothing to write.
                    let assumed = record.reason.as_deref() == Some(COMPLETED_ASSUMED);
                    let mut message = success_message(&spec, &instance.status, assumed, s);
                    message.push_str(&escalated_suffix(&spec, &record));
                    let verdict = Verdict::ready("Succeeded", message);
                    self.done(verdict, Phase::Succeeded, None, Requeue::After(s.resync))
                }
                ActionState::OutcomeUnknown => self.stalled(
                    "OutcomeUnknown",
                    format!("the outcome of {} for requestId {rid} is unknown and it is not resent; set a new spec.requestId to run it again", record.action),
                    Requeue::After(s.resync),
                ),
                _ => {
                    let reason = record.reason.clone().unwrap_or_else(|| "Failed".into());
                    self.stalled(
                        &reason,
                        format!("{} for requestId {rid} failed ({reason}); set a new spec.requestId to try again", record.action),
                        Requeue::After(s.resync),
                    )
                }
            };
        }
        if instance.status.is_transitional() {
            let verdict = Verdict::reconciling(
                "WaitingForInstance",
                format!(
                    "instance {} is {}; {action} waits for it to settle",
                    spec.instance_id, instance.status
                ),
            );
            return self.done(verdict, Phase::Pending, None, Requeue::After(s.poll_max));
        }
        let recent = self.input.recent_one_shots;
        if recent >= s.max_one_shots {
            let message = format!(
                "instance {} had {recent} restart/reset actions in the last {}s (limit {}); waiting so a runaway automation cannot reboot it in a loop",
                spec.instance_id,
                s.one_shot_window.as_secs(),
                s.max_one_shots
            );
            return self.stalled("RateLimited", message, Requeue::After(s.slow_retry));
        }
        if !action_allowed_from(action, &instance.status) {
            return self.stalled(
                "InvalidInstanceState",
                format!(
                    "instance {} is {}; {action} needs a running instance",
                    spec.instance_id, instance.status
                ),
                Requeue::After(s.slow_retry),
            );
        }
        self.request(action, instance, false)
    }
}
