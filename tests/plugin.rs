//! `kubectl compute` against the real API server with the operator running: the built plugin binary is run
//! with KUBECONFIG pointing at the test control plane, as a person would run it.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use compute_operator::api::InstanceStatus;
use compute_operator::crd::access_policy::PolicyMode;
use compute_operator::crd::instance_action::{ComputeInstanceAction, DesiredState};
use compute_operator::sim::{SimConfig, SimServer};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use support::*;

const TOKEN: &str = "dev-admin-token";

/// `transition`: how long the simulated instance stays restarting/stopping; well above the controller's first
/// poll (250 ms) so the transition is observed, not inferred from the settle time.
async fn setup(prefix: &str, transition: Duration) -> (kube::Client, String, SimServer) {
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    let sim = simulator(SimConfig {
        instances: 0,
        transition,
        ..SimConfig::default()
    })
    .await;
    (client, ns, sim)
}

fn add_instance(sim: &SimServer, id: &str, status: InstanceStatus) {
    let mut i = compute_operator::devenv::dev::demo_instances().remove(0);
    i.id = id.into();
    i.status = status;
    sim.upsert_instance(i);
}

/// Runs the plugin binary with this kubeconfig; prints what it printed (the test log shows it).
async fn plugin_with(kubeconfig: &Path, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-compute"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run kubectl-compute");
    println!(
        "$ kubectl compute {}\n{}{}(exit {})",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code().unwrap_or(-1)
    );
    out
}

