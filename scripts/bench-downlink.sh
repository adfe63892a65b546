#!/usr/bin/env bash
# Benchmarks the gateway's downlinks (Kafka → MQTT) beside the ceilings measured in the same run, on local
# Mosquitto and Kafka (scripts/services.sh starts them if needed). See docs/BENCHMARKS.md.
#
#   scripts/bench-downlink.sh                     QoS 0 and 1, 100,000 records each
#   scripts/bench-downlink.sh --quick             the same with 20,000 records
#   scripts/bench-downlink.sh --qos 1 --messages 300000 --repeat 3
#
# Options: --qos 0|1 (default both), --messages N (100000), --devices N (1000: record keys dev-0..dev-N-1),
# --payload-bytes N (150), --partitions N (4), --repeat N (each QoS's three systems run N times, in turn).
#
# The records are written once per run to a fresh topic (`bench downlink-produce`: keyed by device, a JSON
# value with the device's own sequence number). Then, for each QoS, three systems read them and the same
# counting subscriber (a bare `mosquitto_sub` on bench-dl/+/set at that QoS) takes what reaches MQTT:
#
#   kafka-ceiling  Kafka's own consumer (ConsumerPerformance, from the broker's jars), a new group: its
#                  fetch rate; it publishes nothing, so no subscriber
#   mqtt-ceiling   one bare MQTT publisher (one connection, the QoS, up to 1,000 QoS 1 messages
#                  unacknowledged: the broker's max_inflight_messages) publishing the same payloads
#   gateway        the release gateway with one downlink from the topic to bench-dl/{key}/set in a new
#                  group (so it reads the whole topic from the start), started stopped and continued once
#                  the subscriber is in place
#
# The gateway's rate and CPU are from the first message the subscriber receives to the last; the summary
# gives its rate as a ratio of the lower of the two ceilings, its CPU per record (user + system time from
# /proc over that interval), and the silences of 100 ms or more between two messages (their number over
# the runs, and the median of each run's sum).
#
# BENCH_GATEWAY_BIN: another build of the gateway; BENCH_KEEP_WORK=1: keep the run's files (the gateway's
# configuration and log).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

qos_list=(0 1)
messages=100000
devices=1000
payload=150
partitions=4
repeat=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) messages=20000 ;;
    --qos) qos_list=("$2"); shift ;;
    --messages) messages="$2"; shift ;;
    --devices) devices="$2"; shift ;;
    --payload-bytes) payload="$2"; shift ;;
    --partitions) partitions="$2"; shift ;;
    --repeat) repeat="$2"; shift ;;
    *) echo "bench-downlink: unknown option $1 (see the top of $0)" >&2; exit 2 ;;
  esac
  shift
done
for q in "${qos_list[@]}"; do
  case "$q" in 0 | 1) ;; *) echo "bench-downlink: --qos is 0 or 1" >&2; exit 2 ;; esac
done

scripts/services.sh start >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mqtt-kafka-gateway/target}"
cargo build -q --release --bin mqtt-kafka-gateway --example bench
gw_bin="${BENCH_GATEWAY_BIN:-$CARGO_TARGET_DIR/release/mqtt-kafka-gateway}"
bench_bin="$CARGO_TARGET_DIR/release/examples/bench"

work="$(mktemp -d)"
gw=""
stop_gateway() {
  [ -n "$gw" ] || return 0
  # Started stopped: a SIGTERM waits for the SIGCONT.
  kill -TERM "$gw" 2>/dev/null || true
  kill -CONT "$gw" 2>/dev/null || true
  local i
  for ((i = 0; i < 300; i++)); do
    kill -0 "$gw" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$gw" 2>/dev/null; then
    echo "bench-downlink: the gateway did not stop within 30 s; killing it" >&2
    kill -KILL "$gw" 2>/dev/null || true
  fi
  wait "$gw" 2>/dev/null || true
  gw=""
}
cleanup() {
  stop_gateway
  if [ -n "${BENCH_KEEP_WORK:-}" ]; then echo "bench-downlink: the run's files are in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The broker must hold what a subscriber that is behind has not read yet, and let 1,000 QoS 1 messages be
# in flight to it (docs/BENCHMARKS.md). A broker started by scripts/services.sh does; one found already
# running is used as it is, and said so.
if ! grep -qs '^max_inflight_messages 1000' "${MKG_STATE_DIR:-$MKG_CACHE_DIR/local}/mosquitto/mosquitto.conf"; then
  echo "note: the Mosquitto on 127.0.0.1:1883 was not started by scripts/services.sh; its queue settings are unknown"
fi

results="$work/results.txt"
: >"$results"
run_id="$(date +%s)"
topic="bench_dl_${run_id}"
load=(--messages "$messages" --devices "$devices" --payload-bytes "$payload")

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

record() { # scenario, then the output of a bench mode on stdin: its RESULT line into the results
  local scenario="$1" line
  while IFS= read -r line; do
    case "$line" in
      RESULT*) echo "$scenario ${line#RESULT }" >>"$results" ;;
      *) echo "  $line" ;;
    esac
  done
}

