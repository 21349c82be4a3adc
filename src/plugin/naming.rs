//! Which object the plugin writes for an instance, and what it writes: a deterministic name, a fresh
//! `requestId` for one-shots, and the server-side-apply body.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::crd::instance_action::DesiredState;

/// The verbs of `kubectl compute`, each one desired state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Verb {
    Restart,
    Reset,
    Stop,
    Start,
}

impl Verb {
    pub fn desired_state(self) -> DesiredState {
        match self {
            Self::Restart => DesiredState::Restarted,
            Self::Reset => DesiredState::Reset,
            Self::Stop => DesiredState::Stopped,
            Self::Start => DesiredState::Running,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Reset => "reset",
            Self::Stop => "stop",
            Self::Start => "start",
        }
    }
}

/// The ComputeInstanceAction the plugin owns for an instance: `instance-<id>` when the id is already a valid
/// object name, otherwise the id lowercased with other characters turned into `-`, plus a hash of the exact id
/// (so `Inst_A` and `inst-a` never share an object). Names stay far below the 253-character limit.
pub fn object_name(instance_id: &str) -> String {
    if is_dns_subdomain(instance_id) && instance_id.len() <= 200 {
        return format!("instance-{instance_id}");
    }
    let clean: String = instance_id
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .take(200)
        .collect();
    format!("instance-{}-{:08x}", clean.trim_end_matches('-'), fnv1a32(instance_id))
}

/// RFC 1123 subdomain, as object names must be: dot-separated labels of `[a-z0-9-]` that start and end
/// alphanumeric.
fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.split('.').all(|label| {
            label.starts_with(alnum) && label.ends_with(alnum) && label.chars().all(|c| alnum(c) || c == '-')
        })
}

/// FNV-1a: a stable, dependency-free hash for name suffixes (not security relevant).
fn fnv1a32(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// A fresh `requestId` for a one-shot: the time of the request, to the millisecond (readable, sortable, and
/// within the field's 63 characters).
pub fn request_id(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The server-side-apply body. Only the fields the plugin decides are in it, so `timeoutSeconds`,
/// `enforcement`, `suspend` and every label set by someone else stay, and it sets no label of its own (a
/// `app.kubernetes.io/managed-by` of its own would take the field from Helm or Argo CD); `requestId` is left out
/// for levels and `dryRun` unless asked for (a previous value the plugin owned is then dropped).
pub fn apply_body(
    name: &str,
    namespace: &str,
    instance_id: &str,
    verb: Verb,
    request_id: Option<&str>,
    dry_run: bool,
) -> Value {
    let mut spec = json!({
        "instanceId": instance_id,
        "desiredState": verb.desired_state().as_str(),
    });
    if dry_run {
        spec["dryRun"] = json!(true);
    }
    if let (Some(rid), false) = (request_id, verb.desired_state().is_level()) {
        spec["requestId"] = json!(rid);
    }
    json!({
        "apiVersion": "compute.threatwinds.com/v1alpha1",
        "kind": "ComputeInstanceAction",
        "metadata": {
            "name": name,
            "namespace": namespace,
        },
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn object_names_are_valid_and_distinct() {
        let table = [
            ("inst-7g2xq4bm", "instance-inst-7g2xq4bm"),
            ("i-1.zone-a", "instance-i-1.zone-a"),
            ("Inst_A", "instance-inst-a-"),
            ("inst-a", "instance-inst-a"),
            ("a:b", "instance-a-b-"),
            ("ends-", "instance-ends-"),
            ("x_", "instance-x-"),
            ("a.-b", "instance-a--b-"),
            ("a.b", "instance-a.b"),
        ];
        for (id, want) in table {
            let got = object_name(id);
            assert!(got.starts_with(want), "{id}: {got} does not start with {want}");
            assert!(got.len() <= 253, "{id}: too long");
            assert!(
                got.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
                "{id}: {got} is not a DNS subdomain"
            );
            assert!(
                got.chars().last().is_some_and(|c| c.is_ascii_alphanumeric()),
                "{id}: {got}"
            );
            assert!(is_dns_subdomain(&got), "{id}: {got}");
            assert_eq!(object_name(id), got, "{id}: not deterministic");
        }
        assert_ne!(object_name("Inst_A"), object_name("inst_a"));
        assert_ne!(object_name("inst-a"), object_name("Inst-a"));
        let long = "a".repeat(127) + "_";
        assert!(object_name(&long).len() <= 253);
    }

    #[test]
    fn request_ids_are_rfc3339_millis_and_fit_the_field() {
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 23, 4, 5).unwrap() + chrono::Duration::milliseconds(67);
        let rid = request_id(t);
        assert_eq!(rid, "2026-12-01T23:04:05.067Z");
        assert!(rid.len() <= 63);
        assert!(DateTime::parse_from_rfc3339(&rid).is_ok());
    }

    #[test]
    fn apply_body_carries_only_what_the_plugin_decides() {
        let b = apply_body("instance-i-1", "ns", "i-1", Verb::Restart, Some("r1"), true);
        assert_eq!(
            b["spec"],
            json!({"instanceId": "i-1", "desiredState": "restarted", "requestId": "r1", "dryRun": true})
        );
        assert_eq!(b["metadata"]["namespace"], "ns");
        assert_eq!(b["kind"], "ComputeInstanceAction");
        let b = apply_body("instance-i-1", "ns", "i-1", Verb::Stop, Some("r1"), false);
        assert_eq!(b["spec"], json!({"instanceId": "i-1", "desiredState": "stopped"}));
        assert!(
            b["metadata"].get("labels").is_none(),
            "no label: managed-by belongs to Helm/Argo CD"
        );
        let table = [
            (Verb::Restart, "restarted"),
            (Verb::Reset, "reset"),
            (Verb::Stop, "stopped"),
            (Verb::Start, "running"),
        ];
        for (verb, state) in table {
            assert_eq!(
                apply_body("n", "ns", "i", verb, None, false)["spec"]["desiredState"],
                state
            );
        }
    }
}
