//! Fields another field manager owns: reads the API server's server-side-apply conflict (409) and says who owns
//! what, so the plugin never takes a field from Helm, Argo CD or Flux without `--force`. Pure.

/// One field another manager owns, as the API server named it (`.spec.desiredState` becomes `spec.desiredState`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    pub manager: String,
    pub field: String,
}

/// The conflicts in an apply's 409 message, e.g.
/// `Apply failed with 1 conflict: conflict with "argocd-controller" using compute.threatwinds.com/v1alpha1: .spec.desiredState`
/// or, for several fields of one manager, `conflicts with "helm":\n- .spec.a\n- .spec.b`. Empty when the message
/// is not a conflict.
pub fn conflicts(message: &str) -> Vec<Owned> {
    let mut out = Vec::new();
    let mut manager: Option<String> = None;
    for line in message.lines() {
        let line = line.trim();
        if let Some(field) = line.strip_prefix("- ") {
            if let (Some(m), Some(f)) = (&manager, field_name(field)) {
                out.push(Owned {
                    manager: m.clone(),
                    field: f,
                });
            }
            continue;
        }
        for part in line.split("conflict").skip(1) {
            let part = part.strip_prefix('s').unwrap_or(part);
            let Some(rest) = part.strip_prefix(" with \"") else {
                continue;
            };
            let Some((name, tail)) = rest.split_once('"') else {
                continue;
            };
            manager = Some(name.to_owned());
            if let Some(f) = tail.rsplit_once(": ").and_then(|(_, f)| field_name(f)) {
                out.push(Owned {
                    manager: name.to_owned(),
                    field: f,
                });
            }
        }
    }
    out
}

fn field_name(raw: &str) -> Option<String> {
    let f = raw.trim();
    f.strip_prefix('.')
        .filter(|f| !f.is_empty() && !f.contains(' '))
        .map(str::to_owned)
}

/// `spec.desiredState (owned by "argocd-controller"), spec.requestId (owned by "helm")`.
fn list(owned: &[Owned]) -> String {
    owned
        .iter()
        .map(|o| format!("{} (owned by \"{}\")", o.field, o.manager))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The refusal printed when another manager owns fields the command sets.
pub fn refusal(owned: &[Owned], name: &str, namespace: &str) -> String {
    format!(
        "not changed: computeinstanceaction/{name} in namespace {namespace} is managed by another tool: {}. \
         Change it where it is managed (its manifest in Git, its Helm values), or run the command again with \
         --force to take these fields (that tool may set them back on its next sync)",
        list(owned)
    )
}

/// What `--force` says before it takes fields from another manager.
pub fn taking(owned: &[Owned]) -> String {
    format!("--force: taking {} for kubectl-compute", list(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(m: &str, f: &str) -> Owned {
        Owned {
            manager: m.into(),
            field: f.into(),
        }
    }

    #[test]
    fn conflict_messages_are_read() {
        let one = "Apply failed with 1 conflict: conflict with \"argocd-controller\" using compute.threatwinds.com/v1alpha1: .spec.desiredState";
        assert_eq!(conflicts(one), [owned("argocd-controller", "spec.desiredState")]);
        let several = "Apply failed with 3 conflicts: conflicts with \"helm\" using compute.threatwinds.com/v1alpha1:\n\
                       - .spec.desiredState\n- .spec.requestId\nconflict with \"flux\": .spec.dryRun";
        assert_eq!(
            conflicts(several),
            [
                owned("helm", "spec.desiredState"),
                owned("helm", "spec.requestId"),
                owned("flux", "spec.dryRun")
            ]
        );
        assert!(conflicts("the server could not find the requested resource").is_empty());
    }

    #[test]
    fn the_refusal_names_fields_managers_and_force() {
        let o = [owned("argocd-controller", "spec.desiredState")];
        let r = refusal(&o, "instance-i-1", "team-a");
        for needle in [
            "not changed",
            "instance-i-1",
            "team-a",
            "spec.desiredState (owned by \"argocd-controller\")",
            "--force",
        ] {
            assert!(r.contains(needle), "{needle} missing in {r}");
        }
        assert!(taking(&o).starts_with("--force: taking spec.desiredState"));
    }
}
