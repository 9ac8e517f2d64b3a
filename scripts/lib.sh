# Shared by the project's scripts; sourced after setting script_name, never run.
# shellcheck shell=bash

log() { echo "${script_name:?}: $*" >&2; }

die() {
  log "error: $*"
  exit 1
}

# Sets $python to a python3 with PyYAML: the one on PATH, else Debian's.
find_python_with_yaml() {
  local candidate
  for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import yaml' 2>/dev/null; then
      # shellcheck disable=SC2034 # read by the script that sources this file
      python=$candidate
      return 0
    fi
  done
  die "no python3 with PyYAML (scripts/ci-install.sh installs python3-yaml)"
}
