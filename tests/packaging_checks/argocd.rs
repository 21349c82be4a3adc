//! The Argo CD health check (deploy/argocd/health.lua), run by a real Lua interpreter on ComputeInstanceActions,
//! ComputeFleetActions and ComputePowerSchedules in every state, and the argocd-cm patch that carries it verbatim.
//!
//! Needs Lua 5.4: `$LUA_BIN`, else `lua5.4` on PATH (`apt-get install -y lua5.4`); FAILS (never skips) without it.

use crate::packaging_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use packaging_support::*;
use serde_json::json;
use serde_norway::Value;

fn lua() -> &'static Path {
    static LUA: OnceLock<PathBuf> = OnceLock::new();
    LUA.get_or_init(|| {
        let bin = std::env::var_os("LUA_BIN")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "lua5.4".into());
        let probe = Command::new(&bin).arg("-v").output();
        match probe {
            Ok(o) if o.status.success() => PathBuf::from(bin),
            _ => panic!(
                "Lua 5.4 is not available as {:?}: install it (`apt-get install -y lua5.4`) or set LUA_BIN",
                bin
            ),
        }
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Argo CD health check, run by a real Lua interpreter
// ---------------------------------------------------------------------------------------------------------------

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON value as a Lua table constructor (JSON null becomes an absent key, as in Argo CD).
fn lua_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "nil".to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => lua_string(s),
        serde_json::Value::Array(a) => format!("{{{}}}", a.iter().map(lua_value).collect::<Vec<_>>().join(", ")),
        serde_json::Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs deploy/argocd/health.lua on `obj`; returns (status, message).
fn health(obj: serde_json::Value) -> (String, String) {
    let mut child = Command::new(lua())
        .args(["tests/packaging/health_harness.lua", "deploy/argocd/health.lua", "-"])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start lua");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("return {}\n", lua_value(&obj)).as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "health.lua failed on {obj}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    (
        lines.next().unwrap_or("").to_string(),
        lines.next().unwrap_or("").to_string(),
    )
}

fn cia(generation: i64, desired: &str, status: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1",
        "kind": "ComputeInstanceAction",
        "metadata": {"name": "x", "namespace": "default", "generation": generation, "uid": "0000"},
        "spec": {"instanceId": "inst-demo0001", "desiredState": desired},
        "status": status,
    })
}

fn cond(t: &str, status: &str, reason: &str, message: &str, generation: i64) -> serde_json::Value {
    json!({"type": t, "status": status, "reason": reason, "message": message, "observedGeneration": generation,
           "lastTransitionTime": "2025-01-01T00:00:00Z"})
}

#[test]
fn argocd_health_ready_is_healthy() {
    let obj = cia(
        2,
        "running",
        json!({
            "observedGeneration": 2, "phase": "Succeeded", "message": "instance is running",
            "conditions": [cond("Ready", "True", "Succeeded", "instance inst-demo0001 is running", 2),
                           cond("Reconciling", "False", "Succeeded", "", 2),
                           cond("Stalled", "False", "Succeeded", "", 2)],
            "instance": {"status": "running", "name": "demo", "zone": "z1", "lastSeen": "2025-01-01T00:00:00Z"},
        }),
    );
    assert_eq!(
        health(obj),
        ("Healthy".into(), "instance inst-demo0001 is running".into())
    );
}

#[test]
fn argocd_health_stopped_and_ready_is_healthy() {
    let obj = cia(
        1,
        "stopped",
        json!({
            "observedGeneration": 1, "phase": "Succeeded",
            "conditions": [cond("Ready", "True", "Succeeded", "instance is stopped", 1),
                           cond("Reconciling", "False", "Succeeded", "", 1),
                           cond("Stalled", "False", "Succeeded", "", 1)],
            "instance": {"status": "stopped"},
        }),
    );
    assert_eq!(
        health(obj).0,
        "Healthy",
        "a declared `stopped` that is stopped is healthy"
    );
}

#[test]
fn argocd_health_suspended_and_dry_run() {
    let mut obj = cia(
        1,
        "restarted",
        json!({
            "observedGeneration": 1, "phase": "Suspended",
            "conditions": [cond("Ready", "True", "Suspended", "spec.suspend is true: no admin API calls until it is false", 1),
                           cond("Reconciling", "False", "Idle", "", 1),
                           cond("Stalled", "False", "Progressing", "", 1)],
        }),
    );
    obj["spec"]["suspend"] = json!(true);
    assert_eq!(
        health(obj).0,
        "Suspended",
        "a suspended object is Suspended, not Progressing"
    );
    let obj = cia(
        1,
        "restarted",
        json!({
            "observedGeneration": 1, "phase": "Skipped",
            "conditions": [cond("Ready", "True", "DryRun", "dry run: would restart instance i (now running); nothing was sent", 1),
                           cond("Reconciling", "False", "Idle", "", 1),
                           cond("Stalled", "False", "Progressing", "", 1)],
        }),
    );
    assert_eq!(health(obj).0, "Healthy", "a dry run settles");
}