# The gateway's configuration: the downlink under test, in a group of its own, and one route that cannot
# take what the downlink publishes (a gateway needs one). /metrics on a free port ($http_port).
http_port=""
write_config() { # qos group
  http_port="$(free_port)"
  cat >"$work/downlink.yaml" <<YAML
mqtt:
  broker: 127.0.0.1:1883
  client_id: bench-dl-$$-$2
kafka:
  bootstrap_servers: 127.0.0.1:9092
log:
  stats_interval_secs: 0
http:
  listen: 127.0.0.1:$http_port
routes:
  - { name: up, filter: 'bench-up/#', topic: bench-up }
downlinks:
  - name: bench
    kafka_topic: $topic
    group_id: $2
    mqtt_topic: 'bench-dl/{key}/set'
    qos: $1
YAML
}

# The gateway, stopped (SIGSTOP) before it runs: `bench downlink-gateway --resume 1` continues it once its
# subscriber is in place. The subshell stops itself, then becomes the gateway: $! is the gateway's pid.
start_gateway_stopped() {
  (
    kill -STOP "$BASHPID"
    RUST_LOG="${RUST_LOG:-warn}" exec "$gw_bin" --config "$work/downlink.yaml"
  ) >"$work/gateway.log" 2>&1 &
  gw=$!
  local i
  for ((i = 0; i < 50; i++)); do
    [ "$(awk '{ print $3 }' "/proc/$gw/stat" 2>/dev/null)" = T ] && return 0
    sleep 0.1
  done
  echo "bench-downlink: the gateway's process did not stop itself" >&2
  exit 1
}

# The sum of a metric's samples on the gateway's /metrics; empty if it does not answer.
metric() { # name
  curl -fsS --max-time 5 "http://127.0.0.1:$http_port/metrics" 2>/dev/null |
    awk -v n="$1" '($1 == n || index($1, n "{") == 1) { s += $2; seen = 1 } END { if (seen) printf "%d\n", s }'
}

# What the gateway said about the run, so that a loss, a duplicate or a stall is explained, not guessed.
gateway_report() {
  local m=mqtt_kafka_gateway_downlink i
  # The subscriber can have the last messages before the gateway has read their PUBACKs: a moment for those.
  for ((i = 0; i < 30; i++)); do
    [ "$(metric ${m}_messages_published_total)" = "$(metric ${m}_records_consumed_total)" ] && break
    sleep 0.1
  done
  echo "  gateway consumed=$(metric ${m}_records_consumed_total) published=$(metric ${m}_messages_published_total)" \
    "dead_lettered=$(metric ${m}_records_dead_lettered_total) pauses=$(metric ${m}_pauses_total)" \
    "commits=$(metric ${m}_offset_commits_total) commit_errors=$(metric ${m}_offset_commit_errors_total)" \
    "mqtt_connection_errors=$(metric ${m}_mqtt_connection_errors_total)"
  grep -E ' (WARN|ERROR) ' "$work/gateway.log" | head -n 20 | sed 's/^/  gateway log: /' || true
}

echo "== The load: $messages records on $topic ($partitions partitions), $devices devices, $payload-byte values"
timeout 300 "$bench_bin" downlink-produce "${load[@]}" --topic "$topic" --partitions "$partitions" | record "qos=- run=-"

