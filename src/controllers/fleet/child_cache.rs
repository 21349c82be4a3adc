//! What a fleet knows of its children between consistent reads: a watch-fed projection of every fleet child
//! (its [`ChildView`] under the fleet that owns it, nothing else of the object), plus the children this
//! process created that the projection does not show yet.
//!
//! A consistent LIST of a fleet's children costs more with every child (at 1,000 children it took most of a
//! fleet round, measured). The projection serves the rounds in between, and the in-flight cap still holds: a
//! child created here counts as in progress until the projection shows it, and the projection can only lag
//! (a child it shows in progress may have finished; one it shows finished has). A fleet is read consistently
//! on its first round in this process, while the watch has not listed, and every [`CONSISTENT_EVERY`].
//!
//! Only the view is kept (name, instance, run, synced fields, outcome): a finished fleet of 2,000 children
//! costs its views, not 2,000 objects (see the README's "Memory").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::watcher;

use super::children::{ChildView, FLEET_LABEL, fleet_label_value};
use crate::crd::instance_action::ComputeInstanceAction;

/// A fleet's children are read consistently at least this often.
pub const CONSISTENT_EVERY: Duration = Duration::from_secs(30);
/// A created child the cache never showed is dropped after this (it was deleted meanwhile).
const CREATED_TTL: Duration = Duration::from_secs(60);

/// The children of the fleets one namespace (or every namespace) holds, by owning fleet UID.
#[derive(Default)]
struct Children {
    /// Fleet UID -> (the fleet's namespace, child name -> view).
    by_fleet: HashMap<String, (String, HashMap<String, ChildView>)>,
}

impl Children {
    /// The fleets `child` belongs to: owner references to a ComputeFleetAction whose label value the child
    /// carries (what a consistent read selects: the fleet's label, then its UID among the owners).
    fn owners(child: &ComputeInstanceAction) -> Vec<String> {
        let Some(label) = child.labels().get(FLEET_LABEL) else {
            return Vec::new();
        };
        child
            .owner_references()
            .iter()
            .filter(|o| o.kind == "ComputeFleetAction" && fleet_label_value(&o.name) == *label)
            .map(|o| o.uid.clone())
            .collect()
    }

    fn apply(&mut self, child: &ComputeInstanceAction) {
        let (namespace, name) = (child.namespace().unwrap_or_default(), child.name_any());
        let owners = Self::owners(child);
        // An owner reference that went away takes the child out of that fleet.
        for (uid, (ns, kids)) in &mut self.by_fleet {
            if *ns == namespace && !owners.contains(uid) {
                kids.remove(&name);
            }
        }
        for uid in owners {
            let (_, kids) = self
                .by_fleet
                .entry(uid)
                .or_insert_with(|| (namespace.clone(), HashMap::new()));
            kids.insert(name.clone(), ChildView::of(child));
        }
        self.by_fleet.retain(|_, (_, kids)| !kids.is_empty());
    }

    fn delete(&mut self, child: &ComputeInstanceAction) {
        let (namespace, name) = (child.namespace().unwrap_or_default(), child.name_any());
        for (ns, kids) in self.by_fleet.values_mut() {
            if *ns == namespace {
                kids.remove(&name);
            }
        }
        self.by_fleet.retain(|_, (_, kids)| !kids.is_empty());
    }

    fn len(&self) -> usize {
        self.by_fleet.values().map(|(_, kids)| kids.len()).sum()
    }
}

/// One watched scope's projection, fed by [`ScopeFeed::observe`].
#[derive(Default)]
struct Projection {
    live: Children,
    /// A (re-)list in progress: it replaces `live` when it is complete, so children deleted while the watch
    /// was down do not linger.
    relisting: Option<Children>,
    listed: bool,
}

struct Scope {
    /// `None`: every namespace.
    namespace: Option<String>,
    projection: Arc<Mutex<Projection>>,
}

/// The handle a scope's watch stream feeds its events through.
#[derive(Clone)]
pub struct ScopeFeed(Arc<Mutex<Projection>>);

impl ScopeFeed {
    /// Applies one watch event (the reflector's semantics: a re-list replaces everything when it is done).
    pub fn observe(&self, event: &watcher::Event<ComputeInstanceAction>) {
        let mut p = locked(&self.0);
        match event {
            watcher::Event::Apply(c) => p.live.apply(c),
            watcher::Event::Delete(c) => p.live.delete(c),
            watcher::Event::Init => p.relisting = Some(Children::default()),
            watcher::Event::InitApply(c) => p.relisting.get_or_insert_with(Children::default).apply(c),
            watcher::Event::InitDone => {
                p.live = p.relisting.take().unwrap_or_default();
                p.listed = true;
            }
        }
    }
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

/// What a child's watch event needs to carry for its view (history, sent one-shots, the observed instance
/// and messages go before the event is even buffered).
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
    /// A watched scope; its watch stream feeds the returned handle.
    pub fn add_scope(&self, namespace: Option<String>) -> ScopeFeed {
        let projection = Arc::new(Mutex::new(Projection::default()));
        locked(&self.scopes).push(Scope {
            namespace,
            projection: projection.clone(),
        });
        ScopeFeed(projection)
    }

