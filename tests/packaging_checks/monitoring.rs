//! Dashboards and alerts shipped by the chart:
//!
//! 1. Off by default; when on, `helm lint --strict` passes, the dashboard is a ConfigMap with the sidecar label
//!    holding valid dashboard JSON, the PrometheusRule carries the five alerts, and bad values are refused.
//! 2. The rendered alert rules pass `promtool check rules` and the unit tests in
//!    tests/packaging/alerts_test.yaml (synthetic series: each alert fires when it should and not before).
//! 3. Every metric a dashboard panel or an alert names is one the running controller exports: a controller on
//!    the real API server and the simulator does some work, `/metrics` is scraped, unknown names fail.
//!
//! Needs helm and promtool (`apt-get install -y prometheus`); FAILS (never skips) without them.

use crate::chart_support;
use crate::support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use chart_support::*;
use compute_operator::api::InstanceStatus;
use compute_operator::api::{CredentialSource, Credentials, Secret};
use compute_operator::config::RunArgs;
use compute_operator::crd::instance_action::{ComputeInstanceAction, DesiredState};
use compute_operator::sim::SimConfig;
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use kube::Api;
use serde_norway::Value;
use support::{cia, client, create, namespace, simulator, wait_ready, wait_reason};

const ALERTS: [&str; 7] = [
    "ComputeOperatorOutcomeUnknown",
    "ComputeOperatorObjectStalled",
    "ComputeOperatorAdminApiErrors",
    "ComputeOperatorNoLeader",
    "ComputeOperatorReconcileErrors",
    "ComputeOperatorFleetFailureBudgetExceeded",
    "ComputeOperatorScheduleEventMissedOrFailed",
];

const ON: [&str; 4] = [
    "--set",
    "metrics.grafanaDashboard.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
];

