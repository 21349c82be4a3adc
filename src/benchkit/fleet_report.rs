//! The report of the fleet and schedule figures (the JSON of `bench --fleet-instances/--schedule-instances`):
//! time against the ideal, admin API requests per instance, the cap as the simulator saw it, and where the
//! time of one slot goes (202 to observed completion, then the handover to the next child), from the
//! children's action records.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::measure::Spread;
use super::report::{check, opt};
use crate::api::PowerAction;
use crate::crd::instance_action::ActionRecord;
use crate::sim::audit::{AuditEntry, SimStats};

/// Target: total time at most this many times the ideal (`fleet_ratio_to_ideal >= 1 / 1.15`).
pub const FLEET_TIME_FACTOR: f64 = 1.15;
/// Target: admin API requests per instance of the fleet.
pub const FLEET_REQUESTS_PER_INSTANCE: f64 = 2.5;
/// Target: the schedule's event within this many times its ideal.
pub const SCHEDULE_TIME_FACTOR: f64 = 2.0;

/// One rollout (the fleet's, or the schedule event's child fleet).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetRun {
    pub instances: usize,
    pub max_concurrent: u32,
    pub transition_s: f64,
    /// From the create (the event's minute for a schedule) until the fleet was seen Ready.
    pub seconds: f64,
    /// `ceil(instances / max_concurrent) x transition`.
    pub ideal_seconds: f64,
    /// `ideal_seconds / seconds` (1.0 is ideal).
    pub ratio_to_ideal: f64,
    /// The fleet's final condition (`Ready/Succeeded`), `None` when it did not settle in time.
    pub result: Option<String>,
    pub api_requests: u64,
    pub api_requests_per_instance: f64,
    pub api_requests_by_endpoint: BTreeMap<String, u64>,
    /// The most actions in flight at once by the simulator's audit (accepted within one transition).
    pub max_in_flight_audit: usize,
    /// The most children the fleet ever reported in progress.
    pub max_reported_in_progress: u32,
    pub acted_once: usize,
    pub duplicates: usize,
    pub not_acted: usize,
    /// From the start until the first intent.
    pub first_intent_s: f64,
    /// Intent written -> 202 recorded.
    pub intent_to_accept_s: Spread,
    /// 202 -> completion observed (the transition is `transition_s`; the rest is polling late).
    pub accept_to_done_s: Spread,
    pub accept_to_done_mean_s: f64,
    /// A finished child -> the next child's intent in its slot (result write, the fleet's watch event and
    /// reconcile, the create, the child's first reconcile).
    pub handover_s: Spread,
    pub handover_mean_s: f64,
}

