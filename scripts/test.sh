#!/usr/bin/env bash
# Runs every test against one local control plane:
#   1. installs the Debian packages the checks need (ci-install.sh; quick when present), builds
#      the control-plane binaries, helm 3 and helm 4 (the end-to-end tests run both), the CSI
#      stack (tests/csi.rs), Flux's source-controller and helm-controller (tests/flux.rs) and the
#      image (each cached);
#   2. starts the control plane, with the CSI stack, in a temporary directory;
#   3. `cargo test --workspace --all-targets [ARGS...]` (the testkit crate's own tests too) with
#      STORAGECLASS_MIGRATE_CONTROL_PLANE pointing at it: first every test but the helm
#      scenarios (`<scenario>::helm_3`, `::helm_4`), then those, HELM_TEST_THREADS (default 6) at
#      a time. ARGS with `--` (test name filters) run once, as given;
#   4. the chart checks (lint, render tests, server-side dry run) and the image run in the cluster;
#   5. stops it again, also when a step fails or the run is interrupted.
# Exits non-zero if any step failed. The directory (with the servers' logs) is removed after a
# successful run and kept otherwise. With ARGS, only step 3 runs after the builds; ARGS that
# select targets (--test migrate, --lib, ...) replace --all-targets.
#
# KUBERNETES_VERSION=1.33 runs against the control plane pinned in tools/k8s-1.33 instead of the
# default (tools/k8s); see scripts/build-control-plane.sh.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cp=$root/scripts/control-plane.sh

"$root/scripts/ci-install.sh"
"$root/scripts/build-control-plane.sh" >/dev/null
"$root/scripts/build-helm.sh" >/dev/null
HELM_MODULE=helm4 "$root/scripts/build-helm.sh" >/dev/null
"$root/scripts/build-csi.sh" >/dev/null
"$root/scripts/build-flux.sh" >/dev/null
"$root/scripts/build-image.sh"
dir=$(mktemp -d "${TMPDIR:-/tmp}/storageclass-migrate-test.XXXXXX")

status=1
# shellcheck disable=SC2317 # run by the EXIT trap
finish() {
  trap '' INT TERM # let the clean-up finish
  "$cp" stop "$dir" || true
  if [ "$status" = 0 ]; then
    rm -rf "$dir"
  else
    echo "control-plane logs kept in $dir/logs" >&2
  fi
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The owner watchdog is a safety net should this script be killed without running its traps.
# --csi: the CSI stack for tests/csi.rs (about 4 s more; its build is cached).
"$cp" start "$dir" --owner-pid $$ --csi
export STORAGECLASS_MIGRATE_CONTROL_PLANE=$dir

# cargo ignores --test, --lib and the like next to --all-targets.
targets=--all-targets
filters=
for arg in "$@"; do
  case $arg in
  --)
    filters=yes
    break
    ;;
  --lib | --bins | --bin | --bin=* | --tests | --test | --test=* | --examples | --example | \
    --example=* | --benches | --bench | --bench=* | --doc) targets= ;;
  esac
done

status=0
cargo_test() { (cd "$root" && cargo test --workspace $targets --no-fail-fast "$@") || status=$?; }
if [ -n "$filters" ]; then
  cargo_test "$@"
else
  # The helm scenarios (tests named <scenario>::helm_3 and ::helm_4) mostly wait for helm, the
  # hook and the controllers: they run six at a time, after the other tests (the harness's
  # default, one per core).
  cargo_test "$@" -- --skip ::helm_
  cargo_test "$@" -- ::helm_ --test-threads "${HELM_TEST_THREADS:-6}"
fi
if [ $# -eq 0 ]; then
  "$root/scripts/check-chart.sh" || status=1
  "$root/scripts/check-image-in-cluster.sh" || status=1
fi
exit "$status"
