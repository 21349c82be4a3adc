//! Prometheus metrics (`compute_operator_*`) and the HTTP endpoint that serves them with health probes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub mod kinds;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Which controller (`instance`, `fleet`, `schedule`) failed a reconcile, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindReasonLabels {
    pub kind: String,
    pub reason: String,
}

/// Which controller (`instance`, `fleet`, `schedule`) and whether its reconcile succeeded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindResultLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

/// A status write that answered 409: which write, and why (see `instance::status_write::conflict_cause`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabels {
    pub write: String,
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// `Ready` or `Stalled`.
    pub condition: String,
    pub reason: String,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Family<KindReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// Reconciles of every kind, by kind and result (`ok`, `error`): the shared controller driver counts them.
    pub kind_reconciles: Family<KindResultLabels, Counter>,
    pub actions: Family<ActionLabels, Counter>,
    pub action_duration: Family<ActionLabel, Histogram>,
    pub api_requests: Family<RequestLabels, Counter>,
    pub api_latency: Family<EndpointLabel, Histogram>,
    pub status_writes: Counter,
    /// Status writes of the instance controller that answered 409, by write and cause.
    pub status_conflicts: Family<ConflictLabels, Counter>,
    pub objects_by_phase: Family<PhaseLabel, Gauge>,
    /// Objects whose `Ready` or `Stalled` condition is True, by reason (what alerts page on).
    pub objects_by_condition: Family<ConditionLabels, Gauge>,
    /// Seconds since the oldest object still Stalled for that reason became Stalled (0: none).
    pub stalled_oldest: Family<ReasonLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub leader: Gauge,
    /// Instances in the shared view from the list endpoint.
    pub view_instances: Gauge,
    /// Entries the instance controller keeps per object (status memory, acceptances, backoff, locks): every
    /// one goes with its object.
    pub held_object_state: Gauge,
    /// Admin API requests the last view round made.
    pub view_round_requests: Gauge,
    /// 1 while view rounds do not fit the budget in one resync interval and are stretched.
    pub view_round_stretched: Gauge,
    /// Fleet and schedule series (see [`kinds`]).
    kinds: kinds::KindMetrics,
    /// Heartbeats behind `/healthz`.
    pub health: Arc<crate::health::Health>,
    /// Condition series set before, so that one that disappears is set to 0 rather than left stale.
    condition_series: std::sync::Mutex<(Vec<ConditionLabels>, Vec<ReasonLabel>)>,
    /// Set once the watches have listed everything (readiness).
    pub watching: AtomicBool,
    /// Leadership known (or not needed).
    pub leadership_known: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("compute_operator");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<KindReasonLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let kind_reconciles = Family::<KindResultLabels, Counter>::default();
        let actions = Family::<ActionLabels, Counter>::default();
        let action_duration = Family::<ActionLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.1, 2.0, 12))
        });
        let api_requests = Family::<RequestLabels, Counter>::default();
        let api_latency = Family::<EndpointLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let status_writes = Counter::default();
        let status_conflicts = Family::<ConflictLabels, Counter>::default();
        let objects_by_phase = Family::<PhaseLabel, Gauge>::default();
        let objects_by_condition = Family::<ConditionLabels, Gauge>::default();
        let stalled_oldest = Family::<ReasonLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let leader = Gauge::default();
        let view_instances = Gauge::default();
        let held_object_state = Gauge::default();
        let view_round_requests = Gauge::default();
        let view_round_stretched = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller kind and reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "kind_reconciles",
            "Reconciles of every controller, by kind and result",
            kind_reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            reconcile_duration.clone(),
        );
        registry.register("actions", "Admin API actions by action and result", actions.clone());
        registry.register(
            "action_duration_seconds",
            "Time from intent to completion of an action",
            action_duration.clone(),
        );
        registry.register(
            "api_requests",
            "Admin API requests by endpoint and status code",
            api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Admin API request latency",
            api_latency.clone(),
        );
        registry.register(
            "status_writes",
            "Status writes to the Kubernetes API",
            status_writes.clone(),
        );
        registry.register(
            "status_conflicts",
            "Status writes that answered 409 (the object changed since it was read), by write and cause",
            status_conflicts.clone(),
        );
        registry.register("objects", "ComputeInstanceActions by phase", objects_by_phase.clone());
        registry.register(
            "objects_by_condition",
            "ComputeInstanceActions whose Ready or Stalled condition is True, by reason (and Reconciling when a maintenance window or disruption budget holds the action back)",
            objects_by_condition.clone(),
        );
        registry.register(
            "stalled_oldest_seconds",
            "Age of the oldest Stalled condition, by reason",
            stalled_oldest.clone(),
        );
        registry.register("leader", "1 on the replica that holds the lease", leader.clone());
        registry.register(
            "held_object_state_entries",
            "Entries the instance controller keeps per object (status memory, acceptances, backoff, locks)",
            held_object_state.clone(),
        );
        registry.register(
            "view_instances",
            "Instances in the shared view refreshed from the list endpoint",
            view_instances.clone(),
        );
        registry.register(
            "view_round_requests",
            "Admin API requests made by the last refresh round of the instance view",
            view_round_requests.clone(),
        );
        registry.register(
            "view_round_stretched",
            "1 while refresh rounds of the instance view exceed their budget and take longer than the resync interval",
            view_round_stretched.clone(),
        );
        let kinds = kinds::KindMetrics::register(&mut registry);
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
        );
        Arc::new(Self {
            registry,
            reconciles,
            reconcile_errors,
            kind_reconciles,
            reconcile_duration,
            actions,
            action_duration,
            api_requests,
            api_latency,
            status_writes,
            status_conflicts,
            objects_by_phase,
            objects_by_condition,
            stalled_oldest,
            leader,
            view_instances,
            held_object_state,
            view_round_requests,
            view_round_stretched,
            kinds,
            health: Arc::default(),
            condition_series: Default::default(),
            watching: AtomicBool::new(false),
            leadership_known: AtomicBool::new(false),
        })
    }

    /// Counts one admin API exchange.
    pub fn observe_request(&self, endpoint: &str, code: Option<u16>, latency: Duration) {
        let code = code.map_or_else(|| "error".to_owned(), |c| c.to_string());
        self.api_requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.into(),
                code,
            })
            .inc();
        self.api_latency
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.into(),
            })
            .observe(latency.as_secs_f64());
    }

    pub fn count_action(&self, action: &str, result: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                action: action.into(),
                result: result.into(),
            })
            .inc();
    }

    /// After a fleet reconcile: `after` is the status it wrote, `None` when it wrote none (`before` stands).
    pub fn observe_fleet_status(
        &self,
        uid: &str,
        before: &crate::controllers::fleet::ComputeFleetActionStatus,
        after: Option<&crate::controllers::fleet::ComputeFleetActionStatus>,
    ) {
        self.kinds.observe_fleet(uid, before, after);
    }

    /// After a schedule reconcile, as [`Self::observe_fleet_status`]; `now` is the schedule controller's clock.
    pub fn observe_schedule_status(
        &self,
        uid: &str,
        before: &crate::crd::power_schedule::ComputePowerScheduleStatus,
        after: Option<&crate::crd::power_schedule::ComputePowerScheduleStatus>,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        self.kinds.observe_schedule(uid, before, after, now);
    }

    /// A fleet or schedule was deleted: it no longer counts in the gauges.
    pub fn forget_resource(&self, uid: &str) {
        self.kinds.forget(uid);
    }

    /// Replaces the condition gauges: `counts` by (condition, reason), `stalled_oldest` in seconds by reason.
    /// A series counted before and absent now reads 0 (a vanished series would reset an alert's `for`).
    pub fn set_condition_counts(
        &self,
        counts: &std::collections::BTreeMap<(String, String), i64>,
        stalled_oldest: &std::collections::BTreeMap<String, f64>,
    ) {
        let mut seen = self.condition_series.lock().unwrap_or_else(|p| p.into_inner());
        let (conditions, reasons) = &mut *seen;
        for ((condition, reason), n) in counts {
            let label = ConditionLabels {
                condition: condition.clone(),
                reason: reason.clone(),
            };
            self.objects_by_condition.get_or_create(&label).set(*n);
            if !conditions.contains(&label) {
                conditions.push(label);
            }
        }
        for label in conditions.iter() {
            if !counts.contains_key(&(label.condition.clone(), label.reason.clone())) {
                self.objects_by_condition.get_or_create(label).set(0);
            }
        }
        for (reason, secs) in stalled_oldest {
            let label = ReasonLabel { reason: reason.clone() };
            self.stalled_oldest.get_or_create(&label).set(*secs);
            if !reasons.contains(&label) {
                reasons.push(label);
            }
        }
        for label in reasons.iter() {
            if !stalled_oldest.contains_key(&label.reason) {
                self.stalled_oldest.get_or_create(label).set(0.0);
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn is_ready(&self) -> bool {
        self.watching.load(Ordering::Relaxed) && self.leadership_known.load(Ordering::Relaxed)
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the future is dropped. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    async fn metrics_text(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
        (
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            m.encode(),
        )
    }
    async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
        if m.is_ready() {
            (StatusCode::OK, "ok")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready")
        }
    }
    async fn healthz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
        match m.health.check() {
            crate::health::Verdict::Healthy => (StatusCode::OK, "ok".to_owned()),
            crate::health::Verdict::Unhealthy(reason) => {
                tracing::warn!(%reason, "liveness check failed");
                (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {reason}"))
            }
        }
    }
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, task))
}
