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
# .proto, from a local Schema Registry that scripts/install-test-tools.sh builds), --repeat N (each
# scenario's gateway runs N times). Every scenario prints one row per system; the summary at the end puts
# the gateway beside its ceilings as ratios.
#
# The disk spool (see the README's "Disk spool" and docs/BENCHMARKS.md):
#
#   scripts/bench.sh --spool --qos 0 --rate 20000 --routes 1
#       every gateway run is paired with one of the same gateway with `spool: { dir }` (fsync interval),
#       reported as system gateway+spool, in alternating order with --repeat; the summary gives each
#       pair's ratios, and the spool run says how many records it wrote to the spool (0 while Kafka
#       keeps up: the pair measures what an idle spool costs)
#   scripts/bench.sh --spool-drain [--backlog 300000] [--live-rate 1000]
#       the spool through a Kafka outage, on the brokers of scripts/services.sh (it stops and starts
#       their Kafka): the gateway's live QoS 0 burst with Kafka up, then Kafka stopped and a backlog
#       published as fast as the generator can (the spooling rate), then Kafka started with live
#       traffic at --live-rate msg/s while the spool drains (the drain rate), and the topic's records
#       counted against what the gateway received. With --queued the backlog is published while the
#       gateway is stopped (SIGSTOP), so that it then reads the broker's queue as fast as it can, and a
#       burst queued the same way with Kafka up gives the live rate to compare: the gateway's own rates,
#       not the generator's
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
spool=0
repeat=1
drain=0
backlog=300000
live_rate=1000
queued=0
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
    --repeat) repeat="$2"; shift ;;
    --spool) spool=1 ;;
    --spool-drain) drain=1 ;;
    --backlog) backlog="$2"; shift ;;
    --live-rate) live_rate="$2"; shift ;;
    --queued) queued=1 ;;
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
# --spool-drain: background processes to stop, and whether Kafka was stopped and not started again.
bg_pids=()
kafka_stopped=0
cleanup() {
  if [ -n "$gw" ]; then kill -TERM "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; fi
  local p
  for p in ${bg_pids[@]+"${bg_pids[@]}"}; do kill -TERM "$p" 2>/dev/null || true; done
  if [ "$kafka_stopped" = 1 ]; then scripts/services.sh start >/dev/null || true; fi
  # BENCH_KEEP_WORK=1: keep the run's files (routes, gateway log, --spool-drain's timeline) to look at.
  if [ -n "${BENCH_KEEP_WORK:-}" ]; then echo "bench: the run's files are in $work"; else rm -rf "$work"; fi
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

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# routes.yaml for N routes: N-1 that never match the load (other/<i>/+/data), then the measured one; with
# a spool directory, the disk spool on (fsync interval, the default), otherwise none. The gateway serves
# /metrics on a free port of its own ($http_port).
http_port=""
write_routes() { # qos routes topic [spool dir [spool max_bytes]]
  local qos="$1" routes="$2" topic="$3" spool_dir="${4:-}" spool_max="${5:-}" i
  http_port="$(free_port)"
  {
    echo "mqtt:"
    echo "  broker: 127.0.0.1:1883"
    echo "  client_id: bench-gateway-$$"
    echo "kafka:"
    echo "  bootstrap_servers: 127.0.0.1:9092"
    echo "log:"
    echo "  stats_interval_secs: 0"
    echo "http:"
    echo "  listen: 127.0.0.1:$http_port"
    if [ -n "$spool_dir" ]; then
      echo "spool:"
      echo "  dir: $spool_dir"
      echo "  fsync: interval"
      [ -z "$spool_max" ] || echo "  max_bytes: $spool_max"
    fi
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

# The sum of a metric's samples on the gateway's /metrics, those whose labels hold FILTER if given
# (e.g. 'qos="0"'); empty if the gateway does not answer.
metric() { # name [filter]
  curl -fsS --max-time 5 "http://127.0.0.1:$http_port/metrics" 2>/dev/null |
    awk -v n="$1" -v f="${2:-}" '($1 == n || index($1, n "{") == 1) && index($1, f) { s += $2; seen = 1 }
      END { if (seen) printf "%d\n", s }'
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

# One gateway run of a scenario: a fresh topic (and a fresh spool for gateway+spool), the load, the
# gateway's RESULT line as SYSTEM's; gateway+spool's also says how many records the spool took.
run_gateway() { # system qos routes scenario load...
  local system="$1" qos="$2" routes="$3" scenario="$4" spool_dir="" written
  shift 4
  n=$((n + 1))
  local topic="bench_${run_id}_$n"
  if [ "$system" = gateway+spool ]; then
    spool_dir="$work/spool"
    rm -rf "$spool_dir"
  fi
  write_routes "$qos" "$routes" "$topic" "$spool_dir"
  register_schema "$topic"
  start_gateway
  "$bench_bin" gateway "$@" --topic "$topic" --value "$encoding" --pid "$gw" >"$work/run.txt"
  if [ -n "$spool_dir" ]; then
    written="$(metric mqtt_kafka_gateway_spool_records_written_total)"
    echo "spool: ${written:-?} records written to the spool (0: Kafka kept up and the spool stayed idle)" >>"$work/run.txt"
    sed -i "s/^RESULT .*/& spool_written=${written:--}/" "$work/run.txt"
  fi
  sed "s/^gateway:/$system ($routes routes):/; s/^RESULT system=gateway /RESULT system=$system /" "$work/run.txt" |
    record "$scenario"
  stop_gateway
}

# --spool-drain. What it measures is read from the gateway's /metrics, sampled every 0.5 s by a
# background poller into $work/timeline.txt, beside the moments the script marks in $work/events.txt.
mark() { # event
  echo "$1 $(date +%s.%N)" >>"$work/events.txt"
}

wait_until() { # what, timeout in s, then a command that succeeds once it is so (run every 0.5 s)
  local what="$1" timeout="$2" i
  shift 2
  for ((i = 0; i < timeout * 2; i++)); do
    if "$@"; then return 0; fi
    sleep 0.5
  done
  echo "bench: $what did not happen within $timeout s" >&2
  return 1
}

gone() { ! kill -0 "$1" 2>/dev/null; }
spool_drained() {
  [ "$(metric mqtt_kafka_gateway_spool_records)" = 0 ] && [ "$(metric mqtt_kafka_gateway_spool_active)" = 0 ]
}
warmup=100
warm() {
  [ "$(metric mqtt_kafka_gateway_records_delivered_total 'route="warmup"')" -ge "$warmup" ] 2>/dev/null
}
all_delivered() {
  [ "$(metric mqtt_kafka_gateway_records_delivered_total)" = "$(metric mqtt_kafka_gateway_messages_received_total 'qos="0"')" ]
}

spool_drain() {
  local state="${MKG_STATE_DIR:-$MKG_CACHE_DIR/local}"
  local kafka_pidfile="$state/kafka.pid" mosquitto_pidfile="$state/mosquitto.pid"
  local topic="bench_spool_${run_id}" kafka_pid mosquitto_pid load i
  if ! { [ -f "$kafka_pidfile" ] && kill -0 "$(cat "$kafka_pidfile")" 2>/dev/null; }; then
    echo "bench: --spool-drain stops and starts the Kafka of scripts/services.sh; the one on 127.0.0.1:9092 was not started by it" >&2
    exit 2
  fi
  load=(--qos 0 --devices "$devices" --payload-bytes "$payload")
  # Room for the backlog whatever its size (a spooled record of this load takes under 1 KiB): a full
  # spool would hold the intake and the spooling rate would be the limit's.
  write_routes 0 1 "$topic" "$work/spool" "$(((backlog / 1000000 + 1) * 2))GiB"
  # A route of its own for a warm-up (below), so that the measured topic holds only the measured load.
  echo "  - { name: warmup, filter: 'warmup/#', qos: 0, topic: ${topic}_warmup }" >>"$work/routes.yaml"
  start_gateway
  : >"$work/events.txt"
  python3 - "$http_port" "$gw" "$work/timeline.txt" <<'PY' &
import os, sys, time, urllib.request
port, pid, out = sys.argv[1:]
tick = os.sysconf("SC_CLK_TCK")
names = {
    "mqtt_kafka_gateway_spool_records_written_total": "written",
    "mqtt_kafka_gateway_spool_records_replayed_total": "replayed",
    "mqtt_kafka_gateway_spool_records": "records",
    "mqtt_kafka_gateway_spool_bytes": "bytes",
    "mqtt_kafka_gateway_spool_active": "active",
    "mqtt_kafka_gateway_records_delivered_total": "delivered",
    'mqtt_kafka_gateway_messages_received_total{qos="0"}': "received",
}
with open(out, "w", buffering=1) as f:
    while True:
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            break  # the gateway is gone
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            time.sleep(0.5)  # stopped (--queued), or busy: no sample this time
            continue
        now = time.time()
        v = dict.fromkeys(names.values(), 0)
        for line in body.splitlines():
            name, _, value = line.rpartition(" ")
            key = None if line.startswith("#") else names.get(name) or names.get(name.split("{")[0])
            if key:
                v[key] += int(float(value))
        fields = stat[stat.rfind(")") + 2:].split()
        cpu_ms = (int(fields[11]) + int(fields[12])) * 1000 // tick
        f.write(f"{now:.3f} " + " ".join(f"{k}={v[k]}" for k in names.values()) + f" cpu_ms={cpu_ms}\n")
        time.sleep(max(0.0, 0.5 - (time.time() - now)))
PY
  bg_pids+=($!)

  # A fresh producer's first request for its idempotence id can be answered "coordinator load in
  # progress" (the first one after a Kafka restart is), and a burst meanwhile fills the window of
  # unsettled messages: after 250 ms the spool takes over although Kafka is healthy. A gateway in
  # service has its id long before; a few messages first get it here.
  echo "== 0. Warm-up: $warmup messages on a route of their own, so that the producer has its id"
  "$bench_bin" publish "${load[@]}" --rate 1000 --messages "$warmup" --prefix warmup >/dev/null
  wait_until "the warm-up's delivery" 60 warm
  echo "  delivered; $(metric mqtt_kafka_gateway_spool_records_written_total) records written to the spool"
  echo "== 1. Kafka up: the gateway's live QoS 0 burst of $backlog (the spool stays idle)"
  "$bench_bin" gateway "${load[@]}" --rate 0 --messages "$backlog" --topic "$topic" --pid "$gw" |
    sed 's/^RESULT system=gateway /RESULT system=gateway-live /' >"$work/live.txt"
  metric mqtt_kafka_gateway_spool_records_written_total >"$work/live-spooled.txt"
  sed 's/^/  /' "$work/live.txt"
  echo "  spool: $(cat "$work/live-spooled.txt") records written to the spool"
  mark queued_live_start
  if [ "$queued" = 1 ]; then
    echo "== 1b. Kafka up: a burst of $backlog published while the gateway is stopped, then read from the broker's queue"
    kill -STOP "$gw"
    "$bench_bin" publish "${load[@]}" --rate 0 --messages "$backlog" | sed 's/^/  /'
    mark queued_live_resume
    kill -CONT "$gw"
    wait_until "the delivery of the queued burst" 300 all_delivered
    echo "  delivered; $(metric mqtt_kafka_gateway_spool_records_written_total) records written to the spool in all"
  fi
  mark queued_live_done

  echo "== 2. Kafka stopped (SIGTERM to the broker of scripts/services.sh)"
  kafka_pid="$(cat "$kafka_pidfile")"
  mosquitto_pid="$(cat "$mosquitto_pidfile" 2>/dev/null || echo -)"
  mark kafka_stop
  kafka_stopped=1
  kill -TERM "$kafka_pid"
  wait_until "Kafka's exit" 120 gone "$kafka_pid"
  mark kafka_down
  echo "  Kafka (pid $kafka_pid) exited"

  echo "== 3. Kafka down: a backlog of $backlog published as fast as the generator can"
  local written0
  written0="$(metric mqtt_kafka_gateway_spool_records_written_total)"
  mark backlog_start
  if [ "$queued" = 1 ]; then kill -STOP "$gw"; fi
  "$bench_bin" publish "${load[@]}" --rate 0 --messages "$backlog" >"$work/backlog.txt"
  if [ "$queued" = 1 ]; then
    echo "  published while the gateway was stopped; it reads the broker's queue from now on"
    kill -CONT "$gw"
  fi
  sed 's/^/  /' "$work/backlog.txt"
  mark backlog_published
  # Until every record of the backlog is in the spool, or the spool stopped growing for 15 s.
  local v last=-1 still=0
  while :; do
    v="$(metric mqtt_kafka_gateway_spool_records_written_total)"
    [ "$((v - written0))" -lt "$backlog" ] || break
    if [ "$v" = "$last" ]; then still=$((still + 1)); else still=0; fi
    if [ "$still" -ge 30 ]; then
      echo "  the spool stopped growing at $((v - written0)) of $backlog records" >&2
      break
    fi
    last="$v"
    sleep 0.5
  done
  mark backlog_spooled
  echo "  the spool holds $(metric mqtt_kafka_gateway_spool_records) records, $(metric mqtt_kafka_gateway_spool_bytes) bytes"

  echo "== 4. Kafka started again; live traffic at $live_rate msg/s while the spool drains"
  mark kafka_start
  scripts/services.sh start | sed 's/^/  /'
  kafka_stopped=0
  mark kafka_up
  if [ "$(cat "$mosquitto_pidfile" 2>/dev/null || echo -)" != "$mosquitto_pid" ]; then
    echo "bench: scripts/services.sh started another Mosquitto: the backlog's broker is gone" >&2
    exit 1
  fi
  # An hour's worth: stopped once the spool is empty and left.
  "$bench_bin" publish "${load[@]}" --rate "$live_rate" --messages "$((live_rate * 3600))" >"$work/live-publish.txt" 2>&1 &
  local live_pid=$!
  bg_pids+=("$live_pid")
  mark live_start
  wait_until "the spool's drain" 900 spool_drained || true
  mark drained
  kill -TERM "$live_pid" 2>/dev/null || true
  wait "$live_pid" 2>/dev/null || true
  mark live_stop
  # Everything received in Kafka (a QoS 0 message settles once its record is in the spool or in Kafka).
  wait_until "the delivery of every message received" 120 all_delivered || true
  mark end
  {
    echo "received $(($(metric mqtt_kafka_gateway_messages_received_total 'qos="0"') - warmup))"
    echo "delivered $(metric mqtt_kafka_gateway_records_delivered_total 'route="bench"')"
    echo "written $(metric mqtt_kafka_gateway_spool_records_written_total)"
    echo "replayed $(metric mqtt_kafka_gateway_spool_records_replayed_total)"
    echo "dropped $(metric mqtt_kafka_gateway_spool_records_dropped_total)"
    echo "unreadable $(metric mqtt_kafka_gateway_spool_records_unreadable_total)"
    # The topic's records: the sum of its partitions' end offsets (the topic is this run's own).
    echo "in_topic $(java -cp "$MKG_KAFKA_LIBS/*" org.apache.kafka.tools.GetOffsetShell \
      --bootstrap-server 127.0.0.1:9092 --topic "$topic" --time -1 2>/dev/null | awk -F: '{ s += $3 } END { print s + 0 }')"
  } >"$work/final.txt"
  stop_gateway
  kill -TERM "${bg_pids[@]}" 2>/dev/null || true
  bg_pids=()

  echo
  echo "== Summary"
  python3 - "$work" "$backlog" "$live_rate" "$state/kafka/logs/server.log" <<'PY'
import sys, time
work, backlog, live_rate, kafka_log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = []
for line in open(f"{work}/timeline.txt"):
    t, *kv = line.split()
    rows.append(dict(t=float(t), **{k: int(v) for k, v in (x.split("=") for x in kv)}))
ev = {k: float(v) for k, v in (line.split() for line in open(f"{work}/events.txt"))}
final = {}
for line in open(f"{work}/final.txt"):
    k, *v = line.split()
    final[k] = int(v[0]) if v and v[0].isdigit() else None
spooled_live = open(f"{work}/live-spooled.txt").read().strip() or "-"

def result(path):
    for line in open(path):
        if line.startswith("RESULT"):
            return dict(kv.split("=", 1) for kv in line.split()[1:])
    return {}

live, gen = result(f"{work}/live.txt"), result(f"{work}/backlog.txt")

def between(a, b=None):
    """The samples from the last one taken before event a (what was so when it happened) to event b."""
    first = max([i for i, r in enumerate(rows) if r["t"] <= ev[a]], default=0)
    return [r for r in rows[first:] if b is None or r["t"] <= ev[b]]

def phase(rs, key, done):
    """How fast `key` grew in rs, sampled every 0.5 s. `span` runs from the last sample before it moved
    to the first where done(r) holds: it holds the whole phase and up to two sampling intervals more,
    so units / span is a lower bound of the rate. `steady` is the rate between the first sample after
    it moved and the last before done, the partial intervals at both ends left out; `peak` the most
    over any 1 s of samples. `cpu_us`: the gateway's CPU per unit over the span."""
    start = next((i for i in range(1, len(rs)) if rs[i][key] > rs[i - 1][key]), None)
    if start is None:
        return None
    begin = start - 1
    end = next((i for i in range(start, len(rs)) if done(rs[i])), len(rs) - 1)
    span, units = rs[end]["t"] - rs[begin]["t"], rs[end][key] - rs[begin][key]
    inner = rs[end - 1]["t"] - rs[start]["t"]
    steady = (rs[end - 1][key] - rs[start][key]) / inner if inner > 0.4 else units / span
    peak = 0.0
    for i in range(begin, end):
        j = next((j for j in range(i + 1, end + 1) if rs[j]["t"] - rs[i]["t"] >= 0.95), None)
        if j is None:
            break
        peak = max(peak, (rs[j][key] - rs[i][key]) / (rs[j]["t"] - rs[i]["t"]))
    cpu_us = (rs[end]["cpu_ms"] - rs[begin]["cpu_ms"]) * 1000 / max(units, 1)
    return dict(t0=rs[begin]["t"], t1=rs[end]["t"], span=span, units=units, rate=units / span, steady=steady,
                peak=max(peak, steady), cpu_us=cpu_us)

# --queued: the gateway's own live rate, reading a burst from the broker's queue with Kafka up.
ql = None
if "queued_live_resume" in ev:
    queued = between("queued_live_start", "queued_live_done")
    queued_top = max((r["delivered"] for r in queued), default=0)
    ql = phase(queued, "delivered", lambda r: r["delivered"] >= queued_top)
# Spooling: the spool's writes while Kafka was down, until they stopped growing (no live traffic
# before live_start).
down = between("kafka_down", "live_start")
top = max((r["written"] for r in down), default=0)
sp = phase(down, "written", lambda r: r["written"] >= top) if down else None
# Draining: records delivered from Kafka's start until the spool held none.
up = between("kafka_start")
# What the spool held when Kafka was started (the live traffic starts once it listens).
at_start = next((r for r in up if r["t"] >= ev["kafka_start"]), up[-1] if up else None)
held = at_start["records"] if at_start else 0
dr = phase(up, "delivered", lambda r: r["records"] == 0) if up else None
empty = next((r["t"] for r in up if r["records"] == 0), None)
left = next((r["t"] for r in up if r["records"] == 0 and r["active"] == 0), None)
live_in = up[-1]["received"] - at_start["received"] if at_start else None
lost = final["received"] - final["in_topic"] if None not in (final["received"], final["in_topic"]) else None

# When the broker said it had started (its log's local time): it listens some seconds before that,
# while it loads its partitions.
ready = None
try:
    for line in open(kafka_log, errors="replace"):
        if "Kafka Server started" in line and line.startswith("["):
            t = time.mktime(time.strptime(line[1:20], "%Y-%m-%d %H:%M:%S")) + int(line[21:24]) / 1000
            if t >= ev["kafka_start"]:
                ready = t
                break
except OSError:
    pass

def f(x, d=0):
    return "-" if x is None else f"{x:.{d}f}"

since_start = lambda t: None if t is None else t - ev["kafka_start"]
res = {
    "system": "gateway+spool", "mode": "spool-drain", "backlog": backlog, "live_rate": live_rate,
    "live_burst_per_s": live.get("msg_per_s", "-"), "live_burst_cpu_us_per_msg": live.get("cpu_us_per_msg", "-"),
    "live_burst_spooled": spooled_live, "queued": int(ql is not None),
    "queued_live_per_s": f(ql and ql["steady"]), "queued_live_peak_per_s": f(ql and ql["peak"]),
    "queued_live_cpu_us_per_msg": f(ql and ql["cpu_us"], 2), "generator_per_s": gen.get("msg_per_s", "-"),
    "spooled": sp["units"] if sp else "-", "spool_per_s": f(sp and sp["steady"]),
    "spool_bound_per_s": f(sp and sp["rate"]), "spool_peak_per_s": f(sp and sp["peak"]),
    "spool_cpu_us_per_rec": f(sp and sp["cpu_us"], 2),
    "held": held, "kafka_listening_s": f(ev["kafka_up"] - ev["kafka_start"], 1),
    "kafka_started_s": f(since_start(ready), 1),
    "first_delivery_s": f(dr and since_start(dr["t0"]), 1), "drain_s": f(dr and dr["span"], 2),
    "drain_per_s": f(dr and held / dr["span"]), "drain_steady_per_s": f(dr and dr["steady"]),
    "drain_peak_per_s": f(dr and dr["peak"]), "drain_cpu_us_per_rec": f(dr and dr["cpu_us"], 2),
    "empty_s": f(since_start(empty), 1), "left_s": f(since_start(left), 1),
    "live_received": f(live_in), "received": final["received"], "delivered": final["delivered"],
    "in_topic": final["in_topic"], "lost": f(lost), "spool_dropped": final["dropped"],
    "spool_unreadable": final["unreadable"],
}
print("RESULT " + " ".join(f"{k}={v}" for k, v in res.items()))
print()
print("Rates from /metrics sampled every 0.5 s: steady = between the first and the last sample inside the phase; "
      "at least = the phase's units over its span with the partial intervals at both ends (a lower bound).")
print(f"Kafka up, the gateway's live QoS 0 burst: {live.get('delivered', '-')} of {live.get('sent', '-')} delivered, "
      f"{live.get('msg_per_s', '-')} msg/s (first publish to last append), {live.get('cpu_us_per_msg', '-')} us "
      f"CPU/msg; {spooled_live} records spooled")
if ql:
    print(f"Kafka up, a burst read from the broker's queue: {ql['units']} records delivered, steady {ql['steady']:.0f} "
          f"records/s (at least {ql['rate']:.0f}, peak over 1 s {ql['peak']:.0f}), {ql['cpu_us']:.2f} us CPU/record")
if sp:
    base = ql["steady"] if ql else float(live["msg_per_s"]) if live.get("msg_per_s") else None
    of_live = sp["steady"] / base if base else None
    print(f"Kafka down, spooling: {sp['units']} records, steady {sp['steady']:.0f} records/s (at least "
          f"{sp['rate']:.0f}, peak over 1 s {sp['peak']:.0f}), {sp['cpu_us']:.2f} us CPU/record; the generator "
          f"published at {gen.get('msg_per_s', '-')} msg/s" + (" while the gateway was stopped" if ql else "") +
          (f"; {of_live:.0%} of the live {'queued ' if ql else ''}burst's rate" if of_live else ""))
if dr:
    print(f"Kafka started: listening after {ev['kafka_up'] - ev['kafka_start']:.1f} s, \"Kafka Server started\" "
          f"after {f(since_start(ready), 1)} s, records delivered again "
          f"{since_start(dr['t0']):.1f} s after the start; the spool held {held} records")
    print(f"Drain: {held} records in at most {dr['span']:.2f} s, so at least {held / dr['span']:.0f} records/s; steady "
          f"{dr['steady']:.0f} delivered/s (the live traffic included), peak over 1 s {dr['peak']:.0f}; "
          f"{dr['cpu_us']:.2f} us CPU/record; the spool empty {f(since_start(empty), 1)} s and left "
          f"{f(since_start(left), 1)} s after Kafka was started")
print(f"Loss: the gateway received {final['received']} QoS 0 messages in all ({f(live_in)} live ones during the "
      f"drain) and delivered {final['delivered']}; the topic holds {final['in_topic']}: "
      + ("nothing lost" if lost == 0 else f"{f(lost)} missing"))
PY
}

if [ "$drain" = 1 ]; then
  spool_drain
  exit 0
fi

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
      for ((pair = 1; pair <= repeat; pair++)); do
        systems=(gateway)
        # --spool: a pair, in alternating order so that a machine drifting during a pair favours neither.
        if [ "$spool" = 1 ] && ((pair % 2 == 1)); then systems=(gateway gateway+spool); fi
        if [ "$spool" = 1 ] && ((pair % 2 == 0)); then systems=(gateway+spool gateway); fi
        for system in "${systems[@]}"; do
          run_gateway "$system" "$qos" "$routes" "$label routes=$routes pair=$pair" "${load[@]}"
        done
      done
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
    gateway = r["system"] in ("gateway", "gateway+spool")
    cells = [r["qos"], r["load"], r["system"], r["routes"], r["delivered"], r["lost"], r["order_violations"],
             r["msg_per_s"], ratio(r["msg_per_s"], mqtt.get("msg_per_s")) if gateway else "",
             ratio(r["msg_per_s"], kafka.get("msg_per_s")) if gateway else "",
             r["p50_ms"], r["p99_ms"], r["cpu_us_per_msg"],
             ratio(r["cpu_us_per_msg"], mqtt.get("cpu_us_per_msg")) if gateway else "",
             ratio(r["cpu_us_per_msg"], floor) if gateway else "", r["peak_rss_kib"]]
    print("| " + " | ".join(cells) + " |")

# --spool: each pair's gateway+spool against its gateway run, and the median ratio of each scenario's pairs.
pairs = [(r, next((x for x in rows if x["system"] == "gateway" and all(x.get(k) == r.get(k) for k in
                                                                       ("qos", "load", "routes", "pair"))), {}))
         for r in rows if r["system"] == "gateway+spool"]
if pairs:
    print()
    print("== The idle spool: gateway+spool against gateway, pair by pair (ratio > 100 %: the spool costs more)")
    head = ["QoS", "load", "routes", "pair", "msg/s", "+spool msg/s", "msg/s ratio", "CPU us/msg", "+spool CPU us/msg",
            "CPU ratio", "p99 ms", "+spool p99 ms", "records spooled"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    by_scenario = {}
    for s, g in pairs:
        key = (s["qos"], s["load"], s["routes"])
        rate, cpu = num(s["msg_per_s"]), num(s["cpu_us_per_msg"])
        grate, gcpu = num(g.get("msg_per_s")), num(g.get("cpu_us_per_msg"))
        if None not in (rate, grate, cpu, gcpu) and grate and gcpu:
            by_scenario.setdefault(key, []).append((rate / grate, cpu / gcpu))
        print("| " + " | ".join([s["qos"], s["load"], s["routes"], s.get("pair", "-"), g.get("msg_per_s", "-"),
                                 s["msg_per_s"], ratio(s["msg_per_s"], g.get("msg_per_s")),
                                 g.get("cpu_us_per_msg", "-"), s["cpu_us_per_msg"],
                                 ratio(s["cpu_us_per_msg"], g.get("cpu_us_per_msg")), g.get("p99_ms", "-"),
                                 s["p99_ms"], s.get("spool_written", "-")]) + " |")
    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
    for (qos, load, routes), rs in by_scenario.items():
        print(f"QoS {qos} {load}, {routes} route(s), {len(rs)} pair(s): median msg/s ratio "
              f"{med([r for r, _ in rs]):.1%}, median CPU ratio {med([c for _, c in rs]):.1%}")
PY
