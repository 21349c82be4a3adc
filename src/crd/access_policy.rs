//! Guardrails: the cluster-scoped `ComputeAccessPolicy` (which namespaces may set which instances to which
//! states) and its pure evaluation.
// kube-derive takes one `printcolumn(...)` per column, by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::api::Instance;
use crate::crd::instance_action::DesiredState;

/// Grants namespaces the right to declare states of instances. Only cluster administrators can write it
/// (cluster-scoped). An object is allowed when at least one policy matches its namespace, its instance and
/// its desired state.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "compute.threatwinds.com",
    version = "v1alpha1",
    kind = "ComputeAccessPolicy",
    plural = "computeaccesspolicies",
    shortname = "cap",
    derive = "PartialEq",
    doc = "Grants namespaces the right to declare power states of matching compute instances.",
    printcolumn(name = "Namespaces", type_ = "string", json_path = ".spec.namespaces.names"),
    printcolumn(name = "States", type_ = "string", json_path = ".spec.desiredStates"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ComputeAccessPolicySpec {
    /// Which namespaces this policy grants: by name and/or label selector.
    pub namespaces: NamespaceMatch,
    /// Which instances: explicit IDs, or admin API attributes (all given attributes must match).
    pub instances: InstanceMatch,
    /// Which desired states the granted namespaces may declare.
    #[schemars(length(min = 1))]
    pub desired_states: Vec<DesiredState>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.names) || has(self.selector)").message("namespaces must give names or a selector"))]
#[x_kube(validation = Rule::new("!has(self.selector) || (has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0) || (has(self.selector.matchExpressions) && size(self.selector.matchExpressions) > 0)")
    .message("namespaces.selector must not be empty: {} would match every namespace. Give matchLabels or matchExpressions (to grant every namespace on purpose, use matchExpressions: [{key: kubernetes.io/metadata.name, operator: Exists}])"))]
pub struct NamespaceMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.ids) || has(self.customerIds) || has(self.userIds) || has(self.zones) || has(self.templateIds)")
    .message("instances must give ids or at least one of customerIds, userIds, zones, templateIds"))]
pub struct InstanceMatch {
    /// Explicit instance IDs. When set, the instance must be one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub customer_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub user_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub zones: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub template_ids: Option<Vec<String>>,
}

/// `enforce`: objects no policy allows are denied. `off`: single-tenant clusters, everything is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyMode {
    Enforce,
    Off,
}

/// The outcome of evaluating the policies for one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed { by: Option<String> },
    Denied { message: String },
}

/// A namespace as the evaluation needs it.
pub struct NamespaceView<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    // An empty selector would match every namespace; the CRD rejects it, and it never grants here either.
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    if empty {
        return false;
    }
    let labels_ok = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let exprs_ok = selector.match_expressions.as_ref().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                // An operator we do not know never matches: deny rather than over-grant.
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

impl NamespaceMatch {
    pub fn matches(&self, ns: &NamespaceView<'_>) -> bool {
        let by_name = self.names.as_ref().is_some_and(|n| n.iter().any(|n| n == ns.name));
        let by_selector = self.selector.as_ref().is_some_and(|s| selector_matches(s, ns.labels));
        by_name || by_selector
    }
}

impl InstanceMatch {
    /// Does the instance match? `instance` is `None` when only the ID is known.
    pub fn matches(&self, id: &str, instance: Option<&Instance>) -> bool {
        let listed = |list: &Option<Vec<String>>, value: Option<&str>| match list {
            None => true,
            Some(l) => value.is_some_and(|v| l.iter().any(|x| x == v)),
        };
        let has_attributes = self.customer_ids.is_some()
            || self.user_ids.is_some()
            || self.zones.is_some()
            || self.template_ids.is_some();
        if !has_attributes && self.ids.is_none() {
            return false;
        }
        listed(&self.ids, Some(id))
            && listed(&self.customer_ids, instance.map(|i| i.customer_id.as_str()))
            && listed(&self.user_ids, instance.map(|i| i.user_id.as_str()))
            && listed(&self.zones, instance.map(|i| i.zone.as_str()))
            && listed(&self.template_ids, instance.map(|i| i.template_id.as_str()))
    }
}

