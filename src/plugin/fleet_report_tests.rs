//! Table tests of the fleet and schedule reports and patches.

use super::*;
use chrono::TimeZone;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn fleet(name: &str, spec: Value, status: Value) -> ComputeFleetAction {
    serde_json::from_value(json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1",
        "kind": "ComputeFleetAction",
        "metadata": {"name": name, "namespace": "ops", "generation": 1},
        "spec": spec,
        "status": status,
    }))
    .unwrap()
}

fn ready(reason: &str, message: &str) -> Value {
    json!({"type": "Ready", "status": "True", "reason": reason, "message": message,
           "lastTransitionTime": "2026-12-01T10:00:00Z"})
}

fn child(instance: &str, reason: &str) -> ComputeInstanceAction {
    serde_json::from_value(json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1",
        "kind": "ComputeInstanceAction",
        "metadata": {"name": format!("nightly-{instance}"), "namespace": "ops"},
        "spec": {"instanceId": instance, "desiredState": "restarted", "requestId": "r1"},
        "status": {"conditions": [ready(reason, "")]},
    }))
    .unwrap()
}

#[test]
fn a_fleet_shows_what_it_does_to_which_instances_and_how_far_it_got() {
    let f = fleet(
        "nightly",
        json!({"selector": {"zone": "us-central1-a", "templateId": "ubuntu-22-standard"},
               "desiredState": "restarted", "requestId": "r1", "paused": true,
               "strategy": {"maxConcurrent": "25%", "maxFailures": 2}}),
        json!({"selected": 40, "succeeded": 30, "failed": 1, "denied": 2, "inProgress": 3, "pending": 4,
               "failedIds": ["i-9"],
               "conditions": [{"type": "Reconciling", "status": "True", "reason": "Paused",
                               "message": "spec.paused", "lastTransitionTime": "2026-12-01T10:00:00Z"}]}),
    );
    let text = render_fleets(
        std::slice::from_ref(&f),
        &[child("i-2", "Succeeded"), child("i-1", "Succeeded")],
        "namespace ops",
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "ops/nightly: restarted (requestId r1) of zone=us-central1-a,templateId=ubuntu-22-standard [paused] - Reconciling (Paused): spec.paused"
    );
    assert_eq!(
        lines[1],
        "  selected 40, succeeded 30, failed 1, denied 2, in progress 3, pending 4; maxConcurrent 25%, maxFailures 2"
    );
    assert_eq!(lines[2], "  failed: i-9");
    assert_eq!(lines[3], "  children (2):");
    assert_eq!(lines[4], "    i-1 nightly-i-1: Ready (Succeeded)", "sorted by instance");
    assert_eq!(lines.len(), 6, "{text}");
}

#[test]
fn many_fleets_are_listed_without_children_and_many_children_are_cut() {
    let a = fleet(
        "b",
        json!({"selector": {"instanceIds": ["i-1", "i-2"]}, "desiredState": "stopped"}),
        json!({}),
    );
    let b = fleet(
        "a",
        json!({"selector": {"instanceIds": ["i-7"]}, "desiredState": "running"}),
        json!({}),
    );
    let text = render_fleets(&[a.clone(), b], &[child("i-1", "Succeeded")], "namespace ops");
    assert!(
        text.starts_with("ops/a: running of instance i-7 - no status yet\n"),
        "{text}"
    );
    assert!(
        text.contains("ops/b: stopped of 2 instance IDs - no status yet\n"),
        "{text}"
    );
    assert!(!text.contains("children"), "{text}");

    let many: Vec<ComputeInstanceAction> = (0..25).map(|i| child(&format!("i-{i:02}"), "Succeeded")).collect();
    let text = render_fleets(&[a], &many, "namespace ops");
    assert!(text.contains("  children (25):\n"), "{text}");
    assert!(
        text.ends_with("    ... and 5 more (kubectl get cia -l compute.threatwinds.com/fleet=b)\n"),
        "{text}"
    );
    assert_eq!(
        render_fleets(&[], &[], "namespace ops"),
        "no ComputeFleetAction in namespace ops\n"
    );
}

#[test]
fn a_schedule_shows_its_times_in_its_own_zone_and_in_utc() {
    let s: ComputePowerSchedule = serde_json::from_value(json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1",
        "kind": "ComputePowerSchedule",
        "metadata": {"name": "office", "namespace": "dev"},
        "spec": {"selector": {"customerId": "c-1"}, "timeZone": "Europe/Madrid",
                 "events": [{"at": "07:00", "state": "running"}, {"at": "19:00", "state": "stopped"}]},
        "status": {
            "nextEvent": {"time": "2026-12-02T06:00:00Z", "state": "running"},
            "lastEvent": {"time": "2026-12-01T18:00:00Z", "state": "stopped", "result": "Succeeded",
                          "child": "office-1796148000-stopped"},
            "override": {"state": "running", "until": "2026-12-04T17:00:00Z"},
            "conditions": [ready("OverrideInEffect", "holding running")],
        },
    }))
    .unwrap();
    let text = render_schedules(&[s], "namespace dev");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "dev/office: customerId=c-1 in Europe/Madrid, 2 events, enforcement events - Ready (OverrideInEffect): holding running"
    );
    assert_eq!(
        lines[1],
        "  override: running until Fri 2026-12-04 18:00 CET (17:00 UTC)"
    );
    assert_eq!(lines[2], "  next: running at Wed 2026-12-02 07:00 CET (06:00 UTC)");
    assert_eq!(
        lines[3],
        "  last: stopped at Tue 2026-12-01 19:00 CET (18:00 UTC), Succeeded (fleet office-1796148000-stopped)"
    );
    assert_eq!(
        render_schedules(&[], "namespace dev"),
        "no ComputePowerSchedule in namespace dev\n"
    );
}

#[test]
fn patches_change_only_the_field_they_name() {
    assert_eq!(pause_patch(true), json!({"spec": {"paused": true}}));
    assert_eq!(pause_patch(false), json!({"spec": {"paused": false}}));
    let until = Utc.with_ymd_and_hms(2026, 12, 4, 17, 0, 0).unwrap();
    assert_eq!(
        override_patch(Some((ScheduledState::Stopped, until))),
        json!({"spec": {"override": {"state": "stopped", "until": "2026-12-04T17:00:00+00:00"}}})
    );
    assert_eq!(
        override_patch(None),
        json!({"spec": {"override": null}}),
        "null removes it"
    );
}

#[test]
fn an_override_ends_in_the_future_from_exactly_one_of_until_or_for() {
    let now = t("2026-12-01T10:00:00Z");
    let hour = std::time::Duration::from_secs(3600);
    type Row<'a> = (Option<&'a str>, Option<std::time::Duration>, Result<&'a str, &'a str>);
    let table: [Row; 5] = [
        (Some("2026-12-04T18:00:00+01:00"), None, Ok("2026-12-04T17:00:00Z")),
        (None, Some(hour), Ok("2026-12-01T11:00:00Z")),
        (Some("2026-12-01T09:00:00Z"), None, Err("has passed")),
        (None, None, Err("exactly one")),
        (Some("2026-12-04T18:00:00Z"), Some(hour), Err("exactly one")),
    ];
    for (until, hold_for, want) in table {
        let got = override_until(now, until.map(t), hold_for);
        match want {
            Ok(end) => assert_eq!(got, Ok(t(end)), "{until:?} {hold_for:?}"),
            Err(part) => assert!(
                got.as_ref().is_err_and(|e| e.contains(part)),
                "{until:?} {hold_for:?}: {got:?}"
            ),
        }
    }
}
