#!/usr/bin/env bash
# Installs the tools the tests use to check the deploy files and the metrics (idempotent, silent when
# everything is there):
#   - promtool, from Debian's `prometheus` package: `promtool check rules` and `promtool test rules`
#     validate deploy/prometheus/ (tests/deploy.rs). The package also ships a Prometheus server; it is
#     stopped and disabled, the tests run none.
#   - a Python venv at ~/.cache/mqtt-kafka-gateway/py with `prometheus_client`, whose OpenMetrics parser
#     checks what /metrics serves.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
VENV="$MKG_CACHE_DIR/py"

have_promtool() { command -v promtool >/dev/null 2>&1; }
have_venv() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import prometheus_client' >/dev/null 2>&1; }

if have_promtool && have_venv; then
  exit 0
fi

apt_updated=""
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-tools: missing $*; install them with your package manager" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq >/dev/null
    apt_updated=1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! have_promtool; then
  echo "install-test-tools: installing promtool (Debian package prometheus)" >&2
  # Without an init system the package's postinst cannot start the server; where there is one, it may.
  apt_install prometheus
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    $SUDO service prometheus stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null 2>&1; then
      $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
  fi
  if [ -f /run/prometheus/prometheus.pid ]; then
    pid="$(cat /run/prometheus/prometheus.pid 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      $SUDO kill "$pid" 2>/dev/null || true
    fi
  fi
  if ! have_promtool; then
    echo "install-test-tools: promtool is still missing after installing prometheus" >&2
    exit 1
  fi
fi

if ! have_venv; then
  echo "install-test-tools: creating $VENV with prometheus_client" >&2
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  rm -rf "$VENV"
  mkdir -p "$MKG_CACHE_DIR"
  # Debian's python3 has venv without ensurepip unless python3-venv is installed.
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
  # Pinned: the parser the tests trust should not change under them.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "prometheus_client==0.26.0"
  if ! have_venv; then
    echo "install-test-tools: prometheus_client is still missing from $VENV" >&2
    exit 1
  fi
fi
