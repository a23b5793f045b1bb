#!/usr/bin/env bash
# Release build (make release VERSION=vX.Y.Z): reproducible plugin binaries for
# linux and darwin, amd64 and arm64, a SHA256SUMS file, and for each binary the
# commands that install and register it in Vault.
#
#   scripts/release.sh vX.Y.Z[-suffix]
#
# DIST_DIR (default dist/) is where the binaries and SHA256SUMS go. The binaries
# are byte-identical for the same source and Go toolchain wherever the tree is
# checked out: no cgo, no file paths (-trimpath), no VCS stamp, no build id, and
# the GOFLAGS and architecture levels of the caller's environment are ignored.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name=vault-plugin-secrets-bearer
targets=(linux/amd64 linux/arm64 darwin/amd64 darwin/arm64)
log() { echo "release: $*" >&2; }

version="${1:-}"
semver='^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$'
if [[ ! "$version" =~ $semver ]]; then
	log "VERSION must look like v1.2.3 or v1.2.3-rc.1, got '${version}'"
	exit 2
fi
dist="${DIST_DIR:-$root/dist}"
mkdir -p "$dist"
dist="$(cd "$dist" && pwd)"

cd "$root"
module="$(go list -m)"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly GOAMD64=v1 GOARM64=v8.0

start=$SECONDS
files=()
for target in "${targets[@]}"; do
	file="${name}_${version}_${target%/*}_${target#*/}"
	log "building $file"
	GOOS="${target%/*}" GOARCH="${target#*/}" go build -trimpath -buildvcs=false \
		-ldflags "-s -w -buildid= -X $module.Version=$version" \
		-o "$dist/$file" "./cmd/$name"
	files+=("$file")
done
(cd "$dist" && sha256sum "${files[@]}" >SHA256SUMS)
log "built ${#files[@]} binaries and $dist/SHA256SUMS in $((SECONDS - start))s"

cat <<EOF
Install: copy the binary for the server's platform into Vault's plugin_directory
as ${name}_${version} (on every node of a cluster), then register it once.
EOF
while read -r sum file; do
	target="${file#"${name}_${version}_"}"
	cat <<EOF

${target/_//}:
  cp $dist/$file <plugin_directory>/${name}_${version}
  vault plugin register -sha256=$sum -command=${name}_${version} -version=$version secret bearer
EOF
done <"$dist/SHA256SUMS"