/// Is an object in `ns` allowed to declare `desired` for `instance`?
pub fn evaluate(
    mode: PolicyMode,
    policies: &[(String, ComputeAccessPolicySpec)],
    ns: &NamespaceView<'_>,
    instance_id: &str,
    instance: Option<&Instance>,
    desired: DesiredState,
) -> Verdict {
    if mode == PolicyMode::Off {
        return Verdict::Allowed { by: None };
    }
    let mut near_miss: Option<String> = None;
    for (name, p) in policies {
        let ns_ok = p.namespaces.matches(ns);
        let inst_ok = p.instances.matches(instance_id, instance);
        let state_ok = p.desired_states.contains(&desired);
        if ns_ok && inst_ok && state_ok {
            return Verdict::Allowed { by: Some(name.clone()) };
        }
        if ns_ok && inst_ok && near_miss.is_none() {
            near_miss = Some(format!(
                "policy {name} covers this namespace and instance but not desiredState `{}`",
                desired.as_str()
            ));
        } else if ns_ok && near_miss.is_none() {
            near_miss = Some(format!("policy {name} covers this namespace but not this instance"));
        }
    }
    Verdict::Denied {
        message: denial_message(ns.name, instance_id, desired, near_miss.as_deref()),
    }
}

/// The denial names what the object asked for, never what the instance is (no name, zone, owner or
/// template), so a tenant learns nothing about instances it may not touch, not even whether one exists.
fn denial_message(ns: &str, instance_id: &str, desired: DesiredState, hint: Option<&str>) -> String {
    let hint = hint.map(|m| format!("; {m}")).unwrap_or_default();
    format!(
        "no ComputeAccessPolicy allows namespace {ns} to set instance {instance_id} to `{}`{hint}; a cluster administrator must add or widen one",
        desired.as_str()
    )
}

/// Denied whatever the instance's attributes turn out to be: no policy covers this namespace and desired state
/// (and, for policies listing IDs, this ID). Then there is nothing to ask the admin API.
pub fn evaluate_for_any_instance(
    mode: PolicyMode,
    policies: &[(String, ComputeAccessPolicySpec)],
    ns: &NamespaceView<'_>,
    instance_id: &str,
    desired: DesiredState,
) -> Verdict {
    if mode == PolicyMode::Off {
        return Verdict::Allowed { by: None };
    }
    let could_allow = policies.iter().any(|(_, p)| {
        p.namespaces.matches(ns)
            && p.desired_states.contains(&desired)
            && p.instances
                .ids
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|x| x == instance_id))
    });
    if could_allow {
        return Verdict::Allowed { by: None };
    }
    // The same words as the full evaluation with an unknown instance, so the two cannot be told apart.
    evaluate(mode, policies, ns, instance_id, None, desired)
}

/// What a namespace may power for one desired state, before any instance is looked at.
#[derive(Clone, Debug, PartialEq)]
pub enum Coverage {
    /// `--policy-mode off`: every instance.
    Everything,
    /// Only instances matching one of these (empty: none at all, so nothing need be asked of the admin API).
    Only(Vec<InstanceMatch>),
}

impl Coverage {
    pub fn is_nothing(&self) -> bool {
        matches!(self, Self::Only(m) if m.is_empty())
    }
}

