//! Static checks of everything that ships the operator, without a cluster: the Helm chart
//! (`charts/compute-operator`), the plain manifests generated from it (`deploy/base`), the examples, the Argo CD
//! health check and the image's Dockerfile.
//!
//! Needs two tools and FAILS (never skips) without them:
//! - helm: `$HELM_BIN`, else the binary `bash tests/controlplane/build.sh helm` builds (same lookup rule);
//! - Lua 5.4: `$LUA_BIN`, else `lua5.4` on PATH (`apt-get install -y lua5.4`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize as _;
use serde_json::json;
use serde_yaml::Value;

const RELEASE: &str = "compute-operator";
const NAMESPACE: &str = "compute-operator";
const CREDENTIALS_DIR: &str = "/etc/compute-operator/credentials";
const CRD_SOURCE: &str = "crds/computeinstanceactions.yaml";
const CRD_IN_CHART: &str = "charts/compute-operator/crds/computeinstanceactions.yaml";
const DEMO_INSTANCES: [&str; 4] = ["inst-demo0001", "inst-demo0002", "inst-demo0003", "inst-demo0004"];

// ---------------------------------------------------------------------------------------------------------------
// Tools and helpers
// ---------------------------------------------------------------------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// helm, located like tests/controlplane/build.sh places it (or `$HELM_BIN`).
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(bin) = std::env::var_os("HELM_BIN").filter(|v| !v.is_empty()) {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "HELM_BIN={} does not exist", bin.display());
            return bin;
        }
        let out = Command::new("bash")
            .arg(root().join("tests/controlplane/build.sh"))
            .arg("--print-dir")
            .output()
            .expect("cannot run tests/controlplane/build.sh --print-dir");
        assert!(
            out.status.success(),
            "tests/controlplane/build.sh --print-dir failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let version = std::env::var("HELM_VERSION").unwrap_or_else(|_| "v3.22.0".to_string());
        let bin = Path::new(&dir).join(format!("helm-{version}")).join("helm");
        assert!(
            bin.is_file(),
            "helm is not installed at {}: run `bash tests/controlplane/build.sh helm` (or set HELM_BIN)",
            bin.display()
        );
        bin
    })
}

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

fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A temporary directory removed on drop (std only).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("compute-operator-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `helm template` of the chart as release `compute-operator` in namespace `compute-operator`.
fn try_template(args: &[&str]) -> Result<Vec<Value>, String> {
    let out = run(Command::new(helm())
        .args(["template", RELEASE, "charts/compute-operator", "--namespace", NAMESPACE])
        .args(args));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(parse_stream(&text))
}

fn template(args: &[&str]) -> Vec<Value> {
    try_template(args).unwrap_or_else(|e| panic!("helm template {args:?} failed:\n{e}"))
}

fn parse_stream(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{text}"));
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

fn lint(args: &[&str]) {
    let out = run(Command::new(helm())
        .args(["lint", "charts/compute-operator", "--strict"])
        .args(args));
    assert!(
        out.status.success(),
        "helm lint --strict {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in path {
        cur = match key.parse::<usize>() {
            Ok(i) if cur.is_sequence() => cur.get(i)?,
            _ => cur.get(*key)?,
        };
    }
    Some(cur)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    s(v, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {path:?} in\n{}", yaml(v)))
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap_or_default()
}

fn kind(v: &Value) -> &str {
    s(v, &["kind"]).and_then(Value::as_str).unwrap_or("")
}

fn name(v: &Value) -> &str {
    s(v, &["metadata", "name"]).and_then(Value::as_str).unwrap_or("")
}

fn namespace(v: &Value) -> Option<&str> {
    s(v, &["metadata", "namespace"]).and_then(Value::as_str)
}

fn of_kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == k).collect()
}

fn the<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = of_kind(docs, k);
    assert_eq!(found.len(), 1, "expected exactly one {k}, found {}", found.len());
    found[0]
}

