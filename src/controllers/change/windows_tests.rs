//! Table tests of the window evaluation: allow, deny, freezes, several windows, DST in a non-UTC zone.
use std::collections::BTreeMap;

use super::*;
use crate::crd::maintenance_window::{ComputeMaintenanceWindowSpec, Freeze, Window};
use crate::crd::power_schedule::Day;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("test time").with_timezone(&Utc)
}

fn window(kind: WindowKind, days: &[Day], start: &str, end: &str) -> Window {
    Window {
        kind,
        days: days.to_vec(),
        start: start.into(),
        end: end.into(),
    }
}

fn cmw(name: &str, zone: &str, windows: Vec<Window>, freezes: Vec<Freeze>) -> MaintenanceWindow {
    let spec: ComputeMaintenanceWindowSpec = serde_json::from_value(serde_json::json!({
        "namespaces": {"names": ["team-a"]},
        "timeZone": zone,
        "windows": windows,
        "freezes": freezes,
    }))
    .expect("test spec");
    MaintenanceWindow::new(name, &spec)
}

fn nightly() -> MaintenanceWindow {
    cmw(
        "nightly",
        "UTC",
        vec![window(WindowKind::Allow, &[], "22:00", "02:00")],
        vec![],
    )
}

fn held(w: &str, why: HeldBy, until: Option<&str>) -> WindowDecision {
    WindowDecision::Held {
        window: w.into(),
        why,
        until: until.map(at),
    }
}

#[test]
fn allow_window_across_midnight() {
    let w = nightly();
    // 2026-12-07 is a Monday.
    for (now, want) in [
        (
            "2026-12-07T21:59:59Z",
            held("nightly", HeldBy::OutsideAllow, Some("2026-12-07T22:00:00Z")),
        ),
        ("2026-12-07T22:00:00Z", WindowDecision::Open),
        ("2026-12-08T01:59:59Z", WindowDecision::Open),
        (
            "2026-12-08T02:00:00Z",
            held("nightly", HeldBy::OutsideAllow, Some("2026-12-08T22:00:00Z")),
        ),
    ] {
        assert_eq!(decide(&[&w], at(now)), want, "at {now}");
    }
}

#[test]
fn deny_window_over_a_weekend_and_days_of_the_week() {
    let w = cmw(
        "weekend",
        "UTC",
        vec![window(WindowKind::Deny, &[Day::Sat, Day::Sun], "00:00", "00:00")],
        vec![],
    );
    for (now, want) in [
        ("2026-12-11T23:59:00Z", WindowDecision::Open),
        (
            "2026-12-12T10:00:00Z",
            held("weekend", HeldBy::Deny, Some("2026-12-14T00:00:00Z")),
        ),
        (
            "2026-12-13T23:59:59Z",
            held("weekend", HeldBy::Deny, Some("2026-12-14T00:00:00Z")),
        ),
        ("2026-12-14T00:00:00Z", WindowDecision::Open),
    ] {
        assert_eq!(decide(&[&w], at(now)), want, "at {now}");
    }
}

#[test]
fn freeze_with_a_date_range_then_the_next_allow_window() {
    let freeze = Freeze {
        from: at("2026-12-20T00:00:00Z"),
        until: at("2027-01-05T12:00:00Z"),
        reason: Some("year-end freeze".into()),
    };
    let only_freeze = cmw("year-end", "UTC", vec![], vec![freeze.clone()]);
    let with_nights = cmw(
        "year-end",
        "UTC",
        vec![window(WindowKind::Allow, &[], "22:00", "02:00")],
        vec![freeze],
    );
    let frozen = HeldBy::Freeze(Some("year-end freeze".into()));
    for (w, now, want) in [
        (&only_freeze, "2026-12-19T23:59:59Z", WindowDecision::Open),
        (
            &only_freeze,
            "2026-12-20T00:00:00Z",
            held("year-end", frozen.clone(), Some("2027-01-05T12:00:00Z")),
        ),
        (&only_freeze, "2027-01-05T12:00:00Z", WindowDecision::Open),
        // Inside an allow window but frozen: the freeze wins; after it, the next night.
        (
            &with_nights,
            "2026-12-24T23:00:00Z",
            held("year-end", frozen.clone(), Some("2027-01-05T22:00:00Z")),
        ),
    ] {
        assert_eq!(decide(&[w], at(now)), want, "at {now}");
    }
}

#[test]
fn every_covering_window_must_agree() {
    let evenings = cmw(
        "evenings",
        "UTC",
        vec![window(WindowKind::Allow, &[], "20:00", "23:00")],
        vec![],
    );
    let nights = nightly();
    assert_eq!(
        decide(&[&evenings, &nights], at("2026-12-07T21:00:00Z")),
        held("nightly", HeldBy::OutsideAllow, Some("2026-12-07T22:00:00Z")),
        "open in one, closed in the other: held until both are open"
    );
    assert_eq!(
        decide(&[&evenings, &nights], at("2026-12-07T22:30:00Z")),
        WindowDecision::Open
    );
    assert_eq!(
        decide(&[], at("2026-12-07T12:00:00Z")),
        WindowDecision::Open,
        "nothing covers it"
    );
}

