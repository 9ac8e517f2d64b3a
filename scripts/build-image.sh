#!/usr/bin/env bash
# Lints the Dockerfile (scripts/lint-dockerfile.sh), then builds the container image without a
# Docker engine: the fully static release binary on the host, then the Dockerfile's
# runtime-prebuilt target with buildah (vfs storage, chroot isolation, no daemon). Runs the
# image's binary as uid 65532 to show it works there, checks the image's configuration and
# contents, and reports binary and image sizes.
#
#   scripts/build-image.sh [IMAGE]      default IMAGE: localhost/storageclass-migrate:<version>
#
# Environment: IMAGE_ARCHIVE=PATH also writes the image there as an OCI archive (to load it into a
# cluster's runtime, or push it with skopeo); BUILDAH_ROOT=DIR keeps buildah's storage under DIR
# instead of its default. Needs buildah (scripts/ci-install.sh installs it).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

script_name=build-image
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

command -v buildah >/dev/null || die "buildah is not installed (scripts/ci-install.sh installs it)"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || die "no version in Cargo.toml"
image=${1:-localhost/storageclass-migrate:$version}
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
target=x86_64-unknown-linux-gnu
binary="target/$target/release/storageclass-migrate"

storage=(--storage-driver vfs)
if [ -n "${BUILDAH_ROOT:-}" ]; then
  storage+=(--root "$BUILDAH_ROOT/root" --runroot "$BUILDAH_ROOT/run")
fi
bah() { buildah "${storage[@]}" "$@"; }

# 0. The Dockerfile passes hadolint.
"$root/scripts/lint-dockerfile.sh"

# 1. The static binary.
start=$(date +%s)
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$target" >&2
binary_seconds=$(($(date +%s) - start))
# ldd prints "statically linked" for static and static-pie executables, and a library list else.
ldd "$binary" 2>&1 | grep -q -e 'statically linked' -e 'not a dynamic executable' ||
  die "$binary is dynamically linked: $(ldd "$binary" 2>&1 | tr '\n' ' ')"
log "binary: $binary, statically linked"

# 2. The image. The one it replaces under the same name is removed once untagged.
previous=$(bah inspect --type image --format '{{.FromImageID}}' "$image" 2>/dev/null || true)
start=$(date +%s)
bah bud --isolation chroot --layers=false --squash --pull=never \
  --target runtime-prebuilt \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  --tag "$image" --file Dockerfile . >&2
image_seconds=$(($(date +%s) - start))
if [ -n "$previous" ] && [ "$previous" != "$(bah inspect --type image --format '{{.FromImageID}}' "$image")" ]; then
  bah rmi "$previous" >/dev/null 2>&1 || true
fi

# 3. Its configuration: numeric non-root user, the binary as entrypoint, one layer.
format='{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|{{index .OCIv1.Config.Labels "org.opencontainers.image.version"}}|{{len .OCIv1.RootFS.DiffIDs}}'
config=$(bah inspect --type image --format "$format" "$image")
[ "$config" = "65532:65532|[/storageclass-migrate]|$version|1" ] ||
  die "unexpected image config (user|entrypoint|version label|layers): $config"
log "config: user 65532:65532, entrypoint [/storageclass-migrate], version label $version, one layer"

# 4. Run it as uid 65532 in a container of the image, and look at what the image holds.
container=$(bah from --pull-never "$image")
cleanup() { bah rm "$container" >/dev/null 2>&1 || true; }
trap cleanup EXIT
run_out=$(bah run --isolation chroot --user 65532:65532 "$container" -- /storageclass-migrate --version)
[ "$run_out" = "storageclass-migrate $version" ] || die "--version printed '$run_out'"
log "runs as 65532:65532: $run_out"
if bah run --isolation chroot --user 65532:65532 "$container" -- /bin/sh -c true >/dev/null 2>&1; then
  die "the image has a shell"
fi
mount=$(bah mount "$container")
# buildah run leaves mount points (/dev, /proc, /sys, /etc/hosts, ...); the files are the image's.
files=$(cd "$mount" && find . -type f ! -path './dev/*' ! -path './proc/*' ! -path './sys/*' \
  ! -path './etc/*' ! -path './run/*' | sort | tr '\n' ' ')
bah umount "$container" >/dev/null
[ "$files" = "./storageclass-migrate " ] || die "the image holds more than the binary: $files"
log "no shell; the binary is the only file"

# 5. Sizes: uncompressed (as a node stores it) and gzip-compressed (as a registry stores it).
binary_bytes=$(stat -c %s "$binary")
uncompressed_bytes=$(bah inspect --type image --format '{{.Manifest}}' "$image" |
  grep -o '"size":[0-9]*' | awk -F: '{ s += $2 } END { print s }')
layout=$(mktemp -d)
bah push --quiet --compression-format gzip "$image" "oci:$layout/oci:$version" >&2
index_digest=$(grep -o '"digest":"sha256:[0-9a-f]*"' "$layout/oci/index.json" | head -n 1 | cut -d'"' -f4)
manifest="$layout/oci/blobs/sha256/${index_digest#sha256:}"
compressed_bytes=$(stat -c %s "$manifest")
while read -r digest; do
  compressed_bytes=$((compressed_bytes + $(stat -c %s "$layout/oci/blobs/sha256/${digest#sha256:}")))
done < <(grep -o '"digest":"sha256:[0-9a-f]*"' "$manifest" | cut -d'"' -f4)
rm -rf "$layout"
if [ -n "${IMAGE_ARCHIVE:-}" ]; then
  rm -f "$IMAGE_ARCHIVE"
  bah push --quiet "$image" "oci-archive:$IMAGE_ARCHIVE:$image" >&2
fi

mib() { awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'; }
echo "image:              $image"
echo "binary:             $binary_bytes bytes ($(mib "$binary_bytes")), static-pie, stripped (cargo: ${binary_seconds}s)"
echo "image uncompressed: $uncompressed_bytes bytes ($(mib "$uncompressed_bytes")), config and one layer"
echo "image compressed:   $compressed_bytes bytes ($(mib "$compressed_bytes")), gzip, as in a registry"
echo "image build:        ${image_seconds}s (buildah bud)"
if [ -n "${IMAGE_ARCHIVE:-}" ]; then echo "archive:            $IMAGE_ARCHIVE"; fi
limit=$((10 * 1000 * 1000))
[ "$uncompressed_bytes" -le "$limit" ] ||
  die "the image is $uncompressed_bytes bytes uncompressed, over the 10 MB target"
