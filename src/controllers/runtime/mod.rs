//! The runtime the three controllers share, started once per operator: the namespace scopes, the CRD check,
//! the gates every write passes (the lease fence and the access policy), the list budget, per-object error
//! backoff and a bound on every Kubernetes call. Each kind adds only its planner and a thin reconciler.
pub mod announce;
pub mod drive;
pub mod errors;
pub mod list_budget;
pub mod lookups;
pub mod policy_gate;
pub mod status;
pub mod walk;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::api::AdminClient;
use crate::leader::Fence;
use crate::metrics::Metrics;
pub use drive::{Drive, Shutdown, drive, every_scope};
pub use errors::{ErrorBackoff, ReconcileError};
pub use list_budget::ListBudget;
pub use policy_gate::PolicyGate;
pub use status::{STALE_RETRY, Written, put_status, write_status};
pub use watch::{scope_watch, watched};

/// Bound on one Kubernetes API call made by a reconcile.
pub const KUBE_TIMEOUT: Duration = Duration::from_secs(15);

/// What every controller of one operator shares: one admin client (one rate limit), one access-policy gate,
/// one change-control gate, one lease fence, one list budget, one metrics registry.
#[derive(Clone)]
pub struct Shared {
    pub kube: Client,
    pub api: AdminClient,
    pub gate: Arc<PolicyGate>,
    /// Change control (maintenance windows, disruption budgets), asked right before every intent.
    pub change: Arc<crate::controllers::change::ChangeGate>,
    /// Closed on a replica that does not (or no longer) hold the lease: every admin API POST and every write
    /// to another object asks it right before it leaves.
    pub fence: Arc<Fence>,
    /// The share of `--api-rate` that list walks (the instance view, fleets) may use together.
    pub lists: Arc<ListBudget>,
    pub metrics: Arc<Metrics>,
}

/// How one kind's controller runs: what every kind's configuration shares.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Reconciles at once.
    pub concurrency: u16,
    /// Per-object backoff after a failed reconcile.
    pub error_backoff: crate::api::backoff::Backoff,
    /// Liveness (`/healthz`): the watch streams and reconciles report here when set.
    pub health: Option<Arc<crate::health::Health>>,
}

impl Default for RunSettings {
    /// All namespaces, 4 reconciles at once, errors backing off up to a minute.
    fn default() -> Self {
        Self::new(4, Duration::from_secs(60))
    }
}

impl RunSettings {
    /// `concurrency` reconciles at once, errors backing off from 500 ms up to `max_backoff`.
    pub fn new(concurrency: u16, max_backoff: Duration) -> Self {
        Self {
            namespaces: Vec::new(),
            concurrency,
            error_backoff: crate::api::backoff::Backoff::new(Duration::from_millis(500), max_backoff),
            health: None,
        }
    }

    /// The same, for these namespaces.
    pub fn serving(mut self, namespaces: &[String]) -> Self {
        self.namespaces = namespaces.to_vec();
        self
    }
}

/// What every controller of one operator shares from its command line: the namespaces it serves, who it is on
/// Events, `--dry-run`, and what the runtime's gates need. Each kind's configuration follows it.
#[derive(Clone, Debug)]
pub struct OperatorSettings {
    /// Namespaces served; empty means all.
    pub namespaces: Vec<String>,
    /// Name reported on Events.
    pub reporter: String,
    /// `--dry-run`: nothing is sent and no child is created; every object reports what it would do.
    pub dry_run: bool,
    pub policy_mode: crate::crd::access_policy::PolicyMode,
    /// Serving listed namespaces: how often their labels are read (a Role cannot grant a watch of them).
    pub namespace_label_poll: Duration,
    /// Admin API requests per second the instance view and all list walks together may use.
    pub view_rate: f64,
}

impl Default for OperatorSettings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            reporter: "compute-operator".into(),
            dry_run: false,
            policy_mode: crate::crd::access_policy::PolicyMode::Off,
            namespace_label_poll: policy_gate::NAMESPACE_POLL,
            view_rate: 5.0,
        }
    }
}

/// What the shared runtime needs to start.
#[derive(Clone, Debug)]
pub struct RuntimeSettings {
    /// Namespaces served; empty means all.
    pub namespaces: Vec<String>,
    pub policy_mode: crate::crd::access_policy::PolicyMode,
    /// Serving listed namespaces: how often their labels are read (a Role cannot grant a watch of them).
    pub namespace_label_poll: Duration,
    /// Admin API requests per second all list walks together may use.
    pub list_rate: f64,
}

impl RuntimeSettings {
    /// The runtime an operator with these settings needs.
    pub fn of(operator: &OperatorSettings) -> Self {
        Self {
            namespaces: operator.namespaces.clone(),
            policy_mode: operator.policy_mode,
            namespace_label_poll: operator.namespace_label_poll,
            list_rate: operator.view_rate,
        }
    }
}

impl Shared {
    /// Starts the gates once; every controller of the operator gets a clone.
    pub async fn start(
        kube: Client,
        api: AdminClient,
        settings: &RuntimeSettings,
        metrics: Arc<Metrics>,
        fence: Arc<Fence>,
    ) -> Result<Self, StartError> {
        let gate = PolicyGate::start(
            &kube,
            settings.policy_mode,
            &settings.namespaces,
            settings.namespace_label_poll,
        )
        .await?;
        let lists = Arc::new(ListBudget::new(settings.list_rate));
        let change = Arc::new(crate::controllers::change::ChangeGate::start(&kube).await?);
        crate::controllers::change::upkeep::Upkeep {
            gate: Arc::downgrade(&change),
            kube: kube.clone(),
            api: api.clone(),
            lists: lists.clone(),
            fence: fence.clone(),
        }
        .start();
        Ok(Self {
            kube,
            api,
            gate: Arc::new(gate),
            change,
            fence,
            lists,
            metrics,
        })
    }
}

