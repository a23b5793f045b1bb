#!/usr/bin/env bash
# Prints the absolute path of a Vault binary on stdout; logs go to stderr.
#
# Order: $VAULT_BIN if set; `vault` from PATH; bin/vault; the per-machine
# cache ${XDG_CACHE_HOME:-$HOME/.cache}/vault-plugin-secrets-bearer/vault-<hash>;
# otherwise build the pinned Vault in tools/vault (several minutes cold) into
# bin/vault and copy it to the cache. <hash> is the sha256 of
# tools/vault/go.sum, so a fresh clone on the same machine reuses the build.
# Builds use the committed go.mod/go.sum only (-mod=readonly), so CI=true and
# a network limited to the Go module proxy are fine.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { echo "vault-bin: $*" >&2; }

abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }

if [[ -n "${VAULT_BIN:-}" ]]; then
	[[ -x "$VAULT_BIN" ]] || { log "VAULT_BIN=$VAULT_BIN is not executable"; exit 1; }
	abs "$VAULT_BIN"
	exit 0
fi

if p="$(command -v vault 2>/dev/null)" && [[ -n "$p" ]]; then
	log "using vault from PATH"
	abs "$p"
	exit 0
fi

hash="$(sha256sum "$root/tools/vault/go.sum" | cut -c1-16)"
cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/vault-plugin-secrets-bearer"
cached="$cache_dir/vault-$hash"
bin="$root/bin/vault"
stamp="$root/bin/vault.gosum"

# bin/vault is current unless a stamp from an older tools/vault says otherwise.
fresh_bin() { [[ -x "$bin" ]] && { [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" == "$hash" ]]; }; }

save_to_cache() {
	[[ -x "$cached" ]] && return 0
	mkdir -p "$cache_dir" && cp "$bin" "$cached.tmp.$$" && mv -f "$cached.tmp.$$" "$cached" &&
		log "cached $cached" || log "could not write the cache (continuing)"
}

if fresh_bin; then
	save_to_cache
	echo "$bin"
	exit 0
fi

if [[ -x "$cached" ]]; then
	log "using cached $cached"
	echo "$cached"
	exit 0
fi

# Build once, even when several callers race (go test runs packages in parallel).
mkdir -p "$root/bin" "$cache_dir"
if command -v flock >/dev/null; then
	exec 9>"$cache_dir/build.lock"
	flock 9
	if [[ -x "$cached" ]]; then
		echo "$cached"
		exit 0
	fi
fi

log "building Vault from tools/vault (pinned in tools/vault/go.mod); this takes several minutes the first time"
start=$SECONDS
trap 'rm -f "$bin.tmp.$$"' EXIT
(cd "$root/tools/vault" && go build -mod=readonly -o "$bin.tmp.$$" .) >&2
mv -f "$bin.tmp.$$" "$bin"
echo "$hash" >"$stamp"
log "built $bin in $((SECONDS - start))s"
save_to_cache
echo "$bin"
