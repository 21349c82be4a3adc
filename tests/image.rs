//! The container image, checked as a result, not as a recipe: `deploy/image/build.sh` builds it (cargo caches
//! the binary in target/, so a rebuild without source changes takes seconds), then this test reads the OCI
//! layout itself (digests, sizes, config), unpacks the layer and runs the binary from the unpacked root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const MIB: u64 = 1024 * 1024;
/// The size budget of the unpacked image.
const SIZE_LIMIT: u64 = 30 * MIB;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    assert!(out.status.success(), "sha256sum {}", path.display());
    text(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

fn read_json(path: &Path) -> Value {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A blob named by a descriptor, after checking its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> PathBuf {
    let digest = descriptor["digest"].as_str().expect("descriptor digest");
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let path = layout.join("blobs/sha256").join(hex);
    assert_eq!(sha256(&path), hex, "blob {digest} does not match its digest");
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(
        Some(size),
        descriptor["size"].as_u64(),
        "blob {digest}: size differs from its descriptor"
    );
    path
}

/// The chart's default image reference: values.yaml image.repository and image.tag, else Chart.yaml appVersion.
fn chart_image_reference() -> (String, String) {
    let chart = repo().join("charts/compute-operator");
    let values: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let meta: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap()).unwrap();
    let repository = values["image"]["repository"].as_str().unwrap().to_owned();
    let tag = match values["image"]["tag"].as_str() {
        Some(t) if !t.is_empty() => t.to_owned(),
        _ => meta["appVersion"].as_str().unwrap().to_owned(),
    };
    (repository, tag)
}

/// Every path in the tree, relative to `root`.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

fn is_root() -> bool {
    let out = run(Command::new("id").arg("-u"));
    text(&out.stdout).trim() == "0"
}

/// Runs the image's binary from the unpacked root: chrooted as uid 65532 when this test runs as root (the
/// closest thing to a container), otherwise through the image's own dynamic loader and libraries.
fn run_in_rootfs(rootfs: &Path, args: &[&str]) -> Output {
    if is_root() {
        return run(Command::new("chroot")
            .arg("--userspec=65532:65532")
            .arg(rootfs)
            .arg("/compute-operator")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default()));
    }
    let loader = walk(rootfs)
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))
        })
        .expect("the image carries the dynamic loader");
    let lib_dirs: Vec<String> = walk(rootfs)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(".so")))
        .map(|p| rootfs.join(p.parent().unwrap()).display().to_string())
        .collect();
    run(Command::new(rootfs.join(loader))
        .arg("--inhibit-cache")
        .arg("--library-path")
        .arg(lib_dirs.join(":"))
        .arg(rootfs.join("compute-operator"))
        .args(args)
        .env_clear())
}

