//! The ComputeFleetAction controller: many instances through child ComputeInstanceActions. The pure planner
//! (plan.rs, with children.rs and lookups.rs), the thin reconciler (reconcile.rs, walk.rs), and the kube-rs
//! wiring here on the shared runtime; child_cache.rs keeps what is known of the children between consistent reads.
pub mod child_cache;
pub mod children;
pub mod lookups;
pub mod plan;
pub mod reconcile;
pub mod runs;
pub mod verdict;
pub mod walk;

pub use crate::crd::fleet_action::{ComputeFleetAction, ComputeFleetActionSpec, ComputeFleetActionStatus};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt as _};
use kube::ResourceExt;
use kube::runtime::controller::Controller;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};

use crate::controllers::events::EventRecorder;
use crate::controllers::runtime::{self, Drive, ErrorBackoff, RunSettings, Shared, StartError};
use crate::crd::instance_action::ComputeInstanceAction;
use crate::crd::selector::InstanceSelector;
use plan::FleetSettings;
use walk::Listed;

/// How the fleet controller runs.
#[derive(Clone, Debug, Default)]
pub struct FleetConfig {
    /// Namespaces, concurrency, error backoff, liveness.
    pub run: RunSettings,
    pub settings: FleetSettings,
    /// The operator's `--dry-run`: every fleet reports as if `spec.dryRun` were set and creates no child.
    pub dry_run: bool,
}

impl FleetConfig {
    /// The fleet controller's settings for an operator whose instance controller runs with `instance`: its
    /// namespaces and its `--dry-run`.
    pub fn following(instance: &crate::controllers::instance::ControllerConfig) -> Self {
        let run = RunSettings::default().serving(&instance.namespaces);
        let dry_run = instance.plan.dry_run;
        Self {
            run,
            dry_run,
            ..Self::default()
        }
    }
}

/// What every fleet reconcile shares.
pub struct Context {
    pub shared: Shared,
    pub config: FleetConfig,
    pub recorder: EventRecorder,
    pub errors: ErrorBackoff,
    /// The last listing per fleet UID, with the selector it answered: a listing is reused until it is older
    /// than `relist`, so the walk is not repeated for every child event. Only IDs and statuses are kept, and an
    /// entry goes with its fleet.
    selections: Mutex<HashMap<String, (InstanceSelector, Listed)>>,
    /// The children between consistent reads.
    pub children: child_cache::ChildCache,
}

impl Context {
    fn cached_selection(&self, uid: &str, selector: &InstanceSelector) -> Option<Listed> {
        let map = self.selections.lock().unwrap_or_else(|p| p.into_inner());
        map.get(uid).filter(|(s, _)| s == selector).map(|(_, raw)| raw.clone())
    }

    fn store_selection(&self, uid: &str, selector: &InstanceSelector, listed: Listed) {
        let mut map = self.selections.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(uid.to_owned(), (selector.clone(), listed));
    }

    /// Drops what is kept for a fleet that is gone (or going).
    fn forget(&self, fleet: &ComputeFleetAction) {
        self.selections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fleet.uid().unwrap_or_default());
        self.children.forget(&fleet.uid().unwrap_or_default());
        self.errors.reset(&crate::controllers::object_key(fleet));
    }

    /// Fleets with a cached listing (for tests of what is kept).
    pub fn cached_fleets(&self) -> usize {
        self.selections.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Runs the fleet controller until `shutdown` resolves.
pub async fn run(
    shared: Shared,
    config: FleetConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let client = shared.kube.clone();
    let scopes =
        runtime::parent_and_child_scopes::<ComputeFleetAction, ComputeInstanceAction>(&client, &config.run.namespaces)
            .await?;
    let ctx = Arc::new(Context {
        recorder: runtime::recorder(client.clone(), "compute-operator-fleet"),
        shared,
        config: config.clone(),
        errors: ErrorBackoff::default(),
        selections: Mutex::default(),
        children: child_cache::ChildCache::default(),
    });
    let shutdown = shutdown.shared();
    let runs = scopes.into_iter().map(|(fleets, cias)| {
        let (reader, writer) = reflector::store();
        let forget = ctx.clone();
        let name = format!("fleets in {}", fleets.namespace().unwrap_or("all namespaces"));
        // Only spec changes wake a fleet (its own status writes do not); a deleted fleet's state is dropped.
        let stream = runtime::watched(fleets, writer, config.run.health.clone(), name, move |f| {
            forget.forget(f);
            forget.shared.metrics.forget_resource(&f.uid().unwrap_or_default());
        })
        .predicate_filter(predicates::generation, Default::default());
        // A child's status change wakes its fleet; the children's cache (slimmed) serves rounds between
        // consistent reads.
        let (child_reader, child_writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        ctx.children
            .add_scope(cias.namespace().map(str::to_owned), child_reader, ready.clone());
        let children = watcher::Config::default().labels(children::FLEET_LABEL).any_semantic();
        let child_events = watcher(cias, children)
            .default_backoff()
            .modify(child_cache::slim)
            .reflect(child_writer)
            .inspect(move |e| {
                if matches!(e, Ok(watcher::Event::InitDone)) {
                    ready.store(true, Ordering::Release);
                }
            })
            .touched_objects();
        let controller = Controller::for_stream(stream, reader)
            .owns_stream(child_events)
            .reconcile_all_on(ctx.shared.gate.subscribe());
        let how = Drive::of(&config.run, shutdown.clone(), "fleet", ctx.shared.metrics.clone());
        runtime::drive(
            controller,
            how,
            reconcile::reconcile,
            reconcile::error_policy,
            ctx.clone(),
        )
    });
    runtime::every_scope("fleet", &config.run.namespaces, runs).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_settings_follow_the_operator() {
        let mut instance = crate::controllers::instance::ControllerConfig {
            namespaces: vec!["a".into()],
            ..Default::default()
        };
        instance.plan.dry_run = true;
        let fleet = FleetConfig::following(&instance);
        assert_eq!(fleet.run.namespaces, ["a"]);
        assert!(fleet.dry_run, "--dry-run: fleets create no children");
    }
}
