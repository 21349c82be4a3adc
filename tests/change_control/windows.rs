//! Maintenance windows on the real API server: nothing is sent (or asked) while a window holds an action back,
//! and it is sent right when the window opens; a freeze's date range; a window change picked up at once.
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use compute_operator::crd::instance_action::{ComputeInstanceAction, DesiredState};
use compute_operator::crd::maintenance_window::ComputeMaintenanceWindow;
use kube::api::{Api, Patch, PatchParams};

use crate::support::fleet::{TOKEN, zone_fleet};
use crate::support::*;
use crate::{ONE_AT_A_TIME, create_cluster_object, delete_cluster_object, setup};

fn held_until(o: &ComputeInstanceAction) -> Option<DateTime<Utc>> {
    o.status.as_ref()?.held_until
}

fn reconciling_message(o: &ComputeInstanceAction) -> String {
    condition(o, "Reconciling")
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_window_sends_right_when_it_opens_and_asks_nothing_before() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, ns, sim) = setup("cmw-allow", zone_fleet("w", "zw", 1), 300).await;
    let mut config = test_controller_config(&ns);
    // No view round during the wait: whatever the simulator sees then comes from the held object.
    config.plan.resync = Duration::from_secs(300);
    let _controller = start_controller(&sim, TOKEN, config).await;
    // Windows are minute-grained: the next minute boundary at least 8 s away opens it.
    let now = Utc::now();
    let mut opens =
        now.with_second(0).and_then(|t| t.with_nanosecond(0)).expect("a minute") + chrono::Duration::minutes(1);
    if opens - now < chrono::Duration::seconds(10) {
        opens += chrono::Duration::minutes(1);
    }
    let closes = opens + chrono::Duration::minutes(30);
    let name = format!("{ns}-allow");
    create_cluster_object::<ComputeMaintenanceWindow>(
        &client,
        serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeMaintenanceWindow",
            "metadata": {"name": name},
            "spec": {"namespaces": {"names": [ns]}, "timeZone": "UTC",
                "windows": [{"type": "allow", "start": opens.format("%H:%M").to_string(),
                    "end": closes.format("%H:%M").to_string()}]},
        }),
    )
    .await;
    // The gate's cache sees the window before the object is created.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    create(&api, &cia("restart", "w-00", DesiredState::Restarted, Some("r1"))).await;
    let held = wait_reason(&api, "restart", "Reconciling", "WaitingForWindow").await;
    assert_eq!(held_until(&held), Some(opens), "the time the window opens");
    assert_eq!(
        held.status.as_ref().and_then(|s| s.held_by.as_deref()),
        Some(name.as_str())
    );
    let message = reconciling_message(&held);
    assert!(
        message.contains(&name) && message.contains(&opens.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "names the window and the time: {message}"
    );
    assert_eq!(
        held.status.as_ref().and_then(|s| s.action.as_ref()),
        None,
        "no intent while held"
    );
    // Nothing is asked of the admin API while it waits (the controller comes back at the opening, no polling).
    // (A view round that began before the hold may still be finishing.)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before_stats = sim.stats();
    let before = before_stats.total;
    let until_just_before = (opens - Utc::now() - chrono::Duration::milliseconds(300))
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(until_just_before).await;
    let after = sim.stats();
    assert_eq!(
        after.total, before,
        "no admin API request while waiting for the window: {:?} then {:?}",
        before_stats.requests, after.requests
    );
    assert!(
        audit_for(&sim, "w-00").is_empty(),
        "nothing sent before the window opens"
    );
    let done = wait_ready(&api, "restart").await;
    let sent = sim
        .audit()
        .into_iter()
        .find(|e| e.instance_id == "w-00")
        .expect("the restart was sent");
    let late = sent.at - opens;
    eprintln!("restart sent {} ms after the window opened", late.num_milliseconds());
    assert!(
        late >= chrono::Duration::zero() && late < chrono::Duration::seconds(1),
        "sent {late} after the window opened"
    );
    assert_eq!(held_until(&done), None);
    assert_eq!(audit_for(&sim, "w-00"), ["restart"]);
    delete_cluster_object::<ComputeMaintenanceWindow>(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_holds_its_date_range_and_a_shortened_freeze_is_picked_up_at_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, ns, sim) = setup("cmw-freeze", zone_fleet("f", "zf", 2), 300).await;
    let _controller = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    let now = Utc::now();
    let until = now + chrono::Duration::seconds(6);
    let name = format!("{ns}-freeze");
    let freeze = |until: DateTime<Utc>| {
        serde_json::json!([{"from": (now - chrono::Duration::hours(1)).to_rfc3339(), "until": until.to_rfc3339(),
            "reason": "release freeze"}])
    };
    create_cluster_object::<ComputeMaintenanceWindow>(
        &client,
        serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeMaintenanceWindow",
            "metadata": {"name": name},
            "spec": {"namespaces": {"names": [ns]}, "instances": {"ids": ["f-00"]}, "freezes": freeze(until)},
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    create(&api, &cia("stop-frozen", "f-00", DesiredState::Stopped, None)).await;
    // Another instance the freeze does not cover goes at once.
    create(&api, &cia("stop-free", "f-01", DesiredState::Stopped, None)).await;
    wait_ready(&api, "stop-free").await;
    let held = wait_reason(&api, "stop-frozen", "Reconciling", "WaitingForWindow").await;
    assert!(
        reconciling_message(&held).contains("release freeze"),
        "{}",
        reconciling_message(&held)
    );
    let until_secs = DateTime::from_timestamp(until.timestamp(), 0).expect("until");
    assert!(
        held_until(&held).is_some_and(|t| t >= until_secs && t <= until),
        "{:?}",
        held_until(&held)
    );
    wait_ready(&api, "stop-frozen").await;
    let sent = sim
        .audit()
        .into_iter()
        .find(|e| e.instance_id == "f-00")
        .expect("stop sent");
    assert!(
        sent.at >= until - chrono::Duration::milliseconds(1),
        "sent at {} before {until}",
        sent.at
    );

    // A long freeze, then shortened: the held object sees the change at once (watched, in memory).
    let windows: Api<ComputeMaintenanceWindow> = Api::all(client.clone());
    let long = Utc::now() + chrono::Duration::hours(2);
    windows
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"freezes": freeze(long)}})),
        )
        .await
        .expect("lengthen the freeze");
    tokio::time::sleep(Duration::from_millis(500)).await;
    create(&api, &cia("start-frozen", "f-00", DesiredState::Running, None)).await;
    api.delete("stop-frozen", &Default::default())
        .await
        .expect("delete the stop");
    // A start is not gated by default: it goes.
    wait_ready(&api, "start-frozen").await;
    create(
        &api,
        &cia("restart-frozen", "f-00", DesiredState::Restarted, Some("r1")),
    )
    .await;
    api.delete("start-frozen", &Default::default())
        .await
        .expect("delete the start");
    let held = wait_reason(&api, "restart-frozen", "Reconciling", "WaitingForWindow").await;
    assert!(held_until(&held).is_some_and(|t| t > Utc::now() + chrono::Duration::minutes(90)));
    let shortened = Utc::now() + chrono::Duration::seconds(3);
    windows
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"freezes": freeze(shortened)}})),
        )
        .await
        .expect("shorten the freeze");
    let requeued = wait_for(&api, "restart-frozen", Duration::from_secs(2), "re-evaluated", |o| {
        held_until(o).is_some_and(|t| t <= shortened)
    })
    .await;
    assert!(condition(&requeued, "Reconciling").is_some());
    wait_ready(&api, "restart-frozen").await;
    assert_eq!(audit_for(&sim, "f-00"), ["stop", "start", "restart"]);
    delete_cluster_object::<ComputeMaintenanceWindow>(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_windows_are_refused_with_a_clear_message() {
    let client = client().await;
    let api: Api<ComputeMaintenanceWindow> = Api::all(client.clone());
    for (spec, expect) in [
        (
            serde_json::json!({"namespaces": {"names": ["a"]}}),
            "at least one of windows or freezes",
        ),
        (
            serde_json::json!({"namespaces": {"names": ["a"]}, "windows": [{"type": "allow", "start": "25:00", "end": "02:00"}]}),
            "start must be a 24-hour wall-clock time",
        ),
        (
            serde_json::json!({"namespaces": {"names": ["a"]}, "freezes": [{"from": "2026-12-24T00:00:00Z", "until": "2026-12-20T00:00:00Z"}]}),
            "until must be after its from",
        ),
        (
            serde_json::json!({"namespaces": {}, "freezes": [{"from": "2026-12-20T00:00:00Z", "until": "2026-12-24T00:00:00Z"}]}),
            "namespaces must give names or a selector",
        ),
    ] {
        let obj: ComputeMaintenanceWindow = serde_json::from_value(serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeMaintenanceWindow",
            "metadata": {"name": "invalid-window"}, "spec": spec,
        }))
        .expect("JSON");
        match api.create(&Default::default(), &obj).await {
            Err(kube::Error::Api(s)) => assert!(s.message.contains(expect), "{expect}: {}", s.message),
            other => panic!("{expect}: accepted: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_dry_run_reports_what_a_window_holds_back() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, ns, sim) = setup("cmw-dry", zone_fleet("d", "zd", 3), 300).await;
    let name = format!("{ns}-freeze");
    let now = Utc::now();
    create_cluster_object::<ComputeMaintenanceWindow>(
        &client,
        serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeMaintenanceWindow",
            "metadata": {"name": name},
            "spec": {"namespaces": {"names": [ns]}, "instances": {"ids": ["d-00", "d-01"]},
                "freezes": [{"from": (now - chrono::Duration::hours(1)).to_rfc3339(),
                    "until": (now + chrono::Duration::hours(1)).to_rfc3339()}]},
        }),
    )
    .await;
    let _operator = start_fleet_operator(
        &sim,
        TOKEN,
        test_controller_config(&ns),
        test_fleet_config(&ns),
        compute_operator::leader::Fence::always_open(),
    )
    .await;
    let fleets: Api<compute_operator::controllers::fleet::ComputeFleetAction> = Api::namespaced(client.clone(), &ns);
    let fleet = serde_json::from_value(serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
        "metadata": {"name": "dry"},
        "spec": {"selector": {"zone": "zd"}, "desiredState": "restarted", "requestId": "r1", "dryRun": true},
    }))
    .expect("fleet");
    fleets.create(&Default::default(), &fleet).await.expect("create");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let f = fleets.get("dry").await.expect("get");
        let report = f.status.as_ref().and_then(|s| s.dry_run.clone());
        if let Some(r) = report {
            assert_eq!((r.would_act, r.held_back), (3, 2));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dry run report: {:?}",
            f.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sim.audit().is_empty(), "a dry run sends nothing");
    delete_cluster_object::<ComputeMaintenanceWindow>(&client, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_event_waits_for_a_freeze_through_its_fleet() {
    use crate::support::schedule::*;
    use compute_operator::api::InstanceStatus;
    use compute_operator::crd::power_schedule::{EventResult, ScheduledState};
    let _turn = ONE_AT_A_TIME.lock().await;
    let (ns, schedules, _fleets) = setup("cmw-sched").await;
    let client = client().await;
    let (sim, _operator) = chain(&ns, Duration::from_secs(30)).await;
    add_instance(&sim, "i-sched-1", InstanceStatus::Running);
    let name = format!("{ns}-freeze");
    let until = Utc::now() + chrono::Duration::seconds(6);
    create_cluster_object::<ComputeMaintenanceWindow>(
        &client,
        serde_json::json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeMaintenanceWindow",
            "metadata": {"name": name},
            "spec": {"namespaces": {"names": [ns]},
                "freezes": [{"from": (Utc::now() - chrono::Duration::hours(1)).to_rfc3339(), "until": until.to_rfc3339(),
                    "reason": "schedule freeze"}]},
        }),
    )
    .await;
    // The event is 2 s away on the schedule controller's clock, inside the freeze.
    let _ctl = start_schedule_controller(&ns, clock_before_event(Duration::from_secs(2))).await;
    schedules
        .create(
            &Default::default(),
            &schedule("nightly", vec![at("10:00", ScheduledState::Stopped)]),
        )
        .await
        .expect("create schedule");
    let cias: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let held = loop {
        let list = cias.list(&Default::default()).await.expect("children");
        if let Some(c) = list
            .items
            .into_iter()
            .find(|c| condition(c, "Reconciling").is_some_and(|r| r.reason == "WaitingForWindow"))
        {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no child held by the freeze");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(reconciling_message(&held).contains("schedule freeze"));
    assert!(
        audit_for(&sim, "i-sched-1").is_empty(),
        "nothing is stopped inside the freeze"
    );
    wait_schedule(&schedules, "nightly", Duration::from_secs(30), "succeeded", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_event.as_ref())
            .is_some_and(|l| l.result == EventResult::Succeeded)
    })
    .await;
    let stop = sim
        .audit()
        .into_iter()
        .find(|e| e.instance_id == "i-sched-1")
        .expect("stopped");
    assert!(
        stop.at >= until - chrono::Duration::milliseconds(1),
        "stopped at {} inside the freeze",
        stop.at
    );
    delete_cluster_object::<ComputeMaintenanceWindow>(&client, &name).await;
}
