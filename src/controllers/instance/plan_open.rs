//! Following an action that is open (Requested, Rejected or Accepted): judging it by what the instance reports,
//! and confirming by evidence a one-shot whose answer proved nothing. Part of the pure planner.

use super::*;

impl Builder<'_, '_> {
    /// An action is open (Requested, Rejected or Accepted): follow it.
    pub(super) fn continue_action(mut self, open: ActionRecord, instance: &Instance) -> Plan {
        let s = self.input.settings;
        let now = self.input.now;
        let spec = self.spec().clone();
        // The spec changed under an open action (another state, another requestId).
        let still_wanted = (open.action == spec.desired_state.action() || is_escalation_of(&spec, &open))
            && (!open.action.is_one_shot() || open.request_id == spec.request_id);
        match open.state {
            ActionState::Requested if open.action.is_one_shot() => self.confirm_by_evidence(open, instance),
            ActionState::Requested | ActionState::Rejected if !still_wanted => {
                // Never happened (or a level we may redo): drop it and decide afresh.
                self.close_open_action(ActionState::Failed, "Superseded");
                self.start_if_needed(instance)
            }
            ActionState::Rejected if is_escalation_of(&spec, &open) => {
                if let Some(message) = self.timed_out_action() {
                    return self.stalled("Timeout", message, Requeue::After(s.resync));
                }
                self.renew_escalation(instance)
            }
            ActionState::Requested | ActionState::Rejected => {
                let reached = spec.desired_state.level_target().is_some_and(|t| t == instance.status);
                if !reached && let Some(message) = self.timed_out_action() {
                    return self.stalled("Timeout", message, Requeue::After(s.resync));
                }
                self.start_if_needed(instance)
            }
            ActionState::Accepted => {
                if departed(open.from_status.as_deref(), &instance.status)
                    && let Some(a) = self.status.action.as_mut()
                {
                    a.saw_transition = true;
                }
                let record = self.status.action.clone().unwrap_or(open);
                let accepted_at = record.accepted_at.unwrap_or(record.intent_at);
                let elapsed = since(now, accepted_at);
                if let Some(after) = self.escalation_after(&record)
                    && instance.status != InstanceStatus::Running
                {
                    if elapsed >= after {
                        return self.escalate(record, instance, elapsed);
                    }
                    if let Completion::Failed(why) = completion(&record, &instance.status, elapsed, s.settle) {
                        // Not back (an error): the reset is what comes next, at `after`.
                        let message = format!(
                            "{} of instance {}: {why}; escalating to reset at {}s if it is not running by then",
                            record.action,
                            spec.instance_id,
                            after.as_secs()
                        );
                        return self.done(
                            Verdict::reconciling("ActionAccepted", message),
                            Phase::InProgress,
                            None,
                            Requeue::After((after - elapsed).max(s.poll_min)),
                        );
                    }
                }
                match completion(&record, &instance.status, elapsed, s.settle) {
                    Completion::Done { assumed } => {
                        let reason = if assumed { COMPLETED_ASSUMED } else { "Completed" };
                        self.close_open_action(ActionState::Succeeded, reason);
                        let took = since(now, record.intent_at);
                        let mut note = format!(
                            "{} of instance {} completed in {:.1}s",
                            record.action,
                            spec.instance_id,
                            took.as_secs_f64()
                        );
                        if assumed {
                            note.push_str(&assumed_suffix(s.settle));
                        }
                        self.event(false, "ActionCompleted", note);
                        if !still_wanted {
                            return self.start_if_needed(instance);
                        }
                        let mut message = success_message(&spec, &instance.status, assumed, s);
                        message.push_str(&escalated_suffix(&spec, &record));
                        let verdict = Verdict::ready("Succeeded", message);
                        self.done(verdict, Phase::Succeeded, None, Requeue::After(s.resync))
                    }
                    Completion::Failed(why) => {
                        self.close_open_action(ActionState::Failed, "InstanceError");
                        let message = format!("{} of instance {}: {why}", record.action, spec.instance_id);
                        self.event(true, "ActionFailed", message.clone());
                        self.stalled("InstanceError", message, Requeue::After(s.resync))
                    }
                    Completion::Pending => {
                        if let Some(message) = self.timed_out_action() {
                            return self.stalled("Timeout", message, Requeue::After(s.resync));
                        }
                        let waiting = if record.saw_transition {
                            ""
                        } else {
                            " (queued: no change visible yet)"
                        };
                        let verdict = Verdict::reconciling(
                            "ActionAccepted",
                            format!(
                                "{} of instance {} accepted; instance is {}{waiting}",
                                record.action, spec.instance_id, instance.status
                            ),
                        );
                        // Waiting out the settle time of an invisible restart: look again right when it ends.
                        let mut next = poll_delay(s, elapsed);
                        if record.action.is_one_shot() && !record.saw_transition && elapsed < s.settle {
                            next = next.min((s.settle - elapsed).max(s.poll_min));
                        }
                        self.done(verdict, Phase::InProgress, None, Requeue::After(next))
                    }
                }
            }
            // Terminal states are filtered out by the caller.
            ActionState::Succeeded | ActionState::Failed | ActionState::OutcomeUnknown => {
                self.start_if_needed(instance)
            }
        }
    }

    /// A one-shot whose POST may have run (no clear answer, or the operator stopped after the intent): never
    /// resent. A departure from the starting status counts as acceptance; none within the settle time means
    /// the outcome is unknown.
    fn confirm_by_evidence(mut self, open: ActionRecord, instance: &Instance) -> Plan {
        let s = self.input.settings;
        let now = self.input.now;
        let id = self.spec().instance_id.clone();
        if departed(open.from_status.as_deref(), &instance.status) {
            if let Some(a) = self.status.action.as_mut() {
                a.state = ActionState::Accepted;
                a.accepted_at = Some(now);
                a.saw_transition = true;
                a.reason = None;
            }
            self.event(
                false,
                "ActionAccepted",
                format!(
                    "{} of instance {id} got no clear answer, but the instance moved from {} to {}: counted as accepted",
                    open.action,
                    open.from_status.as_deref().unwrap_or("its status"),
                    instance.status
                ),
            );
            let accepted = self.status.action.clone().unwrap_or(open);
            return self.continue_action(accepted, instance);
        }
        let waited = since(now, open.intent_at);
        if waited < s.settle {
            let why = open
                .reason
                .as_deref()
                .unwrap_or("the operator stopped before recording the answer");
            let message = format!(
                "{} of instance {id} got no clear answer ({why}); it is not resent: watching for evidence that it ran ({}s left)",
                open.action,
                (s.settle - waited).as_secs()
            );
            let next = poll_delay(s, waited).min((s.settle - waited).max(s.poll_min));
            return self.done(
                Verdict::reconciling("ConfirmingAction", message),
                Phase::InProgress,
                None,
                Requeue::After(next),
            );
        }
        self.close_open_action(ActionState::OutcomeUnknown, "OutcomeUnknown");
        let message = format!(
            "{} of instance {id} may or may not have run: no clear answer and no change of the instance within {}s; it is not resent. To run it (again), set a new spec.requestId",
            open.action,
            s.settle.as_secs()
        );
        self.event(true, "OutcomeUnknown", message.clone());
        self.stalled("OutcomeUnknown", message, Requeue::After(s.resync))
    }
}
