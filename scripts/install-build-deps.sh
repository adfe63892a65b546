#!/usr/bin/env bash
# Installs what building the gateway needs beyond Rust, if missing: a C compiler, cmake (librdkafka is
# built from its bundled sources) and pkg-config with the OpenSSL headers (Kafka TLS/SASL). Idempotent:
# does nothing when all are there. Debian/Ubuntu (apt-get); elsewhere it names what is missing.
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if ! pkg-config --exists openssl 2>/dev/null; then
  missing+=(libssl-dev)
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-build-deps: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-build-deps: missing ${missing[*]}; install them with your package manager" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-build-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
