#!/usr/bin/env bash
# Pins the CSI sidecars that `scripts/control-plane.sh start DIR --csi` runs:
#   scripts/pin-csi.sh 6.4.0 8.7.0   external-provisioner v6.4.0, external-snapshotter v8.7.0
# Each gets its own module (tools/csi/provisioner, tools/csi/snapshotter): they replace the
# Kubernetes staging modules with different versions. A consumer of a module does not see that
# module's replace directives, so each go.mod here copies them from the upstream go.mod as the
# proxy serves it, less those pointing into the upstream repository (external-snapshotter's
# client/v8 => ./client becomes a plain requirement of the same version). Rewrites go.mod and
# go.sum; build with scripts/build-csi.sh. The test driver (tools/csi/driver) is this project's
# own source and is not touched.
set -euo pipefail

[ $# -eq 2 ] || { sed -n '2,10s/^# \{0,1\}//p' "$0" >&2; exit 2; }
provisioner=v${1#v} snapshotter=v${2#v}
root=$(cd "$(dirname "$0")/.." && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=mod

quiet() {
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }
}

pin() { # dir module version package...
  local dir=$1 module=$2 version=$3 gomod go_line line
  shift 3
  gomod=$(go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$gomod" ] || { echo "pin-csi: $module $version is not served" >&2; exit 1; }
  go_line=$(sed -n 's/^go \(.*\)/\1/p' "$gomod")
  mkdir -p "$root/tools/csi/$dir"
  cd "$root/tools/csi/$dir"
  rm -f go.mod go.sum
  printf 'module storageclass-migrate.invalid/tools/csi/%s\n\ngo %s\n' "$dir" "$go_line" >go.mod
  # Both one-line (replace a => b v) and block forms; skip local paths.
  while read -r line; do
    [ -n "$line" ] || continue
    case $line in *" => ./"* | *" => ../"*) continue ;; esac
    go mod edit -replace="$(echo "$line" | sed 's/ => /=/; s/ \([^ ]*\)$/@\1/')"
  done < <(sed -n -e 's/^replace \(.* => .*\)$/\1/p' \
    -e '/^replace (/,/^)/{/^replace (/d; /^)/d; s/^[[:space:]]*//p}' "$gomod" | sed 's/ *\/\/.*//')
  local tools=()
  for p in "$@"; do tools+=("$p@$version"); done
  quiet go get -tool "${tools[@]}"
  quiet go mod tidy
  echo "pin-csi: tools/csi/$dir at $module $version ($(grep -c '^replace' go.mod) replaces)" >&2
}

pin provisioner github.com/kubernetes-csi/external-provisioner/v6 "$provisioner" \
  github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner
pin snapshotter github.com/kubernetes-csi/external-snapshotter/v8 "$snapshotter" \
  github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter \
  github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller
