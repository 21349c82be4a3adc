//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one replica acts on the admin API.
//!
//! The rules, the same as client-go's `leaderelection` with the times derived from one setting, the lease
//! duration `d`:
//! - A candidate takes the lease when it is free (no holder) or expired. Expiry is judged by this process's
//!   own monotonic clock, as client-go does: the lease is expired when the same lease record (same
//!   resourceVersion) has been observed unchanged for `leaseDurationSeconds`. Other machines' timestamps are
//!   never compared with this machine's clock. Every write carries the resourceVersion it read, so of two
//!   candidates racing for the same lease exactly one wins; the other gets 409 and stays a follower.
//! - The leader renews every `d/3`. If it cannot renew for `2d/3` (the renew deadline) it steps down at once:
//!   the leading flag drops to false before any other replica can consider the lease expired (`d`), leaving
//!   `d/3` for clock skew and in-flight work. A leader that finds another holder steps down immediately.
//! - Followers retry every `min(d/3, 2s)`, so a released lease is taken over within about that time.
//! - [`LeaderElector::release`] (graceful shutdown) clears the holder and sets `leaseDurationSeconds` to 1,
//!   so a successor takes over at its next retry instead of waiting for the lease to expire.
//!
//! - The [`Fence`] is what actions check, right before each POST: it is open only while this replica leads
//!   AND its last successful renewal started less than the renew deadline ago on the monotonic clock. A leader
//!   that was paused (GC pause, SIGSTOP, a frozen node) past that finds its fence closed the instant it
//!   resumes, before its renew loop has even run, so it cannot act after a successor took over.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// May this replica act on the admin API right now? Checked right before every POST.
#[derive(Debug)]
pub struct Fence {
    /// No leader election: always open.
    always: bool,
    origin: std::time::Instant,
    /// Open until this many nanoseconds after `origin` (monotonic clock); 0 = closed.
    open_until_ns: AtomicU64,
}

impl Fence {
    /// For a single replica without leader election.
    pub fn always_open() -> Arc<Self> {
        Arc::new(Self {
            always: true,
            origin: std::time::Instant::now(),
            open_until_ns: AtomicU64::new(0),
        })
    }

    /// Closed until a leader opens it.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self {
            always: false,
            origin: std::time::Instant::now(),
            open_until_ns: AtomicU64::new(0),
        })
    }

    pub fn may_act(&self) -> bool {
        self.always || self.nanos(std::time::Instant::now()) < self.open_until_ns.load(Ordering::SeqCst)
    }

    fn nanos(&self, at: std::time::Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Opens the fence until `until` (never shortens an open fence by a late, older renewal).
    fn open_until(&self, until: std::time::Instant) {
        self.open_until_ns.fetch_max(self.nanos(until).max(1), Ordering::SeqCst);
    }

    fn close(&self) {
        self.open_until_ns.store(0, Ordering::SeqCst);
    }
}

/// Where this replica stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// No attempt has finished yet.
    Unknown,
    /// Someone else holds the lease (or it could not be read); `holder` when known.
    Following { holder: Option<String> },
    /// This replica holds the lease and may act.
    Leading,
    /// Leadership was held and lost; terminal.
    Lost,
    /// The lease was given up on shutdown; terminal.
    Released,
}

/// Errors of the election. Named after the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("reading Lease {lease}: {source}")]
    Read {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating Lease {lease}: {source}")]
    Create {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating Lease {lease}: {source}")]
    Update {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("Lease {lease} was changed by someone else meanwhile (409)")]
    Conflict { lease: String },
    #[error("Lease {lease}: no answer from the Kubernetes API within {timeout:?}")]
    Timeout { lease: String, timeout: Duration },
    #[error("lost leadership of Lease {lease}: it is now held by {holder}")]
    LostTo { lease: String, holder: String },
    #[error("lost leadership of Lease {lease}: not renewed within the renew deadline {deadline:?} ({last_error})")]
    RenewDeadline {
        lease: String,
        deadline: Duration,
        last_error: String,
    },
}

/// The outcome of one acquire-or-renew attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    Leading,
    Following { holder: Option<String> },
}

/// What a candidate may do with a lease as it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds a live lease.
    Held { holder: String },
}

