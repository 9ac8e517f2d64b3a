#!/usr/bin/env bash
# Runs the image's binary as the hook's pod would, against a local control plane: the RBAC
# objects rendered from examples/app are applied for real, a token of the hook's ServiceAccount is
# mounted where in-cluster config looks for it, and the container (buildah run, uid 65532) gets the
# env of the rendered Job. Checks, for each scenario, the exit status and what is left in the
# cluster; then measures the binary's peak memory in a migration (/usr/bin/time -v).
#
#   scripts/check-image-in-cluster.sh [IMAGE]   default: localhost/storageclass-migrate:<version>
#
# The image must have been built (scripts/build-image.sh). The control plane is the one in
# $STORAGECLASS_MIGRATE_CONTROL_PLANE (a directory of scripts/control-plane.sh start), else one
# started here and stopped at the end. BUILDAH_ROOT as for build-image.sh.
# Prints one line per scenario and "N passed, N failed" last.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

script_name=check-image-in-cluster
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
image=${1:-localhost/storageclass-migrate:$version}
storage=(--storage-driver vfs)
if [ -n "${BUILDAH_ROOT:-}" ]; then
  storage+=(--root "$BUILDAH_ROOT/root" --runroot "$BUILDAH_ROOT/run")
fi
bah() { buildah "${storage[@]}" "$@"; }
command -v buildah >/dev/null || die "buildah is not installed (scripts/ci-install.sh installs it)"
[ -x /usr/bin/time ] || die "/usr/bin/time is not installed (Debian package time; scripts/ci-install.sh)"
bah inspect --type image "$image" >/dev/null 2>&1 || die "no image $image: run scripts/build-image.sh first"

python=""
find_python_with_yaml

helm=$(scripts/build-helm.sh)
work=$(mktemp -d "${TMPDIR:-/tmp}/scm-image-check.XXXXXX")
containers=()
control_plane=${STORAGECLASS_MIGRATE_CONTROL_PLANE:-}
own_control_plane=""
cleanup() {
  local c
  for c in "${containers[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
  if [ -n "$own_control_plane" ]; then scripts/control-plane.sh stop "$own_control_plane" >&2 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "$control_plane" ]; then
  own_control_plane="$work/control-plane"
  scripts/control-plane.sh start "$own_control_plane" --owner-pid $$ >&2
  control_plane=$own_control_plane
fi
[ -f "$control_plane/env" ] || die "$control_plane/env missing: not a control-plane.sh directory"
# shellcheck disable=SC1091 # written by control-plane.sh start
source "$control_plane/env"
k() { "$KUBECTL" --kubeconfig "$control_plane/admin.kubeconfig" "$@"; }
port=${APISERVER_URL##*:}
export HELM_CONFIG_HOME="$work/helm/config" HELM_CACHE_HOME="$work/helm/cache" HELM_DATA_HOME="$work/helm/data"
"$helm" dependency build examples/app >/dev/null

run=$$ # namespaces of this run: a re-run does not wait for the last run's to go
passed=0
failed=0
result() { # ok|fail name detail
  if [ "$1" = ok ]; then
    passed=$((passed + 1))
    echo "ok   $2${3:+: $3}"
  else
    failed=$((failed + 1))
    echo "FAIL $2: $3"
  fi
}

# setup NAMESPACE RECLAIM [with-claim]: classes slow and fast, a PV of class slow with the given
# reclaim policy, pre-bound to claim rel-data, and (with-claim) the chart's claim on class slow.
setup() {
  local ns=$1 reclaim=$2
  k create namespace "$ns" >/dev/null
  k apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: slow}
provisioner: example.com/none
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast}
provisioner: example.com/none
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-$ns}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: $reclaim
  storageClassName: slow
  # Below /tmp so that the hostPath deleter accepts it; never created, so nothing is removed.
  hostPath: {path: /tmp/storageclass-migrate-image-never-created/$ns}
  claimRef: {namespace: $ns, name: rel-data}
EOF
  if [ "${3:-}" = with-claim ]; then
    "$helm" template rel examples/app -n "$ns" --set persistence.storageClass=slow \
      -s templates/pvc.yaml | k apply -n "$ns" -f - >/dev/null
    for _ in $(seq 50); do
      [ "$(k get pvc rel-data -n "$ns" -o jsonpath='{.status.phase}')" = Bound ] && return 0
      sleep 0.2
    done
    die "claim $ns/rel-data did not bind"
  fi
}

