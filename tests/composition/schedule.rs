//! ComputePowerSchedule on the real API server: events seconds ahead (a shifted controller clock), missed
//! events within and beyond the deadline, an override that expires, suspend, history and supersession of
//! children, and admission rules. The whole chain down to instances is in schedule_chain.rs.

use crate::support;

use compute_operator::controllers::schedule::children::{ChildCause, child_name};

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use compute_operator::controllers::schedule::Clock;
use compute_operator::crd::instance_action::{DesiredState, Enforcement};
use compute_operator::crd::power_schedule::{
    ComputePowerSchedule, EventResult, PowerOverride, ScheduleEvent, ScheduledState,
};
use compute_operator::crd::selector::InstanceSelector;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use support::schedule::*;
use support::*;

/// How long a behaviour may take to show on a loaded two-core CI machine (the waits return at once when it does).
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_seconds_ahead_creates_its_child_fleet_at_the_event() {
    let (ns, api, fleets) = setup("sched-event").await;
    let clock = clock_before_event(Duration::from_secs(6));
    let event_real = real_instant_of(clock, event_at());
    let ctl = start_schedule_controller(&ns, clock).await;
    let s = schedule(
        "office",
        vec![
            at("10:00", ScheduledState::Stopped),
            at("18:00", ScheduledState::Running),
        ],
    );
    api.create(&PostParams::default(), &s).await.expect("create schedule");

    // Before the event: the next event is known, nothing is created.
    let before = wait_schedule(&api, "office", WAIT, "waiting", |o| {
        o.status.as_ref().and_then(|s| s.next_event.as_ref()).is_some()
    })
    .await;
    let next = before.status.unwrap().next_event.unwrap();
    assert_eq!((next.time, next.state), (event_at(), ScheduledState::Stopped));
    assert_eq!(
        ready_reason(&api.get("office").await.unwrap()),
        Some(("Ready".into(), "Waiting".into()))
    );
    // `kubectl get cps` shows the next event.
    let out = tokio::process::Command::new("kubectl")
        .args(["--kubeconfig", &control_plane().kubeconfig.display().to_string()])
        .args(["-n", &ns, "get", "cps", "office"])
        .output()
        .await
        .expect("kubectl is on PATH");
    let table = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "ZONE", "NEXT", "NEXT", "AT", "LAST", "RESULT", "AGE"],
        "{table}"
    );
    assert!(
        table.contains("stopped") && table.contains("2030-01-07T10:00:00Z"),
        "{table}"
    );
    while Instant::now() + Duration::from_millis(500) < event_real {
        assert!(children(&fleets, "office").await.is_empty(), "a child before the event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // At the event: one child, named after the event, carrying the schedule's target.
    let name = format!("office-{}-stopped", event_at().timestamp());
    let child = wait_child(&fleets, &name, Duration::from_secs(10)).await;
    let late = Instant::now().saturating_duration_since(event_real);
    eprintln!("child fleet seen {late:?} after the event");
    assert!(late < Duration::from_secs(3), "child created {late:?} after the event");
    assert_eq!(child.spec.desired_state, DesiredState::Stopped);
    assert_eq!(child.spec.enforcement, Enforcement::Once);
    assert_eq!(child.spec.selector.instance_ids, vec!["i-sched-1".to_owned()]);
    let owner = &child.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("ComputePowerSchedule", "office", Some(true))
    );

    let after = wait_schedule(&api, "office", WAIT, "past the event", |o| {
        o.status.as_ref().and_then(|s| s.last_event.as_ref()).is_some()
    })
    .await;
    let status = after.status.unwrap();
    let last = status.last_event.unwrap();
    assert_eq!(
        (last.time, last.state, last.child.as_deref()),
        (event_at(), ScheduledState::Stopped, Some(name.as_str()))
    );
    assert_eq!(status.next_event.unwrap().time, event_at() + TimeDelta::hours(8));
    // Exactly one child, and it stays one (no repeat on later reconciles).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(children(&fleets, "office").await.len(), 1);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_events_are_caught_up_within_the_deadline_and_skipped_beyond_it() {
    let (ns, api, fleets) = setup("sched-missed").await;
    let clock = clock_before_event(Duration::from_secs(5));
    let event_real = real_instant_of(clock, event_at());
    let ctl = start_schedule_controller(&ns, clock).await;
    let mut within = schedule("within", vec![at("10:00", ScheduledState::Stopped)]);
    within.spec.starting_deadline = "1m".into();
    let mut beyond = schedule("beyond", vec![at("10:00", ScheduledState::Stopped)]);
    beyond.spec.starting_deadline = "3s".into();
    for s in [&within, &beyond] {
        api.create(&PostParams::default(), s).await.expect("create schedule");
        wait_schedule(&api, &s.name_any(), WAIT, "seen", |o| o.status.is_some()).await;
    }
    // The controller goes away before the event and comes back 8 s after it.
    ctl.stop().await;
    tokio::time::sleep_until((event_real + Duration::from_secs(8)).into()).await;
    assert!(children(&fleets, "within").await.is_empty() && children(&fleets, "beyond").await.is_empty());
    let ctl = start_schedule_controller(&ns, clock).await;

    let name = format!("within-{}-stopped", event_at().timestamp());
    wait_child(&fleets, &name, Duration::from_secs(10)).await;
    let caught = wait_schedule(&api, "within", WAIT, "caught up", |o| {
        o.status.as_ref().and_then(|s| s.last_event.as_ref()).is_some()
    })
    .await;
    assert_eq!(
        caught.status.unwrap().last_event.unwrap().child.as_deref(),
        Some(name.as_str())
    );

    let skipped = wait_schedule(&api, "beyond", Duration::from_secs(10), "skipped", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_event.as_ref())
            .is_some_and(|l| l.result == EventResult::Skipped)
    })
    .await;
    let last = skipped.status.as_ref().unwrap().last_event.clone().unwrap();
    assert!(
        last.message
            .as_deref()
            .unwrap_or_default()
            .contains("more than startingDeadline 3s"),
        "{last:?}"
    );
    assert_eq!(ready_reason(&skipped), Some(("Ready".into(), "MissedEvent".into())));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        children(&fleets, "beyond").await.is_empty(),
        "a skipped event creates nothing"
    );
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_holds_its_state_and_expires_by_itself() {
    let (ns, api, fleets) = setup("sched-override").await;
    let clock = clock_before_event(Duration::from_secs(6));
    let until = event_at();
    let until_real = real_instant_of(clock, until);
    let ctl = start_schedule_controller(&ns, clock).await;
    // The calendar says stopped (09:00); the override holds running until 10:00.
    let mut s = schedule(
        "demo",
        vec![
            at("09:00", ScheduledState::Stopped),
            at("18:00", ScheduledState::Running),
        ],
    );
    s.spec.power_override = Some(PowerOverride {
        state: ScheduledState::Running,
        until,
    });
    api.create(&PostParams::default(), &s).await.expect("create schedule");

    let name = |cause, state| child_name("demo", cause, until, state, Some(1));
    let held = name(ChildCause::OverrideStart, ScheduledState::Running);
    let child = wait_child(&fleets, &held, WAIT).await;
    assert_eq!(child.spec.desired_state, DesiredState::Running);
    let o = wait_schedule(&api, "demo", WAIT, "overridden", |o| {
        o.status.as_ref().and_then(|s| s.power_override.as_ref()).is_some()
    })
    .await;
    assert_eq!(ready_reason(&o), Some(("Ready".into(), "OverrideInEffect".into())));
    let next = o.status.unwrap().next_event.unwrap();
    assert_eq!(
        (next.time, next.state),
        (until, ScheduledState::Stopped),
        "resumes with the calendar's state"
    );

    // At `until`: back to the schedule without anyone touching it.
    let resumed = name(ChildCause::OverrideEnd, ScheduledState::Stopped);
    let child = wait_child(&fleets, &resumed, Duration::from_secs(12)).await;
    let late = Instant::now().saturating_duration_since(until_real);
    assert!(
        late < Duration::from_secs(3),
        "resumed {late:?} after the override's end"
    );
    assert_eq!(child.spec.desired_state, DesiredState::Stopped);
    let o = wait_schedule(&api, "demo", WAIT, "resumed", |o| {
        o.status
            .as_ref()
            .is_some_and(|s| s.power_override.is_none() && s.last_event.is_some())
    })
    .await;
    let last = o.status.unwrap().last_event.unwrap();
    assert_eq!((last.time, last.state), (until, ScheduledState::Stopped));
    // The override's child no longer acts.
    let old = fleets.get(&held).await.unwrap();
    assert!(old.spec.suspend, "the superseded override child is suspended");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_creates_nothing_and_resuming_catches_up() {
    let (ns, api, fleets) = setup("sched-suspend").await;
    let clock = clock_before_event(Duration::from_secs(4));
    let event_real = real_instant_of(clock, event_at());
    let ctl = start_schedule_controller(&ns, clock).await;
    let mut s = schedule("paused", vec![at("10:00", ScheduledState::Stopped)]);
    s.spec.suspend = true;
    api.create(&PostParams::default(), &s).await.expect("create schedule");
    let o = wait_schedule(&api, "paused", WAIT, "suspended", |o| {
        ready_reason(o) == Some(("Ready".into(), "Suspended".into()))
    })
    .await;
    assert!(o.status.unwrap().next_event.is_some());
    tokio::time::sleep_until((event_real + Duration::from_secs(3)).into()).await;
    assert!(
        children(&fleets, "paused").await.is_empty(),
        "suspended: no child at the event"
    );

    let patch = Patch::Merge(serde_json::json!({"spec": {"suspend": false}}));
    api.patch("paused", &PatchParams::default(), &patch).await.unwrap();
    wait_child(&fleets, &format!("paused-{}-stopped", event_at().timestamp()), WAIT).await;
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_time_zone_is_reported_not_guessed() {
    let (ns, api, fleets) = setup("sched-tz").await;
    let ctl = start_schedule_controller(&ns, Clock::default()).await;
    let mut s = schedule("mars", vec![at("10:00", ScheduledState::Stopped)]);
    s.spec.time_zone = "Mars/Olympus_Mons".into();
    api.create(&PostParams::default(), &s)
        .await
        .expect("the shape of the name is valid");
    let o = wait_schedule(&api, "mars", WAIT, "stalled", |o| {
        ready_reason(o) == Some(("Stalled".into(), "InvalidTimeZone".into()))
    })
    .await;
    let msg = o.status.unwrap().message.unwrap_or_default();
    assert!(
        msg.contains("\"Mars/Olympus_Mons\" is not a known IANA time zone"),
        "{msg}"
    );
    assert!(children(&fleets, "mars").await.is_empty());
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_rejected_with_readable_messages_and_examples_are_accepted() {
    let (_ns, api, _fleets) = setup("sched-admission").await;
    let ok = || schedule("x", vec![at("07:00", ScheduledState::Running)]);
    let mut cases: Vec<(&str, ComputePowerSchedule, &str)> = Vec::new();
    let mut s = ok();
    s.spec.events[0].at = "25:00".into();
    cases.push(("hour 25", s, "at must be a 24-hour wall-clock time"));
    let mut s = ok();
    s.spec.events[0].at = "7:00".into();
    cases.push(("one-digit hour", s, "at must be a 24-hour wall-clock time"));
    let mut s = ok();
    s.spec.selector = InstanceSelector::default();
    cases.push(("empty selector", s, "selector must set at least one of"));
    let mut s = ok();
    s.spec.time_zone = "Europe Madrid".into();
    cases.push(("zone with a space", s, "timeZone must be an IANA zone name"));
    let mut s = ok();
    s.spec.events.clear();
    cases.push(("no events", s, "spec.events"));
    let mut s = ok();
    s.spec.events.push(at("07:00", ScheduledState::Stopped));
    cases.push(("same time, two states", s, "ask for different states"));
    let mut s = ok();
    s.spec.starting_deadline = "1d".into();
    cases.push(("deadline in days", s, "startingDeadline must be a duration"));
    let mut s = ok();
    s.spec.events[0].days = vec![
        compute_operator::crd::power_schedule::Day::Mon,
        compute_operator::crd::power_schedule::Day::Mon,
    ];
    cases.push(("a day twice", s, "days must not list a day twice"));
    for (what, s, want) in cases {
        let err = api
            .create(&PostParams::default(), &s)
            .await
            .map(|_| ())
            .expect_err(what)
            .to_string();
        assert!(err.contains(want), "{what}: {err}");
    }
    // Different days at the same time are fine; so are the shipped examples.
    let mut s = ok();
    s.spec.events[0].days = vec![compute_operator::crd::power_schedule::Day::Mon];
    s.spec.events.push(ScheduleEvent {
        at: "07:00".into(),
        days: vec![compute_operator::crd::power_schedule::Day::Sat],
        state: ScheduledState::Stopped,
    });
    api.create(&PostParams::default(), &s).await.expect("disjoint days");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut examples = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let value: serde_norway::Value = serde_norway::from_str(&text).unwrap();
        if value["kind"].as_str() != Some("ComputePowerSchedule") {
            continue;
        }
        let s: ComputePowerSchedule = serde_norway::from_value(value).unwrap();
        api.create(&PostParams::default(), &s)
            .await
            .unwrap_or_else(|e| panic!("example {}: {e}", s.name_any()));
        examples += 1;
    }
    assert_eq!(examples, 3, "office hours, stop-only, demo override");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_child_acts_and_the_history_is_bounded() {
    let (ns, api, fleets) = setup("sched-history").await;
    let clock = clock_before_event(Duration::from_secs(600));
    let ctl = start_schedule_controller(&ns, clock).await;
    let until1 = event_at() + TimeDelta::hours(1);
    let until2 = event_at() + TimeDelta::hours(2);
    let mut s = schedule("hist", vec![at("09:00", ScheduledState::Stopped)]);
    s.spec.power_override = Some(PowerOverride {
        state: ScheduledState::Running,
        until: until1,
    });
    api.create(&PostParams::default(), &s).await.expect("create schedule");
    // Override children are named by their time and the generation that set them.
    let name = |cause, until, state, generation| child_name("hist", cause, until, state, Some(generation));
    let a = name(ChildCause::OverrideStart, until1, ScheduledState::Running, 1);
    wait_child(&fleets, &a, WAIT).await;

    // Each override change makes a new child; removing the override resumes the calendar (stopped).
    let steps = [
        (
            serde_json::json!({"state": "stopped", "until": until1.to_rfc3339()}),
            name(ChildCause::OverrideStart, until1, ScheduledState::Stopped, 2),
        ),
        (
            serde_json::json!({"state": "running", "until": until2.to_rfc3339()}),
            name(ChildCause::OverrideStart, until2, ScheduledState::Running, 3),
        ),
        (
            serde_json::Value::Null,
            name(ChildCause::OverrideEnd, until2, ScheduledState::Stopped, 4),
        ),
    ];
    for (over, child) in &steps {
        let patch = Patch::Merge(serde_json::json!({"spec": {"override": over}}));
        api.patch("hist", &PatchParams::default(), &patch).await.unwrap();
        wait_child(&fleets, child, WAIT).await;
    }
    // Three kept (the oldest deleted), and every one but the newest suspended.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut kids: Vec<(String, bool)> = children(&fleets, "hist")
            .await
            .into_iter()
            .map(|f| (f.name_any(), f.spec.suspend))
            .collect();
        kids.sort();
        let mut want: Vec<(String, bool)> = vec![
            (steps[0].1.clone(), true),
            (steps[1].1.clone(), true),
            (steps[2].1.clone(), false),
        ];
        want.sort();
        if kids == want {
            break;
        }
        assert!(Instant::now() < deadline, "children {kids:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The status is written after the child is created: wait for it rather than race it.
    let newest = steps[2].1.as_str();
    wait_schedule(&api, "hist", WAIT, "the calendar resumed", |o| {
        o.status.as_ref().is_some_and(|s| {
            s.power_override.is_none() && s.last_event.as_ref().and_then(|l| l.child.as_deref()) == Some(newest)
        })
    })
    .await;
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_controller_without_its_fence_creates_and_writes_nothing() {
    let (ns, api, fleets) = setup("sched-fence").await;
    let clock = clock_before_event(Duration::from_secs(600));
    // A paused leader: its lease ran out while it was stopped, so its fence is closed.
    let ctl = start_fenced_schedule_controller(&ns, clock, compute_operator::leader::Fence::closed()).await;
    let until = event_at() + TimeDelta::hours(1);
    let mut s = schedule("fenced", vec![at("09:00", ScheduledState::Stopped)]);
    s.spec.power_override = Some(PowerOverride {
        state: ScheduledState::Running,
        until,
    });
    api.create(&PostParams::default(), &s).await.expect("create schedule");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        children(&fleets, "fenced").await.is_empty(),
        "no child without the lease"
    );
    let o = api.get("fenced").await.unwrap();
    assert!(o.status.is_none(), "no status without the lease: {:?}", o.status);
    ctl.stop().await;
    // A leader with its fence open acts on the same schedule: the test could have failed.
    let ctl = start_schedule_controller(&ns, clock).await;
    let held = child_name(
        "fenced",
        ChildCause::OverrideStart,
        until,
        ScheduledState::Running,
        Some(1),
    );
    wait_child(&fleets, &held, WAIT).await;
    ctl.stop().await;
}
