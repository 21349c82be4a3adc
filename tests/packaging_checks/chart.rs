//! The Helm chart (`charts/compute-operator`) without a cluster: `helm lint --strict` for every values set, what
//! `helm template` renders for the defaults, namespaced scope, two replicas, every knob and the credential
//! choices (each rendering also passes `packaging_support::invariants`), and what NOTES.txt tells the user.
//!
//! Needs helm: `$HELM_BIN`, else the binary `bash tests/controlplane/build.sh helm` builds (same lookup rule);
//! FAILS (never skips) without it.

use crate::packaging_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use packaging_support::invariants::assert_invariants;
use packaging_support::rbac::*;
use packaging_support::*;
use serde_norway::Value;

fn chart_app_version() -> String {
    let chart: Value = serde_norway::from_str(&read("charts/compute-operator/Chart.yaml")).expect("Chart.yaml");
    str_at(&chart, &["appVersion"]).to_string()
}

// ---------------------------------------------------------------------------------------------------------------
// Helm chart
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn helm_lint_passes_for_every_values_set() {
    lint(&[]);
    lint(&["-f", "tests/packaging/values-namespaced.yaml"]);
    lint(&["--set", "replicas=2"]);
    lint(&["-f", "tests/packaging/values-full.yaml"]);
}

#[test]
fn helm_template_defaults_are_cluster_scoped_restricted_and_recreate() {
    // The chart turns leader election on by default (a paused replica then cannot act after a successor took
    // over): one lease Role and RoleBinding, and the setting in the Deployment.
    let defaults = template(&[]);
    assert_invariants(&defaults, "defaults");
    assert_eq!(
        env(&defaults)
            .get("COMPUTE_OPERATOR_LEADER_ELECTION")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(of_kind(&defaults, "Role").len(), 1, "the lease Role");
    let tenant_roles = of_kind(&defaults, "ClusterRole")
        .into_iter()
        .filter(|r| name(r).contains("-tenant-"))
        .count();
    assert_eq!(tenant_roles, 2, "tenant edit and view roles by default");
    // Everything else about the defaults, with leader election off.
    let docs = template(&["--set", "leaderElection.enabled=false"]);
    assert_invariants(&docs, "defaults without leader election");

    let kinds: BTreeSet<&str> = docs.iter().map(kind).collect();
    let expected: BTreeSet<&str> = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "NetworkPolicy",
    ]
    .into_iter()
    .collect();
    assert_eq!(kinds, expected, "objects rendered with default values");
    assert!(of_kind(&docs, "Role").is_empty() && of_kind(&docs, "RoleBinding").is_empty());

    let d = the(&docs, "Deployment");
    assert_eq!(name(d), "compute-operator");
    assert_eq!(s(d, &["spec", "replicas"]).and_then(Value::as_u64), Some(1));
    assert_eq!(str_at(d, &["spec", "strategy", "type"]), "Recreate");
    let c = container(&docs);
    assert_eq!(
        str_at(c, &["image"]),
        format!("ghcr.io/threatwinds/compute-operator:{}", chart_app_version())
    );
    assert_eq!(str_at(c, &["imagePullPolicy"]), "IfNotPresent");

    let e = env(&docs);
    let want = [
        ("COMPUTE_API_URL", "https://apis.threatwinds.com/api/compute/v1"),
        ("COMPUTE_API_RATE", "20"),
        ("COMPUTE_API_BURST", "40"),
        ("COMPUTE_API_MAX_IN_FLIGHT", "8"),
        ("COMPUTE_API_TIMEOUT", "10s"),
        ("COMPUTE_OPERATOR_CONCURRENCY", "16"),
        ("COMPUTE_OPERATOR_RESYNC_INTERVAL", "5m"),
        ("COMPUTE_OPERATOR_LEADER_ELECTION", "false"),
        ("COMPUTE_OPERATOR_METRICS_ADDR", "0.0.0.0:8080"),
        ("COMPUTE_OPERATOR_LOG_LEVEL", "info"),
        ("COMPUTE_OPERATOR_LOG_FORMAT", "json"),
        ("COMPUTE_OPERATOR_DRY_RUN", "false"),
        ("COMPUTE_OPERATOR_POLICY_MODE", "enforce"),
    ];
    for (k, v) in want {
        assert_eq!(e.get(k).map(String::as_str), Some(v), "env {k}");
    }
    assert!(
        !e.contains_key("COMPUTE_OPERATOR_NAMESPACES"),
        "all namespaces: no namespace list"
    );
    assert!(!e.contains_key("COMPUTE_OPERATOR_LEASE_NAME"));
    // Every env var the chart sets is part of the operator's contract (a typo would be silently ignored).
    let known: BTreeSet<&str> = [
        "COMPUTE_API_URL",
        "COMPUTE_API_RATE",
        "COMPUTE_API_BURST",
        "COMPUTE_API_MAX_IN_FLIGHT",
        "COMPUTE_API_TIMEOUT",
        "COMPUTE_OPERATOR_CONCURRENCY",
        "COMPUTE_OPERATOR_RESYNC_INTERVAL",
        "COMPUTE_OPERATOR_NAMESPACES",
        "COMPUTE_OPERATOR_LEADER_ELECTION",
        "COMPUTE_OPERATOR_LEASE_NAME",
        "COMPUTE_OPERATOR_LEASE_DURATION",
        "COMPUTE_OPERATOR_METRICS_ADDR",
        "COMPUTE_OPERATOR_LOG_LEVEL",
        "COMPUTE_OPERATOR_LOG_FORMAT",
        "COMPUTE_OPERATOR_DRY_RUN",
        "COMPUTE_OPERATOR_POLICY_MODE",
        "POD_NAMESPACE",
        "POD_NAME",
    ]
    .into_iter()
    .collect();
    for k in e.keys() {
        assert!(known.contains(k.as_str()), "env {k} is not an operator setting");
    }

    // The credentials Secret is expected, not created, with default values.
    assert!(
        of_kind(&docs, "Secret").is_empty(),
        "no Secret without credential values"
    );
    assert!(yaml(d).contains("secretName: compute-operator-credentials"));

    let cr = named(&docs, "ClusterRole", "compute-operator");
    assert_eq!(grants(cr), controller_grants());
    let policies = named(&docs, "ClusterRole", "compute-operator-policies");
    assert_eq!(
        grants(policies),
        policy_grants().union(&namespace_grants()).cloned().collect()
    );
    let svc = the(&docs, "Service");
    assert_eq!(str_at(svc, &["spec", "ports", "0", "name"]), "metrics");
    assert_eq!(
        s(svc, &["spec", "ports", "0", "port"]).and_then(Value::as_u64),
        Some(8080)
    );
    assert_eq!(str_at(svc, &["spec", "ports", "0", "targetPort"]), "metrics");
    assert_eq!(
        s(svc, &["spec", "selector"]),
        s(d, &["spec", "selector", "matchLabels"]),
        "the Service selects the operator's pods"
    );
    assert!(of_kind(&docs, "ServiceMonitor").is_empty());
    assert_eq!(
        str_at(the(&docs, "ServiceAccount"), &["metadata", "name"]),
        "compute-operator"
    );
}