fn dashboard_json() -> serde_json::Value {
    let text =
        std::fs::read_to_string(root().join(CHART).join("dashboards/compute-operator.json")).expect("dashboard file");
    serde_json::from_str(&text).expect("dashboard JSON parses")
}

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    // Row panels only group the ones below them.
    for panel in d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
    {
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    for var in d["templating"]["list"].as_array().expect("variables") {
        if let Some(q) = var["definition"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    exprs
}

fn rule_doc(args: &[&str]) -> Value {
    let mut all = ON.to_vec();
    all.extend_from_slice(args);
    let docs = template(&all);
    let rules = of_kind(&docs, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    rules[0].clone()
}

fn rules_of(rule: &Value) -> Vec<Value> {
    at(rule, &["spec", "groups"])
        .and_then(Value::as_sequence)
        .expect("groups")
        .iter()
        .flat_map(|g| {
            at(g, &["rules"])
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn monitoring_is_off_by_default_and_renders_when_on() {
    let defaults = template(&[]);
    assert!(
        of_kind(&defaults, "PrometheusRule").is_empty(),
        "no PrometheusRule by default"
    );
    assert!(
        of_kind(&defaults, "ConfigMap").is_empty(),
        "no dashboard ConfigMap by default"
    );

    lint(&ON);
    lint(&[&ON[..], &["--set", "metrics.serviceMonitor.enabled=true"]].concat());

    let docs = template(
        &[
            &ON[..],
            &[
                "--set",
                "metrics.grafanaDashboard.namespace=monitoring",
                "--set",
                "metrics.grafanaDashboard.annotations.grafana_folder=Operators",
                "--set",
                "metrics.prometheusRule.labels.release=kube-prometheus-stack",
                "--set",
                "metrics.prometheusRule.additionalAlertLabels.team=platform",
            ],
        ]
        .concat(),
    );
    let cm = of_kind(&docs, "ConfigMap");
    assert_eq!(cm.len(), 1);
    let cm = cm[0];
    assert_eq!(str_at(cm, &["metadata", "labels", "grafana_dashboard"]), "1");
    assert_eq!(str_at(cm, &["metadata", "namespace"]), "monitoring");
    assert_eq!(str_at(cm, &["metadata", "annotations", "grafana_folder"]), "Operators");
    let embedded: serde_json::Value =
        serde_json::from_str(str_at(cm, &["data", "compute-operator.json"])).expect("embedded JSON parses");
    assert_eq!(
        embedded,
        dashboard_json(),
        "the ConfigMap carries the dashboard file verbatim"
    );
    assert!(embedded["panels"].as_array().is_some_and(|p| p.len() >= 10));

    let rule = of_kind(&docs, "PrometheusRule")[0];
    assert_eq!(str_at(rule, &["apiVersion"]), "monitoring.coreos.com/v1");
    assert_eq!(
        str_at(rule, &["metadata", "labels", "release"]),
        "kube-prometheus-stack"
    );
    let rules = rules_of(rule);
    let names: Vec<&str> = rules.iter().map(|r| str_at(r, &["alert"])).collect();
    assert_eq!(names, ALERTS);
    for r in &rules {
        assert_eq!(str_at(r, &["labels", "team"]), "platform");
        let expr = str_at(r, &["expr"]);
        assert!(
            expr.contains(r#"job="compute-operator-metrics",namespace="compute-operator""#),
            "scoped to the release's series: {expr}"
        );
    }

    // Thresholds and the selector come from values.
    let custom = rule_doc(&[
        "--set",
        "metrics.prometheusRule.stalledAfterSeconds=60",
        // --set turns 0.5 into a string; the schema wants a number.
        "--set-json",
        "metrics.prometheusRule.apiErrorRatio=0.5",
        "--set",
        "metrics.prometheusRule.reconcileErrorRatio=1",
        "--set",
        r#"metrics.prometheusRule.selector=app="ops""#,
    ]);
    let text = serde_norway::to_string(&custom).unwrap();
    assert!(text.contains("> 60"), "{text}");
    assert!(text.contains("> 0.5"), "{text}");
    assert!(text.contains("> 1\n"), "{text}");
    assert!(text.contains(r#"{app="ops","#) && !text.contains("job="), "{text}");

    // The schema refuses nonsense.
    let err = try_template(&[&ON[..], &["--set", "metrics.prometheusRule.apiErrorRatio=2"]].concat())
        .expect_err("a ratio above 1");
    assert!(err.contains("apiErrorRatio"), "{err}");
    let err = try_template(&["--set", "metrics.prometheusRule.typo=1"]).expect_err("an unknown key");
    assert!(err.contains("typo"), "{err}");
}

#[test]
fn alert_rules_pass_promtool_unit_tests() {
    let rule = rule_doc(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    // promtool reads plain rule files: the PrometheusRule's spec is one.
    let rules_file = dir.path().join("compute-operator-rules.yaml");
    std::fs::write(&rules_file, serde_norway::to_string(&rule["spec"]).unwrap()).unwrap();
    std::fs::copy(
        root().join("tests/packaging/alerts_test.yaml"),
        dir.path().join("alerts_test.yaml"),
    )
    .unwrap();
    let out = Command::new(promtool())
        .arg("check")
        .arg("rules")
        .arg(&rules_file)
        .output()
        .expect("promtool check rules");
    let checked = ok(&out, "promtool check rules");
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "{checked}"
    );
    let out = Command::new(promtool())
        .args(["test", "rules", "alerts_test.yaml"])
        .current_dir(dir.path())
        .output()
        .expect("promtool test rules");
    let tested = ok(&out, "promtool test rules tests/packaging/alerts_test.yaml");
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Series names a scrape can hold: every sample's name, and what each `# TYPE` family produces even before it
/// has a sample (a counter family with no errors yet is still exported).
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

fn samples_of(scrape: &str, name: &str) -> Vec<String> {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .map(str::to_owned)
        .collect()
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

/// Refuses every status write of objects labelled `deny-status=true` (cluster-wide, but only tests label
/// objects so): their reconciles fail with `WriteStatus`, as when the Kubernetes API refuses a write.
async fn refuse_status_writes(kube: &kube::Client) {
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "monitoring-test-deny-status"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["compute.threatwinds.com"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["computeinstanceactions/status"]
            }]},
            "validations": [{"expression": "false", "message": "status writes refused by the monitoring test"}]
        }
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "monitoring-test-deny-status"},
        "spec": {
            "policyName": "monitoring-test-deny-status",
            "validationActions": ["Deny"],
            "matchResources": {"objectSelector": {"matchLabels": {"deny-status": "true"}}}
        }
    }))
    .unwrap();
    let pp = kube::api::PostParams::default();
    for result in [
        Api::<ValidatingAdmissionPolicy>::all(kube.clone())
            .create(&pp, &policy)
            .await
            .map(|_| ()),
        Api::<ValidatingAdmissionPolicyBinding>::all(kube.clone())
            .create(&pp, &binding)
            .await
            .map(|_| ()),
    ] {
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("cannot create the admission policy: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_only_metrics_the_controller_exports() {
    let kube = client().await;
    let ns = namespace(&kube, "monitoring").await;
    let sim = simulator(SimConfig {
        transition: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let mut instance = compute_operator::devenv::dev::demo_instances().remove(0);
    instance.id = "inst-mon00001".into();
    instance.status = InstanceStatus::Stopped;
    sim.upsert_instance(instance);
    refuse_status_writes(&kube).await;

    // The operator as `compute-operator run` wires it (admin API observer, leader gauge, health).
    let port = compute_operator::devenv::controlplane::free_port().expect("free port");
    let args = <Cli as clap::Parser>::try_parse_from([
        "compute-operator",
        "--api-url",
        sim.base_url(),
        "--namespaces",
        &ns,
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--policy-mode",
        "off",
        "--restart-settle",
        "2s",
    ])
    .expect("settings")
    .run;
    let credentials = CredentialSource::Static(Credentials::Bearer(Secret::new("dev-admin-token")));
    let operator = compute_operator::operator::run_with(args, credentials, client().await, std::future::pending());

    // Some work: an instance started (admin API GET + POST, Ready), one that does not exist (Stalled), one whose
    // status writes the API server refuses (reconcile errors).
    let objects: Api<ComputeInstanceAction> = Api::namespaced(kube.clone(), &ns);
    let work = async {
        create(&objects, &cia("start", "inst-mon00001", DesiredState::Running, None)).await;
        create(&objects, &cia("missing", "inst-mon99999", DesiredState::Running, None)).await;
        let mut refused = cia("refused", "inst-mon00001", DesiredState::Running, None);
        refused.metadata.labels = Some([("deny-status".to_owned(), "true".to_owned())].into());
        create(&objects, &refused).await;
        wait_ready(&objects, "start").await;
        wait_reason(&objects, "missing", "Stalled", "InstanceNotFound").await;
        // A fleet (a dry run: it only reports) so the fleet series carry its Ready reason.
        let fleet: compute_operator::controllers::fleet::ComputeFleetAction =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "compute.threatwinds.com/v1alpha1", "kind": "ComputeFleetAction",
                "metadata": {"name": "fleet-dry"},
                "spec": {"selector": {"instanceIds": ["inst-mon00001"]}, "desiredState": "stopped", "dryRun": true}
            }))
            .unwrap();
        Api::<compute_operator::controllers::fleet::ComputeFleetAction>::namespaced(kube.clone(), &ns)
            .create(&Default::default(), &fleet)
            .await
            .expect("create fleet");

        // The condition gauges are refreshed every 15 s; the refused object's errors come with backoff.
        let url = format!("http://127.0.0.1:{port}/metrics");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = match reqwest::get(&url).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let stalled = samples_of(&text, "compute_operator_objects_by_condition")
                .iter()
                .any(|l| l.contains(r#"reason="InstanceNotFound""#));
            let errors = !samples_of(&text, "compute_operator_reconcile_errors_total").is_empty();
            let fleet = samples_of(&text, "compute_operator_resources_by_condition")
                .iter()
                .any(|l| l.contains(r#"kind="ComputeFleetAction",condition="Ready",reason="DryRun""#));
            if stalled && errors && fleet {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "no Stalled series, reconcile error or fleet series within 60s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let scrape = tokio::select! {
        end = operator => panic!("the operator stopped: {end:?}"),
        scrape = work => scrape,
    };
    for name in ["missing", "refused", "start"] {
        let _ = objects.delete(name, &Default::default()).await;
    }

    let exported = exported_names(&scrape);
    eprintln!("{scrape}");
    let mut named = BTreeSet::new();
    let mut unknown = Vec::new();
    let rule = rule_doc(&[]);
    let alert_exprs: Vec<String> = rules_of(&rule)
        .iter()
        .map(|r| str_at(r, &["expr"]).to_owned())
        .collect();
    for (source, expr) in dashboard_exprs(&dashboard_json())
        .into_iter()
        .map(|e| ("dashboard", e))
        .chain(alert_exprs.into_iter().map(|e| ("alert", e)))
    {
        let names = metric_names(&expr);
        assert!(!names.is_empty() || !expr.contains("compute_operator"), "{expr}");
        for name in names {
            if !exported.contains(&name) {
                unknown.push(format!("{source}: {name} in {expr}"));
            }
            named.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics named that the controller does not export:\n{}\n\nexported: {exported:?}",
        unknown.join("\n")
    );
    // The series the alerts read have samples after real work (not only a `# TYPE` line).
    for name in [
        "compute_operator_objects_by_condition",
        "compute_operator_stalled_oldest_seconds",
        "compute_operator_api_requests_total",
        "compute_operator_reconciles_total",
        "compute_operator_reconcile_errors_total",
        "compute_operator_leader",
        "compute_operator_resources_by_condition",
        "compute_operator_fleet_children",
        "compute_operator_fleet_failure_budget_stops_total",
        "compute_operator_schedule_events_total",
        "compute_operator_schedule_event_lateness_seconds_bucket",
    ] {
        assert!(named.contains(name), "nothing reads {name}");
        assert!(!samples_of(&scrape, name).is_empty(), "{name} has no sample:\n{scrape}");
    }
    assert!(
        samples_of(&scrape, "compute_operator_leader")
            .iter()
            .any(|l| l.ends_with(" 1")),
        "the acting replica reports compute_operator_leader 1 without leader election"
    );
    let oldest = samples_of(&scrape, "compute_operator_stalled_oldest_seconds");
    assert!(
        oldest.iter().any(|l| l.contains(r#"reason="InstanceNotFound""#)),
        "{oldest:?}"
    );
    eprintln!("{} metric names checked against the scrape", named.len());
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(r#"sum(rate(compute_operator_a_total{x="compute_operator_no"}[5m])) / compute_operator_b"#),
        vec!["compute_operator_a_total", "compute_operator_no", "compute_operator_b"]
    );
}
