//! Liveness (`/healthz`): is the controller stuck? Heartbeats from the watch streams and the reconcile loop,
//! and one pure `judge` that turns them into an answer.
//!
//! A quiet watch is not a dead one: a cluster where nothing changes sends no events for hours. kube-rs hides
//! bookmarks and silent reconnects, so what the stream shows is events (the watch works) and errors (it does
//! not). A watch is stuck when it has reported only errors for longer than the threshold and is still
//! reporting them; a watch that goes quiet after errors has reconnected (kube-rs retries at least every
//! ~60 s while failing: 30 s connect timeout + at most 30 s backoff), so quiet for `error_quiet` counts as
//! recovered. The reconcile loop is stuck when reconciles are running and none has finished for longer than
//! the threshold; with nothing to do, no progress is needed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When the controller counts as stuck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// A watch failing (errors only, no event) for this long is stuck.
    pub watch_failing: Duration,
    /// Reconciles running and none finished for this long: stuck.
    pub reconcile_stalled: Duration,
    /// A failing watch that reported no error for this long has reconnected.
    pub error_quiet: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            watch_failing: Duration::from_secs(300),
            reconcile_stalled: Duration::from_secs(300),
            error_quiet: Duration::from_secs(90),
        }
    }
}

/// What one watch stream last showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchState {
    /// Which watch (e.g. the namespace), for the answer.
    pub name: String,
    /// First error after the last event; `None` while the watch works.
    pub failing_since: Option<Instant>,
    pub last_error: Option<Instant>,
    pub last_error_text: String,
    /// The stream ended while the controller was meant to run.
    pub ended: bool,
}

/// Everything `judge` looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub watches: Vec<WatchState>,
    /// Reconciles started and not finished.
    pub in_flight: usize,
    /// When `in_flight` last went from 0 to more.
    pub busy_since: Option<Instant>,
    pub last_reconcile_done: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Unhealthy(String),
}

/// The liveness answer for `snapshot` at `now`.
pub fn judge(now: Instant, snapshot: &Snapshot, t: &Thresholds) -> Verdict {
    let age = |at: Instant| now.saturating_duration_since(at);
    for w in &snapshot.watches {
        if w.ended {
            return Verdict::Unhealthy(format!("the watch of {} ended and was not restarted", w.name));
        }
        if let (Some(since), Some(last)) = (w.failing_since, w.last_error)
            && age(last) <= t.error_quiet
            && age(since) >= t.watch_failing
        {
            return Verdict::Unhealthy(format!(
                "the watch of {} has failed for {}s (last error: {})",
                w.name,
                age(since).as_secs(),
                w.last_error_text
            ));
        }
    }
    if snapshot.in_flight > 0
        && let Some(busy) = snapshot.busy_since
    {
        // Progress is the later of "work began" and "a reconcile finished": a long idle spell before new work
        // is not a stall.
        let progress = snapshot.last_reconcile_done.map_or(busy, |done| done.max(busy));
        if age(progress) >= t.reconcile_stalled {
            return Verdict::Unhealthy(format!(
                "{} reconciles running and none finished for {}s",
                snapshot.in_flight,
                age(progress).as_secs()
            ));
        }
    }
    Verdict::Healthy
}

/// The live heartbeats, shared by the watch streams, the reconciles and the health endpoint.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<(Snapshot, Thresholds)>,
}

impl Health {
    fn with<R>(&self, f: impl FnOnce(&mut Snapshot, &mut Thresholds) -> R) -> R {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (snapshot, thresholds) = &mut *guard;
        f(snapshot, thresholds)
    }

    pub fn set_thresholds(&self, t: Thresholds) {
        self.with(|_, th| *th = t);
    }

    /// Registers a watch stream; its probe reports what the stream shows.
    pub fn watch(self: &Arc<Self>, name: impl Into<String>) -> WatchProbe {
        let name = name.into();
        let index = self.with(|s, _| {
            s.watches.push(WatchState {
                name,
                ..WatchState::default()
            });
            s.watches.len() - 1
        });
        WatchProbe {
            health: self.clone(),
            index,
        }
    }

