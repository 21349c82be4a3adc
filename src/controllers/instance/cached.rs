//! What the instance controller's watch cache keeps of each ComputeInstanceAction: the metadata the store keys
//! by and the controller compares (name, namespace, UID, resourceVersion, generation), the few facts the
//! gauges count every 15 s, and the rest of the object packed ([`super::packing`]). A reconcile unpacks the one
//! object it works on ([`CachedAction::unpack`]), whole: the status it writes back is complete.
//!
//! Before packing, the object is slimmed as before: managedFields and annotations are dropped, after noting
//! whether anyone but this controller wrote the status (such records never block a peer, see
//! [`super::peers::FOREIGN_STATUS`]).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::NamespaceResourceScope;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Deserializer};

use super::packing::{self, Corrupt};
use super::peers;
use crate::controllers::conditions::{READY, RECONCILING, STALLED};
use crate::crd::instance_action::{ActionState, ComputeInstanceAction, ObservedInstance, Phase};

/// One cached ComputeInstanceAction (see the module's text).
#[derive(Clone, Debug)]
pub struct CachedAction {
    metadata: ObjectMeta,
    facts: Facts,
    packed: Box<[u8]>,
}

/// What the index, the gauges and the budgets' scan read of every object, kept beside the packed form so that
/// none of them unpacks anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub instance_id: Box<str>,
    /// An action is open (requested or accepted).
    pub acting: bool,
    /// Counts against disruption budgets (see `change::budgets::disrupts`).
    pub disrupting: bool,
    /// Held back by a window or budget.
    pub held: bool,
    /// When the intent of the current action was written (budgets tell by it when an admission shows).
    pub intent_at: Option<DateTime<Utc>>,
    /// The instance as the status records it, kept only while the object disrupts it (budgets count it).
    pub disrupted: Option<Box<ObservedInstance>>,
    pub phase: Option<Phase>,
    /// True conditions the gauges count: `Ready` and `Stalled`, and `Reconciling` while change control holds
    /// the action back.
    pub counted: Box<[CountedCondition]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedCondition {
    pub type_: &'static str,
    pub reason: Box<str>,
    pub last_transition_time: DateTime<Utc>,
}

/// Why an object could not be packed or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the object could not be encoded for the cache: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("the cached object could not be decoded: {0}")]
    Decode(#[source] serde_json::Error),
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

impl Facts {
    fn of(obj: &ComputeInstanceAction) -> Self {
        let instance_id = obj.spec.instance_id.as_str().into();
        let Some(status) = obj.status.as_ref() else {
            return Self {
                instance_id,
                ..Self::default()
            };
        };
        let counted = status
            .conditions
            .iter()
            .filter(|c| c.status == "True")
            .filter_map(|c| {
                let type_ = match c.type_.as_str() {
                    READY => READY,
                    STALLED => STALLED,
                    RECONCILING if crate::controllers::change::is_hold(c) => RECONCILING,
                    _ => return None,
                };
                Some(CountedCondition {
                    type_,
                    reason: c.reason.as_str().into(),
                    last_transition_time: c.last_transition_time,
                })
            })
            .collect();
        let disrupting = crate::controllers::change::budgets::disrupts(&obj.spec, status);
        Self {
            instance_id,
            intent_at: status.action.as_ref().map(|a| a.intent_at),
            disrupted: status.instance.clone().filter(|_| disrupting).map(Box::new),
            acting: status
                .action
                .as_ref()
                .is_some_and(|a| matches!(a.state, ActionState::Requested | ActionState::Accepted)),
            disrupting,
            held: crate::controllers::change::is_held(status),
            phase: status.phase,
            counted,
        }
    }
}

impl CachedAction {
    /// Slims and packs `obj`.
    pub fn pack(mut obj: ComputeInstanceAction) -> Result<Self, CacheError> {
        let foreign = peers::status_written_by_others(&obj);
        obj.managed_fields_mut().clear();
        obj.annotations_mut().clear();
        if foreign {
            obj.annotations_mut()
                .insert(peers::FOREIGN_STATUS.into(), "true".into());
        }
        let facts = Facts::of(&obj);
        let m = &mut obj.metadata;
        let metadata = ObjectMeta {
            name: m.name.take(),
            namespace: m.namespace.take(),
            uid: m.uid.take(),
            resource_version: m.resource_version.take(),
            generation: m.generation.take(),
            ..ObjectMeta::default()
        };
        let rest = serde_json::to_value(&obj).map_err(CacheError::Encode)?;
        Ok(Self {
            metadata,
            facts,
            packed: packing::pack(&rest, packing::action_words()),
        })
    }

    /// The whole (slimmed) object.
    pub fn unpack(&self) -> Result<ComputeInstanceAction, CacheError> {
        let rest = packing::unpack(&self.packed, packing::action_words())?;
        let mut obj: ComputeInstanceAction = serde_json::from_value(rest).map_err(CacheError::Decode)?;
        let m = &self.metadata;
        obj.metadata.name.clone_from(&m.name);
        obj.metadata.namespace.clone_from(&m.namespace);
        obj.metadata.uid.clone_from(&m.uid);
        obj.metadata.resource_version.clone_from(&m.resource_version);
        obj.metadata.generation = m.generation;
        Ok(obj)
    }

    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// Bytes of the packed part (for the memory figures).
    pub fn packed_len(&self) -> usize {
        self.packed.len()
    }
}

impl From<&ComputeInstanceAction> for CachedAction {
    /// For tests and tools: an object that cannot be packed panics there, loudly.
    fn from(obj: &ComputeInstanceAction) -> Self {
        match Self::pack(obj.clone()) {
            Ok(c) => c,
            Err(e) => panic!("object not packable: {e}"),
        }
    }
}

impl<'de> Deserialize<'de> for CachedAction {
    /// Straight from the API server's JSON: the whole object exists only while it is packed.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let obj = ComputeInstanceAction::deserialize(d)?;
        Self::pack(obj).map_err(serde::de::Error::custom)
    }
}

