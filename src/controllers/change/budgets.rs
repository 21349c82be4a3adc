//! Disruption budgets, purely: what counts as disrupted (read from what the objects' statuses record, so a new
//! leader counts the same), how many a budget allows, and whether one more disruption fits. No I/O.

use std::collections::HashSet;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{Instance, PowerAction};
use crate::crd::access_policy::InstanceMatch;
use crate::crd::instance_action::{ActionState, ComputeInstanceActionSpec, ComputeInstanceActionStatus, DesiredState};

/// Does this action disrupt the instance (take it down, however briefly)?
pub fn is_disruptive(action: PowerAction) -> bool {
    matches!(action, PowerAction::Stop | PowerAction::Restart | PowerAction::Reset)
}

/// Does this object disrupt its instance now, by what its status records? From the intent of a stop, restart
/// or reset until it is finished; and while a `stopped` object holds its instance stopped.
pub fn disrupts(spec: &ComputeInstanceActionSpec, status: &ComputeInstanceActionStatus) -> bool {
    let open = status
        .action
        .as_ref()
        .is_some_and(|a| is_disruptive(a.action) && !a.state.is_terminal());
    let holds_stopped = spec.desired_state == DesiredState::Stopped
        && !spec.suspend
        && status.instance.as_ref().is_some_and(|i| i.status == "stopped")
        && status
            .action
            .as_ref()
            .is_none_or(|a| a.action != PowerAction::Stop || a.state != ActionState::Failed);
    open || holds_stopped
}

/// One `ComputeDisruptionBudget`, with the set the list endpoint last returned for it.
#[derive(Clone, Debug)]
pub struct Budget {
    pub name: String,
    pub instances: InstanceMatch,
    pub max_disrupted: IntOrString,
    /// IDs of the covered instances at the last count; `None` before the first.
    pub matching: Option<std::sync::Arc<HashSet<String>>>,
}

/// Why one more disruption does not fit now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetHold {
    pub budget: String,
    pub disrupted: u32,
    /// `None`: a percentage whose matching set is not counted yet.
    pub allowed: Option<u32>,
}

/// `maxDisrupted` against the matching count: a count as written, a percentage of `matching` rounded down
/// (`None` until counted). A value that does not read (the API server's rule prevents it) allows nothing.
pub fn allowed(max: &IntOrString, matching: Option<usize>) -> Option<u32> {
    match max {
        IntOrString::Int(n) => Some(u32::try_from(*n).unwrap_or(0)),
        IntOrString::String(s) => {
            let pct: u64 = s.strip_suffix('%').and_then(|p| p.parse().ok()).unwrap_or(0).min(100);
            matching.map(|m| u32::try_from(m as u64 * pct / 100).unwrap_or(u32::MAX))
        }
    }
}

impl Budget {
    /// Does the budget cover this instance? By the last count, or by its attributes (an instance created since).
    pub fn covers(&self, id: &str, instance: Option<&Instance>) -> bool {
        self.matching.as_ref().is_some_and(|m| m.contains(id)) || self.instances.matches(id, instance)
    }

    pub fn allowed(&self) -> Option<u32> {
        allowed(&self.max_disrupted, self.matching.as_ref().map(|m| m.len()))
    }

