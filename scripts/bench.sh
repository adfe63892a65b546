#!/usr/bin/env bash
# Benchmarks the release gateway against local Mosquitto and Kafka (started by scripts/services.sh if
# needed): one route bench/# -> a fresh Kafka topic, a load from examples/bench.rs. See docs/BENCHMARKS.md.
#
#   scripts/bench.sh                                  50,000 messages, QoS 1, as fast as possible
#   QOS=0 scripts/bench.sh
#   scripts/bench.sh --rate 1000 --messages 20000     paced, for latency at a given rate
#
# Environment: QOS (route and publish QoS, default 1). Arguments go to the load generator
# (--messages, --devices, --payload-bytes, --rate).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh start >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mqtt-kafka-gateway/target}"
cargo build -q --release --bin mqtt-kafka-gateway --example bench

qos="${QOS:-1}"
topic="bench_$(date +%s)_$$"
work="$(mktemp -d)"
cat > "$work/routes.yaml" <<YAML
mqtt:
  broker: 127.0.0.1:1883
  client_id: bench-gateway-$$
kafka:
  bootstrap_servers: 127.0.0.1:9092
log:
  stats_interval_secs: 0
routes:
  - name: bench
    filter: 'bench/#'
    qos: $qos
    topic: $topic
YAML

"$CARGO_TARGET_DIR/release/mqtt-kafka-gateway" --config "$work/routes.yaml" >"$work/gateway.log" 2>&1 &
gw=$!
cleanup() {
  kill -TERM "$gw" 2>/dev/null || true
  wait "$gw" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 300); do
  grep -q 'subscribed' "$work/gateway.log" && break
  kill -0 "$gw" 2>/dev/null || { cat "$work/gateway.log"; exit 1; }
  sleep 0.1
done
grep -q 'subscribed' "$work/gateway.log" || { echo "the gateway did not subscribe within 30 s:"; cat "$work/gateway.log"; exit 1; }
echo "gateway $(git describe --always --dirty 2>/dev/null || echo '?'), route QoS $qos, topic $topic"
"$CARGO_TARGET_DIR/release/examples/bench" --topic "$topic" --qos "$qos" --gateway-pid "$gw" "$@"
kill -TERM "$gw" 2>/dev/null || true
wait "$gw" 2>/dev/null || true
# What the gateway itself said about the run: drops, retries, its final statistics.
grep -E ' (WARN|ERROR) |statistics' "$work/gateway.log" | grep -v 'Coordinator load in progress' | tail -n 5 || true
