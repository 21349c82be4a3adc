//! Soft, then hard: a `restarted` object's escalation to one `reset` when the accepted restart has not brought
//! the instance back to `running` within `escalation.after`. Part of the pure planner.
//!
//! Rules: only from an accepted restart (a clear 202, or evidence that an unclear one ran: the confirmation
//! turns it into accepted first); at most once per requestId (its own digest in `sentOneShots`); through the
//! same gates as any action (a window or budget that holds the reset back keeps the restart open and waits).

use super::*;

/// Closing reason of a restart that was escalated to a reset.
pub const ESCALATED: &str = "Escalated";

/// Is `record` the reset this object's escalation sends for its restart?
pub fn is_escalation_of(spec: &ComputeInstanceActionSpec, record: &ActionRecord) -> bool {
    spec.desired_state == DesiredState::Restarted && spec.escalation.is_some() && record.action == PowerAction::Reset
}

/// Added to the success message when the reset, not the restart, brought the instance back.
pub fn escalated_suffix(spec: &ComputeInstanceActionSpec, record: &ActionRecord) -> String {
    if is_escalation_of(spec, record) {
        "; the restart did not bring it back, so it was escalated to a reset".into()
    } else {
        String::new()
    }
}

impl Builder<'_, '_> {
    /// The escalation's reset was refused or not sent (409, a lost lease): asked again like any refused
    /// one-shot, never as a new request (the restart is not run again either).
    pub(super) fn renew_escalation(self, instance: &Instance) -> Plan {
        self.request(PowerAction::Reset, instance, false)
    }

    /// How long the open `record` may take before escalating, if it is a restart that may still escalate.
    pub(super) fn escalation_after(&self, record: &ActionRecord) -> Option<Duration> {
        let spec = self.spec();
        let after = spec.escalation.as_ref()?.after()?;
        let may = record.action == PowerAction::Restart
            && spec.desired_state == DesiredState::Restarted
            && record.request_id == spec.request_id
            && !judge::one_shot_was_sent(&self.status, PowerAction::Reset, spec.request_id.as_deref());
        may.then_some(after)
    }

    /// The restart was accepted `elapsed` ago and the instance is not running: one reset, unless change
    /// control holds it back (then the restart stays open and the object waits).
    pub(super) fn escalate(mut self, restart: ActionRecord, instance: &Instance, elapsed: Duration) -> Plan {
        let spec = self.spec().clone();
        if let Some(hold) = self.input.holds.of(PowerAction::Reset) {
            let hold = Hold {
                message: format!(
                    "restart of instance {} did not bring it back within {}s; the reset it escalates to is held back: {}",
                    spec.instance_id,
                    elapsed.as_secs(),
                    hold.message
                ),
                ..hold.clone()
            };
            return self.held(&hold, Phase::InProgress);
        }
        let note = format!(
            "{} of instance {} was accepted {}s ago, but the instance is {}, not running: escalating to one reset",
            restart.action,
            spec.instance_id,
            elapsed.as_secs(),
            instance.status
        );
        self.close_open_action(ActionState::Failed, ESCALATED);
        self.event(true, "Escalated", note.clone());
        let mut plan = self.request(PowerAction::Reset, instance, false);
        if plan.post == Some(PowerAction::Reset) {
            let message = format!("{note}; requesting reset (now {})", instance.status);
            for c in plan
                .status
                .conditions
                .iter_mut()
                .filter(|c| c.reason == "ActionRequested")
            {
                c.message = message.clone();
            }
            plan.status.message = Some(message);
        }
        plan
    }
}
