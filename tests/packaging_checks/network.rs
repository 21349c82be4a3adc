//! The chart's NetworkPolicy (on by default: ingress to the metrics/health port only from the configured peers,
//! egress off unless asked for), its values schema, and a third-party scan (checkov) of the default render: what
//! fails is only what a user's values decide, each named in the chart's README.

use crate::chart_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use chart_support::*;
use serde_norway::Value;

fn the_policy(docs: &[Value]) -> &Value {
    let policies = of_kind(docs, "NetworkPolicy");
    assert_eq!(policies.len(), 1, "one NetworkPolicy");
    policies[0]
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap()
}

#[test]
fn on_by_default_it_selects_the_operator_pod_and_admits_only_prometheus_to_the_metrics_port() {
    let docs = template(&[]);
    let np = the_policy(&docs);
    assert_eq!(str_at(np, &["metadata", "namespace"]), NAMESPACE);
    let deployment = of_kind(&docs, "Deployment")[0];
    // Every label the policy selects by is on the pod (so checkov's CKV2_K8S_6 and the CNI see the same pod).
    let pod_labels = at(deployment, &["spec", "template", "metadata", "labels"]).unwrap();
    let selected = at(np, &["spec", "podSelector", "matchLabels"])
        .and_then(Value::as_mapping)
        .expect("podSelector.matchLabels");
    assert!(!selected.is_empty());
    for (k, v) in selected {
        assert_eq!(pod_labels.get(k), Some(v), "pod lacks {k:?}");
    }
    assert_eq!(
        at(np, &["spec", "policyTypes"]),
        Some(&yaml("[Ingress]")),
        "egress is off by default"
    );
    assert!(at(np, &["spec", "egress"]).is_none());
    let want = yaml(
        "- ports: [{protocol: TCP, port: 8080}]\n  from:\n  - namespaceSelector: {}\n    podSelector: {matchLabels: {app.kubernetes.io/name: prometheus}}",
    );
    assert_eq!(at(np, &["spec", "ingress"]), Some(&want));
    // The one port is the one the probes and /metrics use.
    let port = at(
        deployment,
        &[
            "spec",
            "template",
            "spec",
            "containers",
            "0",
            "ports",
            "0",
            "containerPort",
        ],
    );
    assert_eq!(port.and_then(Value::as_u64), Some(8080));
    assert_eq!(
        str_at(
            deployment,
            &[
                "spec",
                "template",
                "spec",
                "containers",
                "0",
                "livenessProbe",
                "httpGet",
                "port"
            ]
        ),
        "metrics"
    );

    assert!(of_kind(&template(&["--set", "networkPolicy.enabled=false"]), "NetworkPolicy").is_empty());
}

#[test]
fn sources_and_the_port_follow_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "metrics: {port: 9100}\nnetworkPolicy:\n  ingress:\n    from:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}\n      podSelector: {matchLabels: {app: vmagent}}\n    - ipBlock: {cidr: 10.20.0.0/16}\n",
    )
    .unwrap();
    let docs = template(&["-f", values.to_str().unwrap()]);
    let np = the_policy(&docs);
    let want = yaml(
        "- ports: [{protocol: TCP, port: 9100}]\n  from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}\n    podSelector: {matchLabels: {app: vmagent}}\n  - ipBlock: {cidr: 10.20.0.0/16}",
    );
    assert_eq!(at(np, &["spec", "ingress"]), Some(&want));
    // No peers: no ingress at all (not "from anywhere", which a rule without `from` would mean).
    let closed = template(&["--set", "networkPolicy.ingress.from=null"]);
    assert_eq!(at(the_policy(&closed), &["spec", "ingress"]), Some(&yaml("[]")));
}

#[test]
fn egress_when_enabled_allows_dns_the_api_server_and_the_admin_api_only() {
    let docs = template(&[
        "--set",
        "networkPolicy.egress.enabled=true",
        "--set",
        "networkPolicy.egress.apiServer.cidrs={10.0.0.1/32}",
        "--set",
        "networkPolicy.egress.adminApi.cidrs={203.0.113.0/24}",
    ]);
    let np = the_policy(&docs);
    assert_eq!(at(np, &["spec", "policyTypes"]), Some(&yaml("[Ingress, Egress]")));
    let want = yaml(
        r#"
- to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
  ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
- to: [{ipBlock: {cidr: 10.0.0.1/32}}]
  ports: [{protocol: TCP, port: 443}, {protocol: TCP, port: 6443}]
- to: [{ipBlock: {cidr: 203.0.113.0/24}}]
  ports: [{protocol: TCP, port: 443}]
"#,
    );
    assert_eq!(at(np, &["spec", "egress"]), Some(&want));
    // Admin API by port only (addresses unknown or behind a proxy), DNS off, an extra rule verbatim.
    let docs = template(&[
        "--set",
        "networkPolicy.egress.enabled=true",
        "--set",
        "networkPolicy.egress.apiServer.cidrs={10.0.0.1/32}",
        "--set",
        "networkPolicy.egress.dns.enabled=false",
        "--set",
        "networkPolicy.egress.adminApi.ports={8443}",
        "--set",
        "networkPolicy.egress.extra[0].to[0].ipBlock.cidr=192.0.2.10/32",
    ]);
    let egress = at(the_policy(&docs), &["spec", "egress"]).unwrap();
    let want = yaml(
        r#"
- to: [{ipBlock: {cidr: 10.0.0.1/32}}]
  ports: [{protocol: TCP, port: 443}, {protocol: TCP, port: 6443}]
- ports: [{protocol: TCP, port: 8443}]
- to: [{ipBlock: {cidr: 192.0.2.10/32}}]
"#,
    );
    assert_eq!(egress, &want);
    // Egress without the API server's addresses would cut the operator off: refused, saying what is missing.
    let err =
        try_template(&["--set", "networkPolicy.egress.enabled=true"]).expect_err("rendered without apiServer.cidrs");
    assert!(err.contains("networkPolicy.egress.apiServer.cidrs"), "{err}");
}