    /// The fleet's children from the cache, or `None` when a consistent read is due.
    pub fn children(&self, namespace: &str, uid: &str) -> Option<Vec<ChildView>> {
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
            let p = locked(&scope.projection);
            if !p.listed {
                return None;
            }
            p.live
                .by_fleet
                .get(uid)
                .filter(|(ns, _)| ns == namespace)
                .map(|(_, kids)| kids.values().cloned().collect())
                .unwrap_or_default()
        };
        let mut created = locked(&self.created);
        let mine = created.entry(uid.to_owned()).or_default();
        mine.retain(|(c, at)| at.elapsed() < CREATED_TTL && !cached.iter().any(|k| k.name == c.name));
        let pending: Vec<ChildView> = mine.iter().map(|(c, _)| c.clone()).collect();
        Some(merged(cached, &pending))
    }

    /// Children the projections hold, over every scope (for the benchmark's and the tests' accounting).
    pub fn cached_children(&self) -> usize {
        locked(&self.scopes)
            .iter()
            .map(|s| locked(&s.projection).live.len())
            .sum()
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
    use kube::ResourceExt;

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

    fn child(name: &str, fleet: &str, fleet_uid: &str, phase: &str) -> ComputeInstanceAction {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeInstanceAction",
            "metadata": {"name": name, "namespace": "ns", "generation": 1,
                "labels": {FLEET_LABEL: fleet_label_value(fleet)},
                "ownerReferences": [{"apiVersion": "compute.threatwinds.com/v1alpha1",
                    "kind": "ComputeFleetAction", "name": fleet, "uid": fleet_uid}]},
            "spec": {"instanceId": format!("i-{name}"), "desiredState": "restarted", "requestId": "r1"},
            "status": {"observedGeneration": 1, "phase": phase, "sentOneShots": ["abc"], "history": [],
                "conditions": [{"type": "Ready", "status": if phase == "Succeeded" { "True" } else { "False" },
                    "reason": phase, "message": "a long message",
                    "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn names(cache: &ChildCache, uid: &str) -> Option<Vec<(String, Outcome)>> {
        cache.children("ns", uid).map(|kids| {
            let mut v: Vec<(String, Outcome)> = kids.into_iter().map(|c| (c.name, c.outcome)).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        })
    }

    #[test]
    fn a_fleet_is_read_consistently_first_and_while_the_cache_has_not_listed() {
        let cache = ChildCache::default();
        let feed = cache.add_scope(None);
        assert!(cache.children("ns", "uid").is_none(), "first round: consistent");
        cache.read_consistently("uid");
        assert!(cache.children("ns", "uid").is_none(), "the cache has not listed");
        feed.observe(&watcher::Event::Init);
        feed.observe(&watcher::Event::InitDone);
        cache.created("uid", [view("a", Outcome::InProgress)]);
        let got = cache.children("ns", "uid").expect("from the cache");
        assert_eq!(got.len(), 1, "the child created here counts");
        cache.read_consistently("uid");
        assert!(cache.children("ns", "uid").is_some_and(|c| c.is_empty()));
        cache.forget("uid");
        assert!(cache.children("ns", "uid").is_none());
    }

    #[test]
    fn the_projection_follows_the_watch_like_a_reflector() {
        use watcher::Event::*;
        let cache = ChildCache::default();
        let feed = cache.add_scope(Some("ns".into()));
        cache.read_consistently("u1");
        let a = child("a", "f1", "u1", "InProgress");
        let b = child("b", "f1", "u1", "Succeeded");
        let other = child("c", "f2", "u2", "InProgress");
        // A child whose label names another fleet than its owner is not that owner's (a consistent read
        // selects by label first).
        let mut forged = child("d", "f1", "u1", "InProgress");
        forged.labels_mut().insert(FLEET_LABEL.into(), "f2".into());
        for e in [
            Init,
            InitApply(a.clone()),
            InitApply(b.clone()),
            InitApply(other),
            InitApply(forged),
            InitDone,
        ] {
            feed.observe(&e);
        }
        let done = |n: &str| (n.to_owned(), Outcome::Succeeded);
        let busy = |n: &str| (n.to_owned(), Outcome::InProgress);
        assert_eq!(names(&cache, "u1"), Some(vec![busy("a"), done("b")]));
        assert_eq!(cache.cached_children(), 3);
        // An update replaces the view; a delete removes it.
        feed.observe(&Apply(child("a", "f1", "u1", "Succeeded")));
        feed.observe(&Delete(b.clone()));
        assert_eq!(names(&cache, "u1"), Some(vec![done("a")]));
        // A re-list replaces everything: what it does not show (deleted while the watch was down) goes, and
        // until it is done the old projection still answers.
        feed.observe(&Init);
        feed.observe(&InitApply(b));
        assert_eq!(names(&cache, "u1"), Some(vec![done("a")]));
        feed.observe(&InitDone);
        assert_eq!(names(&cache, "u1"), Some(vec![done("b")]));
        assert_eq!(cache.cached_children(), 1);
        // Another namespace's fleet with the same UID never answers (UIDs are unique; the check is cheap).
        assert_eq!(cache.children("elsewhere", "u1").map(|k| k.len()), None);
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
