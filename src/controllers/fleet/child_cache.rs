//! What a fleet knows of its children between consistent reads: a watch cache of every fleet child (slimmed to
//! what [`ChildView`] reads), plus the children this process created that the cache does not show yet.
//!
//! A consistent LIST of a fleet's children costs more with every child (at 1,000 children it took most of a
//! fleet round, measured). The cache serves the rounds in between, and the in-flight cap still holds: a child
//! created here counts as in progress until the cache shows it, and the cache can only lag (a child it shows
//! in progress may have finished; one it shows finished has). A fleet is read consistently on its first round
//! in this process, while the cache has not listed, and every [`CONSISTENT_EVERY`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::reflector::Store;

use super::children::{ChildView, FLEET_LABEL};
use crate::crd::instance_action::ComputeInstanceAction;

/// A fleet's children are read consistently at least this often.
pub const CONSISTENT_EVERY: Duration = Duration::from_secs(30);
/// A created child the cache never showed is dropped after this (it was deleted meanwhile).
const CREATED_TTL: Duration = Duration::from_secs(60);

struct Scope {
    /// `None`: every namespace.
    namespace: Option<String>,
    store: Store<ComputeInstanceAction>,
    ready: Arc<AtomicBool>,
}

#[derive(Default)]
pub struct ChildCache {
    scopes: Mutex<Vec<Scope>>,
    /// Per fleet UID: children created here, with when.
    created: Mutex<HashMap<String, Vec<(ChildView, Instant)>>>,
    /// Per fleet UID: the last consistent read.
    consistent: Mutex<HashMap<String, Instant>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the cache keeps of a child: what [`ChildView`] reads (history, sent one-shots, the observed instance
/// and messages go).
pub fn slim(child: &mut ComputeInstanceAction) {
    child.managed_fields_mut().clear();
    child.annotations_mut().clear();
    if let Some(s) = child.status.as_mut() {
        s.history.clear();
        s.sent_one_shots.clear();
        s.message = None;
        s.instance = None;
        s.action = None;
        for c in &mut s.conditions {
            c.message.clear();
        }
    }
}

/// The children a fleet counts: the cached ones, and the ones created here that the cache does not show yet
/// (in progress).
pub fn merged(mut cached: Vec<ChildView>, created: &[ChildView]) -> Vec<ChildView> {
    let missing: Vec<ChildView> = created
        .iter()
        .filter(|c| !cached.iter().any(|k| k.name == c.name))
        .cloned()
        .collect();
    cached.extend(missing);
    cached
}

impl ChildCache {
    /// The cache of one watched scope; `ready` turns true once it has listed.
    pub fn add_scope(&self, namespace: Option<String>, store: Store<ComputeInstanceAction>, ready: Arc<AtomicBool>) {
        locked(&self.scopes).push(Scope {
            namespace,
            store,
            ready,
        });
    }

    /// The fleet's children from the cache, or `None` when a consistent read is due.
    pub fn children(&self, namespace: &str, label: &str, uid: &str) -> Option<Vec<ChildView>> {
        let due = locked(&self.consistent)
            .get(uid)
            .is_none_or(|at| at.elapsed() >= CONSISTENT_EVERY);
        if due {
            return None;
        }
        let cached: Vec<ChildView> = {
            let scopes = locked(&self.scopes);
            let scope = scopes
                .iter()
                .find(|s| s.namespace.as_deref().is_none_or(|n| n == namespace))?;
            if !scope.ready.load(Ordering::Acquire) {
                return None;
            }
            scope
                .store
                .state()
                .iter()
                .filter(|c| {
                    c.namespace().as_deref() == Some(namespace)
                        && c.labels().get(FLEET_LABEL).map(String::as_str) == Some(label)
                        && c.owner_references().iter().any(|o| o.uid == uid)
                })
                .map(|c| ChildView::of(c))
                .collect()
        };
        let mut created = locked(&self.created);
        let mine = created.entry(uid.to_owned()).or_default();
        mine.retain(|(c, at)| at.elapsed() < CREATED_TTL && !cached.iter().any(|k| k.name == c.name));
        let pending: Vec<ChildView> = mine.iter().map(|(c, _)| c.clone()).collect();
        Some(merged(cached, &pending))
    }

    /// A consistent read of the fleet's children was just made: it shows everything created before it.
    pub fn read_consistently(&self, uid: &str) {
        locked(&self.consistent).insert(uid.to_owned(), Instant::now());
        locked(&self.created).remove(uid);
    }

    /// Children just created (or found existing) for the fleet.
    pub fn created(&self, uid: &str, children: impl IntoIterator<Item = ChildView>) {
        let now = Instant::now();
        locked(&self.created)
            .entry(uid.to_owned())
            .or_default()
            .extend(children.into_iter().map(|c| (c, now)));
    }

    /// Drops what is kept for a fleet that is gone.
    pub fn forget(&self, uid: &str) {
        locked(&self.created).remove(uid);
        locked(&self.consistent).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::fleet::children::{Outcome, SyncedFields};
    use crate::crd::instance_action::{DesiredState, Enforcement};

    fn view(name: &str, outcome: Outcome) -> ChildView {
        ChildView {
            name: name.into(),
            instance_id: format!("i-{name}"),
            desired_state: DesiredState::Restarted,
            request_id: Some("r1".into()),
            synced: SyncedFields {
                suspend: false,
                dry_run: false,
                enforcement: Enforcement::default(),
            },
            outcome,
            held: false,
        }
    }

    #[test]
    fn children_created_here_count_until_the_cache_shows_them() {
        let done = view("a", Outcome::Succeeded);
        let rows = [
            // (cached, created here, names counted, in flight)
            (vec![], vec![view("a", Outcome::InProgress)], vec!["a"], 1),
            (vec![done.clone()], vec![view("a", Outcome::InProgress)], vec!["a"], 0),
            (
                vec![done.clone()],
                vec![view("b", Outcome::InProgress)],
                vec!["a", "b"],
                1,
            ),
            (vec![done], vec![], vec!["a"], 0),
        ];
        for (cached, created, names, in_flight) in rows {
            let got = merged(cached.clone(), &created);
            let got_names: Vec<&str> = got.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(got_names, names, "{cached:?} + {created:?}");
            assert_eq!(got.iter().filter(|c| c.outcome.in_flight()).count(), in_flight);
        }
    }

    #[test]
    fn a_fleet_is_read_consistently_first_and_while_the_cache_has_not_listed() {
        let cache = ChildCache::default();
        let (store, _writer) = kube::runtime::reflector::store::<ComputeInstanceAction>();
        let ready = Arc::new(AtomicBool::new(false));
        cache.add_scope(None, store, ready.clone());
        assert!(cache.children("ns", "f", "uid").is_none(), "first round: consistent");
        cache.read_consistently("uid");
        assert!(cache.children("ns", "f", "uid").is_none(), "the cache has not listed");
        ready.store(true, Ordering::Release);
        cache.created("uid", [view("a", Outcome::InProgress)]);
        let got = cache.children("ns", "f", "uid").expect("from the cache");
        assert_eq!(got.len(), 1, "the child created here counts");
        cache.read_consistently("uid");
        assert!(cache.children("ns", "f", "uid").is_some_and(|c| c.is_empty()));
        cache.forget("uid");
        assert!(cache.children("ns", "f", "uid").is_none());
    }

    #[test]
    fn slimming_keeps_what_the_fleet_reads() {
        let mut child: ComputeInstanceAction = serde_json::from_value(serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeInstanceAction",
            "metadata": {"name": "c", "generation": 1, "annotations": {"a": "b"}},
            "spec": {"instanceId": "i-1", "desiredState": "restarted", "requestId": "r1"},
            "status": {"observedGeneration": 1, "phase": "Succeeded", "message": "long text",
                "sentOneShots": ["abc"],
                "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": "done",
                    "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap();
        let before = ChildView::of(&child);
        slim(&mut child);
        assert_eq!(ChildView::of(&child), before);
        let s = child.status.as_ref().unwrap();
        assert!(s.message.is_none() && s.sent_one_shots.is_empty() && s.conditions[0].message.is_empty());
    }
}
