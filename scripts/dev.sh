#!/usr/bin/env bash
# Local dev loop: build the plugin, start the demo OAuth2 provider and a dev Vault
# with the plugin registered by sha256 and mounted at bearer/, write connection and
# role "demo", print `vault read bearer/creds/demo`, then wait for Ctrl-C and clean up.
#
#   scripts/dev.sh          run until Ctrl-C
#   scripts/dev.sh --once   stop after printing (used by the end-to-end suite)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
once=false
[[ "${1:-}" == "--once" ]] && once=true
version="${VERSION:-v0.1.0}"
log() { echo "dev: $*" >&2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/bearer-dev.XXXXXX")"
pids=()
cleanup() {
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port prints a loopback TCP port that nobody listens on, nor on the next one
# (vault server -dev puts its cluster listener there). It stays below Linux's
# ephemeral range (32768 and up), where the local end of any outgoing connection
# could take the port before Vault binds it, and above the end-to-end suite's
# ports (10000-19999).
free_port() {
	local port
	for _ in $(seq 1 200); do
		port=$((20000 + RANDOM % 12000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
			! (exec 3<>"/dev/tcp/127.0.0.1/$((port + 1))") 2>/dev/null; then
			echo "$port"
			return 0
		fi
	done
	log "no free port found"
	return 1
}

# wait_for runs a command until it succeeds, for at most $1 seconds.
wait_for() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 0.2
	done
}

log "building the plugin ($version)"
mkdir -p "$work/plugins"
make -s -C "$root" build VERSION="$version" BIN_DIR="$work/plugins"
plugin="$work/plugins/vault-plugin-secrets-bearer"
sha="$(sha256sum "$plugin" | cut -d' ' -f1)"

log "getting a Vault binary"
vault="$("$root/scripts/vault-bin.sh")"

log "building and starting the demo provider"
(cd "$root/e2e" && go build -o "$work/demo-provider" ./cmd/demo-provider)
"$work/demo-provider" -client-id demo -username demo -password demo-password \
	>"$work/provider.out" 2>"$work/provider.log" &
pids+=($!)
wait_for 30 grep -q '^token_url=' "$work/provider.out" || { cat "$work/provider.log" >&2; exit 1; }
token_url="$(sed -n 's/^token_url=//p' "$work/provider.out")"
revocation_url="$(sed -n 's/^revocation_url=//p' "$work/provider.out")"

port="$(free_port)"
export VAULT_ADDR="http://127.0.0.1:$port"
export VAULT_TOKEN="root"
log "starting vault server -dev on $VAULT_ADDR"
# -dev-plugin-init=false: the plugin is registered below, explicitly, by sha256.
"$vault" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$port" \
	-dev-plugin-dir="$work/plugins" -dev-plugin-init=false -dev-no-store-token \
	>"$work/vault.log" 2>&1 &
pids+=($!)
wait_for 60 "$vault" status || { tail -n 50 "$work/vault.log" >&2; exit 1; }

"$vault" plugin register -sha256="$sha" -command=vault-plugin-secrets-bearer -version="$version" secret bearer >&2
"$vault" secrets enable -path=bearer -plugin-version="$version" bearer >&2
"$vault" write bearer/config/demo provider=generic token_url="$token_url" revocation_url="$revocation_url" \
	client_id=demo username=demo password=demo-password >&2
"$vault" write bearer/roles/demo config=demo >&2

echo
echo "\$ vault read bearer/creds/demo"
"$vault" read bearer/creds/demo
echo
echo "Vault is running with the bearer engine at bearer/. In another shell:"
echo "  export VAULT_ADDR=$VAULT_ADDR"
echo "  export VAULT_TOKEN=$VAULT_TOKEN"
echo "  export PATH=$(dirname "$vault"):\$PATH   # if vault is not on your PATH"
echo "  vault read bearer/creds/demo"
echo "Logs: $work/vault.log, $work/provider.log"

if $once; then
	exit 0
fi
echo "Press Ctrl-C to stop and clean up."
wait "${pids[1]}"