#[test]
fn helm_template_namespaced_scope_uses_roles_in_each_watched_namespace_only() {
    let docs = template(&["-f", "tests/packaging/values-namespaced.yaml"]);
    assert_invariants(&docs, "namespaced");
    // Cluster-wide: only reading the (cluster-scoped) ComputeAccessPolicies, windows and budgets.
    for k in ["ClusterRole", "ClusterRoleBinding"] {
        let names: Vec<&str> = of_kind(&docs, k).into_iter().map(name).collect();
        assert_eq!(
            names,
            vec!["compute-operator-change-control", "compute-operator-policies"],
            "namespaced mode: no {k} but the change-control and policies' ones"
        );
    }
    assert_eq!(
        grants(named(&docs, "ClusterRole", "compute-operator-policies")),
        policy_grants(),
        "namespaced mode: no namespaces beyond the watched ones"
    );
    assert_eq!(
        grants(named(&docs, "ClusterRole", "compute-operator-change-control")),
        change_control_grants(),
        "namespaced mode: windows and budgets, no namespaces beyond the watched ones"
    );
    for kind_ in ["Role", "RoleBinding"] {
        let nss: BTreeSet<&str> = of_kind(&docs, kind_).iter().filter_map(|r| namespace(r)).collect();
        assert_eq!(
            nss,
            ["team-a", "team-b"].into_iter().collect(),
            "{kind_} per watched namespace"
        );
    }
    for role in of_kind(&docs, "Role") {
        assert_eq!(
            grants(role),
            controller_grants()
                .union(&grant_set(&[("", "namespaces", &["get"])]))
                .cloned()
                .collect(),
            "Role in {:?}",
            namespace(role)
        );
    }

    // Policies off: cluster-wide only the change-control reads; the Roles as with policies (windows select
    // namespaces by label too).
    let docs = template(&[
        "-f",
        "tests/packaging/values-namespaced.yaml",
        "--set",
        "policyMode=off",
    ]);
    assert_invariants(&docs, "namespaced, policies off");
    let names: Vec<&str> = of_kind(&docs, "ClusterRole").into_iter().map(name).collect();
    assert_eq!(names, ["compute-operator-change-control"]);
    assert_eq!(of_kind(&docs, "ClusterRoleBinding").len(), 1);
    for role in of_kind(&docs, "Role") {
        assert_eq!(
            grants(role),
            controller_grants()
                .union(&grant_set(&[("", "namespaces", &["get"])]))
                .cloned()
                .collect()
        );
    }
    let e = env(&docs);
    assert_eq!(e["COMPUTE_OPERATOR_NAMESPACES"], "team-a,team-b");
    assert_eq!(e["COMPUTE_OPERATOR_LEADER_ELECTION"], "false");
    assert_eq!(
        str_at(the(&docs, "Deployment"), &["spec", "strategy", "type"]),
        "Recreate"
    );

    // With leader election on top: one more Role, for leases, in the operator's namespace only.
    let docs = template(&["-f", "tests/packaging/values-namespaced.yaml", "--set", "replicas=2"]);
    assert_invariants(&docs, "namespaced, 2 replicas");
    assert_eq!(
        of_kind(&docs, "ClusterRole").len(),
        2,
        "only the change-control and policies' ones"
    );
    let lease_role = of_kind(&docs, "Role")
        .into_iter()
        .find(|r| name(r).ends_with("-leader-election"))
        .expect("lease Role");
    assert_eq!(namespace(lease_role), Some(NAMESPACE));
}

