//! ComputePowerSchedule down to the instances: schedule -> child fleet -> child instance actions -> the
//! simulator, with the fleet and instance controllers running (real API server, garbage collection included).

mod support;

use std::time::{Duration, Instant};

use compute_operator::api::InstanceStatus;
use compute_operator::controllers::schedule::resource::{EventResult, ScheduleEnforcement, ScheduledState};
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
