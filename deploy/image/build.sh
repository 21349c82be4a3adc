#!/usr/bin/env bash
# Builds the compute-operator container image without a container daemon or base image, as an OCI image layout.
#
#   deploy/image/build.sh [OUT_DIR]        # default OUT_DIR: ${CARGO_TARGET_DIR:-target}/oci-image
#
# What goes in: the release binary built without the `dev-tools` feature (no simulator, dev control plane or
# benchmark code), exactly the shared libraries `ldd` names for it, the CA bundle (the admin API client verifies
# TLS against the system roots) and passwd/group entries for the nonroot user. No shell, no package manager.
# The config runs /compute-operator with `run` as uid/gid 65532.
#
# The image is named after the chart's default image reference (charts/compute-operator: values.yaml
# image.repository, and image.tag or else Chart.yaml appVersion), so the chart deploys what this builds.
# Out: OUT_DIR/oci (the layout; ref name = tag) and OUT_DIR/compute-operator-<tag>.oci.tar (the same as an
# archive). Push or load with skopeo, e.g.:
#   skopeo copy oci:target/oci-image/oci:0.1.0 docker://ghcr.io/threatwinds/compute-operator:0.1.0
#
# The binary is glibc-linked: Debian ships no Rust std for *-linux-musl and rustup cannot download one here
# (deploy/image/Dockerfile builds the static musl variant where a registry and a daemon are available).
# Repeated builds reuse cargo's cache (profile `image` in target/); the layer is reproducible (sorted, fixed
# mtimes and owners), so the same source gives the same digest.
set -euo pipefail
cd "$(dirname "$0")/../.."

for tool in cargo ldd tar gzip sha256sum; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is required" >&2; exit 1; }
done

target_dir=${CARGO_TARGET_DIR:-target}
out=${1:-$target_dir/oci-image}
epoch=${SOURCE_DATE_EPOCH:-0}

# The chart's default image reference.
values=charts/compute-operator/values.yaml
repository=$(awk '/^image:/{f=1; next} f && /^[^ #]/{f=0} f && $1=="repository:"{print $2; exit}' "$values")
tag=$(awk '/^image:/{f=1; next} f && /^[^ #]/{f=0} f && $1=="tag:"{gsub(/"/,"",$2); print $2; exit}' "$values")
[[ -n $tag ]] || tag=$(awk '$1=="appVersion:"{gsub(/"/,"",$2); print $2; exit}' charts/compute-operator/Chart.yaml)
[[ -n $repository && -n $tag ]] || { echo "build.sh: no image.repository/tag in $values" >&2; exit 1; }
ref="$repository:$tag"

case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) echo "build.sh: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac

# Run from a test or a build script, cargo's per-package variables leak in; build scripts (ring's) watch some of
# them, and a different value would rebuild the dependencies every time the caller changes.
for var in $(compgen -e | grep -E '^(CARGO_(PKG|MANIFEST|CRATE|BIN|PRIMARY|CFG)_|OUT_DIR$|CARGO_TARGET_TMPDIR$)' || true); do
  unset "$var"
done
echo "==> cargo build --profile image --no-default-features --features jemalloc --bin compute-operator"
cargo build --locked --profile image --no-default-features --features jemalloc --bin compute-operator
binary="$target_dir/image/compute-operator"

work=$(mktemp -d -t compute-operator-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/compute-operator"

# Exactly the shared libraries the dynamic loader resolves for the binary, at the paths it resolves them to.
libs=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
[[ -n $libs ]] || { echo "build.sh: ldd found no libraries (a static binary needs none: check the build)" >&2; exit 1; }
for lib in $libs; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

ca=/etc/ssl/certs/ca-certificates.crt
[[ -f $ca ]] || { echo "build.sh: $ca missing (apt-get install ca-certificates)" >&2; exit 1; }
install -m 0644 "$ca" "$rootfs$ca"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"

# One layer, reproducible.
blobs="$work/oci/blobs/sha256"
mkdir -p "$blobs"
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$rootfs" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -9 <"$work/layer.tar" >"$work/layer.tar.gz"

# Stores a file as a blob; prints "digest size".
blob() {
  local digest size
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$blobs/$digest"
  echo "$digest $size"
}
read -r layer_digest layer_size < <(blob "$work/layer.tar.gz")

created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
version=$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)
cat >"$work/config.json" <<JSON
{"architecture":"$arch","os":"linux","created":"$created","config":{"User":"65532:65532","Entrypoint":["/compute-operator"],"Cmd":["run"],"WorkingDir":"/","Env":["SSL_CERT_FILE=$ca"],"Labels":{"org.opencontainers.image.title":"compute-operator","org.opencontainers.image.version":"$version","org.opencontainers.image.source":"https://github.com/threatwinds/compute-operator"}},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created":"$created","created_by":"deploy/image/build.sh"}]}
JSON
read -r config_digest config_size < <(blob "$work/config.json")

cat >"$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$layer_size}],"annotations":{"org.opencontainers.image.ref.name":"$tag","org.opencontainers.image.version":"$version"}}
JSON
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")

cat >"$work/oci/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,"platform":{"architecture":"$arch","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"$tag","io.containerd.image.name":"$ref"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"

mkdir -p "$out"
rm -rf "$out/oci"
cp -a "$work/oci" "$out/oci"
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner -C "$work/oci" -cf "$out/compute-operator-$tag.oci.tar" .

mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
unpacked=$(du -sb "$rootfs" | cut -f1)
echo "image: $ref (manifest sha256:$manifest_digest, $arch)"
echo "layout: $out/oci  archive: $out/compute-operator-$tag.oci.tar"
echo "binary: $(mib "$(stat -c %s "$binary")"); libraries: $(echo "$libs" | tr '\n' ' ')"
echo "size: $(mib $((layer_size + config_size + manifest_size))) compressed, $(mib "$unpacked") unpacked"
