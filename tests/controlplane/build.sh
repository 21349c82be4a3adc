#!/usr/bin/env bash
# Builds the pinned local control plane (kube-apiserver, kube-controller-manager, etcd) and helm from the Go module proxy into a
# cache outside the repository, keyed by version. Does nothing for a binary that is already there.
#
#   tests/controlplane/build.sh            # all of them
#   tests/controlplane/build.sh --print-dir  # only print the cache directory
#
# Versions can be overridden by env (K8S_VERSION, ETCD_VERSION, HELM_VERSION); the harness finds the result
# through the same rule (see src/devenv/binaries.rs).
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${COMPUTE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/compute-operator}"
K8S_DIR="$CACHE_ROOT/k8s-$K8S_VERSION"
ETCD_DIR="$CACHE_ROOT/etcd-$ETCD_VERSION"
HELM_DIR="$CACHE_ROOT/helm-$HELM_VERSION"

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$CACHE_ROOT"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: 'go' is not on PATH; install Go >= 1.25 first" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { printf '[controlplane %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# A scratch module that the final binary is built from; removed on exit.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# One binary of k8s.io/kubernetes (kube-apiserver, kube-controller-manager). The Go module and build caches are
# shared, so the second one costs only its own packages.
build_k8s_binary() {
  local name="$1" out="$K8S_DIR/$1"
  if [[ -x "$out" ]]; then log "$name $K8S_VERSION cached at $out"; return; fi
  log "building $name $K8S_VERSION (first build takes several minutes)"
  local mod="$scratch/$name" staging="v0.${K8S_VERSION#v1.}"
  mkdir -p "$mod" "$K8S_DIR"
  (
    cd "$mod"
    go mod init "compute-operator.local/$name" >/dev/null 2>&1
    go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
    local gomod
    gomod=$(go list -m -f '{{.GoMod}}' "k8s.io/kubernetes@$K8S_VERSION")
    # k8s.io/kubernetes points its staging modules at ./staging; point them at their published versions.
    grep -E '^\s*k8s.io/[a-z0-9-]+ => ./staging/' "$gomod" | awk '{print $1}' | while read -r dep; do
      go mod edit -replace "$dep=$dep@$staging"
    done
    go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
    log "resolving $name dependencies"
    go get "k8s.io/kubernetes/cmd/$name@$K8S_VERSION" >/dev/null
    local pkg=k8s.io/component-base/version
    local ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
    log "compiling $name"
    go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "k8s.io/kubernetes/cmd/$name"
  )
  mv "$out.tmp" "$out"
  log "$name ready: $out"
}

build_etcd() {
  local out="$ETCD_DIR/etcd"
  if [[ -x "$out" ]]; then log "etcd $ETCD_VERSION cached at $out"; return; fi
  log "building etcd $ETCD_VERSION"
  local mod="$scratch/etcd"
  mkdir -p "$mod" "$ETCD_DIR"
  (
    cd "$mod"
    go mod init compute-operator.local/etcd >/dev/null 2>&1
    # etcd's server module replaces its siblings with relative paths; pin them to the same release instead.
    for m in api/v3 client/pkg/v3 client/v3 pkg/v3 server/v3; do
      go mod edit -replace "go.etcd.io/etcd/$m=go.etcd.io/etcd/$m@$ETCD_VERSION"
    done
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    log "compiling etcd"
    go build -trimpath -ldflags "-s -w" -o "$out.tmp" go.etcd.io/etcd/server/v3
  )
  mv "$out.tmp" "$out"
  log "etcd ready: $out"
}

build_helm() {
  local out="$HELM_DIR/helm"
  if [[ -x "$out" ]]; then log "helm $HELM_VERSION cached at $out"; return; fi
  log "building helm $HELM_VERSION"
  mkdir -p "$HELM_DIR"
  GOBIN="$scratch/bin" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$scratch/bin/helm" "$out"
  log "helm ready: $out"
}

build_kubectl() {
  # Only when the machine has none: the harness prefers the kubectl on PATH.
  local out="$K8S_DIR/kubectl"
  if command -v kubectl >/dev/null || [[ -x "$out" ]]; then return; fi
  log "building kubectl $K8S_VERSION (none on PATH)"
  mkdir -p "$K8S_DIR"
  GOBIN="$scratch/bin" go install -trimpath -ldflags "-s -w" "k8s.io/kubectl/cmd/kubectl@v0.${K8S_VERSION#v1.}" 2>/dev/null \
    || { echo "could not build kubectl; install it from your distribution" >&2; return 1; }
  mv "$scratch/bin/kubectl" "$out"
  log "kubectl ready: $out"
}

case "${1:-all}" in
  all) build_etcd; build_k8s_binary kube-apiserver; build_k8s_binary kube-controller-manager; build_helm; build_kubectl ;;
  kube-apiserver|kube-controller-manager) build_k8s_binary "$1" ;;
  etcd) build_etcd ;;
  helm) build_helm ;;
  kubectl) build_kubectl ;;
  *) echo "usage: $0 [all|kube-apiserver|kube-controller-manager|etcd|helm|kubectl|--print-dir]" >&2; exit 2 ;;
esac
