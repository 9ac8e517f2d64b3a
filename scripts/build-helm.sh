#!/usr/bin/env bash
# Builds the helm CLI from the pinned Go module in tools/helm into target/tools/helm-<version>/helm.
# A build already present is reused; a copy is kept in a per-user cache so a fresh clone on the
# same machine builds nothing either. Prints the path of the helm binary.
#
#   scripts/build-helm.sh          # helm v3 (tools/helm)
#   HELM_MODULE=helm4 scripts/build-helm.sh   # helm v4 from tools/helm4, if that module exists
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0
cache=${STORAGECLASS_MIGRATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/storageclass-migrate}
module_dir=${HELM_MODULE:-helm}

case $module_dir in
  helm) module=helm.sh/helm/v3 ;;
  helm4) module=helm.sh/helm/v4 ;;
  *) echo "build-helm.sh: unknown HELM_MODULE '$module_dir' (helm or helm4)" >&2; exit 2 ;;
esac
[ -f "$root/tools/$module_dir/go.mod" ] || {
  echo "build-helm.sh: tools/$module_dir/go.mod is missing" >&2
  exit 2
}

cd "$root/tools/$module_dir"
version=$(go list -m -f '{{.Version}}' "$module")
name="helm-$version"
out="$root/target/tools/$name"

if [ -x "$out/helm" ]; then
  echo "$out/helm"
  exit 0
fi
if [ -x "$cache/$name/helm" ]; then
  mkdir -p "$out"
  cp "$cache/$name/helm" "$out/helm.tmp.$$"
  mv "$out/helm.tmp.$$" "$out/helm"
  echo "$out/helm"
  exit 0
fi

# The same version stamps as helm's own Makefile. Helm 3 also stamps the Kubernetes version that
# `helm lint` and `.Capabilities.KubeVersion` assume (client-go v0.X.Y -> 1.X); Helm 4 reads it
# from its build info.
ldflags="-s -w -X $module/internal/version.version=$version"
ldflags+=" -X $module/internal/version.gitTreeState=clean"
if [ "$module_dir" = helm ]; then
  k8s_minor=$(go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
  for pkg in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X $module/$pkg.k8sVersionMajor=1 -X $module/$pkg.k8sVersionMinor=$k8s_minor"
  done
fi

start=$(date +%s)
mkdir -p "$out"
go build -trimpath -pgo=off -ldflags "$ldflags" -o "$out/helm.tmp.$$" "$module/cmd/helm" >&2
mv "$out/helm.tmp.$$" "$out/helm"
echo "built helm $version in $(( $(date +%s) - start ))s" >&2

mkdir -p "$cache/$name"
cp "$out/helm" "$cache/$name/helm.tmp.$$"
mv "$cache/$name/helm.tmp.$$" "$cache/$name/helm"
echo "$out/helm"