fn named<'a>(docs: &'a [Value], k: &str, n: &str) -> &'a Value {
    of_kind(docs, k)
        .into_iter()
        .find(|d| name(d) == n)
        .unwrap_or_else(|| panic!("no {k} {n}"))
}

fn container(docs: &[Value]) -> &Value {
    let d = the(docs, "Deployment");
    let cs = s(d, &["spec", "template", "spec", "containers"])
        .and_then(Value::as_sequence)
        .expect("containers");
    assert_eq!(cs.len(), 1, "the operator pod has one container");
    &cs[0]
}

/// The container's plain env values (name -> value); entries with valueFrom map to "<valueFrom>".
fn env(docs: &[Value]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for e in s(container(docs), &["env"])
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default()
    {
        let n = str_at(&e, &["name"]).to_string();
        let v = match s(&e, &["value"]) {
            Some(v) => v
                .as_str()
                .unwrap_or_else(|| panic!("env {n} is not a string: {v:?}"))
                .to_string(),
            None => "<valueFrom>".to_string(),
        };
        assert!(m.insert(n.clone(), v).is_none(), "env {n} set twice");
    }
    m
}

type Grant = (String, String, String); // (apiGroup, resource, verb)

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|seq| {
            seq.iter()
                .map(|x| x.as_str().expect("RBAC list entries are strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut set = BTreeSet::new();
    for rule in s(role, &["rules"])
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default()
    {
        assert!(
            s(&rule, &["nonResourceURLs"]).is_none(),
            "{} has nonResourceURLs",
            name(role)
        );
        for g in strings(s(&rule, &["apiGroups"])) {
            for r in strings(s(&rule, &["resources"])) {
                for v in strings(s(&rule, &["verbs"])) {
                    set.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    set
}

fn grant_set(list: &[(&str, &str, &[&str])]) -> BTreeSet<Grant> {
    let mut set = BTreeSet::new();
    for (g, r, verbs) in list {
        for v in *verbs {
            set.insert((g.to_string(), r.to_string(), v.to_string()));
        }
    }
    set
}

/// What the controller needs in every namespace it watches, exactly.
fn controller_grants() -> BTreeSet<Grant> {
    grant_set(&[
        (
            "compute.threatwinds.com",
            "computeinstanceactions",
            // create/delete/patch: the fleet controller's children.
            &["get", "list", "watch", "create", "delete", "patch"],
        ),
        (
            "compute.threatwinds.com",
            "computeinstanceactions/status",
            &["patch", "update"],
        ),
        (
            "compute.threatwinds.com",
            "computefleetactions",
            // create/delete/patch: the schedule controller's children.
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        (
            "compute.threatwinds.com",
            "computefleetactions/status",
            &["patch", "update"],
        ),
        (
            "compute.threatwinds.com",
            "computepowerschedules",
            &["get", "list", "watch"],
        ),
        (
            "compute.threatwinds.com",
            "computepowerschedules/status",
            &["patch", "update"],
        ),
        ("compute.threatwinds.com", "computefleetactions/finalizers", &["update"]),
        (
            "compute.threatwinds.com",
            "computepowerschedules/finalizers",
            &["update"],
        ),
        ("events.k8s.io", "events", &["create", "patch"]),
        ("", "events", &["create", "patch"]),
    ])
}

/// With `policyMode: enforce`: read the cluster-scoped ComputeAccessPolicies.
fn policy_grants() -> BTreeSet<Grant> {
    grant_set(&[(
        "compute.threatwinds.com",
        "computeaccesspolicies",
        &["get", "list", "watch"],
    )])
}

/// With `policyMode: enforce`: watch namespace labels (policies select namespaces by label).
fn namespace_grants() -> BTreeSet<Grant> {
    grant_set(&[("", "namespaces", &["get", "list", "watch"])])
}

fn lease_grants() -> BTreeSet<Grant> {
    grant_set(&[("coordination.k8s.io", "leases", &["create", "get", "update"])])
}

/// Checks that hold for every rendering: least-privilege RBAC, the restricted pod, credentials as files only.
fn assert_invariants(docs: &[Value], what: &str) {
    // RBAC: no wildcards, no Secrets, nothing beyond the contract, leases only in the release namespace's Role.
    let leader = env(docs)
        .get("COMPUTE_OPERATOR_LEADER_ELECTION")
        .cloned()
        .unwrap_or_default()
        == "true";
    let enforce = env(docs)
        .get("COMPUTE_OPERATOR_POLICY_MODE")
        .is_some_and(|m| m == "enforce");
    let cluster_wide = !env(docs).contains_key("COMPUTE_OPERATOR_NAMESPACES");
    let mut policy_roles = 0;
    let mut lease_roles = 0;
    let mut tenant_roles = 0;
    for role in docs.iter().filter(|d| kind(d) == "Role" || kind(d) == "ClusterRole") {
        for rule in s(role, &["rules"])
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default()
        {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                for x in strings(s(&rule, &[field])) {
                    assert!(
                        !x.contains('*'),
                        "{what}: {} {} has a wildcard in {field}: {x}",
                        kind(role),
                        name(role)
                    );
                    assert!(
                        x != "secrets",
                        "{what}: {} {} grants access to secrets",
                        kind(role),
                        name(role)
                    );
                }
            }
        }
        let g = grants(role);
        let has_leases = g.iter().any(|(_, r, _)| r.starts_with("leases"));
        if has_leases {
            assert_eq!(
                kind(role),
                "Role",
                "{what}: leases may only be granted by a namespaced Role"
            );
            assert_eq!(
                namespace(role),
                Some(NAMESPACE),
                "{what}: leases only in the operator's own namespace"
            );
            assert!(leader, "{what}: lease permissions although leader election is off");
            assert_eq!(
                g,
                lease_grants(),
                "{what}: the leader election Role grants exactly get/create/update on leases"
            );
            lease_roles += 1;
        } else if name(role).ends_with("-tenant-edit") || name(role).ends_with("-tenant-view") {
            // Aggregated into the built-in roles; never the status subresource, never bound to the operator.
            assert_eq!(kind(role), "ClusterRole", "{what}: tenant roles aggregate cluster-wide");
            let labels = s(role, &["metadata", "labels"]).cloned().unwrap_or_default();
            let aggregates = |to: &str| {
                labels
                    .get(format!("rbac.authorization.k8s.io/aggregate-to-{to}"))
                    .and_then(Value::as_str)
                    == Some("true")
            };
            let edit = name(role).ends_with("-tenant-edit");
            assert!(
                if edit {
                    aggregates("edit") && aggregates("admin")
                } else {
                    aggregates("view")
                },
                "{what}: {}",
                name(role)
            );
            assert!(
                g.iter().all(|(_, r, _)| !r.contains('/')),
                "{what}: tenants never get a subresource (no status writes): {g:?}"
            );
            tenant_roles += 1;
        } else if name(role).ends_with("-policies") {
            assert_eq!(kind(role), "ClusterRole", "{what}: policies are cluster-scoped");
            assert!(enforce, "{what}: policy permissions although policies are off");
            let mut want = policy_grants();
            if cluster_wide {
                want.extend(namespace_grants());
            }
            assert_eq!(g, want, "{what}: the policies ClusterRole is read-only");
            policy_roles += 1;
        } else {
            let mut want = controller_grants();
            if enforce && kind(role) == "Role" {
                // A Role can grant `get` of its own namespace, never a list or watch of namespaces.
                want.extend(grant_set(&[("", "namespaces", &["get"])]));
                // Only the labels of the namespace the Role lives in.
                for rule in s(role, &["rules"]).and_then(Value::as_sequence).unwrap() {
                    if strings(s(rule, &["resources"])) == ["namespaces"] {
                        assert_eq!(
                            strings(s(rule, &["resourceNames"])),
                            vec![namespace(role).unwrap_or_default().to_string()],
                            "{what}: Role in {:?} reads its own namespace only",
                            namespace(role)
                        );
                    }
                }
            }
            assert_eq!(
                g,
                want,
                "{what}: {} {} grants other than the controller needs",
                kind(role),
                name(role)
            );
        }
    }
    assert_eq!(
        policy_roles,
        usize::from(enforce),
        "{what}: one policies ClusterRole exactly when policies are enforced"
    );
    assert_eq!(
        lease_roles,
        usize::from(leader),
        "{what}: one lease Role exactly when leader election is on"
    );
    assert!(
        tenant_roles == 0 || tenant_roles == 2,
        "{what}: the aggregated tenant edit and view roles come as a pair ({tenant_roles})"
    );

    // Every binding binds a role rendered here to the operator's ServiceAccount.
    let sa = str_at(
        the(docs, "Deployment"),
        &["spec", "template", "spec", "serviceAccountName"],
    )
    .to_string();
    for b in docs
        .iter()
        .filter(|d| kind(d) == "RoleBinding" || kind(d) == "ClusterRoleBinding")
    {
        let role_kind = if kind(b) == "RoleBinding" {
            "Role"
        } else {
            "ClusterRole"
        };
        assert_eq!(
            str_at(b, &["roleRef", "kind"]),
            role_kind,
            "{what}: {} {}",
            kind(b),
            name(b)
        );
        let role_name = str_at(b, &["roleRef", "name"]);
        assert!(
            docs.iter()
                .any(|r| kind(r) == role_kind && name(r) == role_name && namespace(r) == namespace(b)),
            "{what}: {} {} refers to a {role_kind} {role_name} that is not rendered",
            kind(b),
            name(b)
        );
        let subjects = s(b, &["subjects"]).and_then(Value::as_sequence).expect("subjects");
        assert_eq!(subjects.len(), 1, "{what}: one subject");
        assert_eq!(str_at(&subjects[0], &["kind"]), "ServiceAccount");
        assert_eq!(str_at(&subjects[0], &["name"]), sa);
        assert_eq!(str_at(&subjects[0], &["namespace"]), NAMESPACE);
    }
    assert!(
        docs.iter().all(|d| kind(d) != "Role"
            || name(d).ends_with("-leader-election")
            || of_kind(docs, "ClusterRole")
                .iter()
                .all(|r| name(r).ends_with("-policies") || name(r).contains("-tenant-"))),
        "{what}: ClusterRole and per-namespace Roles are exclusive (the tenants' aggregated roles aside)"
    );

    // The restricted Pod Security Standard.
    let d = the(docs, "Deployment");
    let pod = s(d, &["spec", "template", "spec"]).expect("pod spec");
    assert_eq!(
        s(pod, &["automountServiceAccountToken"]).and_then(Value::as_bool),
        Some(true),
        "{what}: automountServiceAccountToken"
    );
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(s(pod, &[host]).and_then(Value::as_bool), Some(true), "{what}: {host}");
    }
    let psc = s(pod, &["securityContext"]).expect("pod securityContext");
    assert_eq!(
        s(psc, &["runAsNonRoot"]).and_then(Value::as_bool),
        Some(true),
        "{what}: pod runAsNonRoot"
    );
    assert_eq!(
        s(psc, &["runAsUser"]).and_then(Value::as_u64),
        Some(65532),
        "{what}: pod runAsUser"
    );
    assert_eq!(
        str_at(psc, &["seccompProfile", "type"]),
        "RuntimeDefault",
        "{what}: pod seccomp"
    );
    let c = container(docs);
    let csc = s(c, &["securityContext"]).expect("container securityContext");
    assert_eq!(
        s(csc, &["runAsNonRoot"]).and_then(Value::as_bool),
        Some(true),
        "{what}: runAsNonRoot"
    );
    assert_eq!(
        s(csc, &["runAsUser"]).and_then(Value::as_u64),
        Some(65532),
        "{what}: runAsUser"
    );
    assert_eq!(
        s(csc, &["readOnlyRootFilesystem"]).and_then(Value::as_bool),
        Some(true),
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        s(csc, &["allowPrivilegeEscalation"]).and_then(Value::as_bool),
        Some(false),
        "{what}: allowPrivilegeEscalation"
    );
    assert_ne!(
        s(csc, &["privileged"]).and_then(Value::as_bool),
        Some(true),
        "{what}: privileged"
    );
    assert_eq!(
        strings(s(csc, &["capabilities", "drop"])),
        vec!["ALL".to_string()],
        "{what}: capabilities drop ALL"
    );
    assert!(
        s(csc, &["capabilities", "add"]).is_none(),
        "{what}: no capabilities added"
    );
    assert_eq!(
        str_at(csc, &["seccompProfile", "type"]),
        "RuntimeDefault",
        "{what}: container seccomp"
    );
    for v in s(pod, &["volumes"])
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default()
    {
        assert!(s(&v, &["hostPath"]).is_none(), "{what}: hostPath volume");
    }

    // Probes on the metrics port, which is where the operator serves.
    let port = s(c, &["ports", "0"]).expect("a container port");
    assert_eq!(str_at(port, &["name"]), "metrics");
    let port_no = s(port, &["containerPort"])
        .and_then(Value::as_u64)
        .expect("containerPort");
    assert_eq!(
        env(docs)["COMPUTE_OPERATOR_METRICS_ADDR"],
        format!("0.0.0.0:{port_no}"),
        "{what}: metrics address"
    );
    assert_eq!(
        str_at(c, &["livenessProbe", "httpGet", "path"]),
        "/healthz",
        "{what}: liveness"
    );
    assert_eq!(
        str_at(c, &["livenessProbe", "httpGet", "port"]),
        "metrics",
        "{what}: liveness port"
    );
    assert_eq!(
        str_at(c, &["readinessProbe", "httpGet", "path"]),
        "/readyz",
        "{what}: readiness"
    );
    assert_eq!(
        str_at(c, &["readinessProbe", "httpGet", "port"]),
        "metrics",
        "{what}: readiness port"
    );

    // Strategy: Recreate unless leader election is on.
    let strategy = str_at(d, &["spec", "strategy", "type"]);
    if leader {
        assert_eq!(strategy, "RollingUpdate", "{what}: strategy with leader election");
    } else {
        assert_eq!(
            strategy, "Recreate",
            "{what}: two controllers must not overlap without leader election"
        );
    }

    // Credentials: a mounted Secret passed as --credentials-dir, never env vars or flags.
    assert_eq!(
        strings(s(c, &["args"])),
        vec!["run".to_string(), format!("--credentials-dir={CREDENTIALS_DIR}")],
        "{what}: args"
    );
    assert!(s(c, &["command"]).is_none(), "{what}: the image's entrypoint is used");
    let e = env(docs);
    for secret_env in ["COMPUTE_API_TOKEN", "COMPUTE_API_KEY", "COMPUTE_API_SECRET"] {
        assert!(
            !e.contains_key(secret_env),
            "{what}: {secret_env} must not be set; credentials come from files"
        );
    }
    assert!(!yaml(d).contains("secretKeyRef"), "{what}: no Secret in env");
    assert_eq!(e["POD_NAMESPACE"], "<valueFrom>");
    let pod_ns = s(c, &["env"])
        .and_then(Value::as_sequence)
        .unwrap()
        .iter()
        .find(|x| str_at(x, &["name"]) == "POD_NAMESPACE")
        .unwrap();
    assert_eq!(
        str_at(pod_ns, &["valueFrom", "fieldRef", "fieldPath"]),
        "metadata.namespace"
    );
    let mount = s(c, &["volumeMounts"])
        .and_then(Value::as_sequence)
        .and_then(|m| m.iter().find(|m| str_at(m, &["mountPath"]) == CREDENTIALS_DIR))
        .unwrap_or_else(|| panic!("{what}: nothing mounted at {CREDENTIALS_DIR}"));
    assert_eq!(
        s(mount, &["readOnly"]).and_then(Value::as_bool),
        Some(true),
        "{what}: credentials mounted read-only"
    );
    let vol_name = str_at(mount, &["name"]);
    let vol = s(pod, &["volumes"])
        .and_then(Value::as_sequence)
        .and_then(|vs| vs.iter().find(|v| str_at(v, &["name"]) == vol_name))
        .expect("credentials volume");
    assert!(
        s(vol, &["secret", "secretName"]).is_some(),
        "{what}: credentials volume is a Secret"
    );

    // Namespaced objects live in the release namespace (or a watched namespace for Roles).
    for obj in docs {
        match kind(obj) {
            "ClusterRole" | "ClusterRoleBinding" => assert!(namespace(obj).is_none()),
            "Role" | "RoleBinding" => assert!(
                namespace(obj).is_some(),
                "{what}: {} {} has no namespace",
                kind(obj),
                name(obj)
            ),
            _ => assert_eq!(
                namespace(obj),
                Some(NAMESPACE),
                "{what}: {} {} namespace",
                kind(obj),
                name(obj)
            ),
        }
    }
}

fn chart_app_version() -> String {
    let chart: Value = serde_yaml::from_str(&read("charts/compute-operator/Chart.yaml")).expect("Chart.yaml");
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
    // Cluster-wide: only reading the (cluster-scoped) ComputeAccessPolicies.
    for k in ["ClusterRole", "ClusterRoleBinding"] {
        let names: Vec<&str> = of_kind(&docs, k).into_iter().map(name).collect();
        assert_eq!(
            names,
            vec!["compute-operator-policies"],
            "namespaced mode: no {k} but the policies' one"
        );
    }
    assert_eq!(
        grants(the(&docs, "ClusterRole")),
        policy_grants(),
        "namespaced mode: no namespaces beyond the watched ones"
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

    // Policies off: no cluster-wide permission at all, nothing beyond the controller's in the Roles.
    let docs = template(&[
        "-f",
        "tests/packaging/values-namespaced.yaml",
        "--set",
        "policyMode=off",
    ]);
    assert_invariants(&docs, "namespaced, policies off");
    assert!(of_kind(&docs, "ClusterRole").is_empty());
    assert!(of_kind(&docs, "ClusterRoleBinding").is_empty());
    for role in of_kind(&docs, "Role") {
        assert_eq!(grants(role), controller_grants());
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
    assert_eq!(of_kind(&docs, "ClusterRole").len(), 1, "only the policies' one");
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

// ---------------------------------------------------------------------------------------------------------------
// CRD copy and deploy/
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn chart_crd_is_byte_identical_to_crds_dir() {
    let src = root().join(CRD_SOURCE);
    let copy = root().join(CRD_IN_CHART);
    assert!(
        src.is_file(),
        "{CRD_SOURCE} does not exist yet (it is generated from the Rust types); then run: cp crds/computeinstanceactions.yaml charts/compute-operator/crds/"
    );
    let a = std::fs::read(&src).expect("read crds/ CRD");
    let b = std::fs::read(&copy).unwrap_or_else(|_| {
        panic!("{CRD_IN_CHART} is missing; run: cp crds/computeinstanceactions.yaml charts/compute-operator/crds/")
    });
    assert!(
        a == b,
        "{CRD_IN_CHART} differs from {CRD_SOURCE}; run: cp crds/computeinstanceactions.yaml charts/compute-operator/crds/"
    );
    let crd: Value = serde_yaml::from_slice(&a).expect("the CRD is YAML");
    assert_eq!(
        str_at(&crd, &["metadata", "name"]),
        "computeinstanceactions.compute.threatwinds.com"
    );
}

/// All files below `dir`, relative, with their bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
        let p = entry.expect("dir entry").path();
        if p.is_file() {
            m.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).expect("read"),
            );
        }
    }
    m
}

#[test]
fn deploy_base_is_what_render_deploy_sh_produces() {
    let tmp = TempDir::new("render");
    let out = run(Command::new("bash")
        .arg("tests/packaging/render-deploy.sh")
        .arg(&tmp.0)
        .env("HELM_BIN", helm()));
    assert!(
        out.status.success(),
        "tests/packaging/render-deploy.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let fix = "deploy/ is stale: run tests/packaging/render-deploy.sh";
    let want = files(&tmp.0.join("base"));
    let have = files(&root().join("deploy/base"));
    assert_eq!(
        have.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "files in deploy/base; {fix}"
    );
    for (f, bytes) in &want {
        assert!(
            have[f] == *bytes,
            "deploy/base/{f} differs from the chart's rendering; {fix}"
        );
    }
    let patch = std::fs::read(tmp.0.join("argocd/argocd-cm-patch.yaml")).unwrap();
    assert!(
        patch == std::fs::read(root().join("deploy/argocd/argocd-cm-patch.yaml")).unwrap_or_default(),
        "deploy/argocd/argocd-cm-patch.yaml; {fix}"
    );

    // The base is complete and self-consistent: kustomization lists every file; Namespace and CRD included.
    let k: Value = serde_yaml::from_str(&read("deploy/base/kustomization.yaml")).unwrap();
    let listed: BTreeSet<String> = strings(s(&k, &["resources"])).into_iter().collect();
    let present: BTreeSet<String> = want.keys().filter(|f| *f != "kustomization.yaml").cloned().collect();
    assert_eq!(listed, present, "deploy/base/kustomization.yaml resources");
    let mut docs = Vec::new();
    for f in &listed {
        docs.extend(parse_stream(&read(&format!("deploy/base/{f}"))));
    }
    let ns = the(&docs, "Namespace");
    assert_eq!(name(ns), NAMESPACE);
    assert_eq!(
        str_at(ns, &["metadata", "labels", "pod-security.kubernetes.io/enforce"]),
        "restricted"
    );
    let crds: BTreeSet<&str> = of_kind(&docs, "CustomResourceDefinition")
        .into_iter()
        .map(name)
        .collect();
    // Every CRD of crds/, no other.
    let generated: BTreeSet<String> = files(&root().join("crds"))
        .into_values()
        .map(|bytes| name(&parse_stream(&String::from_utf8(bytes).unwrap())[0]).to_string())
        .collect();
    assert!(generated.contains("computefleetactions.compute.threatwinds.com"));
    assert_eq!(crds, generated.iter().map(String::as_str).collect());
    let objects: Vec<Value> = docs
        .iter()
        .filter(|d| !matches!(kind(d), "Namespace" | "CustomResourceDefinition"))
        .cloned()
        .collect();
    assert_invariants(&objects, "deploy/base");
    assert!(
        !read("deploy/base/deployment.yaml").contains("managed-by: Helm"),
        "no Helm labels in plain manifests"
    );

    let top: Value = serde_yaml::from_str(&read("deploy/kustomization.yaml")).unwrap();
    assert_eq!(
        strings(s(&top, &["resources"])),
        vec!["base".to_string()],
        "deploy/kustomization.yaml points at base"
    );
}

#[test]
fn examples_cover_every_desired_state_for_the_demo_instances() {
    let mut states = BTreeMap::new();
    let mut once = 0;
    for (file, bytes) in files(&root().join("deploy/examples")) {
        assert!(
            file.ends_with(".yaml"),
            "deploy/examples/{file}: only manifests (kubectl apply -f deploy/examples/)"
        );
        let docs = parse_stream(&String::from_utf8(bytes).unwrap());
        assert_eq!(docs.len(), 1, "{file}: one object per file");
        let o = &docs[0];
        assert_eq!(str_at(o, &["apiVersion"]), "compute.threatwinds.com/v1alpha1", "{file}");
        assert!(namespace(o).is_none(), "{file}: no namespace, kubectl chooses");
        // Fleets (and other kinds) are checked against their own CRD in examples_match_the_crd_schema.
        if kind(o) != "ComputeInstanceAction" {
            continue;
        }
        let id = str_at(o, &["spec", "instanceId"]);
        assert!(
            DEMO_INSTANCES.contains(&id),
            "{file}: {id} is not a simulator demo instance"
        );
        let state = str_at(o, &["spec", "desiredState"]).to_string();
        if matches!(state.as_str(), "restarted" | "reset") {
            assert!(
                !str_at(o, &["spec", "requestId"]).is_empty(),
                "{file}: one-shot actions carry a requestId"
            );
        }
        if s(o, &["spec", "enforcement"]).and_then(Value::as_str) == Some("once") {
            once += 1;
        } else {
            states.insert(state, id.to_string());
        }
    }
    let want: BTreeMap<String, String> = [
        ("stopped", "inst-demo0001"),
        ("running", "inst-demo0002"),
        ("restarted", "inst-demo0003"),
        ("reset", "inst-demo0004"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(states, want, "one example per desired state");
    assert_eq!(once, 1, "one converge-once example");
}

#[test]
fn examples_match_the_crd_schema() {
    assert!(
        root().join(CRD_SOURCE).is_file(),
        "{CRD_SOURCE} does not exist yet (generated from the Rust types)"
    );
    for (file, bytes) in files(&root().join("deploy/examples")) {
        let o: Value = serde_yaml::from_slice(&bytes).unwrap();
        // The CRD of the example's kind: crds/<lowercase kind>s.yaml.
        let crd_file = format!("crds/{}s.yaml", kind(&o).to_lowercase());
        assert!(
            root().join(&crd_file).is_file(),
            "{file}: no CRD {crd_file} for its kind"
        );
        let crd: Value = serde_yaml::from_str(&read(&crd_file)).unwrap();
        let versions = s(&crd, &["spec", "versions"])
            .and_then(Value::as_sequence)
            .expect("versions");
        let v1alpha1 = versions
            .iter()
            .find(|v| str_at(v, &["name"]) == "v1alpha1")
            .expect("v1alpha1 in the CRD");
        let spec_schema = s(v1alpha1, &["schema", "openAPIV3Schema", "properties", "spec"]).expect("spec schema");
        let props = s(spec_schema, &["properties"])
            .and_then(Value::as_mapping)
            .expect("spec properties");
        for (k, v) in s(&o, &["spec"]).and_then(Value::as_mapping).unwrap() {
            let key = k.as_str().unwrap();
            let prop = props
                .get(key)
                .unwrap_or_else(|| panic!("{file}: spec.{key} is not in the CRD"));
            if let Some(allowed) = s(prop, &["enum"]).and_then(Value::as_sequence) {
                assert!(
                    allowed.contains(v),
                    "{file}: spec.{key}={v:?} is not one of {allowed:?}"
                );
            }
        }
        for req in strings(s(spec_schema, &["required"])) {
            assert!(s(&o, &["spec", &req]).is_some(), "{file}: spec.{req} is required");
        }
    }
}

#[test]
fn dockerfile_is_multistage_static_and_nonroot() {
    let df = read("deploy/image/Dockerfile");
    let froms: Vec<&str> = df
        .lines()
        .filter(|l| l.trim_start().to_uppercase().starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage build");
    let last = froms.last().unwrap();
    assert!(
        last.contains("gcr.io/distroless/static") || last.split_whitespace().nth(1) == Some("scratch"),
        "final stage is distroless/static or scratch: {last}"
    );
    let user = df
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("USER "))
        .expect("a USER line");
    assert!(user.contains("65532"), "runs as 65532: {user}");
    assert!(
        df.contains("cargo build --release --locked"),
        "release build from the lockfile"
    );
    assert!(
        df.contains("ENTRYPOINT [\"/compute-operator\"]"),
        "the chart passes `run` as args to this entrypoint"
    );
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
fn argocd_cm_patch_embeds_health_lua_verbatim() {
    let patch: Value = serde_yaml::from_str(&read("deploy/argocd/argocd-cm-patch.yaml")).expect("patch YAML");
    assert_eq!(kind(&patch), "ConfigMap");
    assert_eq!(name(&patch), "argocd-cm");
    for kind in ["ComputeInstanceAction", "ComputeFleetAction", "ComputePowerSchedule"] {
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
