//! What to tell a person when something goes wrong: API server refusals (no CRD, no rights, no namespace, no
//! such object) and the operator's Stalled reasons, each with the next step to take.

use crate::crd::instance_action::DesiredState;

/// The resource, as `kubectl auth can-i` and RBAC rules spell it.
pub const RESOURCE: &str = "computeinstanceactions.compute.threatwinds.com";

/// One of the operator's kinds, as a person and RBAC spell it.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    pub kind: &'static str,
    /// `<plural>.<group>`, as `kubectl auth can-i` and RBAC rules spell it.
    pub resource: &'static str,
    pub short_name: &'static str,
}

pub const INSTANCE_ACTION: Kind = Kind {
    kind: "ComputeInstanceAction",
    resource: RESOURCE,
    short_name: "cia",
};
pub const FLEET_ACTION: Kind = Kind {
    kind: "ComputeFleetAction",
    resource: "computefleetactions.compute.threatwinds.com",
    short_name: "cfa",
};
pub const POWER_SCHEDULE: Kind = Kind {
    kind: "ComputePowerSchedule",
    resource: "computepowerschedules.compute.threatwinds.com",
    short_name: "cps",
};

/// The parts of an API server refusal the advice depends on (from `kube::Error::Api`).
#[derive(Clone, Debug, Default)]
pub struct Refusal<'a> {
    pub code: u16,
    pub message: &'a str,
    /// `details.kind` of the Status (e.g. `namespaces` when the namespace is missing).
    pub kind: &'a str,
    /// `details.name` of the Status: the object that was not found.
    pub name: &'a str,
}

/// One line for an API server refusal of `verb` (`get`, `list`, `patch`, `watch`) on ComputeInstanceActions.
pub fn refusal(r: &Refusal<'_>, verb: &str, namespace: &str) -> String {
    refusal_about(INSTANCE_ACTION, r, verb, namespace)
}

/// One line for an API server refusal of `verb` on objects of `about` in `namespace`.
pub fn refusal_about(about: Kind, r: &Refusal<'_>, verb: &str, namespace: &str) -> String {
    let Kind {
        kind,
        resource,
        short_name,
    } = about;
    let plural = resource.split('.').next().unwrap_or(resource);
    match r.code {
        404 if r.kind == "namespaces" => {
            format!("namespace {namespace} does not exist: pick another with -n NAMESPACE")
        }
        404 if r.kind == plural && !r.name.is_empty() => format!(
            "there is no {kind} {} in namespace {namespace}: list them with kubectl get {short_name} -n {namespace}",
            r.name
        ),
        404 => format!(
            "the {kind} resource is not installed in this cluster ({resource} not found): install \
             the compute-operator chart (helm install compute-operator charts/compute-operator) or its CRDs \
             (kubectl apply -f crds/)"
        ),
        403 => format!(
            "you may not {verb} {resource} in namespace {namespace} ({}): ask a cluster administrator for a Role \
             that grants it; check with `kubectl auth can-i {verb} {resource} -n {namespace}`",
            r.message
        ),
        401 => format!(
            "the API server did not accept your credentials ({}): log in again or check the current context \
             of your kubeconfig",
            r.message
        ),
        422 => format!("the API server refused the object: {}", r.message),
        code => format!("the API server answered {code}: {}", r.message),
    }
}

/// One line for a client-side error (no kubeconfig, unreachable server, a timeout).
pub fn unreachable(error: &str) -> String {
    format!("cannot talk to the Kubernetes API server ({error}): check KUBECONFIG and `kubectl config current-context`")
}

/// The next step after the operator reported `reason` for `desired` on object `name` in `namespace`.
pub fn stalled(reason: &str, desired: DesiredState, name: &str, namespace: &str) -> String {
    match reason {
        "PolicyDenied" => format!(
            "denied by policy: a cluster administrator must add a ComputeAccessPolicy that allows namespace \
             {namespace}, this instance and desiredState {} (kubectl get computeaccesspolicies)",
            desired.as_str()
        ),
        "Suspended" => format!(
            "the object is suspended: kubectl -n {namespace} patch cia {name} --type merge -p '{{\"spec\":{{\"suspend\":false}}}}'"
        ),
        "Conflict" => format!(
            "another object enforces the opposite state on this instance: change or delete it (kubectl compute status -n {namespace})"
        ),
        "OutcomeUnknown" | "Timeout" | "Failed" => {
            "check the instance, then run the command again to ask for a new run (a new requestId)".to_owned()
        }
        "RateLimited" => "too many restarts/resets of this instance lately: wait, or ask the operator's administrator \
                          about --max-one-shots"
            .to_owned(),
        "InstanceNotFound" | "InvalidInstanceId" | "BadRequest" => {
            "check the instance id (kubectl compute status lists the objects and what they saw)".to_owned()
        }
        "InvalidInstanceState" => {
            "the instance is not in a state this action starts from; check it and try again".to_owned()
        }
        "Unauthorized" | "Forbidden" | "CredentialsError" => {
            "the operator's admin API credentials were refused: ask the operator's administrator to check its Secret"
                .to_owned()
        }
        "InstanceDeleting" => "the instance is being deleted; nothing to do".to_owned(),
        "Expired" => format!(
            "spec.notAfter has passed, so the operator never sends it: set a later spec.notAfter or remove it \
             (kubectl -n {namespace} edit cia {name}), then run the command again"
        ),
        "AlreadyRun" => "this requestId ran before and never runs twice: run the command again for a new one; if \
                         another tool sets spec.requestId, change it there"
            .to_owned(),
        "DryRun" => format!(
            "nothing was sent: spec.dryRun is true on cia {name} (set by another tool?) or the operator runs with \
             --dry-run; remove spec.dryRun where it is managed, or ask the operator's administrator"
        ),
        _ => format!("see kubectl -n {namespace} describe cia {name}"),
    }
}