/// Pure decision on a lease spec that this process has seen unchanged for `unchanged_for` (its own clock).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = match spec.holder_identity.as_deref() {
        None | Some("") => return Decision::Acquire,
        Some(h) => h,
    };
    if holder == me {
        return Decision::Renew;
    }
    let duration = Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    if unchanged_for <= duration {
        Decision::Held {
            holder: holder.to_owned(),
        }
    } else {
        Decision::Acquire
    }
}

/// This process's identity in the lease: `POD_NAME` (or the host name) plus a random suffix, so two processes
/// never share one even when the pod name is reused.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "compute-operator".to_owned());
    format!("{base}_{:08x}", rand::random::<u32>())
}

/// Takes part in the election for one Lease. Create it, call [`run`](Self::run) while the process lives, and
/// [`release`](Self::release) on graceful shutdown (after the work that needs leadership has stopped).
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    duration: Duration,
    renew_every: Duration,
    renew_deadline: Duration,
    retry_every: Duration,
    leading: Arc<AtomicBool>,
    fence: Arc<Fence>,
    /// The lease record last read (resourceVersion) and when this process first saw it.
    observed: Mutex<Option<(String, std::time::Instant)>>,
    metrics: Option<Arc<Metrics>>,
    state: watch::Sender<Leadership>,
    /// Serialises attempts and release, so a renew can never follow a release.
    op: tokio::sync::Mutex<()>,
    stopped: AtomicBool,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("lease", &self.lease_ref())
            .field("identity", &self.identity)
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

