#!/usr/bin/env bash
# Local Mosquitto (127.0.0.1:1883) and Kafka (127.0.0.1:9092, controller 9093)
# for running the gateway by hand.
#
#   scripts/services.sh start    install if needed, start both, wait until ready
#   scripts/services.sh stop     stop what `start` started
#   scripts/services.sh status   say what listens and what this script runs
#
# State (pid files, configs, logs, Kafka data, Mosquitto persistence) lives in
# ${MKG_STATE_DIR:-$HOME/.cache/mqtt-kafka-gateway/local}. A port that is
# already in use is taken to be a broker you run yourself and is reused.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

STATE="${MKG_STATE_DIR:-$HOME/.cache/mqtt-kafka-gateway/local}"
MQTT_PORT=1883
KAFKA_PORT=9092
CONTROLLER_PORT=9093
WAIT_SECS="${MKG_SERVICES_WAIT_SECS:-60}"

running() { # pidfile
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_port() { # name port pidfile log
  local name="$1" port="$2" pidfile="$3" log="$4" i
  for ((i = 0; i < WAIT_SECS * 4; i++)); do
    if mkg_port_open "$port"; then
      return 0
    fi
    if ! running "$pidfile"; then
      echo "services: $name exited before listening on 127.0.0.1:$port; last lines of $log:" >&2
      tail -n 30 "$log" >&2 || true
      return 1
    fi
    sleep 0.25
  done
  echo "services: $name did not listen on 127.0.0.1:$port within ${WAIT_SECS}s; last lines of $log:" >&2
  tail -n 30 "$log" >&2 || true
  return 1
}

start_mosquitto() {
  local dir="$STATE/mosquitto" pidfile="$STATE/mosquitto.pid" bin
  if running "$pidfile"; then
    echo "mosquitto: already running (pid $(cat "$pidfile")) on 127.0.0.1:$MQTT_PORT"
    return 0
  fi
  if mkg_port_open "$MQTT_PORT"; then
    echo "mosquitto: something already listens on 127.0.0.1:$MQTT_PORT; reusing it"
    return 0
  fi
  bin="$(mkg_find_bin mosquitto)"
  mkdir -p "$dir/data"
  cat > "$dir/mosquitto.conf" <<CONF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
# Started as root, mosquitto drops to the 'mosquitto' user unless told to stay
# (it could then not write its log or persistence here); ignored otherwise.
user $(id -un)
persistence true
persistence_location $dir/data/
# What docs/RELIABILITY.md advises for a gateway whose acks wait for Kafka.
max_inflight_messages 1000
max_queued_messages 1000000
log_dest file $dir/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
CONF
  nohup "$bin" -c "$dir/mosquitto.conf" >>"$dir/mosquitto.out" 2>&1 </dev/null &
  echo $! > "$pidfile"
  wait_port mosquitto "$MQTT_PORT" "$pidfile" "$dir/mosquitto.log"
  echo "mosquitto: started (pid $(cat "$pidfile")) on 127.0.0.1:$MQTT_PORT, log $dir/mosquitto.log"
}

start_kafka() {
  local dir="$STATE/kafka" pidfile="$STATE/kafka.pid"
  if running "$pidfile"; then
    echo "kafka: already running (pid $(cat "$pidfile")) on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  if mkg_port_open "$KAFKA_PORT"; then
    echo "kafka: something already listens on 127.0.0.1:$KAFKA_PORT; reusing it"
    return 0
  fi
  if mkg_port_open "$CONTROLLER_PORT"; then
    echo "services: 127.0.0.1:$CONTROLLER_PORT (Kafka's controller port) is taken by something else" >&2
    return 1
  fi
  mkdir -p "$dir"
  # kafka-server.sh execs the JVM, so $! is the broker's pid.
  nohup "$here/kafka-server.sh" "$dir" "$KAFKA_PORT" "$CONTROLLER_PORT" \
    >>"$dir/kafka.out" 2>&1 </dev/null &
  echo $! > "$pidfile"
  if ! wait_port kafka "$KAFKA_PORT" "$pidfile" "$dir/logs/server.log"; then
    tail -n 10 "$dir/kafka.out" >&2 || true
    return 1
  fi
  echo "kafka: started (pid $(cat "$pidfile")) on 127.0.0.1:$KAFKA_PORT, log $dir/logs/server.log"
}

stop_one() { # name pidfile
  local name="$1" pidfile="$2" pid i
  if ! running "$pidfile"; then
    rm -f "$pidfile"
    echo "$name: not running (started by this script)"
    return 0
  fi
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 120; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name: still running after 30s; killing pid $pid" >&2
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  echo "$name: stopped (pid $pid)"
}

status_one() { # name port pidfile
  local name="$1" port="$2" pidfile="$3" listening="not listening"
  mkg_port_open "$port" && listening="listening"
  if running "$pidfile"; then
    echo "$name: running (pid $(cat "$pidfile")), 127.0.0.1:$port $listening"
  else
    echo "$name: not started by this script, 127.0.0.1:$port $listening"
  fi
}

case "${1:-}" in
  start)
    "$here/install-mosquitto.sh" >/dev/null
    "$here/install-kafka.sh" >/dev/null
    mkdir -p "$STATE"
    start_mosquitto
    start_kafka
    echo "state: $STATE"
    ;;
  stop)
    stop_one kafka "$STATE/kafka.pid"
    stop_one mosquitto "$STATE/mosquitto.pid"
    ;;
  status)
    status_one mosquitto "$MQTT_PORT" "$STATE/mosquitto.pid"
    status_one kafka "$KAFKA_PORT" "$STATE/kafka.pid"
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