#[test]
fn the_image_is_a_lean_non_root_oci_image_whose_binary_runs() {
    let out_dir = tempfile::tempdir().unwrap();
    // The build: the script's own output (sizes) is shown with the test's.
    let build = run(Command::new("bash")
        .arg(repo().join("deploy/image/build.sh"))
        .arg(out_dir.path())
        .current_dir(repo()));
    println!("{}{}", text(&build.stderr), text(&build.stdout));
    assert!(
        build.status.success(),
        "deploy/image/build.sh failed:\n{}\n{}",
        text(&build.stdout),
        text(&build.stderr)
    );

    // The layout.
    let layout = out_dir.path().join("oci");
    assert_eq!(read_json(&layout.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
    let index = read_json(&layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().expect("index.manifests");
    assert_eq!(manifests.len(), 1, "one image in the layout");
    let (repository, tag) = chart_image_reference();
    let annotations = &manifests[0]["annotations"];
    assert_eq!(annotations["org.opencontainers.image.ref.name"], tag.as_str());
    assert_eq!(
        annotations["io.containerd.image.name"],
        format!("{repository}:{tag}").as_str(),
        "the image is not the chart's default image reference"
    );
    assert_eq!(manifests[0]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let manifest = read_json(&blob(&layout, &manifests[0]));
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config = read_json(&blob(&layout, &manifest["config"]));

    // The config: non-root numeric user, the binary as entrypoint.
    let user = config["config"]["User"].as_str().expect("config.User is set");
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    let uid: u32 = uid.parse().unwrap_or_else(|_| panic!("User {user} is not numeric"));
    assert_ne!(uid, 0, "the image runs as root");
    assert!(
        gid.is_empty() || gid.parse::<u32>().is_ok_and(|g| g != 0),
        "group of {user}"
    );
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/compute-operator"]));
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]));
    assert_eq!(config["os"], "linux");

    // The layers: digests match, diff_ids match the uncompressed tars; unpacked into one root.
    let layers = manifest["layers"].as_array().expect("manifest.layers");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("rootfs.diff_ids");
    assert_eq!(layers.len(), diff_ids.len());
    let rootfs = out_dir.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let mut compressed = 0;
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        let path = blob(&layout, layer);
        compressed += std::fs::metadata(&path).unwrap().len();
        let tar = out_dir.path().join("layer.tar");
        let gunzip =
            run(Command::new("sh")
                .arg("-c")
                .arg(format!("gzip -dc '{}' > '{}'", path.display(), tar.display())));
        assert!(gunzip.status.success(), "layer is not gzip: {}", text(&gunzip.stderr));
        assert_eq!(format!("sha256:{}", sha256(&tar)), diff_id.as_str().unwrap(), "diff_id");
        let untar = run(Command::new("tar").arg("-xpf").arg(&tar).arg("-C").arg(&rootfs));
        assert!(untar.status.success(), "unpacking: {}", text(&untar.stderr));
        std::fs::remove_file(&tar).unwrap();
    }

    // What is inside: the binary, its libraries, certificates; no shell, no package manager.
    let files = walk(&rootfs);
    println!("image contents:");
    for f in &files {
        println!("  /{}", f.display());
    }
    let forbidden = [
        "sh", "bash", "dash", "ash", "busybox", "apt", "apt-get", "dpkg", "apk", "rpm", "yum", "dnf", "microdnf",
    ];
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            !forbidden.contains(&name.as_ref()),
            "the image contains /{}",
            f.display()
        );
    }
    assert!(!rootfs.join("bin/sh").exists() && !rootfs.join("usr/bin/sh").exists());
    assert!(
        !rootfs.join("var/lib/dpkg").exists(),
        "the image carries a dpkg database"
    );
    assert!(
        rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file(),
        "no CA certificates"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(rootfs.join("compute-operator"))
        .unwrap()
        .permissions()
        .mode();
    assert!(
        mode & 0o001 != 0,
        "the binary is not executable by others (mode {mode:o})"
    );

    // The binary runs from the unpacked root.
    let version = run_in_rootfs(&rootfs, &["--version"]);
    assert!(version.status.success(), "--version failed: {}", text(&version.stderr));
    assert_eq!(
        text(&version.stdout).trim(),
        format!("compute-operator {}", env!("CARGO_PKG_VERSION"))
    );
    for bad in [
        ["run", "--concurrency", "0"],
        ["run", "--api-url", "http://apis.example.com"],
    ] {
        let out = run_in_rootfs(&rootfs, &bad);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{bad:?}: not one line: {stderr}");
        assert!(
            stderr.contains(bad[1]),
            "{bad:?}: the line does not name the setting: {stderr}"
        );
    }
    // The lean build: no simulator, no dev control plane.
    for dev_only in ["sim", "dev"] {
        let out = run_in_rootfs(&rootfs, &[dev_only, "--help"]);
        assert!(
            !out.status.success(),
            "the production binary has the `{dev_only}` command"
        );
    }

    let unpacked: u64 = files
        .iter()
        .filter_map(|f| std::fs::symlink_metadata(rootfs.join(f)).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    println!(
        "image size: {:.1} MiB compressed, {:.1} MiB unpacked (limit {} MiB)",
        compressed as f64 / MIB as f64,
        unpacked as f64 / MIB as f64,
        SIZE_LIMIT / MIB
    );
    assert!(unpacked < SIZE_LIMIT, "the image is {unpacked} bytes unpacked");
}
