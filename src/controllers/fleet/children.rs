//! The fleet's child ComputeInstanceActions, purely: their deterministic names, the object a fleet creates,
//! the spec fields a fleet keeps in step, and how a child's status reads as an outcome.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::controllers::conditions::{READY, STALLED};
use crate::crd::fleet_action::{ComputeFleetAction, ComputeFleetActionSpec};
use crate::crd::instance_action::{
    ComputeInstanceAction, ComputeInstanceActionSpec, DEFAULT_TIMEOUT_SECONDS, DesiredState, Phase,
};

pub use crate::crd::fleet_action::{FLEET_LABEL, fleet_label_value};
use crate::crd::fleet_action::{NAME_PREFIX_MAX, stable_hash, truncated};

/// What identifies one child: the instance and the run (desired state, and requestId for one-shots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildKey<'a> {
    pub fleet_uid: &'a str,
    pub instance_id: &'a str,
    pub desired_state: DesiredState,
    /// `None` for levels.
    pub request_id: Option<&'a str>,
}

/// `<fleet name, at most 52 chars>-<10 hex digits>`: the same for the same fleet, instance and run, so a
/// restarted controller finds the children it created, and a new run never collides with an old one.
pub fn child_name(fleet_name: &str, key: &ChildKey<'_>) -> String {
    let hash = stable_hash(&[
        key.fleet_uid,
        key.instance_id,
        key.desired_state.as_str(),
        key.request_id.unwrap_or(""),
    ]);
    format!(
        "{}-{:010x}",
        truncated(fleet_name, NAME_PREFIX_MAX),
        hash & 0xff_ffff_ffff
    )
}

/// The spec a child of this fleet has for `instance_id`.
pub fn child_spec(spec: &ComputeFleetActionSpec, instance_id: &str) -> ComputeInstanceActionSpec {
    let one_shot = !spec.desired_state.is_level();
    ComputeInstanceActionSpec {
        instance_id: instance_id.to_owned(),
        desired_state: spec.desired_state,
        request_id: if one_shot { spec.request_id.clone() } else { None },
        timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
        enforcement: spec.enforcement,
        dry_run: spec.dry_run,
        suspend: spec.suspend,
        // A run (one-shots, and `once` levels such as a schedule event's) ends at notAfter for every child, so a
        // child created in time but not sent in time (the operator was down) does not act hours late.
        not_after: if super::runs::run_kind(spec) == super::runs::RunKind::Level {
            None
        } else {
            spec.not_after
        },
        escalation: None,
    }
}

/// The fields a fleet keeps in step on existing children (they never make a child act on its own:
/// `suspend` and `dryRun` stop calls, `enforcement` only decides about later drift).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncedFields {
    pub suspend: bool,
    pub dry_run: bool,
    pub enforcement: crate::crd::instance_action::Enforcement,
}

impl SyncedFields {
    pub fn of_fleet(spec: &ComputeFleetActionSpec) -> Self {
        Self {
            suspend: spec.suspend,
            dry_run: spec.dry_run,
            enforcement: spec.enforcement,
        }
    }

    pub fn of_child(spec: &ComputeInstanceActionSpec) -> Self {
        Self {
            suspend: spec.suspend,
            dry_run: spec.dry_run,
            enforcement: spec.enforcement,
        }
    }
}

/// The child object to create: owned by the fleet (controller, blockOwnerDeletion) so that deleting the fleet
/// garbage-collects it, labelled with the fleet's name.
pub fn child_object(fleet: &ComputeFleetAction, name: &str, instance_id: &str) -> ComputeInstanceAction {
    let owner = OwnerReference {
        api_version: ComputeFleetAction::api_version(&()).into_owned(),
        kind: ComputeFleetAction::kind(&()).into_owned(),
        name: fleet.name_any(),
        uid: fleet.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    ComputeInstanceAction {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: fleet.namespace(),
            labels: Some([(FLEET_LABEL.to_owned(), fleet_label_value(&fleet.name_any()))].into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: child_spec(&fleet.spec, instance_id),
        status: None,
    }
}

/// How a child stands, as the fleet counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Created and not finished (including not yet seen by the instance controller).
    InProgress,
    Succeeded,
    /// Ended Stalled or Failed; the reason is the child's.
    Failed {
        reason: String,
    },
    /// The child's own policy check denied it (the policy changed after the fleet selected the instance).
    Denied,
    /// A one-shot child that ended Ready/Expired: its `notAfter` passed before it was sent.
    Expired,
}

impl Outcome {
    pub fn in_flight(&self) -> bool {
        matches!(self, Self::InProgress)
    }
}

/// A child as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildView {
    pub name: String,
    pub instance_id: String,
    pub desired_state: DesiredState,
    pub request_id: Option<String>,
    pub synced: SyncedFields,
    pub outcome: Outcome,
    /// In flight, but held back by a maintenance window or a disruption budget (nothing sent yet).
    pub held: bool,
}

impl ChildView {
    pub fn of(child: &ComputeInstanceAction) -> Self {
        Self {
            name: child.name_any(),
            instance_id: child.spec.instance_id.clone(),
            desired_state: child.spec.desired_state,
            request_id: child.spec.request_id.clone(),
            synced: SyncedFields::of_child(&child.spec),
            outcome: outcome_of(child),
            held: held_by_change_control(child),
        }
    }
}

/// Is the child waiting for a maintenance window or a disruption budget?
pub fn held_by_change_control(child: &ComputeInstanceAction) -> bool {
    child.status.as_ref().is_some_and(crate::controllers::change::is_held)
}