for qos in "${qos_list[@]}"; do
  for ((run = 1; run <= repeat; run++)); do
    scenario="qos=$qos run=$run"
    echo "== QoS $qos, run $run of $repeat"
    timeout 300 "$bench_bin" downlink-kafka-ceiling "${load[@]}" --qos "$qos" --topic "$topic" \
      --kafka-libs "$MKG_KAFKA_LIBS" | record "$scenario"
    timeout 300 "$bench_bin" downlink-mqtt-ceiling "${load[@]}" --qos "$qos" --topic-prefix bench-dl | record "$scenario"
    write_config "$qos" "bench-dl-${run_id}-q$qos-$run"
    start_gateway_stopped
    timeout 900 "$bench_bin" downlink-gateway "${load[@]}" --qos "$qos" --topic-prefix bench-dl --pid "$gw" \
      --resume 1 | record "$scenario"
    gateway_report
    stop_gateway
  done
done

echo
echo "== Summary (medians over the runs; the gateway against the lower of the two ceilings of its QoS)"
python3 - "$results" <<'PY'
import statistics
import sys

rows = [dict(kv.split("=", 1) for kv in line.split()) for line in open(sys.argv[1])]


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def median(rs, key):
    xs = [x for x in (num(r.get(key)) for r in rs) if x is not None]
    return statistics.median(xs) if xs else None


def cell(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


head = ["QoS", "system", "runs", "delivered", "lost", "duplicates", "order violations", "msg/s",
        "of the lower ceiling", "CPU us/record", "silences >= 100 ms (s)"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
verdicts = []
for qos in sorted({r["qos"] for r in rows if r["qos"] != "-"}):
    of = [r for r in rows if r["qos"] == qos]
    rate = {s: median([r for r in of if r["system"] == s], "msg_per_s")
            for s in ("kafka-ceiling", "mqtt-ceiling", "gateway")}
    ceilings = [v for s, v in rate.items() if s != "gateway" and v]
    lower = min(ceilings) if ceilings else None
    for system in ("kafka-ceiling", "mqtt-ceiling", "gateway"):
        rs = [r for r in of if r["system"] == system]
        if not rs:
            continue
        total = lambda k: "-" if any(num(r.get(k)) is None for r in rs) else f"{sum(num(r[k]) for r in rs):.0f}"
        ratio = rate[system] / lower if lower and rate[system] is not None else None
        print("| " + " | ".join([qos, system, str(len(rs)), total("delivered"), total("lost"), total("duplicates"),
                                 total("order_violations"), cell(rate[system]), cell(ratio, 2) + "x" if ratio else "-",
                                 cell(median(rs, "cpu_us_per_msg"), 2),
                                 f"{total('stalls')} ({cell(median(rs, 'stalled_s'), 1)})"]) + " |")
        if system == "gateway" and ratio is not None:
            verdicts.append((qos, ratio, lower, "kafka" if lower == rate["kafka-ceiling"] else "mqtt"))


def run_ratios(qos):
    """The gateway's rate over the lower ceiling of the same run, run by run."""
    out = []
    for r in rows:
        if r["qos"] != qos or r["system"] != "gateway" or num(r["msg_per_s"]) is None:
            continue
        same = [num(x["msg_per_s"]) for x in rows if x["qos"] == qos and x["run"] == r["run"] and
                x["system"] != "gateway" and num(x["msg_per_s"])]
        if same:
            out.append((r["run"], num(r["msg_per_s"]), min(same)))
    return out


print()
for qos, ratio, lower, which in verdicts:
    rs = run_ratios(qos)
    by_run = sorted(g / c for _, g, c in rs)
    print(f"QoS {qos}: the gateway at {ratio:.2f}x the lower ceiling ({which}-ceiling, {lower:,.0f} msg/s)"
          + (f"; run by run {by_run[0]:.2f}-{by_run[-1]:.2f}x, median {statistics.median(by_run):.2f}x"
             if len(by_run) > 1 else ""))
if len({r["run"] for r in rows}) > 2:
    print()
    print("Run by run (the gateway against the lower ceiling of the same run):")
    for qos, _, _, _ in verdicts:
        for run, g, c in run_ratios(qos):
            print(f"  QoS {qos} run {run}: {g:,.0f} msg/s, {g / c:.2f}x of {c:,.0f}")
PY