/// The instance matches of every policy that grants namespace `ns` the desired state: a fleet's selection is
/// narrowed to these before anything is listed or counted.
pub fn coverage(
    mode: PolicyMode,
    policies: &[(String, ComputeAccessPolicySpec)],
    ns: &NamespaceView<'_>,
    desired: DesiredState,
) -> Coverage {
    if mode == PolicyMode::Off {
        return Coverage::Everything;
    }
    let mut matches: Vec<InstanceMatch> = policies
        .iter()
        .filter(|(_, p)| p.namespaces.matches(ns) && p.desired_states.contains(&desired))
        .map(|(_, p)| p.instances.clone())
        .collect();
    matches.dedup();
    Coverage::Only(matches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn inst() -> Instance {
        serde_json::from_value(serde_json::json!({
            "id": "i-1", "status": "running", "customerId": "c1", "userId": "u1", "zone": "z1", "templateId": "t1"
        }))
        .unwrap()
    }

    fn policy(ns: NamespaceMatch, inst: InstanceMatch, states: &[DesiredState]) -> (String, ComputeAccessPolicySpec) {
        (
            "p".into(),
            ComputeAccessPolicySpec {
                namespaces: ns,
                instances: inst,
                desired_states: states.to_vec(),
            },
        )
    }

    fn names(n: &[&str]) -> NamespaceMatch {
        NamespaceMatch {
            names: Some(n.iter().map(|s| s.to_string()).collect()),
            selector: None,
        }
    }

    fn list(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn evaluation_table() {
        use DesiredState::*;
        let labels: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        let ns = NamespaceView {
            name: "team-a",
            labels: &labels,
        };
        let all = [Running, Stopped, Restarted, Reset];
        let sel = |op: &str, values: &[&str]| NamespaceMatch {
            names: None,
            selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "team".into(),
                    operator: op.into(),
                    values: Some(values.iter().map(|s| s.to_string()).collect()),
                }]),
                match_labels: None,
            }),
        };
        let by_ids = InstanceMatch {
            ids: list(&["i-1"]),
            ..Default::default()
        };
        type Row = (&'static str, Vec<(String, ComputeAccessPolicySpec)>, DesiredState, bool);
        let table: Vec<Row> = vec![
            ("no policy", vec![], Stopped, false),
            (
                "by name and id",
                vec![policy(names(&["team-a"]), by_ids.clone(), &all)],
                Stopped,
                true,
            ),
            (
                "other namespace",
                vec![policy(names(&["team-b"]), by_ids.clone(), &all)],
                Stopped,
                false,
            ),
            (
                "state not granted",
                vec![policy(names(&["team-a"]), by_ids.clone(), &[Running])],
                Stopped,
                false,
            ),
            (
                "selector In",
                vec![policy(sel("In", &["a"]), by_ids.clone(), &all)],
                Reset,
                true,
            ),
            (
                "selector NotIn",
                vec![policy(sel("NotIn", &["a"]), by_ids.clone(), &all)],
                Reset,
                false,
            ),
            (
                "customer",
                vec![policy(
                    names(&["team-a"]),
                    InstanceMatch {
                        customer_ids: list(&["c1"]),
                        ..Default::default()
                    },
                    &all,
                )],
                Running,
                true,
            ),
            (
                "user",
                vec![policy(
                    names(&["team-a"]),
                    InstanceMatch {
                        user_ids: list(&["u2"]),
                        ..Default::default()
                    },
                    &all,
                )],
                Running,
                false,
            ),
            (
                "zone",
                vec![policy(
                    names(&["team-a"]),
                    InstanceMatch {
                        zones: list(&["z1", "z2"]),
                        ..Default::default()
                    },
                    &all,
                )],
                Running,
                true,
            ),
            (
                "template",
                vec![policy(
                    names(&["team-a"]),
                    InstanceMatch {
                        template_ids: list(&["t9"]),
                        ..Default::default()
                    },
                    &all,
                )],
                Running,
                false,
            ),
            (
                "attributes AND",
                vec![policy(
                    names(&["team-a"]),
                    InstanceMatch {
                        zones: list(&["z1"]),
                        customer_ids: list(&["c2"]),
                        ..Default::default()
                    },
                    &all,
                )],
                Running,
                false,
            ),
            (
                "any policy suffices",
                vec![
                    policy(names(&["team-b"]), by_ids.clone(), &all),
                    policy(names(&["team-a"]), by_ids.clone(), &all),
                ],
                Running,
                true,
            ),
            (
                "empty instance match never matches",
                vec![policy(names(&["team-a"]), InstanceMatch::default(), &all)],
                Running,
                false,
            ),
        ];
        for (case, policies, desired, allowed) in table {
            let v = evaluate(PolicyMode::Enforce, &policies, &ns, "i-1", Some(&inst()), desired);
            assert_eq!(matches!(v, Verdict::Allowed { .. }), allowed, "{case}: {v:?}");
            assert!(matches!(
                evaluate(PolicyMode::Off, &policies, &ns, "i-1", Some(&inst()), desired),
                Verdict::Allowed { .. }
            ));
        }
    }

    #[test]
    fn denial_says_what_to_change() {
        let labels = BTreeMap::new();
        let ns = NamespaceView {
            name: "team-a",
            labels: &labels,
        };
        let p = policy(
            names(&["team-a"]),
            InstanceMatch {
                ids: list(&["i-1"]),
                ..Default::default()
            },
            &[DesiredState::Running],
        );
        let Verdict::Denied { message } = evaluate(
            PolicyMode::Enforce,
            &[p],
            &ns,
            "i-1",
            Some(&inst()),
            DesiredState::Reset,
        ) else {
            panic!("denied")
        };
        assert!(
            message.contains("namespace team-a") && message.contains("`reset`") && message.contains("policy p covers"),
            "{message}"
        );
    }
}
