//! Schedule test helpers: a fixed calendar instant, a controller clock shifted to just before it, schedules and
//! their child fleets, and the whole chain (simulator, instance and fleet controllers) for end-to-end checks.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use compute_operator::api::InstanceStatus;
use compute_operator::controllers::schedule::Clock;
use compute_operator::controllers::schedule::children::SCHEDULE_LABEL;
use compute_operator::crd::fleet_action::ComputeFleetAction;
use compute_operator::crd::power_schedule::{
    ComputePowerSchedule, ComputePowerScheduleSpec, ScheduleEnforcement, ScheduleEvent, ScheduledState,
};
use compute_operator::crd::selector::InstanceSelector;
use kube::api::{Api, ListParams};

use super::*;

/// The calendar instant every test aims at: Monday 2030-01-07 10:00 UTC (the controller's shifted clock puts
/// "now" a few seconds before it).
pub fn event_at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2030-01-07T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A clock whose "now" is `lead` before the event, from this moment on.
pub fn clock_before_event(lead: Duration) -> Clock {
    let fake_now = event_at() - TimeDelta::from_std(lead).unwrap();
    Clock {
        offset: fake_now - Utc::now(),
    }
}

/// When (real time) the event happens for a controller using `clock`.
pub fn real_instant_of(clock: Clock, at: DateTime<Utc>) -> Instant {
    let until = (at - clock.now()).to_std().unwrap_or(Duration::ZERO);
    Instant::now() + until
}

pub fn schedule(name: &str, events: Vec<ScheduleEvent>) -> ComputePowerSchedule {
    ComputePowerSchedule::new(
        name,
        ComputePowerScheduleSpec {
            selector: InstanceSelector {
                instance_ids: vec!["i-sched-1".into()],
                ..Default::default()
            },
            time_zone: "UTC".into(),
            events,
            enforcement: ScheduleEnforcement::Events,
            starting_deadline: "1h".into(),
            strategy: Default::default(),
            power_override: None,
            suspend: false,
        },
    )
}

pub fn at(hhmm: &str, state: ScheduledState) -> ScheduleEvent {
    ScheduleEvent {
        at: hhmm.into(),
        days: vec![],
        state,
    }
}

pub async fn children(fleets: &Api<ComputeFleetAction>, schedule: &str) -> Vec<ComputeFleetAction> {
    fleets
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={schedule}")))
        .await
        .expect("list child fleets")
        .items
}

pub async fn wait_schedule(
    api: &Api<ComputePowerSchedule>,
    name: &str,
    limit: Duration,
    what: &str,
    check: impl Fn(&ComputePowerSchedule) -> bool,
) -> ComputePowerSchedule {
    let deadline = Instant::now() + limit;
    loop {
        let o = api.get(name).await.expect("get schedule");
        if check(&o) {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: not {what} within {limit:?}; status: {}",
            serde_json::to_string_pretty(&o.status).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_child(fleets: &Api<ComputeFleetAction>, name: &str, limit: Duration) -> ComputeFleetAction {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(f) = fleets.get_opt(name).await.expect("get fleet") {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "child fleet {name} not created within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn ready_reason(o: &ComputePowerSchedule) -> Option<(String, String)> {
    let c = o.status.as_ref()?.conditions.iter().find(|c| c.status == "True")?;
    Some((c.type_.clone(), c.reason.clone()))
}

pub async fn setup(prefix: &str) -> (String, Api<ComputePowerSchedule>, Api<ComputeFleetAction>) {
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    (
        ns.clone(),
        Api::namespaced(client.clone(), &ns),
        Api::namespaced(client, &ns),
    )
}

pub const TOKEN: &str = "dev-admin-token";

pub fn add_instance(sim: &compute_operator::sim::SimServer, id: &str, status: InstanceStatus) {
    let mut i = compute_operator::devenv::dev::demo_instances().remove(0);
    i.id = id.into();
    i.status = status;
    sim.upsert_instance(i);
}

/// Simulator, and instance controller (drift checked every `resync`) and fleet controller on one runtime, for
/// one namespace.
pub async fn chain(ns: &str, resync: Duration) -> (compute_operator::sim::SimServer, RunningController) {
    chain_with(ns, resync, compute_operator::crd::access_policy::PolicyMode::Off).await
}

/// [`chain`] under an access-policy mode.
pub async fn chain_with(
    ns: &str,
    resync: Duration,
    mode: compute_operator::crd::access_policy::PolicyMode,
) -> (compute_operator::sim::SimServer, RunningController) {
    chain_on(ns, resync, mode, Duration::from_millis(300)).await
}

/// [`chain_with`] on a simulator whose transitions take `transition`.
pub async fn chain_on(
    ns: &str,
    resync: Duration,
    mode: compute_operator::crd::access_policy::PolicyMode,
    transition: Duration,
) -> (compute_operator::sim::SimServer, RunningController) {
    let sim = simulator(compute_operator::sim::SimConfig {
        instances: 0,
        transition,
        ..Default::default()
    })
    .await;
    let mut config = test_controller_config(ns);
    config.plan.resync = resync;
    config.policy_mode = mode;
    let operator = start_fleet_operator(
        &sim,
        TOKEN,
        config,
        test_fleet_config(ns),
        compute_operator::leader::Fence::always_open(),
    )
    .await;
    (sim, operator)
}

pub async fn wait_instance(sim: &compute_operator::sim::SimServer, id: &str, want: InstanceStatus, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let status = sim.instance(id).map(|i| i.status);
        if status.as_ref() == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: {status:?}, not {want:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
