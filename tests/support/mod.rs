//! Shared test support: one real control plane per test binary, a namespace, a simulator and a controller
//! per test. If the control plane cannot start, tests fail with the reason (they never skip).
#![allow(dead_code)]

pub mod fleet;
pub mod schedule;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use compute_operator::api::{AdminClient, ClientConfig, CredentialSource, Credentials, Secret};
use compute_operator::controllers::instance::{self as controller, ControllerConfig};
use compute_operator::controllers::runtime::{RuntimeSettings, Shared};
use compute_operator::crd::instance_action::{
    ComputeInstanceAction, ComputeInstanceActionSpec, DesiredState, Enforcement,
};
use compute_operator::devenv::{Binaries, ControlPlane};
use compute_operator::metrics::Metrics;
use compute_operator::sim::{self, SimConfig, SimServer};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

/// The control plane shared by every test in this binary.
pub fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        compute_operator::api::client::install_crypto_provider();
        compute_operator::telemetry::init("warn", compute_operator::config::LogFormat::Text);
        let binaries = Binaries::locate().unwrap_or_else(|e| panic!("control plane binaries missing: {e}"));
        // Started on its own runtime: clients must be created per test runtime (see `client()`).
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(ControlPlane::start(&binaries))
        })
        .join()
        .expect("control plane thread")
        .unwrap_or_else(|e| panic!("the local control plane failed to start: {e:#}"))
    })
}

pub async fn client() -> Client {
    control_plane().client().await.expect("kube client")
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id() % 10000,
        N.fetch_add(1, Ordering::SeqCst)
    );
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

pub async fn simulator(config: SimConfig) -> SimServer {
    sim::start(config).await.expect("simulator starts")
}

pub fn admin_client_for(sim: &SimServer, token: &str) -> AdminClient {
    let config = ClientConfig {
        base_url: sim.base_url().to_owned(),
        timeout: Duration::from_secs(2),
        rate_per_s: 500.0,
        burst: 500,
        max_in_flight: 32,
        ..ClientConfig::default()
    };
    AdminClient::new(
        config,
        CredentialSource::Static(Credentials::Bearer(Secret::new(token))),
    )
    .expect("admin client")
}

/// A controller running in this process for one namespace; stops when dropped.
pub struct RunningController {
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningController {
    /// Graceful stop: in-flight reconciles finish their writes.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }

    /// Hard stop: the task is aborted wherever it is (like a crash of the process).
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn test_controller_config(ns: &str) -> ControllerConfig {
    let mut config = ControllerConfig {
        namespaces: vec![ns.to_owned()],
        concurrency: 8,
        ..Default::default()
    };
    config.plan.resync = Duration::from_secs(30);
    config.plan.settle = Duration::from_secs(2);
    config.plan.slow_retry = Duration::from_secs(2);
    config.plan.poll_max = Duration::from_secs(1);
    config.error_backoff =
        compute_operator::api::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    config
}

/// The shared runtime (policy gate, fence, list budget) an operator with `config` would start, on `api`.
pub async fn shared_runtime(
    api: AdminClient,
    config: &ControllerConfig,
    metrics: Arc<Metrics>,
    fence: Arc<compute_operator::leader::Fence>,
) -> Shared {
    shared_runtime_on(client().await, api, config, metrics, fence).await
}

/// [`shared_runtime`] talking to Kubernetes through `kube` (a test may route it through a proxy).
pub async fn shared_runtime_on(
    kube: Client,
    api: AdminClient,
    config: &ControllerConfig,
    metrics: Arc<Metrics>,
    fence: Arc<compute_operator::leader::Fence>,
) -> Shared {
    Shared::start(kube, api, &RuntimeSettings::of(&config.operator()), metrics, fence)
        .await
        .unwrap_or_else(|e| panic!("shared runtime failed to start: {e}"))
}

pub async fn start_controller(sim: &SimServer, token: &str, config: ControllerConfig) -> RunningController {
    let metrics = Metrics::new();
    let fence = compute_operator::leader::Fence::always_open();
    let shared = shared_runtime(admin_client_for(sim, token), &config, metrics.clone(), fence).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        if let Err(e) = controller::run(shared, config, shutdown).await {
            panic!("controller failed: {e}");
        }
    });
    RunningController {
        metrics,
        stop: Some(tx),
        task: Some(task),
    }
}

pub fn cia(name: &str, instance: &str, desired: DesiredState, request_id: Option<&str>) -> ComputeInstanceAction {
    ComputeInstanceAction::new(
        name,
        ComputeInstanceActionSpec {
            instance_id: instance.into(),
            desired_state: desired,
            request_id: request_id.map(Into::into),
            timeout_seconds: 60,
            enforcement: Enforcement::Continuous,
            dry_run: false,
            suspend: false,
            not_after: None,
            escalation: None,
        },
    )
}

pub fn condition<'a>(
    o: &'a ComputeInstanceAction,
    type_: &str,
) -> Option<&'a compute_operator::crd::instance_action::Condition> {
    o.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Creates an object, failing the test with the API server's answer if it is refused.
pub async fn create(api: &Api<ComputeInstanceAction>, obj: &ComputeInstanceAction) -> ComputeInstanceAction {
    api.create(&PostParams::default(), obj)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", obj.name_any()))
}