/// Why a controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the {kind} CRD is not installed (or not readable): {source}. Install the CRDs with `compute-operator crd | kubectl apply -f -` or `kubectl apply -f crds/`"
    )]
    CrdMissing {
        kind: String,
        #[source]
        source: kube::Error,
    },
    #[error("the Kubernetes API server did not answer for a minute: {0}")]
    ApiServerUnreachable(#[source] kube::Error),
    #[error(
        "--policy-mode enforce needs the ComputeAccessPolicy CRD and permission to list it: {0}. Install crds/ or run with --policy-mode off on a single-tenant cluster"
    )]
    PolicyCrdMissing(#[source] kube::Error),
}

/// The Event recorder of one controller: reported as `controller`, from this pod (`POD_NAME`, when set).
pub fn recorder(client: Client, controller: &str) -> crate::controllers::events::EventRecorder {
    let reporter = kube::runtime::events::Reporter {
        controller: controller.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    };
    crate::controllers::events::EventRecorder::new(client, reporter)
}

/// One `Api` per served namespace, or one for all of them.
pub fn scoped<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

/// For a kind `P` that acts through children of kind `C`: both CRDs checked, then one (parent, child) pair of
/// `Api`s per served namespace.
pub async fn parent_and_child_scopes<P, C>(
    client: &Client,
    namespaces: &[String],
) -> Result<Vec<(Api<P>, Api<C>)>, StartError>
where
    P: Resource<Scope = kube::core::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    P::DynamicType: Default,
    C: Resource<Scope = kube::core::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    C::DynamicType: Default,
{
    check_crd::<P>(client, namespaces).await?;
    check_crd::<C>(client, namespaces).await?;
    Ok(scoped::<P>(client, namespaces)
        .into_iter()
        .zip(scoped::<C>(client, namespaces))
        .collect())
}

/// Runs a composed kind `P` (acting through children of kind `C`) in every served namespace: both CRDs checked
/// first, then the controller `per_scope` builds for each (parent, child) pair of `Api`s, each driven the same
/// way (`how`), until every scope's controller stopped.
pub async fn run_composed<P, C, S, Ctx, Fut, E>(
    client: &Client,
    run: &RunSettings,
    how: Drive<S>,
    per_scope: impl FnMut((Api<P>, Api<C>)) -> kube::runtime::Controller<P>,
    reconcile: impl FnMut(Arc<P>, Arc<Ctx>) -> Fut + Clone + Send + 'static,
    error_policy: impl Fn(Arc<P>, &E, Arc<Ctx>) -> kube::runtime::controller::Action + Clone + Send + Sync + 'static,
    ctx: Arc<Ctx>,
) -> Result<(), StartError>
where
    P: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    P::DynamicType: Default + std::fmt::Debug + Unpin + std::hash::Hash + Eq + Clone + Send + Sync,
    C: Resource<Scope = kube::core::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    C::DynamicType: Default,
    S: Shutdown + Clone,
    Ctx: Send + Sync + 'static,
    Fut: futures::TryFuture<Ok = kube::runtime::controller::Action, Error = E>
        + std::future::Future<Output = Result<kube::runtime::controller::Action, E>>
        + Send
        + 'static,
    E: std::error::Error + Send + 'static,
{
    let scopes = parent_and_child_scopes::<P, C>(client, &run.namespaces).await?;
    let runs = scopes.into_iter().map(per_scope).map(|controller| {
        drive(
            controller,
            how.clone(),
            reconcile.clone(),
            error_policy.clone(),
            ctx.clone(),
        )
    });
    every_scope(how.kind, &run.namespaces, runs).await;
    Ok(())
}

/// Checks that kind `K` is served, by listing one object (needs only the RBAC a controller has anyway). Only a
/// definite answer (404: not served, 403: not allowed) is final; an API server that is restarting or
/// overloaded is waited for, up to a minute.
pub async fn check_crd<K>(client: &Client, namespaces: &[String]) -> Result<(), StartError>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = match namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    check_served(&api).await
}

/// [`check_crd`] through `api`, of any scope (a cluster-scoped kind is read through `Api::all`).
pub async fn check_served<K>(api: &Api<K>) -> Result<(), StartError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let lp = ListParams::default().limit(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(200);
    loop {
        let err = match tokio::time::timeout(KUBE_TIMEOUT, api.list_metadata(&lp)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(kube::Error::Api(s))) if s.code == 404 || s.code == 403 => {
                return Err(StartError::CrdMissing {
                    kind: kind.clone(),
                    source: kube::Error::Api(s),
                });
            }
            Ok(Err(e)) => e,
            Err(_) => kube::Error::Service(format!("listing {kind}s timed out after {KUBE_TIMEOUT:?}").into()),
        };
        if tokio::time::Instant::now() + delay > deadline {
            return Err(StartError::ApiServerUnreachable(err));
        }
        tracing::warn!(%kind, error = %err, retry_ms = delay.as_millis() as u64, "Kubernetes API not answering yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Error of a bounded Kubernetes call: the call's own error, or no answer in time.
pub async fn bounded<T>(fut: impl std::future::Future<Output = Result<T, kube::Error>>) -> Result<T, kube::Error> {
    match tokio::time::timeout(KUBE_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(kube::Error::Service(
            format!("no answer from the Kubernetes API within {KUBE_TIMEOUT:?}").into(),
        )),
    }
}