    /// Covered instances among `disrupted` (each with what is known of it).
    pub fn count(&self, disrupted: &[(String, Option<Instance>)]) -> u32 {
        let n = disrupted.iter().filter(|(id, i)| self.covers(id, i.as_ref())).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// May `id` be disrupted now, on top of `disrupted` (instances disrupted already, without duplicates)? An
/// instance disrupted already (an escalation of its own restart) adds nothing.
pub fn admit(
    budgets: &[Budget],
    id: &str,
    instance: Option<&Instance>,
    disrupted: &[(String, Option<Instance>)],
) -> Result<(), BudgetHold> {
    if disrupted.iter().any(|(d, _)| d == id) {
        return Ok(());
    }
    for b in budgets.iter().filter(|b| b.covers(id, instance)) {
        let count = b.count(disrupted);
        match b.allowed() {
            Some(allowed) if count < allowed => {}
            allowed => {
                return Err(BudgetHold {
                    budget: b.name.clone(),
                    disrupted: count,
                    allowed,
                });
            }
        }
    }
    Ok(())
}

/// The condition message of an action a budget holds back: the budget's name, and its counts only when
/// `show_counts` (a single-tenant operator). With access policies enforced the counts stay out: they would
/// count other tenants' instances (administrators read them in the budget's own status).
pub fn held_message(action: PowerAction, hold: &BudgetHold, show_counts: bool) -> String {
    match (hold.allowed, show_counts) {
        (Some(allowed), true) => format!(
            "{action} waits: disruption budget {} allows {allowed} disrupted at once and {} are disrupted now; it is sent when one of them is back",
            hold.budget, hold.disrupted
        ),
        (Some(_), false) => format!(
            "{action} waits: disruption budget {} is spent (as many of its instances as it allows are disrupted now); it is sent when one of them is back",
            hold.budget
        ),
        (None, _) => format!(
            "{action} waits: disruption budget {} has not counted its instances yet",
            hold.budget
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::instance_action::{ActionRecord, ObservedInstance};

    fn inst(id: &str, zone: &str) -> Instance {
        serde_json::from_value(serde_json::json!({"id": id, "zone": zone, "status": "running"})).expect("instance")
    }

    fn zone_budget(max: IntOrString, matching: Option<&[&str]>) -> Budget {
        Budget {
            name: "z1-budget".into(),
            instances: InstanceMatch {
                zones: Some(vec!["z1".into()]),
                ..Default::default()
            },
            max_disrupted: max,
            matching: matching.map(|m| std::sync::Arc::new(m.iter().map(|s| s.to_string()).collect())),
        }
    }

    fn down(ids: &[(&str, &str)]) -> Vec<(String, Option<Instance>)> {
        ids.iter()
            .map(|(id, zone)| (id.to_string(), Some(inst(id, zone))))
            .collect()
    }

    #[test]
    fn allowed_counts_and_percentages() {
        for (max, matching, want) in [
            (IntOrString::Int(2), None, Some(2)),
            (IntOrString::Int(0), Some(10), Some(0)),
            (IntOrString::String("25%".into()), None, None),
            (IntOrString::String("25%".into()), Some(6), Some(1)),
            (IntOrString::String("50%".into()), Some(6), Some(3)),
            (IntOrString::String("100%".into()), Some(6), Some(6)),
            (IntOrString::String("10%".into()), Some(5), Some(0)),
            (IntOrString::String("bad".into()), Some(5), Some(0)),
        ] {
            assert_eq!(allowed(&max, matching), want, "{max:?} of {matching:?}");
        }
    }

    #[test]
    fn one_more_disruption_fits_or_waits() {
        let two = zone_budget(IntOrString::Int(2), Some(&["a", "b", "c", "d", "e", "f"]));
        let share = zone_budget(IntOrString::String("50%".into()), None);
        let a = inst("a", "z1");
        let other = inst("x", "z2");
        for (budget, id, instance, disrupted, want) in [
            (&two, "a", Some(&a), down(&[]), Ok(())),
            (&two, "a", Some(&a), down(&[("b", "z1")]), Ok(())),
            (
                &two,
                "a",
                Some(&a),
                down(&[("b", "z1"), ("c", "z1")]),
                Err(BudgetHold {
                    budget: "z1-budget".into(),
                    disrupted: 2,
                    allowed: Some(2),
                }),
            ),
            // Disrupted instances outside the budget do not count against it.
            (&two, "a", Some(&a), down(&[("b", "z1"), ("y", "z2")]), Ok(())),
            // Not covered: never held by it.
            (&two, "x", Some(&other), down(&[("b", "z1"), ("c", "z1")]), Ok(())),
            // Already disrupted (its own escalation): adds nothing.
            (&two, "b", None, down(&[("b", "z1"), ("c", "z1")]), Ok(())),
            // A member of the last count is covered even when only its ID is known.
            (
                &two,
                "d",
                None,
                down(&[("b", "z1"), ("c", "z1")]),
                Err(BudgetHold {
                    budget: "z1-budget".into(),
                    disrupted: 2,
                    allowed: Some(2),
                }),
            ),
            (
                &share,
                "a",
                Some(&a),
                down(&[]),
                Err(BudgetHold {
                    budget: "z1-budget".into(),
                    disrupted: 0,
                    allowed: None,
                }),
            ),
        ] {
            assert_eq!(
                admit(std::slice::from_ref(budget), id, instance, &disrupted),
                want,
                "{id} with {:?}",
                disrupted.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn what_counts_as_disrupted() {
        let spec = |desired: DesiredState| -> ComputeInstanceActionSpec {
            serde_json::from_value(serde_json::json!({"instanceId": "a", "desiredState": desired, "requestId": "r"}))
                .expect("spec")
        };
        let with = |action: PowerAction, state: ActionState, seen: &str| ComputeInstanceActionStatus {
            action: Some(ActionRecord {
                state,
                ..ActionRecord::intent(action, None, 1, chrono::Utc::now())
            }),
            instance: Some(ObservedInstance {
                status: seen.into(),
                name: String::new(),
                zone: String::new(),
                last_seen: None,
            }),
            ..Default::default()
        };
        use ActionState as S;
        use DesiredState as D;
        use PowerAction as P;
        for (desired, status, want) in [
            (D::Restarted, with(P::Restart, S::Requested, "running"), true),
            (D::Restarted, with(P::Restart, S::Accepted, "restarting"), true),
            (D::Restarted, with(P::Restart, S::Succeeded, "running"), false),
            (D::Restarted, with(P::Restart, S::OutcomeUnknown, "running"), false),
            (D::Stopped, with(P::Stop, S::Accepted, "stopping"), true),
            (D::Stopped, with(P::Stop, S::Succeeded, "stopped"), true),
            (D::Stopped, with(P::Stop, S::Failed, "stopped"), false),
            (D::Running, with(P::Start, S::Accepted, "starting"), false),
            (D::Running, with(P::Stop, S::Succeeded, "stopped"), false),
            (D::Stopped, ComputeInstanceActionStatus::default(), false),
        ] {
            assert_eq!(
                disrupts(&spec(desired), &status),
                want,
                "{desired:?} {:?}",
                status.action
            );
        }
        let mut suspended = spec(D::Stopped);
        suspended.suspend = true;
        assert!(!disrupts(&suspended, &with(P::Stop, S::Succeeded, "stopped")));
    }
}