impl FleetRun {
    /// Everything measured about one rollout of `instances` instances.
    #[allow(clippy::too_many_arguments)]
    pub fn measured(
        instances: usize,
        max_concurrent: u32,
        transition: Duration,
        seconds: f64,
        started_at: DateTime<Utc>,
        result: Option<String>,
        max_reported: u32,
        requests: &SimStats,
        audit: &[AuditEntry],
        action: PowerAction,
        records: &[ActionRecord],
    ) -> Self {
        let rounds = instances.div_ceil(max_concurrent.max(1) as usize) as f64;
        let ideal = rounds * transition.as_secs_f64();
        let r = &requests.requests;
        let by_endpoint = BTreeMap::from([
            ("list".to_owned(), r.list),
            ("get".to_owned(), r.get),
            ("stop".to_owned(), r.stop),
            ("start".to_owned(), r.start),
            ("restart".to_owned(), r.restart),
            ("reset".to_owned(), r.reset),
        ]);
        let acted: Vec<&AuditEntry> = audit.iter().filter(|e| e.action == action).collect();
        let mut per_instance: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &acted {
            *per_instance.entry(e.instance_id.as_str()).or_default() += 1;
        }
        let times: Vec<DateTime<Utc>> = acted.iter().map(|e| e.at).collect();
        let secs = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_milliseconds() as f64 / 1000.0;
        let intents: Vec<DateTime<Utc>> = records.iter().map(|a| a.intent_at).collect();
        let accept: Vec<f64> = records
            .iter()
            .filter_map(|a| Some(secs(a.intent_at, a.accepted_at?)))
            .collect();
        let done: Vec<f64> = records
            .iter()
            .filter_map(|a| Some(secs(a.accepted_at?, a.completed_at?)))
            .collect();
        let completions: Vec<DateTime<Utc>> = records.iter().filter_map(|a| a.completed_at).collect();
        let handover = slot_handover(&intents, &completions, max_concurrent as usize);
        Self {
            instances,
            max_concurrent,
            transition_s: transition.as_secs_f64(),
            seconds,
            ideal_seconds: ideal,
            ratio_to_ideal: ideal / seconds,
            result,
            api_requests: requests.total,
            api_requests_per_instance: requests.total as f64 / instances.max(1) as f64,
            api_requests_by_endpoint: by_endpoint,
            max_in_flight_audit: max_in_flight(&times, transition),
            max_reported_in_progress: max_reported,
            acted_once: per_instance.values().filter(|n| **n == 1).count(),
            duplicates: per_instance.values().filter(|n| **n > 1).count(),
            not_acted: instances.saturating_sub(per_instance.len()),
            first_intent_s: intents.iter().min().map_or(f64::NAN, |t| secs(started_at, *t)),
            accept_to_done_mean_s: mean(&done),
            intent_to_accept_s: Spread::of(accept),
            accept_to_done_s: Spread::of(done),
            handover_mean_s: mean(&handover),
            handover_s: Spread::of(handover),
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// How long each slot stood empty: the k-th intent (in time order, past the first `cap`) takes the slot the
/// (k - cap)-th completion freed. Seconds, never negative.
pub fn slot_handover(intents: &[DateTime<Utc>], completions: &[DateTime<Utc>], cap: usize) -> Vec<f64> {
    let (mut intents, mut completions) = (intents.to_vec(), completions.to_vec());
    intents.sort();
    completions.sort();
    intents
        .iter()
        .enumerate()
        .skip(cap)
        .filter_map(|(k, start)| {
            let freed = completions.get(k - cap)?;
            Some(((*start - *freed).num_milliseconds().max(0)) as f64 / 1000.0)
        })
        .collect()
}

/// The most actions accepted within one transition of each other (a 20 ms tolerance for clock steps).
pub fn max_in_flight(times: &[DateTime<Utc>], transition: Duration) -> usize {
    let window = chrono::Duration::from_std(transition).unwrap_or_default() - chrono::Duration::milliseconds(20);
    let mut times = times.to_vec();
    times.sort();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[lo] <= times[hi] - window {
            lo += 1;
        }
        best = best.max(hi + 1 - lo);
    }
    best
}

/// The JSON of a fleet/schedule bench run. README "Benchmark" documents every key.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FleetBenchReport {
    pub transition_ms: u64,
    pub concurrency: u16,
    pub load_average_start: String,
    pub load_average_end: String,
    pub fleet_seconds: Option<f64>,
    pub fleet_ideal_seconds: Option<f64>,
    pub fleet_ratio_to_ideal: Option<f64>,
    pub fleet_api_requests_per_instance: Option<f64>,
    pub schedule_seconds: Option<f64>,
    pub schedule_ideal_seconds: Option<f64>,
    pub schedule_ratio_to_ideal: Option<f64>,
    pub schedule_api_requests_per_instance: Option<f64>,
    pub controller_peak_rss_mib: f64,
    pub fleet: Option<FleetRun>,
    pub schedule: Option<FleetRun>,
    pub controller_log: String,
}

impl FleetBenchReport {
    /// Copies the headline figures of each run to the top-level keys.
    pub fn fill_keys(&mut self) {
        if let Some(f) = &self.fleet {
            self.fleet_seconds = Some(f.seconds);
            self.fleet_ideal_seconds = Some(f.ideal_seconds);
            self.fleet_ratio_to_ideal = Some(f.ratio_to_ideal);
            self.fleet_api_requests_per_instance = Some(f.api_requests_per_instance);
        }
        if let Some(s) = &self.schedule {
            self.schedule_seconds = Some(s.seconds);
            self.schedule_ideal_seconds = Some(s.ideal_seconds);
            self.schedule_ratio_to_ideal = Some(s.ratio_to_ideal);
            self.schedule_api_requests_per_instance = Some(s.api_requests_per_instance);
        }
    }

