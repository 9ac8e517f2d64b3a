#!/usr/bin/env bash
# Builds Flux's source-controller and helm-controller from the pinned Go modules in
# tools/flux/<controller>/ into target/tools/<controller>-<version>/, next to the controller's
# CustomResourceDefinitions from the same module version (crds/*.yaml, the module's
# config/crd/bases). A build already present is reused; a copy is kept in a per-user cache so a
# fresh clone on the same machine builds nothing either. Prints one directory per controller.
#
#   scripts/build-flux.sh                     # both, source-controller first
#   scripts/build-flux.sh helm-controller     # one of them
#
# Extra go build flags: GOFLAGS=-p=1 and the like.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly" CGO_ENABLED=0
cache=${STORAGECLASS_MIGRATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/storageclass-migrate}

complete() { # dir, controller
  [ -x "$1/$2" ] && compgen -G "$1/crds/*.yaml" >/dev/null
}

build() { # controller
  local controller=$1 module=github.com/fluxcd/$1 version out dir start
  [ -f "$root/tools/flux/$controller/go.mod" ] || {
    echo "build-flux.sh: unknown controller '$controller' (source-controller or helm-controller)" >&2
    exit 2
  }
  cd "$root/tools/flux/$controller"
  version=$(go list -m -f '{{.Version}}' "$module")
  out="$root/target/tools/$controller-$version"

  if complete "$out" "$controller"; then
    echo "$out"
    return
  fi
  if complete "$cache/${out##*/}" "$controller"; then
    rm -rf "$out.tmp.$$" && mkdir -p "$out.tmp.$$" "$(dirname "$out")"
    cp -r "$cache/${out##*/}"/. "$out.tmp.$$/"
    rm -rf "$out" && mv "$out.tmp.$$" "$out"
    echo "$out"
    return
  fi

  start=$(date +%s)
  rm -rf "$out.tmp.$$" && mkdir -p "$out.tmp.$$/crds"
  go build -trimpath -pgo=off -ldflags "-s -w" -o "$out.tmp.$$/$controller" "$module" >&2
  dir=$(go mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  cp "$dir"/config/crd/bases/*.yaml "$out.tmp.$$/crds/"
  chmod u+w "$out.tmp.$$"/crds/*.yaml
  rm -rf "$out" && mv "$out.tmp.$$" "$out"
  echo "built $controller $version in $(($(date +%s) - start))s" >&2

  rm -rf "$cache/${out##*/}.tmp.$$" && mkdir -p "$cache"
  cp -r "$out" "$cache/${out##*/}.tmp.$$"
  rm -rf "${cache:?}/${out##*/}" && mv "$cache/${out##*/}.tmp.$$" "$cache/${out##*/}"
  echo "$out"
}

if [ $# -eq 0 ]; then
  set -- source-controller helm-controller
fi
for controller in "$@"; do
  build "$controller"
done
