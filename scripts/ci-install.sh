#!/usr/bin/env bash
# Installs the Debian packages that the chart and image checks need, if any is missing:
#   - buildah: builds and runs the image without a Docker engine (build-image.sh,
#     check-image-in-cluster.sh);
#   - the shell script linter of check-chart.sh (package shellcheck);
#   - python3-yaml: PyYAML for the render tests (check-chart.sh, check-image-in-cluster.sh), used
#     when the python3 on PATH has none;
#   - time: /usr/bin/time -v, the peak-memory measure (check-image-in-cluster.sh).
# Helm is built from the Go module proxy (build-helm.sh) and hadolint comes from PyPI
# (lint-dockerfile.sh); neither is installed here. Does nothing, quickly, when all are present.
# Needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(buildah shellcheck python3-yaml time)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "ci-install: all present: ${packages[*]}" >&2
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
echo "ci-install: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q >&2
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
echo "ci-install: installed ${missing[*]}" >&2
