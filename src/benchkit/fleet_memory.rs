//! The fleet memory figure: what the fleet controller keeps for F fleets over N instances each, measured in
//! bytes the allocator holds (the bench binary's counting allocator, [`LiveBytes`]), for the structures the
//! controller really uses, fed the way the controller feeds them:
//! - the children's projection ([`ChildCache`]), fed one watch event per child, each child a finished
//!   restart as the API server sends it (status with its action record, a sent one-shot and messages);
//! - each fleet's cached selection ([`Listed`]: member IDs and statuses).
//!
//! For comparison it also measures the store the projection replaced: a reflector store of the same children
//! slimmed the same way; and the instance controller's own cache of the same children, packed
//! ([`CachedAction`]), which held such slimmed objects too before it packed them. The figure is in-process because the running operator's RSS cannot tell the fleet
//! controller's share from the instance controller's copy of the same children.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicIsize, Ordering};

use chrono::Utc;
use kube::runtime::{reflector, watcher};
use serde::Serialize;

use crate::api::InstanceStatus;
use crate::controllers::fleet::child_cache::{ChildCache, slim};
use crate::controllers::fleet::children::{ChildKey, child_name, child_object};
use crate::controllers::instance::cached::CachedAction;
use crate::controllers::runtime::walk::Listed;
use crate::crd::fleet_action::ComputeFleetAction;
use crate::crd::instance_action::{ComputeInstanceAction, ComputeInstanceActionStatus, DesiredState};
use crate::crd::selector::InstanceSelector;

/// The target of the issue: 10 fleets over 2,000 instances each keep at most this between them.
pub const TARGET_MIB: f64 = 8.0;

/// The system allocator, counting the bytes it holds for the program (the bench binary's global allocator).
pub struct LiveBytes;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is updated beside it.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn mib(bytes: isize) -> f64 {
    bytes.max(0) as f64 / (1024.0 * 1024.0)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetMemoryReport {
    pub fleets: usize,
    pub instances_per_fleet: usize,
    /// The children's projection plus the selections: what the fleets keep between them.
    pub fleet_memory_mib: f64,
    pub fleet_memory_children_mib: f64,
    pub fleet_memory_selections_mib: f64,
    /// The same children in a reflector store of slimmed objects (the store the projection replaced).
    pub fleet_memory_slim_store_mib: f64,
    /// The instance controller's cache of the same children: a reflector store of packed objects.
    pub instance_cache_packed_mib: f64,
    /// Microseconds to unpack one of them (what a reconcile pays for its object).
    pub instance_cache_unpack_us: f64,
    pub fleet_memory_target_mib: f64,
    pub fleet_memory_hit: bool,
    /// False when the bench binary does not count allocations (the figure would read 0).
    pub counted: bool,
}

fn fleet(i: usize) -> ComputeFleetAction {
    let mut f: ComputeFleetAction = serde_json::from_value(serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
        "metadata": {"name": format!("restart-zone-{i:02}"), "namespace": "platform",
            "uid": format!("6f1c6a3e-9a1b-4c7e-8d2a-{i:012}"), "generation": 1},
        "spec": {"selector": {"zone": format!("zone-{i:02}")}, "desiredState": "restarted",
            "requestId": "change-4711", "strategy": {"maxConcurrent": 50}},
    }))
    .unwrap_or_else(|e| unreachable!("a literal fleet: {e}"));
    f.metadata.uid.get_or_insert_with(String::new);
    f
}

/// A finished child as the API server sends it (the controller's status after a restart).
fn finished_child(fleet: &ComputeFleetAction, instance: &str, n: usize) -> ComputeInstanceAction {
    let key = ChildKey {
        fleet_uid: fleet.metadata.uid.as_deref().unwrap_or_default(),
        instance_id: instance,
        desired_state: DesiredState::Restarted,
        request_id: Some("change-4711"),
    };
    let name = child_name(fleet.metadata.name.as_deref().unwrap_or_default(), &key);
    let mut child = child_object(fleet, &name, instance);
    child.metadata.uid = Some(format!("0a1b2c3d-4e5f-6a7b-8c9d-{n:012}"));
    child.metadata.resource_version = Some(format!("{}", 1_000_000 + n));
    child.metadata.generation = Some(1);
    child.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let status: ComputeInstanceActionStatus = serde_json::from_value(serde_json::json!({
        "observedGeneration": 1, "phase": "Succeeded",
        "message": format!("instance {instance} was restarted (requestId change-4711)"),
        "conditions": [
            {"type": "Ready", "status": "True", "observedGeneration": 1, "lastTransitionTime": Utc::now(),
             "reason": "Succeeded", "message": format!("instance {instance} was restarted (requestId change-4711)")},
            {"type": "Reconciling", "status": "False", "observedGeneration": 1, "lastTransitionTime": Utc::now(),
             "reason": "Succeeded", "message": ""},
            {"type": "Stalled", "status": "False", "observedGeneration": 1, "lastTransitionTime": Utc::now(),
             "reason": "Succeeded", "message": ""}],
        "instance": {"status": "running", "name": instance, "zone": "zone-01", "lastSeen": Utc::now()},
        "action": {"action": "restart", "requestId": "change-4711", "generation": 1, "state": "Succeeded",
            "intentAt": Utc::now(), "acceptedAt": Utc::now(), "completedAt": Utc::now(), "attempts": 1,
            "fromStatus": "running", "sawTransition": true},
        "sentOneShots": ["3f9a2c1d8e7b6a50"],
    }))
    .unwrap_or_else(|e| unreachable!("a literal status: {e}"));
    child.status = Some(status);
    child
}

