//! The ComputeFleetAction controller: many instances through child ComputeInstanceActions. The pure planner
//! (plan.rs, with children.rs, runs.rs, verdict.rs; the selection's lookups and walk are the runtime's), the thin
//! reconciler (reconcile.rs), and the kube-rs wiring here on the shared runtime; child_cache.rs keeps the
//! children's views between consistent reads.
pub mod child_cache;
pub mod children;
pub mod plan;
pub mod reconcile;
pub mod runs;
pub mod verdict;

pub use crate::crd::fleet_action::{ComputeFleetAction, ComputeFleetActionSpec, ComputeFleetActionStatus};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt as _};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::{WatchStreamExt, predicates, watcher};

use crate::controllers::events::EventRecorder;
use crate::controllers::runtime::walk::{self, Listed};
use crate::controllers::runtime::{self, Drive, ErrorBackoff, RunSettings, Shared, StartError};
use crate::crd::instance_action::ComputeInstanceAction;
use crate::crd::selector::InstanceSelector;
use plan::FleetSettings;

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
    /// The fleet controller's settings in an operator with `operator`'s: its namespaces and its `--dry-run`.
    pub fn following(operator: &runtime::OperatorSettings) -> Self {
        let run = RunSettings::default().serving(&operator.namespaces);
        let dry_run = operator.dry_run;
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
    /// Fleets deleted recently (UID, when): a reconcile that was mid-walk when its fleet went must not put
    /// back what the deletion dropped (its listing, its created children, its metrics).
    gone: Mutex<HashMap<String, std::time::Instant>>,
}

/// How long a deleted fleet's UID is remembered: longer than the longest walk.
const GONE_FOR: std::time::Duration = walk::SELECTION_TIMEOUT.saturating_add(std::time::Duration::from_secs(60));

impl Context {
    fn cached_selection(&self, uid: &str, selector: &InstanceSelector) -> Option<Listed> {
        let map = self.selections.lock().unwrap_or_else(|p| p.into_inner());
        map.get(uid).filter(|(s, _)| s == selector).map(|(_, raw)| raw.clone())
    }

    fn store_selection(&self, uid: &str, selector: &InstanceSelector, listed: Listed) {
        if self.is_gone(uid) {
            return;
        }
        let mut map = self.selections.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(uid.to_owned(), (selector.clone(), listed));
    }

    /// Was the fleet with this UID deleted (while a reconcile of it may still have been running)?
    fn is_gone(&self, uid: &str) -> bool {
        let mut gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        gone.retain(|_, at| at.elapsed() < GONE_FOR);
        gone.contains_key(uid)
    }

    /// Drops what is kept for a fleet that is gone (or going); a reconcile still running for it keeps nothing.
    fn forget(&self, fleet: &ComputeFleetAction) {
        let uid = fleet.uid().unwrap_or_default();
        self.gone
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid.clone(), std::time::Instant::now());
        self.selections.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
        self.children.forget(&uid);
        self.shared.metrics.forget_resource(&uid);
        self.errors.reset(&crate::controllers::object_key(fleet));
    }

    /// Fleets with a cached listing (for tests of what is kept).
    pub fn cached_fleets(&self) -> usize {
        self.selections.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Runs the fleet controller until `shutdown` resolves.
pub async fn run(shared: Shared, config: FleetConfig, shutdown: impl runtime::Shutdown) -> Result<(), StartError> {
    let ctx = Arc::new(Context {
        recorder: runtime::recorder(shared.kube.clone(), "compute-operator-fleet"),
        shared,
        config: config.clone(),
        errors: ErrorBackoff::default(),
        selections: Mutex::default(),
        children: child_cache::ChildCache::default(),
        gone: Mutex::default(),
    });
    let shutdown = shutdown.shared();
    let per_scope = |(fleets, cias): (Api<ComputeFleetAction>, Api<ComputeInstanceAction>)| {
        let forget = ctx.clone();
        // Only spec changes wake a fleet (its own status writes do not); a deleted fleet's state is dropped.
        let (reader, stream) = runtime::scope_watch(fleets, &config.run, "fleets", move |f| forget.forget(f));
        let stream = stream.predicate_filter(predicates::generation, Default::default());
        // A child's status change wakes its fleet; the children's projection (their views) serves rounds between
        // consistent reads.
        let feed = ctx.children.add_scope(cias.namespace().map(str::to_owned));
        let children = watcher::Config::default().labels(children::FLEET_LABEL).any_semantic();
        let child_events = watcher(cias, children)
            .default_backoff()
            .modify(child_cache::slim)
            .inspect(move |e| {
                if let Ok(event) = e {
                    feed.observe(event);
                }
            })
            .touched_objects();
        Controller::for_stream(stream, reader)
            .owns_stream(child_events)
            .reconcile_all_on(ctx.shared.gate.subscribe())
    };
    let how = Drive::of(&config.run, shutdown, "fleet", ctx.shared.metrics.clone());
    let (kube, reconcile, error_policy) = (ctx.shared.kube.clone(), reconcile::reconcile, reconcile::error_policy);
    runtime::run_composed(&kube, &config.run, how, per_scope, reconcile, error_policy, ctx.clone()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_settings_follow_the_operator() {
        let operator = runtime::OperatorSettings {
            namespaces: vec!["a".into()],
            dry_run: true,
            ..Default::default()
        };
        let fleet = FleetConfig::following(&operator);
        assert_eq!(fleet.run.namespaces, ["a"]);
        assert!(fleet.dry_run, "--dry-run: fleets create no children");
    }
}
