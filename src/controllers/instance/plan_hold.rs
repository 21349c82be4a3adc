//! Change control in the planner: what maintenance windows and disruption budgets hold back (asked before the
//! decision), and the plan of a held action (no intent, no request, back exactly when it may go).

use super::*;

/// Change control's answer, asked before the decision for each action this object may send now.
#[derive(Clone, Debug, Default)]
pub struct Holds(pub Vec<(PowerAction, Hold)>);

impl Holds {
    pub fn of(&self, action: PowerAction) -> Option<&Hold> {
        self.0.iter().find(|(a, _)| *a == action).map(|(_, h)| h)
    }
}

/// A held action looks again this long after the opening it waits for (never a moment before it).
pub const HOLD_MARGIN: Duration = Duration::from_millis(20);

impl Builder<'_, '_> {
    /// Change control holds the action back: no intent, no request. Comes back exactly when the window
    /// opens (or at a one-shot's `notAfter`, if sooner); a budget's holder is woken when a disruption ends,
    /// and looks again after `slowRetry` at the latest.
    pub(super) fn held(mut self, hold: &Hold, phase: Phase) -> Plan {
        let s = self.input.settings;
        let now = self.input.now;
        let mut wake = match hold.until {
            Some(t) => (t - now).to_std().unwrap_or_default() + HOLD_MARGIN,
            None if hold.reason == crate::controllers::change::WAITING_FOR_BUDGET => s.slow_retry,
            None => s.resync,
        };
        if self.spec().desired_state.action().is_one_shot()
            && let Some(not_after) = self.spec().not_after
        {
            wake = wake.min((not_after - now).to_std().unwrap_or_default() + HOLD_MARGIN);
        }
        self.held = Some((hold.by.clone(), hold.until));
        let new_hold = !self
            .input
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "Reconciling" && c.reason == hold.reason && c.message == hold.message);
        if new_hold {
            self.event(false, hold.reason, hold.message.clone());
        }
        self.done(
            Verdict::reconciling(hold.reason, hold.message.clone()),
            phase,
            None,
            Requeue::Exactly(wake),
        )
    }
}
