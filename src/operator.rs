//! `compute-operator run`: wires settings, metrics, the admin client, leader election and the controller.
//!
//! With `--leader-election` every replica serves metrics and health and takes part in the election; only the
//! leader runs the controller. Leadership gates every admin API action through the lease's `Fence`, which closes the
//! moment the lease is lost; the process then exits with an error so that Kubernetes restarts it as a
//! follower (what controller-runtime does). On SIGTERM the controller stops gracefully (in-flight reconciles
//! finish their status writes), then the lease is released so a follower takes over at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;

use crate::api::{AdminClient, CredentialSource};
use crate::config::RunArgs;
use crate::controllers::instance as controller;
use crate::controllers::runtime::{self, RuntimeSettings, Shared};
use crate::crd::instance_action::ComputeInstanceAction;
use crate::leader::{LeaderElector, Leadership};
use crate::metrics::{self, Metrics};

/// How long in-flight reconciles may take to finish after SIGTERM (or after losing the lease).
const GRACE: Duration = Duration::from_secs(7);
/// How long giving up the lease may take on shutdown. GRACE + RELEASE_TIMEOUT stays under 10 s.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the operator until `shutdown` resolves.
pub async fn run(args: RunArgs, client: kube::Client, shutdown: impl runtime::Shutdown) -> anyhow::Result<()> {
    args.validate()?;
    let credentials = args.credentials()?;
    run_with(args, credentials, client, shutdown).await
}

/// Runs the operator with credentials already chosen (the `dev` stack passes the simulator's).
pub async fn run_with(
    args: RunArgs,
    credentials: CredentialSource,
    client: kube::Client,
    shutdown: impl runtime::Shutdown,
) -> anyhow::Result<()> {
    args.validate()?;
    let metrics = Metrics::new();
    metrics.health.set_thresholds(args.health_thresholds());
    let observer_metrics = metrics.clone();
    let api = AdminClient::new(args.client_config(), credentials)
        .context("admin API client")?
        .with_observer(Arc::new(move |endpoint, code, latency| {
            observer_metrics.observe_request(endpoint.as_str(), code, latency)
        }));
    let (addr, metrics_task) = metrics::serve(args.metrics_addr, metrics.clone())
        .await
        .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
    tracing::info!(%addr, api_url = %api.base_url(), "serving metrics and health");

    let result = if args.leader_election {
        run_elected(&args, client, api, metrics, shutdown).await
    } else {
        metrics.leadership_known.store(true, Ordering::SeqCst);
        // Without election this replica is the one that acts: the "no leader" alert must not fire.
        metrics.leader.set(1);
        let fence = crate::leader::Fence::always_open();
        run_controllers(client, api, args.controller_config(), metrics, fence, shutdown).await
    };
    metrics_task.abort();
    result
}

/// How the leader's run ended.
enum LeaderEnd {
    Controller(anyhow::Result<()>),
    Lost(Result<(), crate::leader::LeaseError>),
    GraceExpired,
}