impl LeaderElector {
    /// `duration` is the lease duration; renew interval, renew deadline and retry period derive from it.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: impl Into<String>,
        duration: Duration,
    ) -> Self {
        let duration = duration.max(Duration::from_secs(1));
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.into(),
            duration,
            renew_every: duration / 3,
            renew_deadline: duration * 2 / 3,
            retry_every: (duration / 3).min(Duration::from_secs(2)),
            leading: Arc::new(AtomicBool::new(false)),
            fence: Fence::closed(),
            observed: Mutex::new(None),
            metrics: None,
            state: watch::Sender::new(Leadership::Unknown),
            op: tokio::sync::Mutex::new(()),
            stopped: AtomicBool::new(false),
        }
    }

    /// Also drive `metrics.leader` (1/0) and `metrics.leadership_known` (after the first attempt).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        metrics.leader.set(0);
        self.metrics = Some(metrics);
        self
    }

    /// Use `fence` as the gate actions check (e.g. the controller's); it is closed now.
    pub fn with_fence(mut self, fence: Arc<Fence>) -> Self {
        fence.close();
        self.fence = fence;
        self
    }

    /// The gate actions check right before each POST.
    pub fn fence(&self) -> Arc<Fence> {
        self.fence.clone()
    }

    /// True exactly while this replica holds the lease and is within its renew deadline.
    pub fn leading(&self) -> Arc<AtomicBool> {
        self.leading.clone()
    }

    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    /// Leadership changes, for waiting (`wait_for(|s| *s == Leadership::Leading)`).
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.state.subscribe()
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn set_state(&self, state: Leadership) {
        let leading = state == Leadership::Leading;
        // Stop acting first; everything else follows.
        if !leading {
            self.fence.close();
        }
        self.leading.store(leading, Ordering::SeqCst);
        if let Some(m) = &self.metrics {
            m.leader.set(i64::from(leading));
            m.leadership_known.store(true, Ordering::SeqCst);
        }
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    /// The spec we write when we hold the lease at `now`.
    fn our_spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let mut spec = previous.cloned().unwrap_or_default();
        let renewing = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !renewing {
            spec.acquire_time = Some(MicroTime(now));
            if spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty()) {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            }
            spec.lease_transitions.get_or_insert(0);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX));
        spec.renew_time = Some(MicroTime(now));
        spec
    }

    /// One attempt: create the lease, take a free or expired one, renew ours, or report who holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, LeaseError> {
        let _op = self.op.lock().await;
        self.attempt().await
    }

    async fn attempt(&self) -> Result<Attempt, LeaseError> {
        let lease = self.lease_ref();
        let pp = PostParams {
            field_manager: Some("compute-operator".into()),
            ..Default::default()
        };
        let Some(mut current) = self.api.get_opt(&self.name).await.map_err(|source| LeaseError::Read {
            lease: lease.clone(),
            source,
        })?
        else {
            let fresh = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.our_spec(None, Timestamp::now())),
            };
            return match self.api.create(&pp, &fresh).await {
                Ok(_) => Ok(Attempt::Leading),
                // Another candidate created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following { holder: None }),
                Err(source) => Err(LeaseError::Create { lease, source }),
            };
        };
        let now = Timestamp::now();
        let record = current.metadata.resource_version.clone().unwrap_or_default();
        let unchanged_for = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            match observed.as_ref() {
                Some((seen, since)) if *seen == record => since.elapsed(),
                _ => {
                    *observed = Some((record, std::time::Instant::now()));
                    Duration::ZERO
                }
            }
        };
        let decision = decide(current.spec.as_ref(), &self.identity, unchanged_for);
        if let Decision::Held { holder } = decision {
            return Ok(Attempt::Following { holder: Some(holder) });
        }
        current.spec = Some(self.our_spec(current.spec.as_ref(), now));
        // `current` carries the resourceVersion we read: the write fails if anyone wrote meanwhile.
        match self.api.replace(&self.name, &pp, &current).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => match decision {
                // Lost the race for a free lease.
                Decision::Acquire => Ok(Attempt::Following { holder: None }),
                // Our own lease changed under us: look again at once.
                _ => Err(LeaseError::Conflict { lease }),
            },
            Err(source) => Err(LeaseError::Update { lease, source }),
        }
    }

    /// Takes part until leadership, once held, is lost (`Err`) or until [`release`](Self::release) (`Ok`).
    /// The leading flag and the metrics follow every change at once.
    pub async fn run(&self) -> Result<(), LeaseError> {
        let lease = self.lease_ref();
        // Set while leading: when the last successful renew started.
        let mut renewed_at: Option<Instant> = None;
        loop {
            let started = Instant::now();
            // A leader's attempt may not outlast its renew deadline.
            let timeout = match renewed_at {
                Some(at) => (at + self.renew_deadline)
                    .saturating_duration_since(started)
                    .min(self.renew_every),
                None => self.renew_every,
            }
            .max(Duration::from_millis(1));
            let result = {
                let _op = self.op.lock().await;
                if self.stopped.load(Ordering::SeqCst) {
                    return Ok(());
                }
                match tokio::time::timeout(timeout, self.attempt()).await {
                    Ok(r) => r,
                    Err(_) => Err(LeaseError::Timeout {
                        lease: lease.clone(),
                        timeout,
                    }),
                }
            };
            let pause = match (result, renewed_at) {
                (Ok(Attempt::Leading), previous) => {
                    // No other replica can take over before `renew_deadline` after this attempt started.
                    self.fence.open_until(started.into_std() + self.renew_deadline);
                    if previous.is_none() {
                        tracing::info!(lease = %lease, identity = %self.identity, "became the leader");
                        self.set_state(Leadership::Leading);
                    }
                    renewed_at = Some(started);
                    self.renew_every.saturating_sub(started.elapsed())
                }
                (Ok(Attempt::Following { holder }), Some(_)) => {
                    self.set_state(Leadership::Lost);
                    let holder = holder.unwrap_or_else(|| "another replica".into());
                    tracing::error!(lease = %lease, %holder, "lost leadership; stopped acting");
                    return Err(LeaseError::LostTo { lease, holder });
                }
                (Ok(Attempt::Following { holder }), None) => {
                    if *self.state.borrow() != (Leadership::Following { holder: holder.clone() }) {
                        tracing::info!(lease = %lease, holder = holder.as_deref().unwrap_or("?"), "following");
                    }
                    self.set_state(Leadership::Following { holder });
                    self.retry_every
                }
                (Err(e), Some(at)) => {
                    let left = (at + self.renew_deadline).saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.set_state(Leadership::Lost);
                        tracing::error!(lease = %lease, error = %e, "renew deadline passed; stopped acting");
                        return Err(LeaseError::RenewDeadline {
                            lease,
                            deadline: self.renew_deadline,
                            last_error: e.to_string(),
                        });
                    }
                    tracing::warn!(lease = %lease, error = %e, left_ms = left.as_millis() as u64, "renewing the lease failed; retrying");
                    (self.retry_every / 4).max(Duration::from_millis(100)).min(left)
                }
                (Err(e), None) => {
                    tracing::warn!(lease = %lease, error = %e, "cannot take part in the election yet; retrying");
                    if *self.state.borrow() == Leadership::Unknown {
                        self.set_state(Leadership::Following { holder: None });
                    }
                    self.retry_every
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Stops taking part and, if this replica holds the lease, gives it up so a successor takes over at once.
    /// The leading flag drops before the lease is written. Each request is bounded by the renew interval.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let _op = self.op.lock().await;
        self.stopped.store(true, Ordering::SeqCst);
        let was_leading = self.is_leading();
        self.set_state(Leadership::Released);
        let lease = self.lease_ref();
        let timeout = self.renew_every.max(Duration::from_secs(1));
        for _ in 0..3 {
            let step = async {
                let Some(mut current) = self.api.get_opt(&self.name).await.map_err(|source| LeaseError::Read {
                    lease: lease.clone(),
                    source,
                })?
                else {
                    return Ok(());
                };
                let Some(spec) = current.spec.as_mut() else {
                    return Ok(());
                };
                if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                    return Ok(());
                }
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(MicroTime(Timestamp::now()));
                let pp = PostParams {
                    field_manager: Some("compute-operator".into()),
                    ..Default::default()
                };
                match self.api.replace(&self.name, &pp, &current).await {
                    Ok(_) => {
                        tracing::info!(lease = %lease, "released the lease");
                        Ok(())
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => Err(LeaseError::Conflict { lease: lease.clone() }),
                    Err(source) => Err(LeaseError::Update {
                        lease: lease.clone(),
                        source,
                    }),
                }
            };
            match tokio::time::timeout(timeout, step).await {
                Ok(Err(LeaseError::Conflict { .. })) => continue,
                Ok(r) => return r,
                Err(_) => return Err(LeaseError::Timeout { lease, timeout }),
            }
        }
        if was_leading {
            Err(LeaseError::Conflict { lease })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("timestamp")
    }

    fn spec(holder: Option<&str>, renewed: Option<i64>, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            renew_time: renewed.map(|s| MicroTime(at(s))),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let held = |h: &str| Decision::Held { holder: h.into() };
        // (lease, seen unchanged for s, decision). The holder's renewTime is never compared with our clock:
        // a renewTime far in the past or future changes nothing.
        let table: [(Option<LeaseSpec>, u64, Decision); 9] = [
            (None, 0, Decision::Acquire),
            (Some(spec(None, Some(0), 15)), 1, Decision::Acquire),
            (Some(spec(Some(""), Some(0), 15)), 1, Decision::Acquire),
            (Some(spec(Some("me"), Some(0), 15)), 100, Decision::Renew),
            (Some(spec(Some("other"), Some(0), 15)), 10, held("other")),
            (Some(spec(Some("other"), Some(0), 15)), 15, held("other")),
            (Some(spec(Some("other"), Some(0), 15)), 16, Decision::Acquire),
            (Some(spec(Some("other"), Some(-1_000_000), 15)), 0, held("other")),
            (Some(spec(Some("other"), Some(1_000_000), 15)), 16, Decision::Acquire),
        ];
        for (s, seen, want) in table {
            assert_eq!(
                decide(s.as_ref(), "me", Duration::from_secs(seen)),
                want,
                "{s:?} seen {seen}s"
            );
        }
        // A released lease (duration 1) is free a second later even if a holder were left in it.
        assert_eq!(
            decide(Some(&spec(Some("other"), Some(0), 1)), "me", Duration::from_secs(2)),
            Decision::Acquire
        );
    }

    #[test]
    fn fence_opens_for_a_while_and_closes_on_its_own() {
        let always = Fence::always_open();
        assert!(always.may_act());
        let f = Fence::closed();
        assert!(!f.may_act());
        f.open_until(std::time::Instant::now() + Duration::from_secs(60));
        assert!(f.may_act());
        // An older renewal never shortens it; an expired deadline closes it without anyone calling close().
        f.open_until(std::time::Instant::now());
        assert!(f.may_act());
        f.close();
        f.open_until(std::time::Instant::now() + Duration::from_millis(20));
        assert!(f.may_act());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!f.may_act(), "a paused leader finds its fence closed when it resumes");
    }

    #[test]
    fn identity_has_a_random_suffix() {
        let (a, b) = (default_identity(), default_identity());
        assert_ne!(a, b);
        assert!(
            a.rsplit_once('_')
                .is_some_and(|(base, suffix)| !base.is_empty() && suffix.len() == 8)
        );
    }
}
