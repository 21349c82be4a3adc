//! Shared by the static packaging tests (tests/packaging_checks: chart, deploy, argocd): helm located like
//! tests/controlplane/build.sh places it (FAILS, never skips, without it), a temporary directory, `helm template`
//! and YAML access to rendered objects; RBAC grants in `rbac`, the checks every rendering passes in `invariants`.
#![allow(dead_code)]

pub mod invariants;
pub mod rbac;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize as _;
use serde_norway::Value;

pub const RELEASE: &str = "compute-operator";
pub const NAMESPACE: &str = "compute-operator";
pub const CREDENTIALS_DIR: &str = "/etc/compute-operator/credentials";

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// helm, located like tests/controlplane/build.sh places it (or `$HELM_BIN`).
pub fn helm() -> &'static Path {
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

pub fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A temporary directory removed on drop (std only).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
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
pub fn try_template(args: &[&str]) -> Result<Vec<Value>, String> {
    let out = run(Command::new(helm())
        .args(["template", RELEASE, "charts/compute-operator", "--namespace", NAMESPACE])
        .args(args));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(parse_stream(&text))
}

pub fn template(args: &[&str]) -> Vec<Value> {
    try_template(args).unwrap_or_else(|e| panic!("helm template {args:?} failed:\n{e}"))
}

pub fn parse_stream(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v = serde_norway::Value::deserialize(doc).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{text}"));
        if !v.is_null() {
            docs.push(v);
        }
    }
    docs
}

pub fn lint(args: &[&str]) {
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

pub fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in path {
        cur = match key.parse::<usize>() {
            Ok(i) if cur.is_sequence() => cur.get(i)?,
            _ => cur.get(*key)?,
        };
    }
    Some(cur)
}

pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    s(v, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {path:?} in\n{}", yaml(v)))
}

pub fn yaml(v: &Value) -> String {
    serde_norway::to_string(v).unwrap_or_default()
}

pub fn kind(v: &Value) -> &str {
    s(v, &["kind"]).and_then(Value::as_str).unwrap_or("")
}

pub fn name(v: &Value) -> &str {
    s(v, &["metadata", "name"]).and_then(Value::as_str).unwrap_or("")
}

pub fn namespace(v: &Value) -> Option<&str> {
    s(v, &["metadata", "namespace"]).and_then(Value::as_str)
}

pub fn of_kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == k).collect()
}

pub fn the<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    let found = of_kind(docs, k);
    assert_eq!(found.len(), 1, "expected exactly one {k}, found {}", found.len());
    found[0]
}

pub fn named<'a>(docs: &'a [Value], k: &str, n: &str) -> &'a Value {
    of_kind(docs, k)
        .into_iter()
        .find(|d| name(d) == n)
        .unwrap_or_else(|| panic!("no {k} {n}"))
}

pub fn container(docs: &[Value]) -> &Value {
    let d = the(docs, "Deployment");
    let cs = s(d, &["spec", "template", "spec", "containers"])
        .and_then(Value::as_sequence)
        .expect("containers");
    assert_eq!(cs.len(), 1, "the operator pod has one container");
    &cs[0]
}

/// The container's plain env values (name -> value); entries with valueFrom map to "<valueFrom>".
pub fn env(docs: &[Value]) -> BTreeMap<String, String> {
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