# hook NAMESPACE HELM-ARGS...: applies the rendered hook's RBAC; writes the Job's env to
# $work/NAMESPACE.env and the service account's token, CA and namespace to $work/NAMESPACE.sa/.
hook() {
  local ns=$1
  shift
  "$helm" template rel examples/app -n "$ns" "$@" -s templates/storageclass-migrate.yaml >"$work/$ns.yaml"
  "$python" - "$work/$ns.yaml" "$work/$ns" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
job = [d for d in docs if d["kind"] == "Job"][0]
yaml.safe_dump_all([d for d in docs if d["kind"] != "Job"], open(sys.argv[2] + ".rbac.yaml", "w"))
pod = job["spec"]["template"]["spec"]
with open(sys.argv[2] + ".env", "w") as f:
    for e in pod["containers"][0]["env"]:
        f.write(f"{e['name']}={e['value']}\n")
open(sys.argv[2] + ".sa-name", "w").write(pod["serviceAccountName"])
EOF
  k apply -f "$work/$ns.rbac.yaml" >/dev/null
  mkdir -p "$work/$ns.sa"
  k create token "$(cat "$work/$ns.sa-name")" -n "$ns" --duration 10m >"$work/$ns.sa/token"
  cp "$CA_CERT" "$work/$ns.sa/ca.crt"
  printf '%s' "$ns" >"$work/$ns.sa/namespace"
  chmod 0755 "$work/$ns.sa"
  chmod 0644 "$work/$ns.sa"/*
}

# run_image NAMESPACE [VAR=VALUE...]: runs the image as the Job would; sets $status and $output.
run_image() {
  local ns=$1 line container
  shift
  local env_args=(--env KUBERNETES_SERVICE_HOST=127.0.0.1 --env "KUBERNETES_SERVICE_PORT=$port"
    --env TERMINATION_LOG=/dev/null)
  while IFS= read -r line; do env_args+=(--env "$line"); done <"$work/$ns.env"
  for line in "$@"; do env_args+=(--env "$line"); done
  container=$(bah from --pull-never "$image")
  containers+=("$container")
  status=0
  output=$(bah run --isolation chroot --user 65532:65532 \
    --volume "$work/$ns.sa:/var/run/secrets/kubernetes.io/serviceaccount:ro" \
    "${env_args[@]}" "$container" -- /storageclass-migrate 2>&1) || status=$?
}

exists() { k get "$@" >/dev/null 2>&1; }

# 1. Migration with the default settings: claim deleted, Retain volume kept.
ns=img-migrate-$run
setup $ns Retain with-claim
hook $ns --set persistence.storageClass=fast
run_image $ns
if [ $status -eq 0 ] && ! exists pvc rel-data -n $ns && exists pv pv-$ns; then
  result ok "default settings migrate slow -> fast, keep the Retain volume" "$(grep -v '^{' <<<"$output" | grep -m1 'migrated' | cut -c1-160)"
else
  result fail "default settings migrate" "status $status, output: $output"
fi

# 2. Nothing to do: fresh install (no claim yet).
ns=img-fresh-$run
setup $ns Retain
hook $ns --set persistence.storageClass=fast
run_image $ns
if [ $status -eq 0 ]; then result ok "fresh install: nothing to do"; else result fail "fresh install" "status $status: $output"; fi

# 3. Nothing to do: the claim is already on the desired class.
ns=img-same-$run
setup $ns Retain with-claim
hook $ns --set persistence.storageClass=slow
run_image $ns
if [ $status -eq 0 ] && exists pvc rel-data -n $ns; then
  result ok "claim already on the class: kept"
else
  result fail "claim already on the class" "status $status: $output"
fi

# 4. deleteRetainedPV: the chart adds PV patch; the volume is switched to Delete and its deleter
#    removes it.
ns=img-delete-pv-$run
setup $ns Retain with-claim
hook $ns --set persistence.storageClass=fast --set storageclassMigrate.deleteRetainedPV=true
run_image $ns
if [ $status -eq 0 ] && ! exists pvc rel-data -n $ns && ! exists pv pv-$ns; then
  result ok "deleteRetainedPV: claim and Retain volume deleted"
else
  result fail "deleteRetainedPV" "status $status: $output"
fi

# 5. The default RBAC does not allow deleting volumes: forcing the flag past the chart is denied.
ns=img-denied-$run
setup $ns Retain with-claim
hook $ns --set persistence.storageClass=fast
run_image $ns DELETE_RETAINED_PV=true
if [ $status -eq 4 ] && exists pv pv-$ns && grep -q -i forbidden <<<"$output"; then
  result ok "default RBAC denies deleting the volume (exit 4)" "$(grep -v '^{' <<<"$output" | head -n 1 | cut -c1-160)"
else
  result fail "default RBAC denies deleting the volume" "status $status, PV present: $(exists pv pv-$ns && echo yes || echo no), output: $output"
fi

# 6. Refused for safety (exit 3, which podFailurePolicy fails at once): the target class is missing.
ns=img-refused-$run
setup $ns Retain with-claim
hook $ns --set persistence.storageClass=no-such-class
run_image $ns
if [ $status -eq 3 ] && exists pvc rel-data -n $ns; then
  result ok "missing target class: refused, claim kept (exit 3)"
else
  result fail "missing target class" "status $status: $output"
fi

# 7. Peak memory of the same binary in a migration, with the hook's token, outside the image
#    (buildah would be counted too inside it).
ns=img-memory-$run
setup $ns Delete with-claim
hook $ns --set persistence.storageClass=fast
cat >"$work/$ns.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$APISERVER_URL", certificate-authority: "$CA_CERT"}}]
users: [{name: u, user: {tokenFile: "$work/$ns.sa/token"}}]
contexts: [{name: c, context: {cluster: c, user: u, namespace: $ns}}]
current-context: c
EOF
binary=target/x86_64-unknown-linux-gnu/release/storageclass-migrate
mapfile -t job_env <"$work/$ns.env"
status=0
env "${job_env[@]}" TERMINATION_LOG=/dev/null WAIT_TIMEOUT=5s \
  /usr/bin/time -v "$binary" --kubeconfig "$work/$ns.kubeconfig" >"$work/memory.out" 2>&1 || status=$?
rss_kib=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/memory.out")
# With no external provisioner here the Delete volume stays; the binary warns and still succeeds.
if [ $status -eq 0 ] && [ -n "$rss_kib" ] && [ "$rss_kib" -lt $((20 * 1024)) ]; then
  result ok "peak memory in a migration" "$rss_kib KiB maximum resident set"
else
  result fail "peak memory in a migration" "status $status, rss ${rss_kib:-?} KiB: $(cat "$work/memory.out")"
fi

for ns in img-{migrate,fresh,same,delete-pv,denied,refused,memory}-$run; do
  k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  k delete pv "pv-$ns" --wait=false >/dev/null 2>&1 || true
  k delete clusterrole,clusterrolebinding "storageclass-migrate:$ns:rel:rel-data" >/dev/null 2>&1 || true
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
