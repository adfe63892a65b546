#!/usr/bin/env bash
# Installs the tools the tests use to check the deploy files, the metrics and the Schema Registry
# support (idempotent, silent when everything is there):
#   - promtool, from Debian's `prometheus` package: `promtool check rules` and `promtool test rules`
#     validate deploy/prometheus/ (tests/deploy.rs). The package also ships a Prometheus server; it is
#     stopped and disabled, the tests run none.
#   - a Python venv at ~/.cache/mqtt-kafka-gateway/py with the packages of tests/tools/requirements.txt,
#     all pinned: `prometheus_client`, whose OpenMetrics parser checks what /metrics serves, and
#     `confluent-kafka` with its Schema Registry deserializers and `grpcio-tools` (protoc), with which
#     tests/tools/sr_decode.py decodes what the gateway writes. The venv is rebuilt when that file changes.
#   - Go programs the tests start, each built from tests/tools/<name>/ to ~/.cache/mqtt-kafka-gateway/bin/<name>
#     and rebuilt when its sources are newer than the binary (Go 1.21 or newer; the modules come from the
#     Go proxy):
#     - schema-registry: an in-memory Confluent-compatible Schema Registry (franz-go's srfake);
#     - mqtt5-broker: Mochi MQTT, a second MQTT 5 broker, whose ACL refusals keep the connection open.
set -euo pipefail

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$MKG_CACHE_DIR/py"
# The venv keeps a copy of the requirements it was made from, so a changed pin rebuilds it.
REQUIREMENTS="$ROOT/tests/tools/requirements.txt"
GO_TOOLS="schema-registry mqtt5-broker"
# What the tests import from the venv; a venv made before one of these was added fails this and is rebuilt.
VENV_IMPORTS='import prometheus_client, grpc_tools.protoc
import confluent_kafka.schema_registry.avro, confluent_kafka.schema_registry.protobuf
import confluent_kafka.schema_registry.json_schema'

have_promtool() { command -v promtool >/dev/null 2>&1; }
have_venv() {
  [ -x "$VENV/bin/python" ] && cmp -s "$REQUIREMENTS" "$VENV/requirements.txt" &&
    "$VENV/bin/python" -c "$VENV_IMPORTS" >/dev/null 2>&1
}
have_go_tool() {
  local src="$ROOT/tests/tools/$1" bin="$MKG_CACHE_DIR/bin/$1"
  [ -x "$bin" ] &&
    [ -z "$(find "$src" -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -newer "$bin")" ]
}
have_go_tools() {
  local tool
  for tool in $GO_TOOLS; do
    have_go_tool "$tool" || return 1
  done
}

if have_promtool && have_venv && have_go_tools; then
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
  echo "install-test-tools: creating $VENV with the packages of tests/tools/requirements.txt" >&2
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
  rm -rf "$VENV"
  mkdir -p "$MKG_CACHE_DIR"
  # Debian's python3 has venv without ensurepip unless python3-venv is installed.
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$VENV/requirements.txt"
  if ! have_venv; then
    echo "install-test-tools: the packages of $REQUIREMENTS still do not import in $VENV" >&2
    exit 1
  fi
fi

if ! have_go_tools; then
  if ! command -v go >/dev/null 2>&1; then
    echo "install-test-tools: missing go; install Go 1.21 or newer from https://go.dev/dl/" \
      "(Debian 12's golang-go, 1.19, is too old)" >&2
    exit 1
  fi
  # Go 1.21 and newer fetch the toolchain go.mod asks for by themselves; older ones cannot.
  go_minor="$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
  if [ -z "$go_minor" ] || [ "$go_minor" -lt 21 ]; then
    echo "install-test-tools: $(go env GOVERSION) is too old; install Go 1.21 or newer from https://go.dev/dl/" >&2
    exit 1
  fi
  mkdir -p "$MKG_CACHE_DIR/bin"
  for tool in $GO_TOOLS; do
    have_go_tool "$tool" && continue
    bin="$MKG_CACHE_DIR/bin/$tool"
    echo "install-test-tools: building $bin from tests/tools/$tool (Go)" >&2
    # -mod=readonly: build exactly what go.mod and go.sum pin (fetched from the module proxy), and fail
    # rather than edit them. -buildvcs=false: no git stamp, which fails in a checkout git does not trust.
    # Built to a temporary name so an interrupted build leaves no half binary.
    (cd "$ROOT/tests/tools/$tool" && go build -mod=readonly -buildvcs=false -trimpath -o "$bin.tmp" .)
    mv -f "$bin.tmp" "$bin"
  done
fi
