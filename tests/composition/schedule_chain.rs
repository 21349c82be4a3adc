//! ComputePowerSchedule down to the instances: schedule -> child fleet -> child instance actions -> the
//! simulator, with the fleet and instance controllers running (real API server, garbage collection included).

use crate::support;

use std::time::{Duration, Instant};

use compute_operator::api::InstanceStatus;
use compute_operator::crd::power_schedule::{ComputePowerSchedule, EventResult, ScheduleEnforcement, ScheduledState};
use kube::ResourceExt;
use kube::api::PostParams;
use support::schedule::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_event_the_instances_reach_its_state() {
    let (ns, api, fleets) = setup("sched-chain").await;
    let (sim, _operator) = chain(&ns, Duration::from_secs(30)).await;
    add_instance(&sim, "i-sched-1", InstanceStatus::Running);
    let clock = clock_before_event(Duration::from_secs(5));
    let event_real = real_instant_of(clock, event_at());
    let ctl = start_schedule_controller(&ns, clock).await;
    api.create(
        &PostParams::default(),
        &schedule("nightly", vec![at("10:00", ScheduledState::Stopped)]),
    )
    .await
    .expect("create schedule");

    tokio::time::sleep_until((event_real - Duration::from_millis(500)).into()).await;
    assert!(audit_for(&sim, "i-sched-1").is_empty(), "nothing before the event");
    wait_instance(&sim, "i-sched-1", InstanceStatus::Stopped, Duration::from_secs(20)).await;
    eprintln!(
        "instance stopped {:?} after the event",
        Instant::now().saturating_duration_since(event_real)
    );
    assert_eq!(audit_for(&sim, "i-sched-1"), vec!["stop"]);

    // The schedule reports its child's success.
    let o = wait_schedule(&api, "nightly", Duration::from_secs(20), "succeeded", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_event.as_ref())
            .is_some_and(|l| l.result == EventResult::Succeeded)
    })
    .await;
    assert_eq!(ready_reason(&o), Some(("Ready".into(), "Waiting".into())));
    assert_eq!(children(&fleets, "nightly").await.len(), 1);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_enforcement_corrects_a_manual_start() {
    let (ns, api, fleets) = setup("sched-cont").await;
    let (sim, _operator) = chain(&ns, Duration::from_secs(3)).await;
    add_instance(&sim, "i-sched-1", InstanceStatus::Running);
    // The calendar's last event (09:00) says stopped: a continuous schedule holds that at once.
    let ctl = start_schedule_controller(&ns, clock_before_event(Duration::from_secs(600))).await;
    let mut s = schedule(
        "hold",
        vec![
            at("09:00", ScheduledState::Stopped),
            at("18:00", ScheduledState::Running),
        ],
    );
    s.spec.enforcement = ScheduleEnforcement::Continuous;
    api.create(&PostParams::default(), &s).await.expect("create schedule");
    wait_instance(&sim, "i-sched-1", InstanceStatus::Stopped, Duration::from_secs(20)).await;

    // Converged and reported: the child fleet is Ready, so the schedule's last event succeeded.
    wait_schedule(&api, "hold", Duration::from_secs(20), "succeeded", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_event.as_ref())
            .is_some_and(|l| l.result == EventResult::Succeeded)
    })
    .await;

    // Someone starts it by hand: the schedule's continuous child stops it again.
    assert!(sim.set_status("i-sched-1", InstanceStatus::Running));
    wait_instance(&sim, "i-sched-1", InstanceStatus::Stopped, Duration::from_secs(20)).await;
    assert_eq!(
        audit_for(&sim, "i-sched-1"),
        vec!["stop", "stop"],
        "corrected once, by one child"
    );

    // The child that holds the state is deleted by hand: continuous enforcement creates it again.
    let holder = children(&fleets, "hold").await.remove(0);
    let uid = holder.uid();
    fleets.delete(&holder.name_any(), &Default::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let again = fleets.get_opt(&holder.name_any()).await.unwrap();
        if again.as_ref().is_some_and(|f| f.uid() != uid) {
            break;
        }
        assert!(Instant::now() < deadline, "the deleted holder was not created again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_schedule_deletes_its_children_and_leaves_the_instances_alone() {
    let (ns, api, fleets) = setup("sched-delete").await;
    let (sim, _operator) = chain(&ns, Duration::from_secs(30)).await;
    add_instance(&sim, "i-sched-1", InstanceStatus::Stopped);
    let ctl = start_schedule_controller(&ns, clock_before_event(Duration::from_secs(600))).await;
    let mut s = schedule("gone", vec![at("09:00", ScheduledState::Running)]);
    s.spec.enforcement = ScheduleEnforcement::Continuous;
    api.create(&PostParams::default(), &s).await.expect("create schedule");
    wait_instance(&sim, "i-sched-1", InstanceStatus::Running, Duration::from_secs(20)).await;
    assert_eq!(children(&fleets, "gone").await.len(), 1);

    api.delete("gone", &Default::default()).await.expect("delete schedule");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !children(&fleets, "gone").await.is_empty() {
        assert!(Instant::now() < deadline, "children not garbage-collected within 30s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        audit_for(&sim, "i-sched-1"),
        vec!["start"],
        "deleting changes no instance"
    );
    assert_eq!(
        sim.instance("i-sched-1").map(|i| i.status),
        Some(InstanceStatus::Running)
    );
    ctl.stop().await;
}

/// An instance in `zone` (demo attributes otherwise).
fn zoned(sim: &compute_operator::sim::SimServer, id: &str, zone: &str, status: InstanceStatus) {
    let mut i = compute_operator::devenv::dev::demo_instances().remove(0);
    i.id = id.into();
    i.zone = zone.into();
    i.status = status;
    sim.upsert_instance(i);
}

fn by_zone(
    name: &str,
    zone: &str,
    events: Vec<compute_operator::crd::power_schedule::ScheduleEvent>,
) -> ComputePowerSchedule {
    let mut s = schedule(name, events);
    s.spec.selector = compute_operator::crd::selector::InstanceSelector {
        zone: Some(zone.into()),
        ..Default::default()
    };
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_acts_on_what_matched_at_the_event_and_then_leaves_the_instances_alone() {
    let (ns, api, _fleets) = setup("sched-once").await;
    let (sim, _operator) = chain(&ns, Duration::from_secs(3)).await;
    zoned(&sim, "i-office-1", "office", InstanceStatus::Running);
    let clock = clock_before_event(Duration::from_secs(3));
    let ctl = start_schedule_controller(&ns, clock).await;
    api.create(
        &PostParams::default(),
        &by_zone("evening", "office", vec![at("10:00", ScheduledState::Stopped)]),
    )
    .await
    .expect("create schedule");
    wait_instance(&sim, "i-office-1", InstanceStatus::Stopped, Duration::from_secs(20)).await;
    wait_schedule(&api, "evening", Duration::from_secs(20), "succeeded", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_event.as_ref())
            .is_some_and(|l| l.result == EventResult::Succeeded)
    })
    .await;
    // After the event: someone starts the instance by hand, and a new instance appears in the zone.
    assert!(sim.set_status("i-office-1", InstanceStatus::Running));
    zoned(&sim, "i-office-2", "office", InstanceStatus::Running);
    // Longer than a fleet's relist (2 s here) and a few instance resyncs (3 s).
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        audit_for(&sim, "i-office-1"),
        vec!["stop"],
        "a manual start after the event is left alone"
    );
    assert!(
        audit_for(&sim, "i-office-2").is_empty(),
        "an instance that matches only after the event is not stopped"
    );
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_child_starts_nothing_past_the_deadline_and_the_schedule_says_how_many() {
    let (ns, api, _fleets) = setup("sched-late").await;
    let (sim, _operator) = chain_on(
        &ns,
        Duration::from_secs(30),
        compute_operator::crd::access_policy::PolicyMode::Off,
        Duration::from_millis(1500),
    )
    .await;
    for n in 0..6 {
        zoned(&sim, &format!("i-late-{n}"), "late", InstanceStatus::Running);
    }
    let clock = clock_before_event(Duration::from_secs(2));
    let ctl = start_schedule_controller(&ns, clock).await;
    let mut s = by_zone("slow", "late", vec![at("10:00", ScheduledState::Stopped)]);
    // One at a time, each taking 1.5 s: most cannot be started within 3 s of the event.
    s.spec.starting_deadline = "3s".into();
    s.spec.strategy.max_concurrent = Some(compute_operator::crd::selector::MaxConcurrent::Count(1));
    api.create(&PostParams::default(), &s).await.expect("create schedule");
    let o = wait_schedule(&api, "slow", Duration::from_secs(40), "late", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_event.as_ref())
            .is_some_and(|l| l.result == EventResult::Late)
    })
    .await;
    let last = o.status.as_ref().and_then(|s| s.last_event.clone()).unwrap();
    let message = last.message.unwrap_or_default();
    assert!(
        message.contains("skipped as late") && message.contains("of 6 done"),
        "{message}"
    );
    assert_eq!(ready_reason(&o).map(|r| r.1), Some("LateEvent".into()));
    let stopped = sim.audit().len();
    assert!(
        (1..6).contains(&stopped),
        "some stopped in time, the rest skipped: {stopped}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sim.audit().len(), stopped, "nothing is started after the deadline");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_set_cleared_and_set_again_holds_its_state_again() {
    let (ns, api, _fleets) = setup("sched-override").await;
    let (sim, _operator) = chain(&ns, Duration::from_secs(30)).await;
    add_instance(&sim, "i-sched-1", InstanceStatus::Running);
    // The calendar says running (09:00); the clock is 10 minutes before 10:00, so nothing else happens.
    let ctl = start_schedule_controller(&ns, clock_before_event(Duration::from_secs(600))).await;
    let s = schedule(
        "hold",
        vec![
            at("09:00", ScheduledState::Running),
            at("18:00", ScheduledState::Stopped),
        ],
    );
    api.create(&PostParams::default(), &s).await.expect("create schedule");
    let until = (event_at() + chrono::TimeDelta::hours(4)).to_rfc3339();
    let set = serde_json::json!({"spec": {"override": {"state": "stopped", "until": until}}});
    let clear = serde_json::json!({"spec": {"override": null}});
    let patch = |body: serde_json::Value| {
        let api = api.clone();
        async move {
            api.patch(
                "hold",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(body),
            )
            .await
            .expect("patch schedule");
        }
    };
    patch(set.clone()).await;
    wait_instance(&sim, "i-sched-1", InstanceStatus::Stopped, Duration::from_secs(20)).await;
    patch(clear).await;
    wait_instance(&sim, "i-sched-1", InstanceStatus::Running, Duration::from_secs(20)).await;
    patch(set).await;
    wait_instance(&sim, "i-sched-1", InstanceStatus::Stopped, Duration::from_secs(20)).await;
    assert_eq!(audit_for(&sim, "i-sched-1"), vec!["stop", "start", "stop"]);
    let o = api.get("hold").await.unwrap();
    assert_eq!(ready_reason(&o).map(|r| r.1), Some("OverrideInEffect".into()));
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_in_a_namespace_no_policy_covers_spends_nothing() {
    let (ns, api, fleets) = setup("sched-nopolicy").await;
    let (sim, _operator) = chain_with(
        &ns,
        Duration::from_secs(30),
        compute_operator::crd::access_policy::PolicyMode::Enforce,
    )
    .await;
    add_instance(&sim, "i-sched-1", InstanceStatus::Running);
    sim.clear_audit();
    let ctl = start_schedule_controller(&ns, clock_before_event(Duration::from_secs(2))).await;
    api.create(
        &PostParams::default(),
        &schedule("probe", vec![at("10:00", ScheduledState::Stopped)]),
    )
    .await
    .expect("create schedule");
    let o = wait_schedule(&api, "probe", Duration::from_secs(30), "failed", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_event.as_ref())
            .is_some_and(|l| l.result == EventResult::Failed)
    })
    .await;
    let message = o
        .status
        .and_then(|s| s.last_event)
        .and_then(|l| l.message)
        .unwrap_or_default();
    assert!(message.contains("PolicyDenied") && message.contains(&ns), "{message}");
    let child = children(&fleets, "probe").await;
    assert_eq!(child.len(), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = sim.stats().requests;
    assert_eq!(
        (r.list, r.get, r.stop + r.start + r.restart + r.reset),
        (0, 0, 0),
        "no admin API request for a namespace no policy covers"
    );
    ctl.stop().await;
}