#[test]
fn argocd_health_reconciling_is_progressing() {
    let obj = cia(
        1,
        "stopped",
        json!({
            "observedGeneration": 1, "phase": "InProgress",
            "conditions": [cond("Ready", "False", "InProgress", "waiting for stopped", 1),
                           cond("Reconciling", "True", "Stopping", "stop accepted, waiting for the instance", 1),
                           cond("Stalled", "False", "InProgress", "", 1)],
        }),
    );
    assert_eq!(
        health(obj),
        ("Progressing".into(), "stop accepted, waiting for the instance".into())
    );
}

#[test]
fn argocd_health_stalled_is_degraded_with_the_condition_message() {
    let obj = cia(
        1,
        "running",
        json!({
            "observedGeneration": 1, "phase": "Failed",
            "conditions": [cond("Ready", "False", "InstanceNotFound", "instance inst-demo0001 not found", 1),
                           cond("Reconciling", "False", "InstanceNotFound", "", 1),
                           cond("Stalled", "True", "InstanceNotFound", "instance inst-demo0001 was not found (404)", 1)],
        }),
    );
    assert_eq!(
        health(obj),
        ("Degraded".into(), "instance inst-demo0001 was not found (404)".into())
    );

    // Without a message the reason is shown.
    let obj = cia(
        1,
        "running",
        json!({"observedGeneration": 1,
        "conditions": [cond("Stalled", "True", "OutcomeUnknown", "", 1)]}),
    );
    assert_eq!(health(obj), ("Degraded".into(), "OutcomeUnknown".into()));
}

#[test]
fn argocd_health_without_status_is_progressing() {
    let mut obj = cia(1, "running", json!(null));
    obj.as_object_mut().unwrap().remove("status");
    assert_eq!(health(obj).0, "Progressing");
    assert_eq!(health(cia(1, "running", json!({}))).0, "Progressing", "empty status");
    assert_eq!(
        health(cia(1, "running", json!({"observedGeneration": 1, "conditions": []}))).0,
        "Progressing",
        "no conditions"
    );
}

#[test]
fn argocd_health_stale_observed_generation_is_progressing() {
    // The status (even Ready, even Stalled) describes an older spec.
    let obj = cia(
        3,
        "running",
        json!({
            "observedGeneration": 2, "phase": "Succeeded",
            "conditions": [cond("Ready", "True", "Succeeded", "running", 2)],
        }),
    );
    assert_eq!(health(obj).0, "Progressing");
    let obj = cia(
        3,
        "running",
        json!({
            "observedGeneration": 2, "phase": "Failed",
            "conditions": [cond("Stalled", "True", "InstanceNotFound", "gone", 2)],
        }),
    );
    assert_eq!(health(obj).0, "Progressing");
    // A Ready condition left over from an older generation does not count either.
    let obj = cia(
        3,
        "running",
        json!({
            "observedGeneration": 3,
            "conditions": [cond("Ready", "True", "Succeeded", "running", 2)],
        }),
    );
    assert_eq!(health(obj).0, "Progressing");
}

#[test]
fn argocd_health_failed_phase_without_stalled_is_degraded() {
    let obj = cia(
        1,
        "restarted",
        json!({"observedGeneration": 1, "phase": "Failed", "message": "timed out after 600s",
        "conditions": [cond("Ready", "False", "Failed", "", 1)]}),
    );
    assert_eq!(health(obj), ("Degraded".into(), "timed out after 600s".into()));
}

#[test]
fn argocd_health_covers_fleets() {
    let fleet = |status: serde_json::Value| {
        json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1",
            "kind": "ComputeFleetAction",
            "metadata": {"name": "f", "namespace": "default", "generation": 2, "uid": "0001"},
            "spec": {"selector": {"zone": "z"}, "desiredState": "restarted", "requestId": "r1"},
            "status": status,
        })
    };
    let over_budget = fleet(json!({"observedGeneration": 2, "conditions": [
        cond("Ready", "False", "FailureBudgetExceeded", "2 failed", 2),
        cond("Stalled", "True", "FailureBudgetExceeded", "2 failed", 2)]}));
    assert_eq!(health(over_budget), ("Degraded".into(), "2 failed".into()));
    let paused = fleet(json!({"observedGeneration": 2, "conditions": [
        cond("Ready", "False", "Paused", "paused", 2), cond("Reconciling", "True", "Paused", "paused", 2)]}));
    assert_eq!(health(paused).0, "Suspended");
    let done =
        fleet(json!({"observedGeneration": 2, "conditions": [cond("Ready", "True", "Succeeded", "12 succeeded", 2)]}));
    assert_eq!(health(done), ("Healthy".into(), "12 succeeded".into()));
    let mut suspended =
        fleet(json!({"observedGeneration": 2, "conditions": [cond("Ready", "True", "Suspended", "suspended", 2)]}));
    suspended["spec"]["suspend"] = json!(true);
    assert_eq!(health(suspended).0, "Suspended");
}

