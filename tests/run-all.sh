#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what is missing, builds the pinned control plane (cached
# outside the repo), then format, lint, and every test (unit, simulator, client, end-to-end against a real
# kube-apiserver + etcd, packaging). This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { printf '\n==> %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

step "tools"
missing=()
command -v lua5.4 >/dev/null || missing+=(lua5.4)
# promtool (tests/packaging_checks/monitoring.rs: `promtool test rules` on the chart's alerts) ships in Debian's prometheus.
command -v promtool >/dev/null || missing+=(prometheus)
# tests/quickstart.rs runs the README's quick start, whose last line is a curl.
command -v curl >/dev/null || missing+=(curl)
# deploy/image/build.sh (tests/image.rs) puts the system CA bundle into the image.
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
# checkov (tests/packaging_checks/network.rs scans the chart's default render) comes from PyPI into a venv; Debian's
# python3-venv provides the venv module's pip.
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v go >/dev/null || { echo "Go is required to build kube-apiserver and etcd (go >= 1.25)" >&2; exit 1; }
command -v cargo >/dev/null || { echo "Rust (cargo) is required" >&2; exit 1; }
if ((${#missing[@]})); then
  echo "installing ${missing[*]} from Debian's packages"
  if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq "${missing[@]}" >/dev/null; fi
fi

# One venv per checkov version, next to the control-plane binaries; `.installed` marks a finished install.
CHECKOV_VERSION=3.3.30
checkov_dir="$(bash tests/controlplane/build.sh --print-dir)/checkov-$CHECKOV_VERSION"
if [[ ! -f "$checkov_dir/.installed" ]]; then
  echo "installing checkov $CHECKOV_VERSION from PyPI into $checkov_dir"
  rm -rf "$checkov_dir"
  python3 -m venv "$checkov_dir"
  "$checkov_dir/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
  touch "$checkov_dir/.installed"
fi
export CHECKOV_BIN="$checkov_dir/bin/checkov"

step "control-plane binaries (cached in $(bash tests/controlplane/build.sh --print-dir))"
bash tests/controlplane/build.sh all
# kubectl: the one on PATH, else the pinned one build.sh made.
if ! command -v kubectl >/dev/null; then
  export PATH="$(bash tests/controlplane/build.sh --print-dir)/k8s-v1.37.2:$PATH"
fi
kubectl version --client >/dev/null || { echo "no working kubectl" >&2; exit 1; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
# The lean production build (the image's: no dev-tools) has code paths of its own.
cargo clippy --no-default-features --features jemalloc --lib --bins --quiet -- -D warnings

step "cargo test (unit, simulator, client, end-to-end, packaging)"
log=$(mktemp -t compute-operator-test.XXXXXX.log)
set +e
cargo test --all-targets --no-fail-fast >"$log" 2>&1
status=$?
set -e
grep -E '^(test |running |     Running|test result|failures:)' "$log" || true
passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
if [[ $status -ne 0 ]]; then
  echo "cargo test failed (exit $status; full log: $log):" >&2
  grep -E -A25 '^---- ' "$log" | head -200 >&2 || true
  echo "$passed passed, $failed failed"
  exit "$status"
fi
step "done"
echo "$passed passed, 0 failed"
