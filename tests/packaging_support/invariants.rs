//! The checks every rendering of the chart (and deploy/base) must pass: least-privilege RBAC, the restricted pod,
//! probes on the metrics port, the update strategy, credentials as mounted files only, namespaces.

use serde_norway::Value;

use super::rbac::{
    change_control_grants, controller_grants, grant_set, grants, lease_grants, namespace_grants, policy_grants, strings,
};
use super::{CREDENTIALS_DIR, NAMESPACE, container, env, kind, name, namespace, of_kind, s, str_at, the, yaml};

/// Checks that hold for every rendering: least-privilege RBAC, the restricted pod, credentials as files only.
pub fn assert_invariants(docs: &[Value], what: &str) {
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
    let mut change_roles = 0;
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
            assert!(
                g.iter()
                    .all(|(_, r, _)| r != "computemaintenancewindows" && r != "computedisruptionbudgets"),
                "{what}: change control is for administrators only: {g:?}"
            );
            tenant_roles += 1;
        } else if name(role).ends_with("-change-control") {
            assert_eq!(
                kind(role),
                "ClusterRole",
                "{what}: windows and budgets are cluster-scoped"
            );
            let mut want = change_control_grants();
            if cluster_wide {
                want.extend(namespace_grants());
            }
            assert_eq!(
                g, want,
                "{what}: the change-control ClusterRole reads windows and budgets"
            );
            change_roles += 1;
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
            if kind(role) == "Role" {
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
    assert_eq!(change_roles, 1, "{what}: one change-control ClusterRole, always");
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
                .all(|r| name(r).ends_with("-policies")
                    || name(r).ends_with("-change-control")
                    || name(r).contains("-tenant-"))),
        "{what}: ClusterRole and per-namespace Roles are exclusive (the tenants' aggregated roles, policies and change control aside)"
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