#[test]
fn helm_template_two_replicas_force_leader_election() {
    let docs = template(&["--set", "replicas=2"]);
    assert_invariants(&docs, "2 replicas");
    let d = the(&docs, "Deployment");
    assert_eq!(s(d, &["spec", "replicas"]).and_then(Value::as_u64), Some(2));
    assert_eq!(str_at(d, &["spec", "strategy", "type"]), "RollingUpdate");
    let e = env(&docs);
    assert_eq!(
        e["COMPUTE_OPERATOR_LEADER_ELECTION"], "true",
        "replicas > 1 turns leader election on"
    );
    assert_eq!(e["COMPUTE_OPERATOR_LEASE_NAME"], "compute-operator");
    assert_eq!(e["COMPUTE_OPERATOR_LEASE_DURATION"], "15s");

    // The lease Role: create (cannot be limited by name) and get/update of the operator's own Lease only.
    let role = the(&docs, "Role");
    assert_eq!(name(role), "compute-operator-leader-election");
    assert_eq!(namespace(role), Some(NAMESPACE));
    for rule in s(role, &["rules"]).and_then(Value::as_sequence).unwrap() {
        let verbs = strings(s(rule, &["verbs"]));
        if verbs.iter().any(|v| v != "create") {
            assert_eq!(
                strings(s(rule, &["resourceNames"])),
                vec!["compute-operator".to_string()],
                "get/update by name"
            );
        }
    }
    let rb = the(&docs, "RoleBinding");
    assert_eq!(str_at(rb, &["roleRef", "name"]), "compute-operator-leader-election");
    assert!(
        !grants(named(&docs, "ClusterRole", "compute-operator"))
            .iter()
            .any(|(_, r, _)| r == "leases"),
        "no cluster-wide leases"
    );

    // Explicitly enabled with one replica: same RBAC, rolling updates.
    let docs = template(&["--set", "leaderElection.enabled=true"]);
    assert_invariants(&docs, "leader election, 1 replica");
    assert_eq!(
        str_at(the(&docs, "Deployment"), &["spec", "strategy", "type"]),
        "RollingUpdate"
    );
    assert_eq!(env(&docs)["COMPUTE_OPERATOR_LEADER_ELECTION"], "true");

    // Explicitly disabled with two replicas: still forced on.
    let docs = template(&["--set", "replicas=2", "--set", "leaderElection.enabled=false"]);
    assert_eq!(env(&docs)["COMPUTE_OPERATOR_LEADER_ELECTION"], "true");
}

