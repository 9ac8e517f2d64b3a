#!/usr/bin/env bash
# Pins the control plane's Go modules to a Kubernetes and an etcd version:
#   scripts/pin-kubernetes.sh 1.37.2 3.6.16   the default version: tools/k8s and tools/etcd
#   scripts/pin-kubernetes.sh 1.33.13         another tested minor: tools/k8s-1.33 only
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0 and
# replaces them with ./staging/... in its own go.mod, which a consumer does not see. So
# its go.mod (tools/k8s/go.mod, ...) replaces each with its published v0.X.Y, taking the list from the replace
# block of the module's own go.mod, as the proxy serves it. Rewrites the module directory
# (go.mod and go.sum); etcd, in tools/etcd, serves every version. Build with
# scripts/build-control-plane.sh (KUBERNETES_VERSION=1.33 for tools/k8s-1.33).
set -euo pipefail

[ $# -eq 1 ] || [ $# -eq 2 ] || { sed -n '2,12s/^# \{0,1\}//p' "$0" >&2; exit 2; }
k8s=${1#v} etcd=${2:-}
etcd=${etcd#v}
if [ $# -eq 2 ]; then
  tools=k8s
else
  tools=k8s-$(echo "$k8s" | cut -d. -f1,2)
fi
root=$(cd "$(dirname "$0")/.." && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

# Runs a go command, showing its output only when it fails.
quiet() {
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }
}

gomod=$(go mod download -json "k8s.io/kubernetes@v$k8s" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$gomod" ] || { echo "pin-kubernetes: k8s.io/kubernetes v$k8s is not served" >&2; exit 1; }
go_line=$(sed -n 's/^go \(.*\)/\1/p' "$gomod")
godebug=$(sed -n 's/^godebug \(.*\)/\1/p' "$gomod")
staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/.*#\1#p' "$gomod")

mkdir -p "$root/tools/$tools"
cd "$root/tools/$tools"
rm -f go.mod go.sum
{
  echo "module storageclass-migrate.invalid/tools/$tools"
  echo
  echo "go $go_line"
  [ -z "$godebug" ] || printf '\ngodebug %s\n' "$godebug"
} >go.mod
for module in $staging; do
  go mod edit -replace="$module=$module@v0.${k8s#1.}"
done
quiet go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@v$k8s" \
  "k8s.io/kubernetes/cmd/kube-controller-manager@v$k8s" "k8s.io/kubernetes/cmd/kubectl@v$k8s"
quiet go mod tidy
echo "pin-kubernetes: tools/$tools at k8s.io/kubernetes v$k8s ($(echo "$staging" | wc -w) staging modules replaced)" >&2
[ $# -eq 2 ] || exit 0

cd "$root/tools/etcd"
rm -f go.mod go.sum
printf 'module storageclass-migrate.invalid/tools/etcd\n\ngo %s\n' "$go_line" >go.mod
quiet go get -tool "go.etcd.io/etcd/server/v3@v$etcd"
quiet go mod tidy
echo "pin-kubernetes: tools/etcd at go.etcd.io/etcd/server/v3 v$etcd" >&2
