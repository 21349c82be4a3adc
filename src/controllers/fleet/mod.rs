//! The ComputeFleetAction controller: many instances through child ComputeInstanceActions. Pure planning
//! (plan.rs, children.rs), a thin reconciler, and the kube-rs wiring here.
pub mod children;
pub mod plan;
pub mod reconcile;
pub mod resource;

pub use resource::{ComputeFleetAction, ComputeFleetActionSpec, ComputeFleetActionStatus};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use kube::api::{Api, ListParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Reporter;

use crate::controllers::events::EventRecorder;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, ResourceExt};

use crate::api::AdminClient;
use crate::controllers::instance::policy_gate::PolicyGate;
use crate::resource::ComputeInstanceAction;
use crate::selection::InstanceSelector;
use plan::FleetSettings;
use reconcile::RawSelection;

/// How the fleet controller runs.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    pub concurrency: u16,
    pub settings: FleetSettings,
    pub policy_mode: crate::policy::PolicyMode,
    /// The operator's `--dry-run`: every fleet reports as if `spec.dryRun` were set and creates no child.
    pub dry_run: bool,
    /// Liveness (`/healthz`): the watch streams and reconciles report here when set.
    pub health: Option<Arc<crate::health::Health>>,
    /// Where fleet series are recorded (a private registry unless the operator passes its own).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            concurrency: 4,
            settings: FleetSettings::default(),
            policy_mode: crate::policy::PolicyMode::Off,
            dry_run: false,
            health: None,
            metrics: crate::metrics::Metrics::new(),
        }
    }
}

impl FleetConfig {
    /// The fleet controller's settings for an operator whose instance controller runs with `instance`.
    pub fn following(instance: &crate::controllers::instance::ControllerConfig) -> Self {
        Self {
            namespaces: instance.namespaces.clone(),
            policy_mode: instance.policy_mode,
            dry_run: instance.plan.dry_run,
            ..Self::default()
        }
    }
}

/// What every fleet reconcile shares.
pub struct Context {
    pub kube: Client,
    pub api: AdminClient,
    pub config: FleetConfig,
    pub policy: PolicyGate,
    pub recorder: EventRecorder,
    /// False on a replica that does not (or no longer) hold the lease: no child is created then.
    pub fence: Arc<crate::leader::Fence>,
    /// The last listing per fleet UID, with the selector it answered: a listing is reused until it is older
    /// than `relist`, so the walk is not repeated for every child event.
    selections: Mutex<HashMap<String, (InstanceSelector, RawSelection)>>,
}

impl Context {
    fn cached_selection(&self, uid: &str, selector: &InstanceSelector) -> Option<RawSelection> {
        let map = self.selections.lock().unwrap_or_else(|p| p.into_inner());
        map.get(uid).filter(|(s, _)| s == selector).map(|(_, raw)| raw.clone())
    }

    fn store_selection(&self, uid: &str, selector: &InstanceSelector, raw: RawSelection) {
        let mut map = self.selections.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(uid.to_owned(), (selector.clone(), raw));
    }

    fn forget_selection(&self, uid: &str) {
        self.selections.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }
}

/// Why the fleet controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the ComputeFleetAction CRD is not installed (or not readable): {0}. Install it with `compute-operator crd | kubectl apply -f -` or `kubectl apply -f crds/`"
    )]
    CrdMissing(#[source] kube::Error),
    #[error("listing ComputeFleetActions timed out")]
    Timeout,
    #[error(transparent)]
    Policy(#[from] crate::controllers::instance::StartError),
}

/// Checks that the ComputeFleetAction CRD is served (a listing of one object).
async fn check_crd(client: &Client, namespaces: &[String]) -> Result<(), StartError> {
    let api: Api<ComputeFleetAction> = match namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match tokio::time::timeout(
        std::time::Duration::from_secs(15),
        api.list_metadata(&ListParams::default().limit(1)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(StartError::CrdMissing(e)),
        Err(_) => Err(StartError::Timeout),
    }
}

/// Runs the fleet controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    api: AdminClient,
    config: FleetConfig,
    fence: Arc<crate::leader::Fence>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    check_crd(&client, &config.namespaces).await?;
    let scopes: Vec<(Api<ComputeFleetAction>, Api<ComputeInstanceAction>)> = if config.namespaces.is_empty() {
        vec![(Api::all(client.clone()), Api::all(client.clone()))]
    } else {
        config
            .namespaces
            .iter()
            .map(|ns| (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)))
            .collect()
    };
    let (policy, policy_changes) = PolicyGate::start(
        &client,
        config.policy_mode,
        &config.namespaces,
        crate::controllers::instance::policy_gate::NAMESPACE_POLL,
        scopes.len(),
    )
    .await?;
    let ctx = Arc::new(Context {
        kube: client.clone(),
        api,
        config: config.clone(),
        policy,
        recorder: EventRecorder::new(
            client.clone(),
            Reporter {
                controller: "compute-operator-fleet".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        fence,
        selections: Mutex::default(),
    });
    let shutdown = shutdown.shared();
    let runs = scopes.into_iter().zip(policy_changes).map(|((fleets, cias), changes)| {
        let (reader, writer) = reflector::store();
        let forget = ctx.clone();
        let probe = config
            .health
            .as_ref()
            .map(|h| h.watch(format!("fleets in {}", fleets.namespace().unwrap_or("all namespaces"))));
        // Only spec changes wake a fleet (its own status writes do not); a deleted fleet's listing is dropped.
        let stream = watcher(fleets, watcher::Config::default().any_semantic())
            .default_backoff()
            .modify(|f: &mut ComputeFleetAction| f.managed_fields_mut().clear())
            .reflect(writer)
            .inspect(move |event| {
                if let Some(p) = &probe {
                    p.observe(event);
                }
                if let Ok(watcher::Event::Delete(f)) = event {
                    forget.forget_selection(&f.uid().unwrap_or_default());
                    forget.config.metrics.forget_resource(&f.uid().unwrap_or_default());
                }
            })
            .touched_objects()
            .predicate_filter(predicates::generation, Default::default());
        // A child's status change wakes its fleet.
        let children = watcher::Config::default().labels(children::FLEET_LABEL).any_semantic();
        Controller::for_stream(stream, reader)
            .owns(cias, children)
            .reconcile_all_on(changes)
            .with_config(controller::Config::default().concurrency(config.concurrency))
            .graceful_shutdown_on(shutdown.clone())
            .run(
                |obj, ctx: Arc<Context>| {
                    let health = ctx.config.health.clone();
                    crate::health::counted(health.as_ref(), reconcile::reconcile(obj, ctx))
                },
                reconcile::error_policy,
                ctx.clone(),
            )
            .for_each(|r| {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "fleet controller event");
                }
                futures::future::ready(())
            })
    });
    tracing::info!(namespaces = ?config.namespaces, "fleet controller started");
    futures::future::join_all(runs).await;
    tracing::info!("fleet controller stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_settings_follow_the_operator() {
        let mut instance = crate::controllers::instance::ControllerConfig {
            namespaces: vec!["a".into()],
            policy_mode: crate::policy::PolicyMode::Enforce,
            ..Default::default()
        };
        instance.plan.dry_run = true;
        let fleet = FleetConfig::following(&instance);
        assert_eq!(fleet.namespaces, ["a"]);
        assert_eq!(fleet.policy_mode, crate::policy::PolicyMode::Enforce);
        assert!(fleet.dry_run, "--dry-run: fleets create no children");
    }
}