#[test]
fn helm_template_full_values_set_every_knob() {
    let docs = template(&["-f", "tests/packaging/values-full.yaml"]);
    assert_invariants(&docs, "full values");
    let d = the(&docs, "Deployment");
    let pod = s(d, &["spec", "template", "spec"]).unwrap();
    let c = container(&docs);
    assert_eq!(
        str_at(c, &["image"]),
        "registry.example.com/mirror/compute-operator:0.1.0-rc.1"
    );
    assert_eq!(str_at(c, &["imagePullPolicy"]), "Always");
    assert_eq!(str_at(pod, &["imagePullSecrets", "0", "name"]), "registry-credentials");
    assert_eq!(str_at(pod, &["serviceAccountName"]), "compute-operator-prod");
    assert_eq!(str_at(pod, &["priorityClassName"]), "system-cluster-critical");
    assert_eq!(str_at(pod, &["nodeSelector", "kubernetes.io/os"]), "linux");
    assert_eq!(str_at(pod, &["tolerations", "0", "key"]), "dedicated");
    assert!(s(pod, &["affinity", "podAntiAffinity"]).is_some());
    assert_eq!(
        str_at(d, &["spec", "template", "metadata", "annotations", "example.com/team"]),
        "platform"
    );
    assert_eq!(
        str_at(d, &["spec", "template", "metadata", "labels", "example.com/tier"]),
        "control"
    );
    assert_eq!(str_at(c, &["resources", "limits", "memory"]), "128Mi");
    let e = env(&docs);
    for (k, v) in [
        (
            "COMPUTE_API_URL",
            "http://compute-api.compute-sim.svc:8080/api/compute/v1",
        ),
        ("COMPUTE_API_RATE", "2.5"),
        ("COMPUTE_API_BURST", "5"),
        ("COMPUTE_API_MAX_IN_FLIGHT", "2"),
        ("COMPUTE_API_TIMEOUT", "30s"),
        ("COMPUTE_OPERATOR_CONCURRENCY", "4"),
        ("COMPUTE_OPERATOR_RESYNC_INTERVAL", "1h 30m"),
        ("COMPUTE_OPERATOR_NAMESPACES", "prod"),
        ("COMPUTE_OPERATOR_LEADER_ELECTION", "true"),
        ("COMPUTE_OPERATOR_LEASE_NAME", "compute-operator-prod"),
        ("COMPUTE_OPERATOR_LEASE_DURATION", "30s"),
        ("COMPUTE_OPERATOR_METRICS_ADDR", "0.0.0.0:9090"),
        ("COMPUTE_OPERATOR_LOG_LEVEL", "info,compute_operator=debug"),
        ("COMPUTE_OPERATOR_LOG_FORMAT", "text"),
        ("COMPUTE_OPERATOR_DRY_RUN", "true"),
        ("COMPUTE_OPERATOR_POLICY_MODE", "off"),
        ("HTTPS_PROXY", "http://proxy.example.com:3128"),
    ] {
        assert_eq!(e.get(k).map(String::as_str), Some(v), "env {k}");
    }
    assert_eq!(s(d, &["spec", "replicas"]).and_then(Value::as_u64), Some(3));
    let sa = the(&docs, "ServiceAccount");
    assert_eq!(name(sa), "compute-operator-prod");
    assert_eq!(
        str_at(sa, &["metadata", "annotations", "example.com/owner"]),
        "platform"
    );

    // apiKey + apiSecret become a chart-made Secret, mounted as files.
    let secret = the(&docs, "Secret");
    assert_eq!(name(secret), "compute-operator-credentials");
    let keys: BTreeSet<&str> = s(secret, &["data"])
        .and_then(Value::as_mapping)
        .unwrap()
        .keys()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(keys, ["api-key", "api-secret"].into_iter().collect());
    assert_eq!(str_at(secret, &["data", "api-key"]), "dGVzdC1rZXk="); // "test-key"

    let lease_role = of_kind(&docs, "Role")
        .into_iter()
        .find(|r| name(r).ends_with("-leader-election"))
        .unwrap();
    assert!(
        yaml(lease_role).contains("compute-operator-prod"),
        "lease Role limited to the configured lease name"
    );

    let svc = the(&docs, "Service");
    assert_eq!(
        s(svc, &["spec", "ports", "0", "port"]).and_then(Value::as_u64),
        Some(9090)
    );
    let sm = the(&docs, "ServiceMonitor");
    assert_eq!(str_at(sm, &["metadata", "labels", "release"]), "kube-prometheus-stack");
    assert_eq!(str_at(sm, &["spec", "endpoints", "0", "port"]), "metrics");
    assert_eq!(str_at(sm, &["spec", "endpoints", "0", "path"]), "/metrics");
    assert_eq!(str_at(sm, &["spec", "endpoints", "0", "interval"]), "15s");
    let svc_labels = s(svc, &["metadata", "labels"]).and_then(Value::as_mapping).unwrap();
    for (k, v) in s(sm, &["spec", "selector", "matchLabels"])
        .and_then(Value::as_mapping)
        .unwrap()
    {
        assert_eq!(
            svc_labels.get(k),
            Some(v),
            "the ServiceMonitor selects the metrics Service"
        );
    }
}