#[test]
fn the_values_schema_rejects_what_would_render_a_broken_policy() {
    for (set, why) in [
        ("networkPolicy.enabled=maybe", "enabled is a boolean"),
        ("networkPolicy.allow=all", "unknown key"),
        (
            "networkPolicy.ingress.from[0].namespace=monitoring",
            "a peer has only selectors or ipBlock",
        ),
        (
            "networkPolicy.egress.apiServer.cidrs={10.0.0.1}",
            "a CIDR needs its prefix length",
        ),
        ("networkPolicy.egress.adminApi.ports={70000}", "a port is at most 65535"),
        ("networkPolicy.egress.dns.namespace=", "the DNS namespace is not empty"),
    ] {
        let err = try_template(&["--set", set]).expect_err(why);
        assert!(
            err.contains("schema"),
            "{set} ({why}) was refused for another reason: {err}"
        );
    }
    lint(&[]);
}

// --- checkov --------------------------------------------------------------------------------------------------

/// `$CHECKOV_BIN`, else the venv tests/run-all.sh installs (the version is read from that script).
fn checkov() -> PathBuf {
    if let Some(bin) = std::env::var_os("CHECKOV_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    let script = std::fs::read_to_string(root().join("tests/run-all.sh")).unwrap();
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("CHECKOV_VERSION="))
        .expect("tests/run-all.sh sets CHECKOV_VERSION");
    let bin = compute_operator::devenv::binaries::cache_root()
        .join(format!("checkov-{version}"))
        .join("bin/checkov");
    assert!(
        bin.is_file(),
        "checkov is required: none at {} (tests/run-all.sh installs it from PyPI; or set CHECKOV_BIN)",
        bin.display()
    );
    bin
}

/// Check IDs that failed and passed when checkov scanned the render of these `helm template` arguments.
fn scan(args: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = run(Command::new(helm())
        .args(["template", RELEASE, CHART, "--namespace", NAMESPACE])
        .args(args));
    let render = ok(&out, "helm template");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("render.yaml");
    std::fs::write(&file, render).unwrap();
    // --skip-download: no call home for guidelines; the checks themselves ship with the package.
    let out = Command::new(checkov())
        .args(["--framework", "kubernetes", "--skip-download", "--output", "json", "-f"])
        .arg(&file)
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false")
        .output()
        .expect("run checkov");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON report ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let ids = |which: &str| -> BTreeSet<String> {
        report["results"][which]
            .as_array()
            .map(|checks| {
                checks
                    .iter()
                    .filter_map(|c| c["check_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    (ids("failed_checks"), ids("passed_checks"))
}

/// What the chart leaves to the user's values: each is explained in the chart's README.
const USER_VALUES: [(&str, &str); 4] = [
    ("CKV_K8S_11", "CPU limit"),
    ("CKV_K8S_15", "pull policy"),
    ("CKV_K8S_38", "service account token"),
    ("CKV_K8S_43", "digest"),
];

#[test]
fn checkov_on_the_default_render_fails_only_what_user_values_decide() {
    let (failed, passed) = scan(&[]);
    println!("checkov: {} passed, failed: {failed:?}", passed.len());
    assert!(
        passed.contains("CKV2_K8S_6"),
        "no NetworkPolicy selects the operator pod (CKV2_K8S_6): {failed:?}"
    );
    assert!(passed.len() > 50, "checkov ran only {} distinct checks", passed.len());
    let allowed: BTreeSet<String> = USER_VALUES.iter().map(|(id, _)| id.to_string()).collect();
    let chart_findings: Vec<&String> = failed.difference(&allowed).collect();
    assert!(
        chart_findings.is_empty(),
        "checkov findings the chart must fix: {chart_findings:?}"
    );
    let readme = std::fs::read_to_string(root().join(CHART).join("README.md")).unwrap();
    for (id, what) in USER_VALUES {
        assert!(readme.contains(id), "the chart README does not explain {id} ({what})");
    }
    // The values the README names do clear them; only the token the operator needs to talk to the API stays.
    let (failed, _) = scan(&[
        "--set",
        "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "--set",
        "image.pullPolicy=Always",
        "--set",
        "resources.limits.cpu=500m",
    ]);
    assert_eq!(
        failed,
        BTreeSet::from(["CKV_K8S_38".to_owned()]),
        "with the user values set"
    );
}
