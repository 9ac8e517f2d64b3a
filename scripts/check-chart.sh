#!/usr/bin/env bash
# Checks the library chart (chart-snippet/) and the example charts (examples/app/, and
# examples/statefulset/ for dependencies and lint):
#   1. builds helm 3 (and helm 4 unless CHECK_CHART_HELM4=0) with build-helm.sh, cached;
#   2. chart-snippet/templates/_rules.tpl is current with rbac-rules.json (gen-chart-rules.sh);
#   3. helm dependency build of the example (offline: file:// dependency), helm lint --strict of
#      both charts;
#   4. render tests (scripts/chart_checks.py): hook annotations and weights, RBAC rules against
#      rbac-rules.json and against what the binary sends, for every setting (verbs a setting does
#      not need are absent), data: copy, snapshot and auto (their env, the copy's rules against
#      what its pre-flight asks, their refusal of stripAllFinalizers and deleteRetainedPV, the
#      refusal of the moved copy.deleteOldVolume), the toggle, the schema's and templates'
#      messages for bad values, env (RELEASE_NAME, DEADLINE), the deadline check,
#      securityContext, podFailurePolicy and backoffLimit, names; with helm 4 as well;
#   5. shellcheck of every shell script under scripts/ and .ci/;
#   6. if STORAGECLASS_MIGRATE_CONTROL_PLANE names a running control plane's directory (with
#      admin.kubeconfig, as scripts/control-plane.sh start writes), `kubectl apply --dry-run=server`
#      of every rendered object, in a namespace that warns on the restricted Pod Security
#      Standard: the apiserver must accept them all, without warnings. Skipped otherwise.
# Needs python3 with PyYAML and shellcheck (scripts/ci-install.sh installs both). Work files go
# to target/chart-check/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work="$root/target/chart-check"

script_name=check-chart
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

python=""
find_python_with_yaml
command -v shellcheck >/dev/null || die "shellcheck is not installed (scripts/ci-install.sh installs it)"

# 1. helm.
helm=$(scripts/build-helm.sh)
helm4=""
if [ "${CHECK_CHART_HELM4:-1}" != 0 ]; then
  helm4=$(HELM_MODULE=helm4 scripts/build-helm.sh)
fi
log "$("$helm" version --short)${helm4:+ and $("$helm4" version --short)}"

# A fresh helm configuration, as on a new machine: no repositories, no plugins.
rm -rf "$work"
mkdir -p "$work/helm-home"
export HELM_CONFIG_HOME="$work/helm-home/config" HELM_CACHE_HOME="$work/helm-home/cache" \
  HELM_DATA_HOME="$work/helm-home/data"

# 2. The library's copy of the RBAC rules.
scripts/gen-chart-rules.sh --check
log "templates/_rules.tpl matches rbac-rules.json"

# 3. Dependencies and lint.
"$helm" dependency build examples/app >&2
"$helm" dependency build examples/statefulset >&2
"$helm" lint --strict chart-snippet >&2
"$helm" lint --strict examples/app >&2
"$helm" lint --strict examples/statefulset >&2

# 4. Render tests.
"$python" -B scripts/chart_checks.py --helm "$helm" ${helm4:+--helm4 "$helm4"} --work "$work"

# 5. shellcheck.
scripts=()
for file in scripts/* .ci/*; do
  [ -f "$file" ] || continue
  if [[ $file == *.sh ]] || head -n 1 "$file" | grep -qE '^#!.*[/ ](ba|da|k)?sh( |$)'; then
    scripts+=("$file")
  fi
done
shellcheck --external-sources "${scripts[@]}"
log "shellcheck: ${#scripts[@]} scripts clean (${scripts[*]})"

# 6. The apiserver's opinion, when a control plane runs.
control_plane=${STORAGECLASS_MIGRATE_CONTROL_PLANE:-}
if [ -z "$control_plane" ]; then
  log "server-side dry run skipped: STORAGECLASS_MIGRATE_CONTROL_PLANE is not set (the directory of scripts/control-plane.sh start)"
  exit 0
fi
[ -f "$control_plane/admin.kubeconfig" ] ||
  die "STORAGECLASS_MIGRATE_CONTROL_PLANE=$control_plane has no admin.kubeconfig"
# kubectl: the one the control plane's env file names, else one built by build-control-plane.sh.
kubectl=$(sed -n "s/^export KUBECTL='\(.*\)'$/\1/p" "$control_plane/env" 2>/dev/null || true)
if [ ! -x "$kubectl" ]; then
  kubectl=""
  for candidate in "$root"/target/tools/bin-k8s-*/kubectl; do
    if [ -x "$candidate" ]; then kubectl=$candidate; fi
  done
fi
[ -n "$kubectl" ] || kubectl=$(command -v kubectl) || die "no kubectl (scripts/build-control-plane.sh builds one)"
k() { "$kubectl" --kubeconfig "$control_plane/admin.kubeconfig" "$@"; }
k get --raw /readyz >/dev/null || die "the control plane in $control_plane does not answer"

namespace="chart-check-$$"
k create namespace "$namespace" >&2
trap 'k delete namespace "$namespace" --wait=false >/dev/null 2>&1 || true' EXIT
k label namespace "$namespace" pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/warn=restricted >&2
for args in "" "--set storageclassMigrate.deleteRetainedPV=true --set storageclassMigrate.inUse=force" \
  "--set persistence.storageClass=- --set storageclassMigrate.stripAllFinalizers=true --set workload.enabled=true" \
  "--set storageclassMigrate.data=copy --set storageclassMigrate.copy.asUser=1000" \
  "--set storageclassMigrate.data=auto --set storageclassMigrate.copy.asUser=1000 --set storageclassMigrate.snapshot.class=csi --set storageclassMigrate.snapshot.deleteSnapshot=true"; do
  rendered="$work/server-dry-run.yaml"
  # shellcheck disable=SC2086 # $args is a list of words
  "$helm" template rel examples/app --namespace "$namespace" $args \
    --kube-version "$(k version -o json | "$python" -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')" \
    >"$rendered"
  if ! out=$(k apply --dry-run=server --namespace "$namespace" -f "$rendered" 2>&1); then
    die "the apiserver rejected the objects rendered with '${args:-defaults}':
$out"
  fi
  if grep -qi warning <<<"$out"; then
    die "the apiserver warned about the objects rendered with '${args:-defaults}':
$out"
  fi
  log "server dry run (${args:-defaults}): $(grep -c 'created (server dry run)' <<<"$out") objects accepted, no warnings"
done
