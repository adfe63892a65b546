#!/usr/bin/env bash
# Benchmarks the release gateway beside the ceilings measured in the same run, on local Mosquitto and
# Kafka (scripts/services.sh starts them if needed). See docs/BENCHMARKS.md.
#
#   scripts/bench.sh                    the whole matrix (about 15 minutes on 2 cores)
#   scripts/bench.sh --quick            one burst and one paced run per QoS, 20,000 messages each
#   scripts/bench.sh --qos 0 --rate 40000 --routes 1000 --messages 200000    one scenario
#
# Options: --qos 0|1, --rate N (messages/s; 0 = burst), --routes 1|1000, --messages N (burst size;
# paced runs send 10 s worth unless --messages is given), --devices N (1000), --payload-bytes N (150),
# --no-ceilings (gateway rows only), --schema (the measured route validates payloads against
# examples/bench-schema.json), --rate-limit N (the measured route gets rate_limit N/s, burst N),
# --encoding avro|protobuf (the measured route encodes its envelope with examples/bench-envelope.avsc or
# .proto, from a local Schema Registry that scripts/install-test-tools.sh builds). Every scenario prints
# one row per system; the summary at the end puts the gateway beside its ceilings as ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

qos_list=(0 1)
rate_list=(0 1000 5000 10000 20000 40000)
routes_list=(1 1000)
messages=""
devices=1000
payload=150
ceilings=1
route_extra=""
encoding=json
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) rate_list=(0 1000); routes_list=(1); messages=20000 ;;
    --qos) qos_list=("$2"); shift ;;
    --rate) rate_list=("$2"); shift ;;
    --routes) routes_list=("$2"); shift ;;
    --messages) messages="$2"; shift ;;
    --devices) devices="$2"; shift ;;
    --payload-bytes) payload="$2"; shift ;;
    --no-ceilings) ceilings=0 ;;
    --schema) route_extra="$route_extra, schema: '$PWD/examples/bench-schema.json'" ;;
    --rate-limit) route_extra="$route_extra, rate_limit: { messages_per_sec: $2, burst: $2 }"; shift ;;
    --encoding) encoding="$2"; shift ;;
    *) echo "bench: unknown option $1 (see the top of $0)" >&2; exit 2 ;;
  esac
  shift
done

scripts/services.sh start >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mqtt-kafka-gateway/target}"
cargo build -q --release --bin mqtt-kafka-gateway --example bench --example route_cost
# BENCH_GATEWAY_BIN: another build of the gateway, for a before/after on the same machine and brokers.
gw_bin="${BENCH_GATEWAY_BIN:-$CARGO_TARGET_DIR/release/mqtt-kafka-gateway}"
bench_bin="$CARGO_TARGET_DIR/release/examples/bench"

work="$(mktemp -d)"
gw=""
cleanup() {
  if [ -n "$gw" ]; then kill -TERM "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# --encoding: a local registry, and the schema registered under each measured topic's subject.
registry_url=""
if [ "$encoding" != json ]; then
  case "$encoding" in
    avro) schema_file=examples/bench-envelope.avsc schema_type=AVRO ;;
    protobuf) schema_file=examples/bench-envelope.proto schema_type=PROTOBUF ;;
    *) echo "bench: --encoding is avro or protobuf" >&2; exit 2 ;;
  esac
  scripts/install-test-tools.sh
  sr_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "$MKG_CACHE_DIR/bin/schema-registry" -listen "127.0.0.1:$sr_port" >"$work/registry.log" 2>&1 &
  registry_pid=$!
  trap 'kill "$registry_pid" 2>/dev/null || true; cleanup' EXIT
  registry_url="http://127.0.0.1:$sr_port"
  for _ in $(seq 1 100); do grep -q listening "$work/registry.log" && break; sleep 0.1; done
  route_extra="$route_extra, encoding: $encoding"