#[test]
fn spring_forward_in_madrid() {
    // 2026-03-29: at 02:00 CET the clocks jump to 03:00 CEST (01:00 UTC). A window from 02:30 (which does not
    // exist that day) to 04:00 opens at the jump and closes at 04:00 CEST = 02:00 UTC.
    let w = cmw(
        "madrid",
        "Europe/Madrid",
        vec![window(WindowKind::Allow, &[Day::Sun], "02:30", "04:00")],
        vec![],
    );
    for (now, want) in [
        (
            "2026-03-29T00:59:59Z",
            held("madrid", HeldBy::OutsideAllow, Some("2026-03-29T01:00:00Z")),
        ),
        ("2026-03-29T01:00:00Z", WindowDecision::Open),
        ("2026-03-29T01:59:59Z", WindowDecision::Open),
        (
            "2026-03-29T02:00:00Z",
            // The next Sunday, in summer time: 02:30 CEST = 00:30 UTC.
            held("madrid", HeldBy::OutsideAllow, Some("2026-04-05T00:30:00Z")),
        ),
    ] {
        assert_eq!(decide(&[&w], at(now)), want, "at {now}");
    }
}

#[test]
fn fall_back_in_madrid() {
    // 2026-10-25: at 03:00 CEST the clocks go back to 02:00 CET; 02:30 happens twice (00:30 and 01:30 UTC). The
    // window opens at the first 02:30 and closes at 03:30 CET = 02:30 UTC: two hours that night.
    let w = cmw(
        "madrid",
        "Europe/Madrid",
        vec![window(WindowKind::Allow, &[Day::Sun], "02:30", "03:30")],
        vec![],
    );
    for (now, want) in [
        (
            "2026-10-25T00:29:59Z",
            held("madrid", HeldBy::OutsideAllow, Some("2026-10-25T00:30:00Z")),
        ),
        ("2026-10-25T00:30:00Z", WindowDecision::Open),
        ("2026-10-25T02:29:59Z", WindowDecision::Open),
        (
            "2026-10-25T02:30:00Z",
            held("madrid", HeldBy::OutsideAllow, Some("2026-11-01T01:30:00Z")),
        ),
    ] {
        assert_eq!(decide(&[&w], at(now)), want, "at {now}");
    }
}

#[test]
fn an_unreadable_window_holds_everything_it_covers() {
    let w = cmw(
        "typo",
        "Europe/Madird",
        vec![window(WindowKind::Allow, &[], "22:00", "02:00")],
        vec![],
    );
    assert!(w.error().is_some_and(|e| e.contains("Europe/Madird")));
    match decide(&[&w], at("2026-12-07T23:00:00Z")) {
        WindowDecision::Held {
            why: HeldBy::Unreadable(_),
            until: None,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn what_a_window_covers() {
    let labels = BTreeMap::new();
    let team_a = NamespaceView {
        name: "team-a",
        labels: &labels,
    };
    let team_b = NamespaceView {
        name: "team-b",
        labels: &labels,
    };
    let w = nightly();
    let zoned: ComputeMaintenanceWindowSpec = serde_json::from_value(serde_json::json!({
        "namespaces": {"names": ["team-a"]},
        "instances": {"zones": ["z1"]},
        "windows": [{"type": "deny", "start": "00:00", "end": "00:00"}],
        "actions": ["restart", "start"],
    }))
    .expect("spec");
    let zoned = MaintenanceWindow::new("zoned", &zoned);
    let instance: Instance =
        serde_json::from_value(serde_json::json!({"id": "i-1", "zone": "z1", "status": "running"})).expect("instance");
    for (w, ns, instance, action, want) in [
        (&w, &team_a, None, PowerAction::Restart, true),
        (&w, &team_b, None, PowerAction::Restart, false),
        (&w, &team_a, None, PowerAction::Start, false),
        (&w, &team_a, None, PowerAction::Stop, true),
        (&zoned, &team_a, Some(&instance), PowerAction::Start, true),
        (&zoned, &team_a, Some(&instance), PowerAction::Stop, false),
        (&zoned, &team_a, None, PowerAction::Restart, false),
    ] {
        assert_eq!(
            w.covers(ns, "i-1", instance, action),
            want,
            "{} {} {action:?}",
            w.name,
            ns.name
        );
    }
}

#[test]
fn next_change_and_open() {
    let w = nightly();
    assert!(!w.open_at(at("2026-12-07T12:00:00Z")));
    assert_eq!(
        w.next_change(at("2026-12-07T12:00:00Z")),
        Some(at("2026-12-07T22:00:00Z"))
    );
    assert_eq!(
        w.next_change(at("2026-12-07T23:00:00Z")),
        Some(at("2026-12-08T02:00:00Z"))
    );
}

#[test]
fn messages_name_the_window_and_the_time_only() {
    let m = held_message(
        PowerAction::Restart,
        "nightly",
        &HeldBy::OutsideAllow,
        Some(at("2026-12-07T22:00:00Z")),
    );
    assert_eq!(
        m,
        "restart waits: outside the allow windows of maintenance window nightly; next allowed at 2026-12-07T22:00:00Z"
    );
}