impl Resource for CachedAction {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ComputeInstanceAction::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        ComputeInstanceAction::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        ComputeInstanceAction::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        ComputeInstanceAction::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::change::WAITING_FOR_WINDOW;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    fn settled_restart() -> ComputeInstanceAction {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeInstanceAction",
            "metadata": {"name": "restart-web-1", "namespace": "team-a", "uid": "0a1b2c3d-4e5f-6a7b-8c9d-000000000001",
                "resourceVersion": "1000001", "generation": 2, "creationTimestamp": "2026-12-08T01:00:00Z",
                "labels": {"app": "web"}, "finalizers": ["x/y"],
                "annotations": {"note": "dropped"},
                "ownerReferences": [{"apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
                    "name": "f", "uid": "u-f", "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"instanceId": "i-0001", "desiredState": "restarted", "requestId": "change-4711",
                "notAfter": "2026-12-09T00:00:00Z", "escalation": {"after": "5m", "to": "reset"}},
            "status": {"observedGeneration": 2, "phase": "Succeeded", "message": "instance i-0001 was restarted",
                "conditions": [
                    {"type": "Ready", "status": "True", "observedGeneration": 2,
                     "lastTransitionTime": "2026-12-08T01:00:05.123456Z", "reason": "Succeeded",
                     "message": "instance i-0001 was restarted"},
                    {"type": "Reconciling", "status": "False", "lastTransitionTime": "2026-12-08T01:00:05Z",
                     "reason": "Succeeded", "message": ""},
                    {"type": "Stalled", "status": "False", "lastTransitionTime": "2026-12-08T01:00:05Z",
                     "reason": "Succeeded", "message": ""}],
                "instance": {"status": "running", "name": "web-1", "zone": "z1", "lastSeen": "2026-12-08T01:00:05Z"},
                "action": {"action": "restart", "requestId": "change-4711", "generation": 2, "state": "Succeeded",
                    "intentAt": "2026-12-08T01:00:00.5Z", "acceptedAt": "2026-12-08T01:00:01Z",
                    "completedAt": "2026-12-08T01:00:05Z", "attempts": 1, "fromStatus": "running",
                    "sawTransition": true},
                "history": [{"action": "stop", "generation": 1, "state": "Failed", "intentAt": "2026-12-07T01:00:00Z",
                    "attempts": 2, "reason": "409 conflict", "drift": true}],
                "sentOneShots": ["3f9a2c1d8e7b6a50"], "heldBy": "w", "heldUntil": "2026-12-08T02:00:00Z"}
        }))
        .unwrap_or_else(|e| panic!("a literal object: {e}"))
    }

    #[test]
    fn an_object_comes_back_whole_but_for_what_the_cache_never_kept() {
        let obj = settled_restart();
        let cached = CachedAction::pack(obj.clone()).unwrap_or_else(|e| panic!("{e}"));
        let back = cached.unpack().unwrap_or_else(|e| panic!("{e}"));
        let mut expected = obj;
        expected.metadata.annotations = None;
        let mut got = back;
        got.metadata.annotations = None;
        got.metadata.managed_fields = None;
        assert_eq!(got, expected);
        assert_eq!(cached.name_any(), "restart-web-1");
        assert_eq!(cached.resource_version().as_deref(), Some("1000001"));
        assert_eq!(cached.meta().generation, Some(2));
        // The packed part is a fraction of the object's JSON.
        let json = serde_json::to_vec(&expected).map(|b| b.len()).unwrap_or_default();
        assert!(
            cached.packed_len() * 2 < json,
            "{} packed against {json} as JSON",
            cached.packed_len()
        );
    }

    #[test]
    fn a_status_written_by_someone_else_is_marked_and_managed_fields_dropped() {
        for (manager, foreign) in [
            ("tenant-kubectl", true),
            (super::super::reconcile::FIELD_MANAGER, false),
        ] {
            let mut obj = settled_restart();
            obj.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
                manager: Some(manager.into()),
                subresource: Some("status".into()),
                ..Default::default()
            }]);
            let back = CachedAction::from(&obj).unpack().unwrap_or_else(|e| panic!("{e}"));
            assert!(back.managed_fields().is_empty());
            assert_eq!(
                back.annotations().contains_key(peers::FOREIGN_STATUS),
                foreign,
                "{manager}"
            );
            assert_eq!(back.annotations().len(), usize::from(foreign));
        }
    }

    fn status_intent(obj: &ComputeInstanceAction) -> Option<DateTime<Utc>> {
        obj.status.as_ref()?.action.as_ref().map(|a| a.intent_at)
    }

    #[test]
    fn the_facts_are_what_the_index_gauges_and_budgets_read() {
        let mut obj = settled_restart();
        assert_eq!(
            CachedAction::from(&obj)
                .facts()
                .counted
                .iter()
                .map(|c| c.type_)
                .collect::<Vec<_>>(),
            [READY]
        );
        let status = obj.status.as_mut().unwrap_or_else(|| unreachable!());
        status.phase = Some(Phase::Pending);
        status.conditions[0].status = "False".into();
        status.conditions[1].status = "True".into();
        status.conditions[1].reason = WAITING_FOR_WINDOW.into();
        status.conditions[2].status = "True".into();
        status.conditions[2].reason = "PolicyDenied".into();
        let facts = CachedAction::from(&obj).facts().clone();
        assert_eq!(facts.phase, Some(Phase::Pending));
        let counted: Vec<_> = facts.counted.iter().map(|c| (c.type_, &*c.reason)).collect();
        assert_eq!(counted, [(RECONCILING, WAITING_FOR_WINDOW), (STALLED, "PolicyDenied")]);
        // A settled restart does not disrupt its instance; a stop that holds it stopped does, with what the
        // status records of the instance (budgets count it).
        assert_eq!(facts.disrupted, None);
        assert_eq!(facts.intent_at, status_intent(&obj));
        let mut stop = obj.clone();
        stop.spec.desired_state = crate::crd::instance_action::DesiredState::Stopped;
        stop.spec.escalation = None;
        if let Some(seen) = stop.status.as_mut().and_then(|s| s.instance.as_mut()) {
            seen.status = "stopped".into();
        }
        let facts = CachedAction::from(&stop).facts().clone();
        assert!(facts.disrupting);
        assert_eq!(facts.disrupted.map(|i| i.zone), Some("z1".to_owned()));
        // A Reconciling condition that is not change control's hold is not counted.
        let status = obj.status.as_mut().unwrap_or_else(|| unreachable!());
        status.conditions[1].reason = "Acting".into();
        assert_eq!(CachedAction::from(&obj).facts().counted.len(), 1);
        obj.status = None;
        let bare = Facts {
            instance_id: "i-0001".into(),
            ..Facts::default()
        };
        assert_eq!(CachedAction::from(&obj).facts(), &bare);
    }
}
