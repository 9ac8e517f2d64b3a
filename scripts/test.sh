#!/usr/bin/env bash
# Runs the whole test suite against one control plane: builds the control-plane binaries, starts
# them in a temporary directory, runs `cargo test --all-targets [ARGS...]` with
# STORAGECLASS_MIGRATE_CONTROL_PLANE pointing at it, and stops it again, also when the tests
# fail or the run is interrupted. Exits with cargo's status. The directory (with the servers'
# logs) is removed after a successful run and kept otherwise.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cp=$root/scripts/control-plane.sh

"$root/scripts/build-control-plane.sh" >/dev/null
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
"$cp" start "$dir" --owner-pid $$
export STORAGECLASS_MIGRATE_CONTROL_PLANE=$dir

status=0
(cd "$root" && cargo test --all-targets "$@") || status=$?
exit "$status"