/// Reads a child's kstatus conditions (only those written for its current generation count).
pub fn outcome_of(child: &ComputeInstanceAction) -> Outcome {
    let Some(status) = child.status.as_ref() else {
        return Outcome::InProgress;
    };
    if status.observed_generation.is_some() && status.observed_generation != child.metadata.generation {
        return Outcome::InProgress;
    }
    let true_condition = |type_: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    if let Some(ready) = true_condition(READY) {
        return if ready.reason == "Expired" {
            Outcome::Expired
        } else {
            Outcome::Succeeded
        };
    }
    if let Some(stalled) = true_condition(STALLED) {
        return if stalled.reason == "PolicyDenied" {
            Outcome::Denied
        } else {
            Outcome::Failed {
                reason: stalled.reason.clone(),
            }
        };
    }
    if status.phase == Some(Phase::Failed) {
        return Outcome::Failed {
            reason: "Failed".into(),
        };
    }
    Outcome::InProgress
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::instance_action::{ComputeInstanceActionStatus, Condition};

    fn key<'a>(instance: &'a str, rid: Option<&'a str>) -> ChildKey<'a> {
        ChildKey {
            fleet_uid: "uid-1",
            instance_id: instance,
            desired_state: DesiredState::Restarted,
            request_id: rid,
        }
    }

    fn dns1123(name: &str) -> bool {
        name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    }

    #[test]
    fn names_are_stable_distinct_and_valid() {
        let a = child_name("restart-zone", &key("i-1", Some("r1")));
        assert_eq!(a, child_name("restart-zone", &key("i-1", Some("r1"))));
        assert_ne!(a, child_name("restart-zone", &key("i-2", Some("r1"))));
        assert_ne!(a, child_name("restart-zone", &key("i-1", Some("r2"))));
        let other_uid = ChildKey {
            fleet_uid: "uid-2",
            ..key("i-1", Some("r1"))
        };
        assert_ne!(a, child_name("restart-zone", &other_uid));
        // Pinned: a change of the hash would orphan every existing child.
        assert_eq!(a.len(), "restart-zone".len() + 11);
        let long = format!("{}-.{}", "a".repeat(51), "b".repeat(200));
        for fleet in ["x", "restart-zone", long.as_str(), "a.b.c"] {
            let n = child_name(fleet, &key("i-1", None));
            assert!(dns1123(&n), "{n}");
        }
        assert!(fleet_label_value(&long).len() <= 63);
        assert_eq!(fleet_label_value("short"), "short");
    }

    fn child_with(conditions: &[(&str, &str)], phase: Option<Phase>) -> ComputeInstanceAction {
        let mut c = ComputeInstanceAction::new("c", child_spec(&spec(), "i-1"));
        c.metadata.generation = Some(1);
        c.status = Some(ComputeInstanceActionStatus {
            observed_generation: Some(1),
            phase,
            conditions: conditions
                .iter()
                .map(|(t, r)| Condition {
                    type_: t.to_string(),
                    status: "True".into(),
                    observed_generation: Some(1),
                    last_transition_time: chrono::Utc::now(),
                    reason: r.to_string(),
                    message: String::new(),
                })
                .collect(),
            ..Default::default()
        });
        c
    }

    fn spec() -> ComputeFleetActionSpec {
        serde_json::from_str(r#"{"selector":{"zone":"z"},"desiredState":"restarted","requestId":"r1"}"#).unwrap()
    }

    #[test]
    fn outcome_table() {
        let rows = [
            (
                child_with(&[("Ready", "Succeeded")], Some(Phase::Succeeded)),
                Outcome::Succeeded,
            ),
            (child_with(&[("Ready", "Expired")], None), Outcome::Expired),
            (
                child_with(&[("Stalled", "InvalidInstanceState")], None),
                Outcome::Failed {
                    reason: "InvalidInstanceState".into(),
                },
            ),
            (child_with(&[("Stalled", "PolicyDenied")], None), Outcome::Denied),
            (
                child_with(&[], Some(Phase::Failed)),
                Outcome::Failed {
                    reason: "Failed".into(),
                },
            ),
            (
                child_with(&[("Reconciling", "ActionAccepted")], None),
                Outcome::InProgress,
            ),
            (
                ComputeInstanceAction::new("c", child_spec(&spec(), "i-1")),
                Outcome::InProgress,
            ),
        ];
        for (child, want) in rows {
            assert_eq!(outcome_of(&child), want, "{:?}", child.status);
        }
        // A status written for an older generation says nothing about the current spec.
        let mut stale = child_with(&[("Ready", "Succeeded")], None);
        stale.metadata.generation = Some(2);
        assert_eq!(outcome_of(&stale), Outcome::InProgress);
    }

    #[test]
    fn child_spec_copies_the_fleet() {
        let mut s = spec();
        s.not_after = Some(chrono::Utc::now());
        let c = child_spec(&s, "i-9");
        assert_eq!(c.instance_id, "i-9");
        assert_eq!(c.request_id.as_deref(), Some("r1"));
        assert_eq!(c.not_after, s.not_after);
        s.desired_state = DesiredState::Stopped;
        let c = child_spec(&s, "i-9");
        assert!(
            c.request_id.is_none() && c.not_after.is_none(),
            "a continuous level never ends"
        );
        // A `once` level is a run (a schedule event's child): its deadline holds for every child.
        s.enforcement = crate::crd::instance_action::Enforcement::Once;
        let c = child_spec(&s, "i-9");
        assert!(c.request_id.is_none() && c.not_after == s.not_after);
    }
}
