//! The ComputePowerSchedule controller: a pure calendar and planner, the resource, and a thin reconciler that
//! creates one child ComputeFleetAction per event and requeues exactly for the next one.
pub mod calendar;
pub mod children;
pub mod fleet_child;
pub mod plan;
pub mod reconcile;
pub mod resource;

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Reporter;

use crate::controllers::events::EventRecorder;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};

use crate::api::backoff::Backoff;
use crate::controllers::fleet::resource::ComputeFleetAction;
use crate::controllers::instance::reconcile::ErrorBackoff;
pub use reconcile::Clock;
use resource::ComputePowerSchedule;

/// Event batches published concurrently in the background.
const EVENT_SLOTS: usize = 16;

/// How the schedule controller runs.
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    pub concurrency: u16,
    pub error_backoff: Backoff,
    /// Name reported on Events.
    pub reporter: String,
    /// The system clock in production; shifted only by tests.
    pub clock: Clock,
    /// Liveness (`/healthz`): the watch streams and reconciles report here when set.
    pub health: Option<Arc<crate::health::Health>>,
    /// Where schedule series are recorded (a private registry unless the operator passes its own).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            concurrency: 4,
            error_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(300)),
            reporter: "compute-operator".into(),
            clock: Clock::default(),
            health: None,
            metrics: crate::metrics::Metrics::new(),
        }
    }
}

impl ScheduleConfig {
    /// The same namespaces and Event reporter as the instance controller, the system clock.
    pub fn following(instance: &crate::controllers::instance::ControllerConfig) -> Self {
        Self {
            namespaces: instance.namespaces.clone(),
            reporter: instance.reporter.clone(),
            ..Self::default()
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub kube: Client,
    pub recorder: EventRecorder,
    pub event_slots: Arc<tokio::sync::Semaphore>,
    pub config: ScheduleConfig,
    pub error_backoff: ErrorBackoff,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the ComputePowerSchedule or ComputeFleetAction CRD is not installed (or not readable): {0}. Install them with `kubectl apply -f crds/`"
    )]
    CrdMissing(#[source] kube::Error),
}

/// Checks that both kinds the controller reads are served.
async fn check_crds(client: &Client, namespaces: &[String]) -> Result<(), StartError> {
    let lp = ListParams::default().limit(1);
    let (schedules, fleets): (Api<ComputePowerSchedule>, Api<ComputeFleetAction>) = match namespaces.first() {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let timeout = Duration::from_secs(15);
    for result in [
        tokio::time::timeout(timeout, schedules.list_metadata(&lp))
            .await
            .map(|r| r.map(|_| ())),
        tokio::time::timeout(timeout, fleets.list_metadata(&lp))
            .await
            .map(|r| r.map(|_| ())),
    ] {
        // Only a definite answer (not served, not allowed) is final; a slow or restarting API server is left
        // to the watchers' own backoff.
        if let Ok(Err(kube::Error::Api(s))) = result
            && (s.code == 404 || s.code == 403)
        {
            return Err(StartError::CrdMissing(kube::Error::Api(s)));
        }
    }
    Ok(())
}

/// Runs the schedule controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: ScheduleConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    check_crds(&client, &config.namespaces).await?;
    let scopes: Vec<(Api<ComputePowerSchedule>, Api<ComputeFleetAction>)> = if config.namespaces.is_empty() {
        vec![(Api::all(client.clone()), Api::all(client.clone()))]
    } else {
        config
            .namespaces
            .iter()
            .map(|ns| (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)))
            .collect()
    };
    let reporter = Reporter {
        controller: config.reporter.clone(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        kube: client.clone(),
        recorder: EventRecorder::new(client, reporter),
        event_slots: Arc::new(tokio::sync::Semaphore::new(EVENT_SLOTS)),
        config: config.clone(),
        error_backoff: ErrorBackoff::default(),
    });
    let shutdown = shutdown.shared();
    let runs = scopes.into_iter().map(|(schedules, fleets)| {
        let probe = config.health.as_ref().map(|h| {
            h.watch(format!(
                "schedules in {}",
                schedules.namespace().unwrap_or("all namespaces")
            ))
        });
        let (reader, writer) = reflector::store();
        let metrics = config.metrics.clone();
        let stream = watcher(schedules, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(writer)
            .inspect(move |event| {
                if let Some(p) = &probe {
                    p.observe(event);
                }
                if let Ok(watcher::Event::Delete(s)) = event {
                    metrics.forget_resource(&kube::ResourceExt::uid(s).unwrap_or_default());
                }
            })
            .touched_objects();
        // Child changes wake their schedule (the last event's result follows its child).
        Controller::for_stream(stream, reader)
            .owns(fleets, watcher::Config::default().any_semantic())
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
                    tracing::debug!(error = %e, "schedule controller event");
                }
                futures::future::ready(())
            })
    });
    tracing::info!(namespaces = ?config.namespaces, "schedule controller started");
    futures::future::join_all(runs).await;
    tracing::info!("schedule controller stopped");
    Ok(())
}

/// The schedule's key for logs and backoff.
pub fn key_of(obj: &ComputePowerSchedule) -> String {
    crate::controllers::object_key(obj)
}