async fn plugin(args: &[&str]) -> Output {
    plugin_with(&control_plane().kubeconfig, args).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A kubeconfig file for `user` with `token` whose context's namespace is `namespace`.
fn kubeconfig_file(dir: &Path, user: &str, token: &str, namespace: Option<&str>) -> std::path::PathBuf {
    let mut yaml = control_plane().kubeconfig_for(user, token);
    if let Some(ns) = namespace {
        yaml = yaml.replace(
            &format!("    user: {user}\ncurrent-context"),
            &format!("    user: {user}\n    namespace: {ns}\ncurrent-context"),
        );
        assert!(yaml.contains("namespace:"), "kubeconfig layout changed:\n{yaml}");
    }
    let path = dir.join(format!("{user}.kubeconfig"));
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_wait_shows_progress_and_each_call_runs_once_more() {
    let (client, ns, sim) = setup("plugin-restart", Duration::from_millis(1500)).await;
    add_instance(&sim, "inst-plug01", InstanceStatus::Running);
    let _ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;

    let out = plugin(&["restart", "inst-plug01", "-n", &ns, "--wait", "--timeout", "60s"]).await;
    assert!(out.status.success(), "restart --wait failed: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "requested: restart instance inst-plug01 (computeinstanceaction/instance-inst-plug01 in namespace {ns}, requestId "
        )),
        "{text}"
    );
    assert!(
        lines[1].starts_with("accepted: the admin API accepted restart at "),
        "{text}"
    );
    // Live ("is restarting") or from the final record ("left running"): status is not written mid-action.
    assert!(
        lines[2] == "transition seen: instance is restarting" || lines[2] == "transition seen: instance left running",
        "{text}"
    );
    assert!(lines.last().unwrap().starts_with("done: "), "{text}");
    assert_eq!(audit_for(&sim, "inst-plug01"), ["restart"]);

    // The object is the deterministic one, with the requestId the plugin printed.
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let o = api.get("instance-inst-plug01").await.unwrap();
    assert_eq!(o.spec.desired_state, DesiredState::Restarted);
    let rid = o.spec.request_id.clone().expect("requestId set");
    assert!(lines[0].contains(&format!("requestId {rid})")), "{text}");

    // Again: the same object, a fresh requestId, one more restart.
    let again = plugin(&["restart", "inst-plug01", "-n", &ns, "--wait", "--timeout", "60s"]).await;
    assert!(again.status.success(), "second restart failed: {}", stderr(&again));
    assert_eq!(audit_for(&sim, "inst-plug01"), ["restart", "restart"]);
    let o = api.get("instance-inst-plug01").await.unwrap();
    assert_ne!(o.spec.request_id.as_deref(), Some(rid.as_str()), "no fresh requestId");
    assert_eq!(
        api.list(&Default::default()).await.unwrap().items.len(),
        1,
        "one object per instance"
    );

    // Without --wait it only asks, and says how to follow.
    let quick = plugin(&["reset", "inst-plug01", "-n", &ns]).await;
    assert!(quick.status.success(), "{}", stderr(&quick));
    assert!(stdout(&quick).contains("follow it with: kubectl compute status inst-plug01"));
    let o = api.get("instance-inst-plug01").await.unwrap();
    assert_eq!(o.spec.desired_state, DesiredState::Reset);
    let reset_rid = o.spec.request_id.expect("requestId set");
    wait_ready_for_request(&api, "instance-inst-plug01", &reset_rid).await;
    assert_eq!(audit_for(&sim, "inst-plug01"), ["restart", "restart", "reset"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_dry_run_refusal_and_status_in_the_current_namespace() {
    let (_client, ns, sim) = setup("plugin-levels", Duration::from_millis(1500)).await;
    add_instance(&sim, "inst-plug02", InstanceStatus::Running);
    let _ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    let dir = tempfile::tempdir().unwrap();
    // The context's namespace is the test namespace: no -n below.
    let kubeconfig = kubeconfig_file(dir.path(), "admin", &control_plane().admin_token, Some(&ns));

    let out = plugin_with(&kubeconfig, &["stop", "inst-plug02", "--wait", "--timeout", "60s"]).await;
    assert!(out.status.success(), "stop --wait failed: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("in namespace {ns})")), "{text}");
    assert!(text.contains("accepted: the admin API accepted stop"), "{text}");
    assert!(
        text.contains("transition seen: instance is stopping")
            || text.contains("transition seen: instance left running"),
        "{text}"
    );
    assert!(text.lines().last().unwrap().starts_with("done: "), "{text}");
    assert_eq!(audit_for(&sim, "inst-plug02"), ["stop"]);

    // A restart of a stopped instance cannot start: non-zero, with the operator's reason and what to do.
    let refused = plugin_with(&kubeconfig, &["restart", "inst-plug02", "--wait", "--timeout", "60s"]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    let err = stderr(&refused);
    assert!(
        err.contains("failed: Stalled/InvalidInstanceState: instance inst-plug02 is stopped"),
        "{err}"
    );
    assert!(err.contains("next: "), "{err}");
    assert_eq!(audit_for(&sim, "inst-plug02"), ["stop"]);

    // --dry-run: reported, never called.
    let dry = plugin_with(
        &kubeconfig,
        &["start", "inst-plug02", "--dry-run", "--wait", "--timeout", "60s"],
    )
    .await;
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).contains("done: dry run: would start instance inst-plug02"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(audit_for(&sim, "inst-plug02"), ["stop"]);

    let status = plugin_with(&kubeconfig, &["status", "inst-plug02"]).await;
    assert!(status.status.success(), "{}", stderr(&status));
    let text = stdout(&status);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "{ns}/instance-inst-plug02: inst-plug02 running [dryRun] - Ready (DryRun)"
        )),
        "{text}"
    );
    assert!(
        text.contains("\n  stop Succeeded, requested "),
        "the last actions are listed: {text}"
    );
    let none = plugin_with(&kubeconfig, &["status", "inst-nothing"]).await;
    assert!(none.status.success());
    assert_eq!(
        stdout(&none),
        format!("no ComputeInstanceAction in namespace {ns} acts on instance inst-nothing\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_by_policy_exits_non_zero_with_the_reason() {
    let (_client, ns, sim) = setup("plugin-policy", Duration::from_millis(300)).await;
    add_instance(&sim, "inst-plug03", InstanceStatus::Running);
    let mut config = test_controller_config(&ns);
    config.policy_mode = PolicyMode::Enforce;
    let _ctl = start_controller(&sim, TOKEN, config).await;

    let out = plugin(&["restart", "inst-plug03", "-n", &ns, "--wait", "--timeout", "60s"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("failed: Stalled/PolicyDenied: "), "{err}");
    assert!(
        err.contains("a cluster administrator must add a ComputeAccessPolicy"),
        "{err}"
    );
    assert!(sim.audit().is_empty(), "a denied action reached the admin API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rights_no_cluster_and_no_operator_each_say_what_to_do() {
    let client = client().await;
    let ns = namespace(&client, "plugin-rights").await;
    let dir = tempfile::tempdir().unwrap();

    // A ServiceAccount nobody granted anything: 403 from the API server.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("nobody".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = sas
        .create_token_request("nobody", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .expect("a token for the ServiceAccount");
    let nobody = kubeconfig_file(dir.path(), "nobody", &token, Some(&ns));
    let out = plugin_with(&nobody, &["restart", "inst-x", "--wait"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "you may not patch computeinstanceactions.compute.threatwinds.com in namespace {ns}"
        )),
        "{err}"
    );
    assert!(err.contains("kubectl auth can-i patch"), "{err}");
    let out = plugin_with(&nobody, &["status"]).await;
    assert!(stderr(&out).contains("you may not list"), "{}", stderr(&out));

    // No cluster at all.
    let out = plugin_with(&dir.path().join("missing.kubeconfig"), &["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot talk to the Kubernetes API server"),
        "{}",
        stderr(&out)
    );

    // No operator watching the namespace: --wait gives up with exit 3 and points at the operator.
    let out = plugin(&["stop", "inst-x", "-n", &ns, "--wait", "--timeout", "2s"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("is compute-operator running"), "{}", stderr(&out));
}

/// `fleet status|pause|resume` on a rollout driven by the real fleet and instance controllers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_status_pause_and_resume() {
    use support::fleet::{env, has, zone_fleet};
    let e = env("plugin-fleet", zone_fleet("pf", "zone-p", 3), 300, PolicyMode::Off).await;
    let ns = e.ns.clone();
    e.create(
        "nightly",
        serde_json::json!({"selector": {"zone": "zone-p"}, "desiredState": "restarted", "requestId": "r1",
                           "paused": true}),
    )
    .await;
    e.wait_reason("nightly", "Reconciling", "Paused", Duration::from_secs(30))
        .await;

    let out = plugin(&["fleet", "status", "nightly", "-n", &ns]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "{ns}/nightly: restarted (requestId r1) of zone=zone-p [paused] - Reconciling (Paused)"
        )),
        "{text}"
    );
    assert!(text.contains("\n  selected 3, succeeded 0, failed 0"), "{text}");
    assert!(e.sim.audit().is_empty(), "a paused fleet started an instance");

    let out = plugin(&["fleet", "resume", "nightly", "-n", &ns]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "computefleetaction/nightly resumed: continues where it stopped\n"
    );
    e.wait("nightly", Duration::from_secs(60), "Ready/Succeeded", |f| {
        has(f, "Ready", "Succeeded")
    })
    .await;
    assert_eq!(e.sim.audit().len(), 3, "one restart per instance");

    let out = plugin(&["fleet", "status", "nightly", "-n", &ns]).await;
    let text = stdout(&out);
    assert!(text.contains("\n  selected 3, succeeded 3, failed 0"), "{text}");
    assert!(text.contains("\n  children (3):\n    pf-00 "), "{text}");

    let out = plugin(&["fleet", "pause", "nightly", "-n", &ns]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(e.fleets.get("nightly").await.unwrap().spec.paused, "spec.paused set");

    let out = plugin(&["fleet", "pause", "missing", "-n", &ns]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("there is no ComputeFleetAction missing in namespace {ns}")),
        "{}",
        stderr(&out)
    );
}

/// `schedule status|override|clear-override` against the real schedule controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_status_and_an_override_that_is_set_and_cleared() {
    use compute_operator::crd::power_schedule::ScheduledState;
    use support::schedule::{at, schedule, setup, wait_schedule};
    let (ns, api, _fleets) = setup("plugin-sched").await;
    let _ctl = start_schedule_controller(&ns, Default::default()).await;
    let mut s = schedule(
        "office",
        vec![
            at("07:00", ScheduledState::Running),
            at("19:00", ScheduledState::Stopped),
        ],
    );
    s.spec.time_zone = "Europe/Madrid".into();
    api.create(&PostParams::default(), &s).await.expect("create schedule");
    wait_schedule(&api, "office", Duration::from_secs(10), "next event", |o| {
        o.status.as_ref().is_some_and(|s| s.next_event.is_some())
    })
    .await;

    let out = plugin(&["schedule", "status", "office", "-n", &ns]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "{ns}/office: instance i-sched-1 in Europe/Madrid, 2 events, enforcement events - Ready"
        )),
        "{text}"
    );
    assert!(text.contains("\n  next: "), "{text}");
    assert!(
        text.contains(" CET (") || text.contains(" CEST ("),
        "times in the schedule's zone: {text}"
    );

    let before = chrono::Utc::now();
    let out = plugin(&[
        "schedule", "override", "office", "-n", &ns, "--state", "running", "--for", "2h",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("overridden: computepowerschedule/office holds running until "));
    let held = api
        .get("office")
        .await
        .unwrap()
        .spec
        .power_override
        .expect("spec.override set");
    assert_eq!(held.state, ScheduledState::Running);
    let hours = (held.until - before).num_minutes();
    assert!((119..=121).contains(&hours), "until is 2 h from now: {} minutes", hours);
    wait_schedule(&api, "office", Duration::from_secs(10), "override in effect", |o| {
        o.status.as_ref().is_some_and(|s| s.power_override.is_some())
    })
    .await;
    let text = stdout(&plugin(&["schedule", "status", "-n", &ns]).await);
    assert!(text.contains("\n  override: running until "), "{text}");

    let out = plugin(&[
        "schedule",
        "override",
        "office",
        "-n",
        &ns,
        "--state",
        "stopped",
        "--until",
        "2020-01-01T00:00:00Z",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "an end in the past is refused");
    assert!(stderr(&out).contains("has passed"), "{}", stderr(&out));

    let out = plugin(&["schedule", "clear-override", "office", "-n", &ns]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        api.get("office").await.unwrap().spec.power_override.is_none(),
        "override removed"
    );
}

/// Who manages `field` (a `managedFields` path like `f:spec` / `f:desiredState`) on the object.
fn managers_of(o: &ComputeInstanceAction, path: &[&str]) -> Vec<String> {
    o.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            let fields = m.fields_v1.as_ref().map(|f| &f.0).unwrap_or(&serde_json::Value::Null);
            path.iter().try_fold(fields, |v, k| v.get(*k)).is_some()
        })
        .filter_map(|m| m.manager.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_and_labels_another_manager_owns_are_left_alone_unless_forced() {
    let (client, ns, sim) = setup("plugin-owners", Duration::from_millis(300)).await;
    add_instance(&sim, "inst-plug09", InstanceStatus::Running);
    add_instance(&sim, "inst-plug10", InstanceStatus::Running);
    add_instance(&sim, "inst-plug11", InstanceStatus::Running);
    let _ctl = start_controller(&sim, TOKEN, test_controller_config(&ns)).await;
    let api: Api<ComputeInstanceAction> = Api::namespaced(client.clone(), &ns);
    let name = "instance-inst-plug09";
    // What Argo CD would sync from Git: its own field manager, the managed-by label of the chart that made it.
    let gitops = serde_json::json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1",
        "kind": "ComputeInstanceAction",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "Helm", "team": "a"}},
        "spec": {"instanceId": "inst-plug09", "desiredState": "running", "timeoutSeconds": 600},
    });
    api.patch(name, &PatchParams::apply("argocd-controller"), &Patch::Apply(&gitops))
        .await
        .expect("apply as argocd-controller");
    let before = wait_ready(&api, name).await;

    // A different desiredState than the one Argo CD owns: refused, named, and nothing written.
    let refused = plugin(&["stop", "inst-plug09", "-n", &ns, "--wait", "--timeout", "30s"]).await;
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    let err = stderr(&refused);
    assert!(
        err.contains("spec.desiredState (owned by \"argocd-controller\")"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let after = api.get(name).await.unwrap();
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "the object changed"
    );
    assert_eq!(after.spec.desired_state, DesiredState::Running);
    assert!(
        managers_of(&after, &[]).iter().all(|m| m != "kubectl-compute"),
        "{:?}",
        after.metadata.managed_fields
    );

    // The same value is shared, not taken; the labels stay Argo CD's alone.
    let same = plugin(&["start", "inst-plug09", "-n", &ns, "--wait", "--timeout", "30s"]).await;
    assert!(same.status.success(), "{}", stderr(&same));
    let shared = api.get(name).await.unwrap();
    let label = ["f:metadata", "f:labels", "f:app.kubernetes.io/managed-by"];
    assert_eq!(
        shared.labels().get("app.kubernetes.io/managed-by").map(String::as_str),
        Some("Helm")
    );
    assert_eq!(managers_of(&shared, &label), ["argocd-controller"]);

    // --force takes the field, says so, and still leaves the labels alone.
    let forced = plugin(&[
        "stop",
        "inst-plug09",
        "-n",
        &ns,
        "--force",
        "--wait",
        "--timeout",
        "60s",
    ])
    .await;
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert!(
        stderr(&forced).contains("--force: taking spec.desiredState (owned by \"argocd-controller\")"),
        "{}",
        stderr(&forced)
    );
    let taken = api.get(name).await.unwrap();
    assert_eq!(taken.spec.desired_state, DesiredState::Stopped);
    assert_eq!(taken.labels().get("team").map(String::as_str), Some("a"));
    assert_eq!(managers_of(&taken, &label), ["argocd-controller"]);
    assert_eq!(managers_of(&taken, &["f:spec", "f:desiredState"]), ["kubectl-compute"]);
    assert_eq!(audit_for(&sim, "inst-plug09"), ["stop"]);

    // --wait fails when nothing ran: a dry run the command did not ask for (spec.dryRun set by another tool),
    // and a one-shot past its notAfter.
    let other = "instance-inst-plug10";
    let ok = plugin(&["stop", "inst-plug10", "-n", &ns, "--wait", "--timeout", "60s"]).await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let pp = PatchParams {
        field_manager: Some("helm".into()),
        ..Default::default()
    };
    api.patch(other, &pp, &Patch::Merge(serde_json::json!({"spec": {"dryRun": true}})))
        .await
        .unwrap();
    let dry = plugin(&["start", "inst-plug10", "-n", &ns, "--wait", "--timeout", "60s"]).await;
    assert_eq!(dry.status.code(), Some(1), "{}", stdout(&dry));
    assert!(stderr(&dry).contains("nothing ran, Ready/DryRun"), "{}", stderr(&dry));
    assert_eq!(audit_for(&sim, "inst-plug10"), ["stop"], "the dry run sent nothing");
    let ok = plugin(&["start", "inst-plug11", "-n", &ns, "--wait", "--timeout", "60s"]).await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let not_after = serde_json::json!({"spec": {"notAfter": "2020-01-01T00:00:00Z"}});
    api.patch("instance-inst-plug11", &pp, &Patch::Merge(not_after))
        .await
        .unwrap();
    let expired = plugin(&["restart", "inst-plug11", "-n", &ns, "--wait", "--timeout", "60s"]).await;
    assert_eq!(expired.status.code(), Some(1), "{}", stdout(&expired));
    assert!(
        stderr(&expired).contains("nothing ran, Ready/Expired"),
        "{}",
        stderr(&expired)
    );
    assert!(
        stderr(&expired).contains("spec.notAfter has passed"),
        "{}",
        stderr(&expired)
    );
    assert!(audit_for(&sim, "inst-plug11").is_empty(), "an expired restart was sent");
}