    /// Forgets every watch (the controller stopped on purpose, e.g. a lost lease or shutdown).
    pub fn clear_watches(&self) {
        self.with(|s, _| s.watches.clear());
    }

    /// Marks a reconcile as running until the returned guard is dropped.
    pub fn reconcile_started(self: &Arc<Self>) -> ReconcileGuard {
        self.with(|s, _| {
            if s.in_flight == 0 {
                s.busy_since = Some(Instant::now());
            }
            s.in_flight += 1;
        });
        ReconcileGuard { health: self.clone() }
    }

    pub fn check(&self) -> Verdict {
        self.with(|s, t| judge(Instant::now(), s, t))
    }
}

/// `reconcile`, counted as running for liveness (when `health` is set) until it completes or is dropped.
pub fn counted<F: std::future::Future>(
    health: Option<&Arc<Health>>,
    reconcile: F,
) -> impl std::future::Future<Output = F::Output> + use<F> {
    let running = health.map(|h| h.reconcile_started());
    futures::FutureExt::inspect(reconcile, move |_| drop(running))
}

/// Reports one watch stream's events and errors.
#[derive(Debug, Clone)]
pub struct WatchProbe {
    health: Arc<Health>,
    index: usize,
}

impl WatchProbe {
    fn update(&self, f: impl FnOnce(&mut WatchState)) {
        self.health.with(|s, _| {
            if let Some(w) = s.watches.get_mut(self.index) {
                f(w);
            }
        });
    }

    /// The stream delivered something: the watch works.
    pub fn event(&self) {
        self.update(|w| {
            w.failing_since = None;
            w.last_error = None;
        });
    }

    pub fn error(&self, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        let text: String = error.to_string().chars().take(300).collect();
        self.update(|w| {
            w.failing_since.get_or_insert(now);
            w.last_error = Some(now);
            w.last_error_text = text;
        });
    }

    pub fn ended(&self) {
        self.update(|w| w.ended = true);
    }

    /// Reports one item of a watch stream: an event, or an error.
    pub fn observe<T, E: std::fmt::Display>(&self, item: &Result<T, E>) {
        match item {
            Ok(_) => self.event(),
            Err(e) => self.error(e),
        }
    }
}

/// Counts a reconcile as finished when dropped (also when its future is dropped).
#[derive(Debug)]
pub struct ReconcileGuard {
    health: Arc<Health>,
}