    /// The figures with their targets (`hit`/`MISS`), then where the time went.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "load average {} -> {}; controller peak RSS {:.1} MiB",
            self.load_average_start, self.load_average_end, self.controller_peak_rss_mib
        );
        if let Some(f) = &self.fleet {
            let _ = writeln!(
                out,
                "fleet: restart {} instances, maxConcurrent {}, {:.1} s transitions: {}",
                f.instances,
                f.max_concurrent,
                f.transition_s,
                f.result.as_deref().unwrap_or("NOT SETTLED")
            );
            let time_ok = f.seconds <= FLEET_TIME_FACTOR * f.ideal_seconds;
            let _ = writeln!(
                out,
                "  fleet_seconds {:.1} (ideal {:.1}, fleet_ratio_to_ideal {:.2}): {} (<= {FLEET_TIME_FACTOR} x ideal)",
                f.seconds,
                f.ideal_seconds,
                f.ratio_to_ideal,
                check(time_ok && f.result.is_some())
            );
            let _ = writeln!(
                out,
                "  fleet_api_requests_per_instance {:.2}: {} (<= {FLEET_REQUESTS_PER_INSTANCE})",
                f.api_requests_per_instance,
                check(f.api_requests_per_instance <= FLEET_REQUESTS_PER_INSTANCE)
            );
            out.push_str(&details(f));
        }
        if let Some(s) = &self.schedule {
            let _ = writeln!(
                out,
                "schedule: stop event over {} instances, default strategy (maxConcurrent {}), {:.1} s transitions: {}",
                s.instances,
                s.max_concurrent,
                s.transition_s,
                s.result.as_deref().unwrap_or("NOT SETTLED")
            );
            let ok = s.seconds <= SCHEDULE_TIME_FACTOR * s.ideal_seconds && s.result.is_some();
            let _ = writeln!(
                out,
                "  schedule_seconds {:.1} from the event's minute (ideal {:.1}, bound {:.1}): {} (<= {SCHEDULE_TIME_FACTOR} x ideal)",
                s.seconds,
                s.ideal_seconds,
                SCHEDULE_TIME_FACTOR * s.ideal_seconds,
                check(ok)
            );
            let _ = writeln!(
                out,
                "  schedule_api_requests_per_instance {:.2}",
                s.api_requests_per_instance
            );
            out.push_str(&details(s));
        }
        let _ = writeln!(out, "controller log: {}", self.controller_log);
        out
    }
}

fn details(f: &FleetRun) -> String {
    let spread = |s: &Spread| format!("p50 {:.3} p95 {:.3} max {:.3} (n {})", s.p50, s.p95, s.max, s.n);
    format!(
        "  requests {} by endpoint {:?}\n  max in flight (audit) {}, reported in progress at most {}; acted once {}, \
         duplicates {}, not acted {}\n  first intent after {} s\n  intent -> 202: {}\n  202 -> done: mean {:.3}, {}\n  \
         slot handover (done -> next intent): mean {:.3}, {}\n",
        f.api_requests,
        f.api_requests_by_endpoint,
        f.max_in_flight_audit,
        f.max_reported_in_progress,
        f.acted_once,
        f.duplicates,
        f.not_acted,
        opt(Some(f.first_intent_s), 2),
        spread(&f.intent_to_accept_s),
        f.accept_to_done_mean_s,
        spread(&f.accept_to_done_s),
        f.handover_mean_s,
        spread(&f.handover_s),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms)
    }

    #[test]
    fn handover_pairs_each_start_with_the_slot_it_took() {
        // cap 2: starts at 0, 0, then 1.2 (slot freed at 1.0) and 1.5 (freed at 1.1).
        let intents = [t(0), t(1500), t(0), t(1200)];
        let completions = [t(1100), t(1000), t(2500), t(2700)];
        assert_eq!(slot_handover(&intents, &completions, 2), vec![0.2, 0.4]);
        assert!(slot_handover(&intents, &completions, 4).is_empty());
        // A start before the completion it is paired with (the cap counted differently) is not negative.
        assert_eq!(slot_handover(&[t(0), t(500)], &[t(900)], 1), vec![0.0]);
    }

    #[test]
    fn in_flight_counts_actions_within_one_transition() {
        let second = Duration::from_secs(1);
        // (accept times in ms, most within one transition)
        let rows: [(&[i64], usize); 4] = [
            (&[], 0),
            (&[0, 100, 200], 3),
            (&[0, 1000, 2000], 1),
            (&[0, 500, 990, 1400, 1600], 3),
        ];
        for (times, want) in rows {
            let times: Vec<_> = times.iter().map(|ms| t(*ms)).collect();
            assert_eq!(max_in_flight(&times, second), want, "{times:?}");
        }
    }

    #[test]
    fn the_table_marks_targets() {
        let run = FleetRun {
            instances: 1000,
            max_concurrent: 50,
            transition_s: 1.0,
            seconds: 22.0,
            ideal_seconds: 20.0,
            ratio_to_ideal: 20.0 / 22.0,
            result: Some("Ready/Succeeded".into()),
            api_requests_per_instance: 3.0,
            ..FleetRun::default()
        };
        let mut r = FleetBenchReport {
            fleet: Some(run.clone()),
            schedule: Some(FleetRun { seconds: 41.0, ..run }),
            ..FleetBenchReport::default()
        };
        r.fill_keys();
        assert_eq!(r.fleet_seconds, Some(22.0));
        let table = r.table();
        assert!(table.contains("hit (<= 1.15 x ideal)"), "{table}");
        assert!(table.contains("MISS (<= 2.5)"), "{table}");
        assert!(table.contains("MISS (<= 2 x ideal)"), "{table}");
    }
}
