#!/usr/bin/env bash
# Prints the absolute path of a Prometheus server binary on stdout; logs go to
# stderr. The end-to-end test TestPrometheusScrape runs it.
#
# Order: $PROMETHEUS_BIN if set; `prometheus` from PATH; otherwise install
# Debian's prometheus package (apt-get update, then apt-get install
# --no-install-recommends prometheus), once, but only when allowed: CI=true or
# E2E_INSTALL_PROMETHEUS=1 (make test sets it), and running as root or with
# password-less sudo. Exits 3 when Prometheus is missing and may not be
# installed here, with the reason on stderr; the test then skips and says why.
set -euo pipefail

log() { echo "prometheus-bin: $*" >&2; }

if [[ -n "${PROMETHEUS_BIN:-}" ]]; then
	[[ -x "$PROMETHEUS_BIN" ]] || { log "PROMETHEUS_BIN=$PROMETHEUS_BIN is not executable"; exit 1; }
	echo "$PROMETHEUS_BIN"
	exit 0
fi

found() { command -v prometheus 2>/dev/null || { [[ -x /usr/bin/prometheus ]] && echo /usr/bin/prometheus; }; }

if p="$(found)" && [[ -n "$p" ]]; then
	echo "$p"
	exit 0
fi

if [[ "${CI:-}" != true && "${E2E_INSTALL_PROMETHEUS:-}" != 1 ]]; then
	log "prometheus is not installed, and installing it needs CI=true or E2E_INSTALL_PROMETHEUS=1 (make test sets it): apt-get install prometheus, or set PROMETHEUS_BIN"
	exit 3
fi
if ! command -v apt-get >/dev/null; then
	log "prometheus is not installed and this machine has no apt-get: install Prometheus and set PROMETHEUS_BIN"
	exit 3
fi
sudo=()
if [[ "$(id -u)" != 0 ]]; then
	if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
		sudo=(sudo -n)
	else
		log "prometheus is not installed, and installing it needs root or password-less sudo: apt-get install prometheus, or set PROMETHEUS_BIN"
		exit 3
	fi
fi

# Install once, even when several callers race.
lock=/tmp/vault-plugin-secrets-bearer-prometheus.lock
if command -v flock >/dev/null; then
	exec 9>"$lock"
	flock 9
	if p="$(found)" && [[ -n "$p" ]]; then
		echo "$p"
		exit 0
	fi
fi

log "installing Debian's prometheus package (apt-get); this takes a minute or two, once"
start=$SECONDS
export DEBIAN_FRONTEND=noninteractive
{
	"${sudo[@]}" apt-get update -q &&
		"${sudo[@]}" apt-get install -y -q --no-install-recommends prometheus
} >&2 || { log "apt-get install prometheus failed"; exit 1; }
log "installed in $((SECONDS - start))s"
p="$(found)" || { log "the prometheus package is installed but no prometheus binary was found"; exit 1; }
echo "$p"