fi
register_schema() { # subject
  [ -n "$registry_url" ] || return 0
  python3 - "$registry_url" "$1" "$schema_file" "$schema_type" <<'PY'
import json, sys, urllib.request
url, subject, path, kind = sys.argv[1:]
body = {"schema": open(path).read()}
if kind != "AVRO":
    body["schemaType"] = kind
req = urllib.request.Request(f"{url}/subjects/{subject}-value/versions", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
urllib.request.urlopen(req).read()
PY
}

# The broker must hold a burst for a subscriber that is behind (docs/BENCHMARKS.md). A broker started by
# scripts/services.sh is; one found already running is used as it is, and said so.
if ! grep -qs '^max_queued_messages 1000000' "${MKG_STATE_DIR:-$MKG_CACHE_DIR/local}/mosquitto/mosquitto.conf"; then
  echo "note: the Mosquitto on 127.0.0.1:1883 was not started by scripts/services.sh; its queue settings are unknown"
fi

results="$work/results.txt"
: >"$results"
run_id="$(date +%s)"
n=0

# routes.yaml for N routes: N-1 that never match the load (other/<i>/+/data), then the measured one.
write_routes() { # qos routes topic
  local qos="$1" routes="$2" topic="$3" i
  {
    echo "mqtt:"
    echo "  broker: 127.0.0.1:1883"
    echo "  client_id: bench-gateway-$$"
    echo "kafka:"
    echo "  bootstrap_servers: 127.0.0.1:9092"
    echo "log:"
    echo "  stats_interval_secs: 0"
    if [ -n "$registry_url" ]; then
      echo "schema_registry:"
      echo "  url: $registry_url"
    fi
    echo "routes:"
    for ((i = 1; i < routes; i++)); do
      printf "  - { name: other-%d, filter: 'other/%d/+/data', topic: other_%d }\n" "$i" "$i" "$i"
    done
    printf "  - { name: bench, filter: 'bench/#', qos: %s, topic: %s%s }\n" "$qos" "$topic" "$route_extra"
  } >"$work/routes.yaml"
}

start_gateway() {
  "$gw_bin" --config "$work/routes.yaml" >"$work/gateway.log" 2>&1 &
  gw=$!
  for _ in $(seq 1 300); do
    grep -q 'subscribed' "$work/gateway.log" && return 0
    kill -0 "$gw" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: the gateway did not subscribe within 30 s:" >&2
  cat "$work/gateway.log" >&2
  exit 1
}

stop_gateway() {
  kill -TERM "$gw" 2>/dev/null || true
  wait "$gw" 2>/dev/null || true
  gw=""
  # What the gateway said about the run: its counters at exit (received, delivered, dead letters,
  # failures, drops, pauses), and every warning or error it logged, so a loss is explained, not guessed.
  grep 'statistics' "$work/gateway.log" | tail -n 1 |
    grep -oE '(messages_received|records_delivered|dead_letters|records_failed|messages_dropped|intake_pauses|intake_paused_ms)=[0-9]*' |
    tr '\n' ' ' | sed 's/^/  gateway /; s/ $/\n/' || true
  grep -E ' (WARN|ERROR) ' "$work/gateway.log" | head -n 20 | sed 's/^/  gateway log: /' || true
}

record() { # scenario, then a RESULT line on stdin
  local scenario="$1" line
  while IFS= read -r line; do
    case "$line" in
      RESULT*) echo "$scenario ${line#RESULT }" >>"$results" ;;
      *) echo "  $line" ;;
    esac
  done
}

for qos in "${qos_list[@]}"; do
  for rate in "${rate_list[@]}"; do
    if [ -n "$messages" ]; then
      count="$messages"
    elif [ "$rate" = 0 ]; then
      count=100000
    else
      count=$((rate * 10))
    fi
    load=(--qos "$qos" --rate "$rate" --messages "$count" --devices "$devices" --payload-bytes "$payload")
    label="qos=$qos load=$([ "$rate" = 0 ] && echo burst || echo "$rate/s")"
    echo "== QoS $qos, $([ "$rate" = 0 ] && echo "burst of $count" || echo "$count paced at $rate/s")"
    if [ "$ceilings" = 1 ]; then
      "$bench_bin" publish "${load[@]}" --prefix "gen$run_id" | record "$label routes=-"
      "$bench_bin" mqtt-ceiling "${load[@]}" --prefix "sub$run_id" | record "$label routes=-"
      n=$((n + 1))
      "$bench_bin" kafka-ceiling "${load[@]}" --topic "bench_kafka_${run_id}_$n" --kafka-libs "$MKG_KAFKA_LIBS" | record "$label routes=-"
      "$bench_bin" librdkafka "${load[@]}" --topic "bench_lrk_${run_id}_$n" | record "$label routes=-"
    fi
    for routes in "${routes_list[@]}"; do
      n=$((n + 1))
      topic="bench_${run_id}_$n"
      write_routes "$qos" "$routes" "$topic"
      register_schema "$topic"
      start_gateway
      "$bench_bin" gateway "${load[@]}" --topic "$topic" --value "$encoding" --pid "$gw" | sed "s/^gateway:/gateway ($routes routes):/" | record "$label routes=$routes"
      stop_gateway
    done
  done
done

echo
echo "== Summary (ratios against the ceilings of the same scenario, measured in this run)"
python3 - "$results" <<'PY'
import sys
rows = []
for line in open(sys.argv[1]):
    parts = dict(kv.split("=", 1) for kv in line.split())
    rows.append(parts)

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

def ratio(a, b):
    a, b = num(a), num(b)
    return f"{a / b:.0%}" if a is not None and b else "-"

head = ["QoS", "load", "system", "routes", "delivered", "lost", "order", "msg/s", "of MQTT ceiling",
        "of Kafka ceiling", "p50 ms", "p99 ms", "CPU us/msg", "CPU vs bare sub", "CPU vs bare sub + librdkafka",
        "peak RSS KiB"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for r in rows:
    same = [x for x in rows if x["qos"] == r["qos"] and x["load"] == r["load"]]
    mqtt = next((x for x in same if x["system"] == "mqtt-ceiling"), {})
    kafka = next((x for x in same if x["system"] == "kafka-ceiling"), {})
    lrk = next((x for x in same if x["system"] == "librdkafka"), {})
    floor = num(mqtt.get("cpu_us_per_msg")), num(lrk.get("cpu_us_per_msg"))
    floor = floor[0] + floor[1] if None not in floor else None
    gateway = r["system"] == "gateway"
    cells = [r["qos"], r["load"], r["system"], r["routes"], r["delivered"], r["lost"], r["order_violations"],
             r["msg_per_s"], ratio(r["msg_per_s"], mqtt.get("msg_per_s")) if gateway else "",
             ratio(r["msg_per_s"], kafka.get("msg_per_s")) if gateway else "",
             r["p50_ms"], r["p99_ms"], r["cpu_us_per_msg"],
             ratio(r["cpu_us_per_msg"], mqtt.get("cpu_us_per_msg")) if gateway else "",
             ratio(r["cpu_us_per_msg"], floor) if gateway else "", r["peak_rss_kib"]]
    print("| " + " | ".join(cells) + " |")
PY
