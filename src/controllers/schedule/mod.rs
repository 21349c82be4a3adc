//! The ComputePowerSchedule controller: a pure calendar and planner, the resource, and a thin reconciler that
//! creates one child ComputeFleetAction per event and requeues exactly for the next one.
pub mod children;
pub mod fleet_child;
pub mod plan;
pub mod reconcile;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Controller;

use crate::controllers::events::EventRecorder;
use kube::runtime::watcher;

use crate::controllers::runtime::{self, Drive, ErrorBackoff, RunSettings, Shared, StartError};
use crate::crd::fleet_action::ComputeFleetAction;
use crate::crd::power_schedule::ComputePowerSchedule;
pub use reconcile::Clock;

/// Event batches published concurrently in the background.
const EVENT_SLOTS: usize = 16;

/// How the schedule controller runs.
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    /// Namespaces, concurrency, error backoff, liveness.
    pub run: RunSettings,
    /// Name reported on Events.
    pub reporter: String,
    /// The system clock in production; shifted only by tests.
    pub clock: Clock,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self::following(&Default::default())
    }
}

impl ScheduleConfig {
    /// The operator's namespaces and Event reporter, the system clock.
    pub fn following(operator: &runtime::OperatorSettings) -> Self {
        Self {
            run: RunSettings::new(4, Duration::from_secs(300)).serving(&operator.namespaces),
            reporter: operator.reporter.clone(),
            clock: Clock::default(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub shared: Shared,
    pub recorder: EventRecorder,
    pub event_slots: Arc<tokio::sync::Semaphore>,
    pub config: ScheduleConfig,
    pub error_backoff: ErrorBackoff,
}

/// Runs the schedule controller until `shutdown` resolves.
pub async fn run(shared: Shared, config: ScheduleConfig, shutdown: impl runtime::Shutdown) -> Result<(), StartError> {
    let ctx = Arc::new(Context {
        recorder: runtime::recorder(shared.kube.clone(), &config.reporter),
        shared,
        event_slots: Arc::new(tokio::sync::Semaphore::new(EVENT_SLOTS)),
        config: config.clone(),
        error_backoff: ErrorBackoff::default(),
    });
    let shutdown = shutdown.shared();
    let per_scope = |(schedules, fleets): (Api<ComputePowerSchedule>, Api<ComputeFleetAction>)| {
        let forget = ctx.clone();
        let (reader, stream) = runtime::scope_watch(schedules, &config.run, "schedules", move |s| {
            forget.error_backoff.reset(&crate::controllers::object_key(s));
            forget.shared.metrics.forget_resource(&s.uid().unwrap_or_default());
        });
        // Child changes wake their schedule (the last event's result follows its child).
        Controller::for_stream(stream, reader).owns(fleets, watcher::Config::default().any_semantic())
    };
    let how = Drive::of(&config.run, shutdown, "schedule", ctx.shared.metrics.clone());
    let (kube, reconcile, error_policy) = (ctx.shared.kube.clone(), reconcile::reconcile, reconcile::error_policy);
    runtime::run_composed(&kube, &config.run, how, per_scope, reconcile, error_policy, ctx.clone()).await
}
