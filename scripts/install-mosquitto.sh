#!/usr/bin/env bash
# Installs the Mosquitto broker and its command-line clients from Debian's
# packages (idempotent), makes sure no system-wide broker is left running on
# 1883, and prints where the dynamic-security plugin lives.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

if ! have mosquitto || ! have mosquitto_pub || ! have mosquitto_sub || ! have mosquitto_ctrl; then
  echo "install-mosquitto: installing mosquitto and mosquitto-clients" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null

  # The package's postinst may start a system broker on 1883; the project runs
  # its own brokers, so stop and disable it where an init system is present.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    $SUDO service mosquitto stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null 2>&1; then
      $SUDO update-rc.d mosquitto disable >/dev/null 2>&1 || true
    fi
  fi
  if [ -f /run/mosquitto/mosquitto.pid ]; then
    pid="$(cat /run/mosquitto/mosquitto.pid 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      $SUDO kill "$pid" 2>/dev/null || true
    fi
  fi
fi

for bin in mosquitto mosquitto_pub mosquitto_sub mosquitto_ctrl; do
  if ! have "$bin"; then
    echo "install-mosquitto: '$bin' is still missing after installing" >&2
    exit 1
  fi
done

dynsec=""
for candidate in \
  "/usr/lib/$(uname -m)-linux-gnu/mosquitto_dynamic_security.so" \
  /usr/lib/*-linux-gnu/mosquitto_dynamic_security.so \
  /usr/lib/mosquitto_dynamic_security.so \
  /usr/lib/mosquitto/mosquitto_dynamic_security.so \
  /usr/local/lib/mosquitto_dynamic_security.so; do
  if [ -f "$candidate" ]; then
    dynsec="$candidate"
    break
  fi
done
if [ -z "$dynsec" ] && command -v dpkg >/dev/null 2>&1; then
  dynsec="$(dpkg -L mosquitto 2>/dev/null | grep 'mosquitto_dynamic_security\.so$' | head -n1 || true)"
fi
if [ -z "$dynsec" ]; then
  echo "install-mosquitto: mosquitto_dynamic_security.so not found" >&2
  exit 1
fi
echo "mosquitto dynamic security plugin: $dynsec"
