#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd from the pinned Go modules in
# tools/, into target/tools/bin-k8s-<version>-etcd-<version>/. A build already present is reused;
# a copy is kept in a per-user cache so a fresh clone on the same machine builds nothing either.
# Prints the directory holding the binaries.
#
# KUBERNETES_VERSION=1.33 (a minor, or its pinned patch 1.33.13) builds the Kubernetes version
# pinned in tools/k8s-1.33 (scripts/pin-kubernetes.sh 1.33.13) instead of the default in tools/k8s,
# each into its own directory and cache entry. Extra go build flags: GOFLAGS=-p=1 and the like.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly" CGO_ENABLED=0
cache=${STORAGECLASS_MIGRATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/storageclass-migrate}

module_version() { # module dir, module path
  (cd "$root/tools/$1" && go list -m -f '{{.Version}}' "$2")
}

k8s_tools=k8s
if [ -n "${KUBERNETES_VERSION:-}" ]; then
  requested=${KUBERNETES_VERSION#v}
  minor_dir=k8s-$(echo "$requested" | cut -d. -f1,2)
  if [ -f "$root/tools/$minor_dir/go.mod" ]; then
    k8s_tools=$minor_dir
  fi
fi
k8s_version=$(module_version "$k8s_tools" k8s.io/kubernetes)
if [ -n "${KUBERNETES_VERSION:-}" ]; then
  case $k8s_version. in
  "v$requested".*) ;;
  *)
    echo "build-control-plane: Kubernetes $KUBERNETES_VERSION is not pinned (tools/k8s has" \
      "$(module_version k8s k8s.io/kubernetes); scripts/pin-kubernetes.sh <${requested}.x> pins one)" >&2
    exit 1
    ;;
  esac
fi
etcd_version=$(module_version etcd go.etcd.io/etcd/server/v3)
out="$root/target/tools/bin-k8s-$k8s_version-etcd-$etcd_version"
bins=(kube-apiserver kube-controller-manager kubectl etcd)

complete() { # dir
  local b
  for b in "${bins[@]}"; do [ -x "$1/$b" ] || return 1; done
}

if complete "$out"; then
  echo "$out"
  exit 0
fi
mkdir -p "$out"
if complete "$cache/${out##*/}"; then
  cp "$cache/${out##*/}"/* "$out/"
  echo "$out"
  exit 0
fi

minor=$(echo "$k8s_version" | cut -d. -f2)
version_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  version_flags+=" -X $pkg.gitTreeState=clean"
done

start=$(date +%s)
(cd "$root/tools/$k8s_tools" && go build -trimpath -pgo=off -tags selinux,notest \
  -ldflags "-s -w$version_flags" -o "$out/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl) >&2
(cd "$root/tools/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3) >&2
echo "built control plane $k8s_version, etcd $etcd_version in $(( $(date +%s) - start ))s" >&2

mkdir -p "$cache/${out##*/}"
cp "$out"/* "$cache/${out##*/}/"
echo "$out"
