#!/usr/bin/env bash
# A Flux HelmRelease moves its claim from class "standard" to class "fast": Flux's
# source-controller and helm-controller (scripts/build-flux.sh) run against a local control plane,
# examples/app is served from a chart repository on a loopback port, and the hook Job's pod runs
# on this host (the test kit's hook runner, in place of a kubelet). Installs with class standard,
# then changes the HelmRelease's values to class fast and shows it become Ready with the claim on
# fast. Prints the HelmRelease's conditions, the claim and the volumes before and after.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

echo "== building the binary, helm, Flux and the control plane"
cargo build --release --locked --quiet
cargo build --release --locked --quiet -p testkit --bin flux-controllers
scripts/build-helm.sh >/dev/null
scripts/build-flux.sh >/dev/null
binary=$root/target/release/storageclass-migrate
dir=$(mktemp -d -t storageclass-migrate-demo-flux.XXXXXX)
flux_pid=""
stop() {
  if [ -n "$flux_pid" ]; then kill "$flux_pid" 2>/dev/null || true; fi
  scripts/control-plane.sh stop "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
scripts/control-plane.sh start "$dir"
# shellcheck source=/dev/null
source "$dir/env"
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }

k apply -f scripts/demo-objects.yaml >/dev/null

echo "== Flux's controllers, the chart repository and the hook runner"
STORAGECLASS_MIGRATE_CONTROL_PLANE=$dir STORAGECLASS_MIGRATE_BINARY=$binary \
  STORAGECLASS_MIGRATE_HOOK_RUNNER=binary "$root/target/release/flux-controllers" demo \
  >"$dir/flux.out" 2>"$dir/flux.err" &
flux_pid=$!
for _ in $(seq 600); do
  grep -q '^CHART_REPOSITORY_URL=' "$dir/flux.out" && break
  kill -0 "$flux_pid" 2>/dev/null || { cat "$dir/flux.err" >&2; exit 1; }
  sleep 0.2
done
url=$(sed -n 's/^CHART_REPOSITORY_URL=//p' "$dir/flux.out")
[ -n "$url" ] || { cat "$dir/flux.err" >&2; exit 1; }
sed 's/^flux: /   /' "$dir/flux.err"
echo "   chart repository $url"

release() { # class
  k apply --server-side --field-manager=demo -f - >/dev/null <<YAML
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata: {name: charts, namespace: demo}
spec: {url: "$url", interval: 10m}
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata: {name: app, namespace: demo}
spec:
  interval: 10m
  timeout: 90s
  chart:
    spec:
      chart: app
      version: 0.1.0
      sourceRef: {kind: HelmRepository, name: charts}
  values:
    persistence: {storageClass: $1}
    storageclassMigrate:
      image: {repository: localhost/storageclass-migrate, tag: demo}
YAML
  local generation
  generation=$(k get helmrelease app -n demo -o jsonpath='{.metadata.generation}')
  k wait -n demo helmrelease/app --timeout=180s \
    --for=jsonpath='{.status.observedGeneration}'="$generation" >/dev/null
}
show() {
  k get helmrelease app -n demo -o jsonpath='{range .status.conditions[*]}   HelmRelease {.type}={.status} ({.reason}): {.message}{"\n"}{end}'
  k get pvc -n demo -o custom-columns='CLAIM:.metadata.name,CLASS:.spec.storageClassName,VOLUME:.spec.volumeName,PHASE:.status.phase,UID:.metadata.uid'
  k get pv -o custom-columns='VOLUME:.metadata.name,CLASS:.spec.storageClassName,RECLAIM:.spec.persistentVolumeReclaimPolicy,PHASE:.status.phase,CLAIM:.spec.claimRef.name'
}

echo "== HelmRelease demo/app installs examples/app with persistence.storageClass=standard"
release standard
show

echo "== the HelmRelease's values change to persistence.storageClass=fast"
release fast
show
echo "== what the hook said in the upgrade (its termination message)"
sed -n 's/^  termination message: /   /p' "$dir/flux.out" | tail -n 1
echo "== the old volume demo-standard (Retain) is kept, Released, with the old data"