/// What to say when `--wait` ran out of time: with no status at all the operator is probably not running.
pub fn timed_out(seen_status: bool, timeout: &str, name: &str, namespace: &str) -> String {
    if seen_status {
        format!(
            "not done within {timeout}; it goes on in the cluster: kubectl compute status -n {namespace}, or kubectl -n {namespace} get cia {name} -w"
        )
    } else {
        format!(
            "no answer from the operator within {timeout}: is compute-operator running and watching namespace {namespace}? (kubectl get pods -A -l app.kubernetes.io/name=compute-operator)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_to_do() {
        let table = [
            (
                404,
                "the server could not find the requested resource",
                "",
                "patch",
                "not installed in this cluster",
            ),
            (
                404,
                "namespaces \"nope\" not found",
                "namespaces",
                "patch",
                "namespace team-a does not exist",
            ),
            (
                403,
                "forbidden",
                "",
                "patch",
                "kubectl auth can-i patch computeinstanceactions.compute.threatwinds.com -n team-a",
            ),
            (403, "forbidden", "", "list", "you may not list"),
            (401, "Unauthorized", "", "get", "log in again"),
            (
                422,
                "instanceId is immutable",
                "",
                "patch",
                "refused the object: instanceId is immutable",
            ),
            (500, "boom", "", "get", "answered 500: boom"),
        ];
        for (code, message, kind, verb, want) in table {
            let got = refusal(
                &Refusal {
                    code,
                    message,
                    kind,
                    name: "",
                },
                verb,
                "team-a",
            );
            assert!(got.contains(want), "{code} {message}: {got}");
            assert!(!got.contains('\n'), "one line: {got}");
        }
    }

    #[test]
    fn stalled_reasons_name_the_next_step() {
        let table = [
            ("PolicyDenied", "ComputeAccessPolicy that allows namespace ns"),
            ("PolicyDenied", "desiredState restarted"),
            ("Suspended", "patch cia instance-i-1 --type merge"),
            ("Conflict", "change or delete it"),
            ("OutcomeUnknown", "new requestId"),
            ("RateLimited", "--max-one-shots"),
            ("InstanceNotFound", "check the instance id"),
            ("Forbidden", "admin API credentials"),
            ("Expired", "spec.notAfter has passed"),
            ("AlreadyRun", "new one"),
            ("DryRun", "nothing was sent"),
            ("SomethingNew", "describe cia instance-i-1"),
        ];
        for (reason, want) in table {
            let got = stalled(reason, DesiredState::Restarted, "instance-i-1", "ns");
            assert!(got.contains(want), "{reason}: {got}");
        }
    }

    #[test]
    fn a_timeout_without_any_status_points_at_the_operator() {
        assert!(timed_out(false, "30s", "n", "ns").contains("is compute-operator running"));
        assert!(timed_out(true, "30s", "n", "ns").contains("goes on in the cluster"));
    }

    #[test]
    fn a_missing_fleet_or_schedule_is_named_not_mistaken_for_a_missing_crd() {
        let missing = Refusal {
            code: 404,
            message: "computefleetactions.compute.threatwinds.com \"nightly\" not found",
            kind: "computefleetactions",
            name: "nightly",
        };
        assert_eq!(
            refusal_about(FLEET_ACTION, &missing, "get", "ops"),
            "there is no ComputeFleetAction nightly in namespace ops: list them with kubectl get cfa -n ops"
        );
        let no_crd = Refusal {
            code: 404,
            message: "the server could not find the requested resource",
            ..Default::default()
        };
        let got = refusal_about(POWER_SCHEDULE, &no_crd, "list", "ops");
        assert!(got.contains("ComputePowerSchedule resource is not installed"), "{got}");
        let forbidden = Refusal {
            code: 403,
            message: "forbidden",
            ..Default::default()
        };
        let got = refusal_about(FLEET_ACTION, &forbidden, "patch", "ops");
        assert!(
            got.contains("kubectl auth can-i patch computefleetactions.compute.threatwinds.com -n ops"),
            "{got}"
        );
    }
}