/// Measures; `counted` tells whether the global allocator is [`LiveBytes`].
pub fn measure(fleets: usize, instances_per_fleet: usize) -> FleetMemoryReport {
    let counted = {
        let before = live();
        let probe = std::hint::black_box(vec![1u8; 1 << 20]);
        let seen = live() - before;
        drop(probe);
        seen >= 1 << 20
    };
    let all: Vec<ComputeFleetAction> = (0..fleets).map(fleet).collect();
    let instance = |f: usize, i: usize| format!("i-{f:02}{i:05}");

    // The projection, fed as the watch feeds it: a list, then every child once.
    let cache = ChildCache::default();
    let before = live();
    let feed = cache.add_scope(None);
    feed.observe(&watcher::Event::Init);
    for (f, fl) in all.iter().enumerate() {
        for i in 0..instances_per_fleet {
            let mut child = finished_child(fl, &instance(f, i), f * instances_per_fleet + i);
            slim(&mut child);
            feed.observe(&watcher::Event::InitApply(child));
        }
    }
    feed.observe(&watcher::Event::InitDone);
    let children = live() - before;

    // The store it replaced.
    let before = live();
    let (reader, mut writer) = reflector::store::<ComputeInstanceAction>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for (f, fl) in all.iter().enumerate() {
        for i in 0..instances_per_fleet {
            let mut child = finished_child(fl, &instance(f, i), f * instances_per_fleet + i);
            slim(&mut child);
            writer.apply_watcher_event(&watcher::Event::InitApply(child));
        }
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let slim_store = live() - before;
    assert_eq!(reader.state().len(), fleets * instances_per_fleet);
    drop((reader, writer));

    // The instance controller's cache of them: packed, straight from each object as the API server sends it.
    let before = live();
    let (reader, mut writer) = reflector::store::<CachedAction>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for (f, fl) in all.iter().enumerate() {
        for i in 0..instances_per_fleet {
            let child = finished_child(fl, &instance(f, i), f * instances_per_fleet + i);
            writer.apply_watcher_event(&watcher::Event::InitApply(CachedAction::from(&child)));
        }
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let packed_store = live() - before;
    // What a reconcile pays to unpack the object it works on.
    let cached = reader.state();
    assert_eq!(cached.len(), fleets * instances_per_fleet);
    let started = std::time::Instant::now();
    let unpacked = cached.iter().filter(|c| c.unpack().is_ok()).count();
    let unpack_us = started.elapsed().as_secs_f64() * 1e6 / cached.len().max(1) as f64;
    assert_eq!(unpacked, cached.len());
    drop((cached, reader, writer));

    // The selections: per fleet UID, the selector and its listing.
    let before = live();
    let mut selections: HashMap<String, (InstanceSelector, Listed)> = HashMap::new();
    for (f, fl) in all.iter().enumerate() {
        let listed = Listed {
            listed_at: Utc::now(),
            members: (0..instances_per_fleet)
                .map(|i| (instance(f, i), Some(InstanceStatus::Running)))
                .collect(),
            complete: true,
            held: HashSet::new(),
        };
        let uid = fl.metadata.uid.clone().unwrap_or_default();
        selections.insert(uid, (fl.spec.selector.clone(), listed));
    }
    let selections_bytes = live() - before;
    assert_eq!(cache.cached_children(), fleets * instances_per_fleet);

    let total = mib(children) + mib(selections_bytes);
    drop(selections);
    FleetMemoryReport {
        fleets,
        instances_per_fleet,
        fleet_memory_mib: total,
        fleet_memory_children_mib: mib(children),
        fleet_memory_selections_mib: mib(selections_bytes),
        fleet_memory_slim_store_mib: mib(slim_store),
        instance_cache_packed_mib: mib(packed_store),
        instance_cache_unpack_us: unpack_us,
        fleet_memory_target_mib: TARGET_MIB,
        fleet_memory_hit: counted && total <= TARGET_MIB,
        counted,
    }
}

impl FleetMemoryReport {
    pub fn table(&self) -> String {
        let verdict = if !self.counted {
            "not counted (the binary's allocator is not LiveBytes)"
        } else if self.fleet_memory_hit {
            "hit"
        } else {
            "MISS"
        };
        format!(
            "fleet memory: {} fleets x {} instances keep {:.2} MiB (children {:.2}, selections {:.2}); target <= {:.0} MiB: {verdict}\n  \
             the same children in a reflector store of slimmed objects: {:.2} MiB; packed, as the instance controller caches them: {:.2} MiB ({:.1} us to unpack one)\n",
            self.fleets,
            self.instances_per_fleet,
            self.fleet_memory_mib,
            self.fleet_memory_children_mib,
            self.fleet_memory_selections_mib,
            self.fleet_memory_target_mib,
            self.fleet_memory_slim_store_mib,
            self.instance_cache_packed_mib,
            self.instance_cache_unpack_us,
        )
    }
}