#[test]
fn helm_template_credentials_token_existing_secret_and_errors() {
    // A token value becomes a Secret with the key `token`, mounted as a file.
    let docs = template(&["--set", "credentials.token=s3cr3t-token"]);
    assert_invariants(&docs, "token");
    let secret = the(&docs, "Secret");
    assert_eq!(name(secret), "compute-operator-credentials");
    assert_eq!(str_at(secret, &["data", "token"]), "czNjcjN0LXRva2Vu");
    assert!(
        !yaml(the(&docs, "Deployment")).contains("s3cr3t-token"),
        "the token never appears in the Deployment"
    );

    // An existing Secret is mounted, not created.
    let docs = template(&["--set", "credentials.existingSecret=my-compute-credentials"]);
    assert_invariants(&docs, "existingSecret");
    assert!(of_kind(&docs, "Secret").is_empty());
    assert!(yaml(the(&docs, "Deployment")).contains("secretName: my-compute-credentials"));

    // Contradicting or incomplete settings fail with a message, and typos are caught by the schema.
    for (args, needle) in [
        (
            vec![
                "--set",
                "credentials.token=a",
                "--set",
                "credentials.apiKey=b",
                "--set",
                "credentials.apiSecret=c",
            ],
            "not both",
        ),
        (
            vec!["--set", "credentials.existingSecret=x", "--set", "credentials.token=a"],
            "not both",
        ),
        (vec!["--set", "credentials.apiKey=b"], "together"),
        (vec!["--set", "replicaCount=2"], "replicaCount"),
        (vec!["--set", "logFormat=xml"], "logFormat"),
        (vec!["--set", "policyMode=audit"], "policyMode"),
        (vec!["--set", "api.timeout=10"], "timeout"),
        (vec!["--set", "watchNamespaces={a,a}"], "twice"),
    ] {
        match try_template(&args) {
            Ok(_) => panic!("helm template {args:?} should fail"),
            Err(e) => assert!(
                e.contains(needle),
                "helm template {args:?}: error should mention {needle:?}:\n{e}"
            ),
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let p = entry.expect("dir entry").path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).expect("copy");
        }
    }
}

/// NOTES.txt as rendered for `args`. `helm install --dry-run` needs a reachable cluster, so the test renders a
/// copy of the chart in which NOTES.txt is a named template emitted into a ConfigMap by `helm template`.
fn notes(args: &[&str]) -> String {
    let tmp = TempDir::new("notes");
    let chart = tmp.0.join("compute-operator");
    copy_dir(&root().join("charts/compute-operator"), &chart);
    let text = std::fs::read_to_string(chart.join("templates/NOTES.txt")).expect("templates/NOTES.txt");
    std::fs::remove_file(chart.join("templates/NOTES.txt")).unwrap();
    std::fs::write(
        chart.join("templates/_notes_under_test.tpl"),
        format!("{{{{- define \"notes-under-test\" -}}}}\n{text}\n{{{{- end }}}}\n"),
    )
    .unwrap();
    std::fs::write(
        chart.join("templates/notes-under-test.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-under-test\ndata:\n  notes: {{ include \"notes-under-test\" . | quote }}\n",
    )
    .unwrap();
    let chart_arg = chart.to_string_lossy().into_owned();
    let out = run(Command::new(helm())
        .args([
            "template",
            RELEASE,
            &chart_arg,
            "--namespace",
            NAMESPACE,
            "--show-only",
            "templates/notes-under-test.yaml",
        ])
        .args(args));
    assert!(
        out.status.success(),
        "rendering NOTES.txt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = parse_stream(&String::from_utf8_lossy(&out.stdout));
    str_at(&docs[0], &["data", "notes"]).to_string()
}

#[test]
fn helm_notes_explain_the_first_computeinstanceaction() {
    let text = notes(&[]);
    for needle in [
        "kind: ComputeInstanceAction",
        "apiVersion: compute.threatwinds.com/v1alpha1",
        "kubectl -n default get cia -w",
        "kubectl -n default wait --for=condition=Ready cia/stop-my-instance",
        "create secret generic compute-operator-credentials",
    ] {
        assert!(text.contains(needle), "NOTES should contain {needle:?}:\n{text}");
    }
    // Namespaced scope: the example goes to a watched namespace; a chart-made Secret needs no instructions.
    let text = notes(&[
        "-f",
        "tests/packaging/values-namespaced.yaml",
        "--set",
        "credentials.token=x",
    ]);
    assert!(text.contains("kubectl -n team-a get cia -w"), "{text}");
    assert!(!text.contains("create secret generic"), "{text}");
}
