//! What ships beside the chart, without a cluster: the chart's CRD copy is crds/'s byte for byte, deploy/ is what
//! tests/packaging/render-deploy.sh makes of the chart (and passes `packaging_support::invariants`), the examples
//! cover every desired state and match their CRD's schema, and the Dockerfile builds a static non-root image.
//!
//! Needs helm: `$HELM_BIN`, else the binary `bash tests/controlplane/build.sh helm` builds (same lookup rule);
//! FAILS (never skips) without it.

use crate::packaging_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use packaging_support::invariants::assert_invariants;
use packaging_support::rbac::strings;
use packaging_support::*;
use serde_norway::Value;

const CRD_SOURCE: &str = "crds/computeinstanceactions.yaml";
const CRD_IN_CHART: &str = "charts/compute-operator/crds/computeinstanceactions.yaml";
const DEMO_INSTANCES: [&str; 4] = ["inst-demo0001", "inst-demo0002", "inst-demo0003", "inst-demo0004"];

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
    let crd: Value = serde_norway::from_slice(&a).expect("the CRD is YAML");
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
    let k: Value = serde_norway::from_str(&read("deploy/base/kustomization.yaml")).unwrap();
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

    let top: Value = serde_norway::from_str(&read("deploy/kustomization.yaml")).unwrap();
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
        let o: Value = serde_norway::from_slice(&bytes).unwrap();
        // The CRD of the example's kind: crds/<lowercase kind>s.yaml.
        let crd_file = format!("crds/{}s.yaml", kind(&o).to_lowercase());
        assert!(
            root().join(&crd_file).is_file(),
            "{file}: no CRD {crd_file} for its kind"
        );
        let crd: Value = serde_norway::from_str(&read(&crd_file)).unwrap();
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
        df.contains("cargo build --profile image --locked"),
        "the image profile's build from the lockfile"
    );
    assert!(
        df.contains("ENTRYPOINT [\"/compute-operator\"]"),
        "the chart passes `run` as args to this entrypoint"
    );
}