/// Follow until elected, then run the controller while leading.
async fn run_elected(
    args: &RunArgs,
    client: kube::Client,
    api: AdminClient,
    metrics: Arc<Metrics>,
    shutdown: impl runtime::Shutdown,
) -> anyhow::Result<()> {
    let namespace = args
        .lease_namespace()
        .context("invalid setting --lease-namespace: required with --leader-election (or set POD_NAMESPACE)")?;
    let config = args.controller_config();
    let fence = crate::leader::Fence::closed();
    let elector = LeaderElector::new(
        client.clone(),
        &namespace,
        &args.lease_name,
        crate::leader::default_identity(),
        args.lease_duration,
    )
    .with_metrics(metrics.clone())
    .with_fence(fence.clone());
    tracing::info!(
        lease = %format!("{namespace}/{}", args.lease_name),
        identity = elector.identity(),
        duration = ?args.lease_duration,
        "leader election enabled"
    );
    let shutdown = shutdown.shared();
    // A follower has nothing to cache: it is ready once the CRD is served and leadership is known.
    tokio::select! {
        checked = runtime::check_crd::<ComputeInstanceAction>(&client, &config.namespaces) => checked?,
        () = shutdown.clone() => return Ok(()),
    }
    metrics.watching.store(true, Ordering::SeqCst);

    let mut state = elector.subscribe();
    // Boxed so it can be dropped before `release` (it may hold the elector's operation lock).
    let mut election = Box::pin(elector.run());

    // 1. Follow until this replica leads.
    tokio::select! {
        biased;
        () = shutdown.clone() => {
            drop(election);
            release(&elector).await;
            return Ok(());
        }
        end = &mut election => {
            return Err(lost(end));
        }
        // Wrapped so the watch guard is not held across the select (keeps the future Send).
        () = async { let _ = state.wait_for(|s| *s == Leadership::Leading).await; } => {}
    }

    // 2. Lead: run the controller until SIGTERM or until the lease is lost.
    tracing::info!("leading: starting the controller");
    metrics.watching.store(false, Ordering::SeqCst);
    let (stop_tx, stop_rx) = futures::channel::oneshot::channel::<()>();
    let stop = {
        let shutdown = shutdown.clone();
        async move {
            futures::future::select(shutdown, stop_rx).await;
        }
    };
    let mut controller = Box::pin(run_controllers(client, api, config, metrics, fence, stop));
    let mut grace_until: Option<tokio::time::Instant> = None;
    let end = loop {
        let grace = async {
            match grace_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut controller => break LeaderEnd::Controller(r),
            r = &mut election => break LeaderEnd::Lost(r),
            () = shutdown.clone(), if grace_until.is_none() => {
                tracing::info!(grace = ?GRACE, "stopping the controller; in-flight reconciles finish first");
                grace_until = Some(tokio::time::Instant::now() + GRACE);
            }
            () = grace => break LeaderEnd::GraceExpired,
        }
    };
    match end {
        LeaderEnd::Controller(result) => {
            drop(election);
            release(&elector).await;
            result
        }
        LeaderEnd::GraceExpired => {
            tracing::warn!(grace = ?GRACE, "in-flight reconciles did not finish in time; stopping anyway");
            drop(controller);
            drop(election);
            release(&elector).await;
            Ok(())
        }
        LeaderEnd::Lost(end) => {
            // The fence is already closed: nothing more is sent. Let in-flight reconciles record what they did.
            let _ = stop_tx.send(());
            if tokio::time::timeout(GRACE, &mut controller).await.is_err() {
                tracing::warn!("in-flight reconciles did not finish in time after losing the lease");
            }
            Err(lost(end))
        }
    }
}

/// The instance, fleet and schedule controllers side by side on one shared runtime (one policy gate, one fence,
/// one list budget), under the same leadership and shutdown; a start-up error of any ends all.
async fn run_controllers(
    client: kube::Client,
    api: AdminClient,
    config: controller::ControllerConfig,
    metrics: Arc<Metrics>,
    fence: Arc<crate::leader::Fence>,
    shutdown: impl runtime::Shutdown,
) -> anyhow::Result<()> {
    let shutdown = shutdown.shared();
    let operator = config.operator();
    let shared = Shared::start(client, api, &RuntimeSettings::of(&operator), metrics.clone(), fence).await?;
    let mut fleet_config = crate::controllers::fleet::FleetConfig::following(&operator);
    fleet_config.run.health = Some(metrics.health.clone());
    let mut schedule_config = crate::controllers::schedule::ScheduleConfig::following(&operator);
    schedule_config.run.health = Some(metrics.health.clone());
    let instances = controller::run(shared.clone(), config, shutdown.clone()).map(|r| r.map_err(anyhow::Error::from));
    let fleets = crate::controllers::fleet::run(shared.clone(), fleet_config, shutdown.clone())
        .map(|r| r.map_err(anyhow::Error::from));
    let schedules =
        crate::controllers::schedule::run(shared, schedule_config, shutdown).map(|r| r.map_err(anyhow::Error::from));
    tokio::try_join!(instances, fleets, schedules).map(|_| ())
}

fn lost(end: Result<(), crate::leader::LeaseError>) -> anyhow::Error {
    match end {
        Err(e) => anyhow::anyhow!("{e}; exiting so that this replica restarts as a follower"),
        Ok(()) => anyhow::anyhow!("leader election stopped unexpectedly; exiting"),
    }
}

/// Gives up the lease (if held), bounded in time; failure only delays the successor until the lease expires.
async fn release(elector: &LeaderElector) {
    match tokio::time::timeout(RELEASE_TIMEOUT, elector.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not release the lease; a successor waits for it to expire")
        }
        Err(_) => {
            tracing::warn!("releasing the lease timed out; a successor waits for it to expire")
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
    }
}