impl Drop for ReconcileGuard {
    fn drop(&mut self) {
        self.health.with(|s, _| {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.last_reconcile_done = Some(Instant::now());
            if s.in_flight == 0 {
                s.busy_since = None;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn thresholds() -> Thresholds {
        Thresholds {
            watch_failing: S(300),
            reconcile_stalled: S(120),
            error_quiet: S(90),
        }
    }

    fn watch(failing_since: Option<u64>, last_error: Option<u64>, ended: bool) -> WatchState {
        // Offsets are seconds after the base instant.
        let base = base();
        WatchState {
            name: "ns-a".into(),
            failing_since: failing_since.map(|s| base + S(s)),
            last_error: last_error.map(|s| base + S(s)),
            last_error_text: "connection refused".into(),
            ended,
        }
    }

    fn base() -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn reconciles(in_flight: usize, busy_since: Option<u64>, done: Option<u64>) -> Snapshot {
        Snapshot {
            watches: vec![],
            in_flight,
            busy_since: busy_since.map(|s| base() + S(s)),
            last_reconcile_done: done.map(|s| base() + S(s)),
        }
    }

    #[test]
    fn judge_table() {
        let w = |ws: Vec<WatchState>| Snapshot {
            watches: ws,
            ..Snapshot::default()
        };
        // (what, snapshot, seconds after base, healthy?, reason contains)
        let table: Vec<(&str, Snapshot, u64, bool, &str)> = vec![
            ("fresh start, nothing seen", Snapshot::default(), 0, true, ""),
            ("idle for a day", reconciles(0, None, Some(0)), 86_400, true, ""),
            (
                "watch quiet for a day",
                w(vec![watch(None, None, false)]),
                86_400,
                true,
                "",
            ),
            (
                "watch failing briefly",
                w(vec![watch(Some(1000), Some(1100), false)]),
                1150,
                true,
                "",
            ),
            (
                "watch failing past the threshold, errors still coming",
                w(vec![watch(Some(1000), Some(1290), false)]),
                1300,
                false,
                "failed for 300s",
            ),
            (
                "watch failed long ago, quiet since: reconnected",
                w(vec![watch(Some(1000), Some(1400), false)]),
                1491,
                true,
                "",
            ),
            ("watch ended", w(vec![watch(None, None, true)]), 10, false, "ended"),
            (
                "one of two watches failing",
                w(vec![watch(None, None, false), watch(Some(0), Some(299), false)]),
                300,
                false,
                "ns-a",
            ),
            (
                "reconciling briefly",
                reconciles(3, Some(1000), Some(900)),
                1100,
                true,
                "",
            ),
            (
                "reconciles running, none finished past the threshold",
                reconciles(8, Some(1000), Some(900)),
                1120,
                false,
                "8 reconciles running and none finished for 120s",
            ),
            (
                "busy for long but reconciles keep finishing",
                reconciles(8, Some(0), Some(1000)),
                1100,
                true,
                "",
            ),
            (
                "new work after a long idle spell is not a stall",
                reconciles(1, Some(10_000), Some(0)),
                10_010,
                true,
                "",
            ),
            (
                "nothing running, last finish long ago",
                reconciles(0, None, Some(0)),
                5000,
                true,
                "",
            ),
        ];
        for (what, snapshot, at, healthy, reason) in table {
            let verdict = judge(base() + S(at), &snapshot, &thresholds());
            match verdict {
                Verdict::Healthy => assert!(healthy, "{what}: expected unhealthy"),
                Verdict::Unhealthy(r) => {
                    assert!(!healthy, "{what}: expected healthy, got {r}");
                    assert!(r.contains(reason), "{what}: {r:?} lacks {reason:?}");
                }
            }
        }
    }

    #[test]
    fn heartbeats_feed_the_judge() {
        let health = Arc::new(Health::default());
        health.set_thresholds(Thresholds {
            watch_failing: Duration::ZERO,
            reconcile_stalled: Duration::from_secs(3600),
            error_quiet: Duration::from_secs(3600),
        });
        let probe = health.watch("ns-a");
        assert_eq!(health.check(), Verdict::Healthy);
        probe.error(&"connection refused");
        assert!(matches!(health.check(), Verdict::Unhealthy(r) if r.contains("connection refused")));
        probe.event();
        assert_eq!(health.check(), Verdict::Healthy);

        let guard = health.reconcile_started();
        let second = health.reconcile_started();
        health.set_thresholds(Thresholds {
            reconcile_stalled: Duration::ZERO,
            ..thresholds()
        });
        assert!(matches!(health.check(), Verdict::Unhealthy(r) if r.starts_with("2 reconciles")));
        drop(guard);
        // One finished just now: progress.
        health.set_thresholds(Thresholds {
            reconcile_stalled: Duration::from_secs(60),
            ..thresholds()
        });
        assert_eq!(health.check(), Verdict::Healthy);
        drop(second);
        assert_eq!(health.with(|s, _| (s.in_flight, s.busy_since)), (0, None));

        probe.ended();
        assert!(matches!(health.check(), Verdict::Unhealthy(r) if r.contains("ended")));
        health.clear_watches();
        assert_eq!(health.check(), Verdict::Healthy);
    }

    #[test]
    fn a_fleet_or_schedule_watch_reports_through_observe() {
        let health = Arc::new(Health::default());
        health.set_thresholds(Thresholds {
            watch_failing: Duration::ZERO,
            ..thresholds()
        });
        let instances = health.watch("all namespaces");
        let fleets = health.watch("fleets in all namespaces");
        instances.observe::<(), &str>(&Ok(()));
        fleets.observe::<(), &str>(&Err("the server could not find the requested resource"));
        assert!(
            matches!(health.check(), Verdict::Unhealthy(r) if r.contains("fleets in all namespaces")),
            "one failing watch of any controller is enough"
        );
        fleets.observe::<(), &str>(&Ok(()));
        assert_eq!(health.check(), Verdict::Healthy);
    }
}