/// Waits until `check` holds for the object, or fails with its last status.
pub async fn wait_for(
    api: &Api<ComputeInstanceAction>,
    name: &str,
    limit: Duration,
    what: &str,
    check: impl Fn(&ComputeInstanceAction) -> bool,
) -> ComputeInstanceAction {
    let deadline = Instant::now() + limit;
    loop {
        let o = api.get(name).await.expect("get object");
        if check(&o) {
            return o;
        }
        if Instant::now() > deadline {
            panic!(
                "{name}: not {what} within {limit:?}; status: {}",
                serde_json::to_string_pretty(&o.status).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_reason(
    api: &Api<ComputeInstanceAction>,
    name: &str,
    type_: &str,
    reason: &str,
) -> ComputeInstanceAction {
    wait_for(api, name, Duration::from_secs(30), &format!("{type_}={reason}"), |o| {
        condition(o, type_).is_some_and(|c| c.reason == reason)
    })
    .await
}

/// Waits until the object is Ready for this `requestId` (its action record answers it).
pub async fn wait_ready_for_request(
    api: &Api<ComputeInstanceAction>,
    name: &str,
    request_id: &str,
) -> ComputeInstanceAction {
    wait_for(
        api,
        name,
        Duration::from_secs(30),
        &format!("Ready for requestId {request_id}"),
        |o| {
            condition(o, "Ready").is_some()
                && o.status
                    .as_ref()
                    .and_then(|s| s.action.as_ref())
                    .and_then(|a| a.request_id.as_deref())
                    == Some(request_id)
        },
    )
    .await
}

pub async fn wait_ready(api: &Api<ComputeInstanceAction>, name: &str) -> ComputeInstanceAction {
    wait_for(api, name, Duration::from_secs(30), "Ready", |o| {
        condition(o, "Ready").is_some()
    })
    .await
}

/// Actions the simulator accepted for one instance, as action names.
pub fn audit_for(sim: &SimServer, instance: &str) -> Vec<String> {
    sim.audit()
        .into_iter()
        .filter(|e| e.instance_id == instance)
        .map(|e| e.action.as_str().to_owned())
        .collect()
}

pub fn name_of(o: &ComputeInstanceAction) -> String {
    o.name_any()
}

/// Fleet controller settings for tests: fast relisting and polling.
pub fn test_fleet_config(ns: &str) -> compute_operator::controllers::fleet::FleetConfig {
    let mut config = compute_operator::controllers::fleet::FleetConfig {
        settings: compute_operator::controllers::fleet::plan::FleetSettings {
            relist: Duration::from_secs(2),
            poll: Duration::from_secs(2),
        },
        ..Default::default()
    };
    config.run.namespaces = vec![ns.to_owned()];
    config
}

/// The instance and fleet controllers of one operator, on one shared runtime (one policy gate, one fence,
/// one list budget), as `compute-operator run` starts them.
pub async fn start_fleet_operator(
    sim: &SimServer,
    token: &str,
    config: ControllerConfig,
    fleet_config: compute_operator::controllers::fleet::FleetConfig,
    fence: Arc<compute_operator::leader::Fence>,
) -> RunningController {
    let metrics = Metrics::new();
    let shared = shared_runtime(admin_client_for(sim, token), &config, metrics.clone(), fence).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        let shutdown = futures::FutureExt::shared(shutdown);
        let instances = controller::run(shared.clone(), config, shutdown.clone());
        let fleets = compute_operator::controllers::fleet::run(shared, fleet_config, shutdown);
        if let Err(e) = tokio::try_join!(instances, fleets) {
            panic!("controllers failed: {e}");
        }
    });
    RunningController {
        metrics,
        stop: Some(tx),
        task: Some(task),
    }
}

/// The schedule controller for one namespace with a clock tests may shift; stops when dropped.
pub async fn start_schedule_controller(
    ns: &str,
    clock: compute_operator::controllers::schedule::Clock,
) -> RunningController {
    start_fenced_schedule_controller(ns, clock, compute_operator::leader::Fence::always_open()).await
}

/// [`start_schedule_controller`] on a runtime whose lease fence is `fence` (a test may close it).
pub async fn start_fenced_schedule_controller(
    ns: &str,
    clock: compute_operator::controllers::schedule::Clock,
    fence: Arc<compute_operator::leader::Fence>,
) -> RunningController {
    let mut config = compute_operator::controllers::schedule::ScheduleConfig {
        clock,
        ..Default::default()
    };
    config.run.namespaces = vec![ns.to_owned()];
    config.run.error_backoff =
        compute_operator::api::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    // Schedules never call the admin API; the client is there because the runtime is shared.
    let unused = AdminClient::new(
        ClientConfig {
            base_url: "http://127.0.0.1:9/api/compute/v1".into(),
            ..ClientConfig::default()
        },
        CredentialSource::Static(Credentials::Bearer(Secret::new("unused"))),
    )
    .expect("admin client");
    let instance_config = ControllerConfig {
        namespaces: vec![ns.to_owned()],
        ..Default::default()
    };
    let metrics = Metrics::new();
    let shared = shared_runtime(unused, &instance_config, metrics.clone(), fence).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
        };
        if let Err(e) = compute_operator::controllers::schedule::run(shared, config, shutdown).await {
            panic!("schedule controller failed: {e}");
        }
    });
    RunningController {
        metrics,
        stop: Some(tx),
        task: Some(task),
    }
}
