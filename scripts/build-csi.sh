#!/usr/bin/env bash
# Builds the CSI stack that `scripts/control-plane.sh start DIR --csi` runs, from the Go modules
# pinned in tools/csi (scripts/pin-csi.sh):
#   target/tools/csi-provisioner-<v>-snapshotter-<v>/  csi-provisioner, csi-snapshotter,
#       snapshot-controller, and crds/ (the VolumeSnapshot CRDs of external-snapshotter's client/v8)
#   target/tools/csi-driver-<hash of tools/csi/driver>/csi-test-driver  the project's test driver
# A build already present is reused; a copy is kept in the per-user cache, so a fresh clone on the
# same machine builds nothing either. Prints the two directories, one a line, in that order.
# Extra go build flags: GOFLAGS=-p=2 and the like.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly" CGO_ENABLED=0
cache=${STORAGECLASS_MIGRATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/storageclass-migrate}

module_version() { # module dir under tools/csi, module path
  (cd "$root/tools/csi/$1" && go list -m -f '{{.Version}}' "$2")
}

complete() { # dir files...
  local d=$1 f
  shift
  for f in "$@"; do [ -e "$d/$f" ] || return 1; done
}

# Reuses target/tools/NAME or the cache's copy; otherwise runs BUILD (a function) into a fresh
# directory and keeps a copy in the cache. Prints the directory.
reuse_or_build() { # name build files...
  local name=$1 build=$2 out=$root/target/tools/$1 tmp
  shift 2
  if complete "$out" "$@"; then
    echo "$out"
    return 0
  fi
  if complete "$cache/$name" "$@"; then
    rm -rf "$out" && mkdir -p "$root/target/tools" && cp -r "$cache/$name" "$out"
    echo "$out"
    return 0
  fi
  tmp=$root/target/tools/$name.tmp.$$
  rm -rf "$tmp" && mkdir -p "$tmp"
  "$build" "$tmp"
  rm -rf "$out" && mv "$tmp" "$out"
  mkdir -p "$cache"
  rm -rf "$cache/$name.tmp.$$" && cp -r "$out" "$cache/$name.tmp.$$"
  rm -rf "${cache:?}/$name" && mv "$cache/$name.tmp.$$" "$cache/$name"
  echo "$out"
}

provisioner_version=$(module_version provisioner github.com/kubernetes-csi/external-provisioner/v6)
snapshotter_version=$(module_version snapshotter github.com/kubernetes-csi/external-snapshotter/v8)

build_sidecars() { # out
  local start
  start=$(date +%s)
  (cd "$root/tools/csi/provisioner" && go build -trimpath -pgo=off \
    -ldflags "-s -w -X main.version=$provisioner_version" -o "$1/" \
    github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner) >&2
  (cd "$root/tools/csi/snapshotter" && go build -trimpath -pgo=off \
    -ldflags "-s -w -X main.version=$snapshotter_version" -o "$1/" \
    github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter \
    github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller) >&2
  local client
  client=$(cd "$root/tools/csi/snapshotter" &&
    go list -m -f '{{.Dir}}' github.com/kubernetes-csi/external-snapshotter/client/v8)
  mkdir -p "$1/crds"
  cp "$client"/config/crd/snapshot.storage.k8s.io_volumesnapshot*.yaml "$1/crds/"
  chmod 644 "$1"/crds/*
  echo "built external-provisioner $provisioner_version, external-snapshotter" \
    "$snapshotter_version in $(($(date +%s) - start))s" >&2
}

build_driver() { # out
  local start
  start=$(date +%s)
  (cd "$root/tools/csi/driver" && go build -trimpath -ldflags "-s -w" -o "$1/csi-test-driver" .) >&2
  echo "built the CSI test driver in $(($(date +%s) - start))s" >&2
}

reuse_or_build "csi-provisioner-$provisioner_version-snapshotter-$snapshotter_version" \
  build_sidecars csi-provisioner csi-snapshotter snapshot-controller \
  crds/snapshot.storage.k8s.io_volumesnapshots.yaml
driver_hash=$(cd "$root/tools/csi/driver" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-12)
reuse_or_build "csi-driver-$driver_hash" build_driver csi-test-driver