#[test]
fn argocd_health_covers_schedules() {
    let schedule = |status: serde_json::Value| {
        json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1",
            "kind": "ComputePowerSchedule",
            "metadata": {"name": "s", "namespace": "default", "generation": 1, "uid": "0002"},
            "spec": {"selector": {"zone": "z"}, "timeZone": "Europe/Madrid",
                     "events": [{"at": "07:00", "state": "running"}]},
            "status": status,
        })
    };
    let waiting = schedule(json!({"observedGeneration": 1, "conditions": [
        cond("Ready", "True", "Waiting", "next: running at 2026-12-02T06:00:00+00:00", 1)]}));
    assert_eq!(health(waiting).0, "Healthy");
    let rolling = schedule(json!({"observedGeneration": 1, "conditions": [
        cond("Ready", "False", "EventInProgress", "rolling out", 1),
        cond("Reconciling", "True", "EventInProgress", "rolling out", 1)]}));
    assert_eq!(health(rolling).0, "Progressing");
    let mut suspended =
        schedule(json!({"observedGeneration": 1, "conditions": [cond("Ready", "True", "Suspended", "suspended", 1)]}));
    suspended["spec"]["suspend"] = json!(true);
    assert_eq!(health(suspended).0, "Suspended");
    let bad_zone = schedule(json!({"observedGeneration": 1, "conditions": [
        cond("Ready", "False", "InvalidTimeZone", "timeZone \"Europe/Madird\" is not a known IANA time zone", 1),
        cond("Stalled", "True", "InvalidTimeZone", "timeZone \"Europe/Madird\" is not a known IANA time zone", 1)]}));
    let (status, message) = health(bad_zone);
    assert_eq!(status, "Degraded");
    assert!(message.contains("Europe/Madird"), "{message}");
}

#[test]
fn argocd_health_covers_change_control() {
    let object = |kind: &str, status: serde_json::Value| {
        json!({
            "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": kind,
            "metadata": {"name": "c", "generation": 1, "uid": "0003"},
            "spec": {}, "status": status,
        })
    };
    let valid = object(
        "ComputeMaintenanceWindow",
        json!({"observedGeneration": 1, "conditions": [
        cond("Ready", "True", "Valid", "the windows read as a calendar", 1)]}),
    );
    assert_eq!(health(valid).0, "Healthy");
    let unreadable = object(
        "ComputeMaintenanceWindow",
        json!({"observedGeneration": 1, "conditions": [
        cond("Ready", "False", "InvalidSpec", "timeZone \"Mars/Olympus\" is not a known IANA time zone", 1),
        cond("Stalled", "True", "InvalidSpec", "timeZone \"Mars/Olympus\" is not a known IANA time zone", 1)]}),
    );
    assert_eq!(health(unreadable).0, "Degraded");
    let counting = object(
        "ComputeDisruptionBudget",
        json!({"observedGeneration": 1, "conditions": [
        cond("Ready", "False", "Counting", "counting", 1), cond("Reconciling", "True", "Counting", "counting", 1)]}),
    );
    assert_eq!(health(counting).0, "Progressing");
    let counted = object(
        "ComputeDisruptionBudget",
        json!({"observedGeneration": 1, "conditions": [
        cond("Ready", "True", "Counted", "1 of 6 matching instances disrupted; 2 allowed at once", 1)]}),
    );
    assert_eq!(health(counted).0, "Healthy");
    // An action a freeze holds back is Suspended (it waits for a time, not for progress); a budget's wait is
    // Progressing (it moves as soon as another instance is back).
    let held = |reason: &str| {
        object(
            "ComputeInstanceAction",
            json!({"observedGeneration": 1, "conditions": [
            cond("Ready", "False", reason, "restart waits", 1), cond("Reconciling", "True", reason, "restart waits", 1)]}),
        )
    };
    assert_eq!(
        health(held("WaitingForWindow")),
        ("Suspended".into(), "restart waits".into())
    );
    assert_eq!(health(held("WaitingForBudget")).0, "Progressing");
}

#[test]
fn argocd_cm_patch_embeds_health_lua_verbatim() {
    let patch: Value = serde_norway::from_str(&read("deploy/argocd/argocd-cm-patch.yaml")).expect("patch YAML");
    assert_eq!(kind(&patch), "ConfigMap");
    assert_eq!(name(&patch), "argocd-cm");
    for kind in [
        "ComputeInstanceAction",
        "ComputeFleetAction",
        "ComputePowerSchedule",
        "ComputeMaintenanceWindow",
        "ComputeDisruptionBudget",
    ] {
        let key = format!("resource.customizations.health.compute.threatwinds.com_{kind}");
        let script = str_at(&patch, &["data", key.as_str()]);
        assert!(
            script == read("deploy/argocd/health.lua"),
            "deploy/argocd/argocd-cm-patch.yaml does not carry deploy/argocd/health.lua verbatim for {kind}; run tests/packaging/render-deploy.sh"
        );
    }
    let readme = read("deploy/argocd/README.md");
    assert!(readme.contains("resource.customizations.health.compute.threatwinds.com_ComputeInstanceAction"));
}
