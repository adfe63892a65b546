#!/usr/bin/env bash
# Builds and tests the gateway's container image.
#
#   scripts/image.sh build   builds the shipped Dockerfile as mqtt-kafka-gateway:latest (and :VERSION, the
#                            crate's) and prints its size
#   scripts/image.sh test    builds, then runs the image against a local Mosquitto and Kafka (the spec's
#                            message, the env overrides, non-root, read-only root, the probe and health
#                            check, a live route change through the mounted directory, stop), then brings
#                            up docker-compose.yml and reads the spec's record from its Kafka
#
# Uses podman or docker, whichever works (MKG_CONTAINER_ENGINE=podman|docker chooses); where neither is
# installed, podman from Debian's packages. A base image that cannot be pulled (no Docker Hub here) is
# made locally under its own name from docker/standins/ and the script says so: a fallback, never the
# normal path. Ports are free loopback ports; containers of the image test use the host's network.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

IMAGE=mqtt-kafka-gateway:latest
# The target for the runtime image, uncompressed, as the engine reports it.
SIZE_LIMIT=$((50 * 1000 * 1000))
WAIT_SECS="${MKG_IMAGE_WAIT_SECS:-90}"
SPEC_TOPIC="cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors"
SPEC_PAYLOAD='{"timestamp": "2023-05-26 18:34:04.928538", "door-sensor-1": false, "door-sensor-2": true}'

say() { echo "image: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "missing $*; install them with your package manager"
  say "installing $* (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq "$@" >/dev/null
}

# --- the engine -----------------------------------------------------------------------------------

engine=""
pick_engine() {
  if [ -n "${MKG_CONTAINER_ENGINE:-}" ]; then
    engine="$MKG_CONTAINER_ENGINE"
  elif command -v podman >/dev/null 2>&1; then
    engine=podman
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine=docker
  else
    # runc: crun refuses hybrid cgroup hierarchies.
    apt_install podman runc
    if [ ! -e /etc/containers/containers.conf ]; then
      # A VM that does not let containers raise their rlimits, or whose cgroups crun refuses, needs
      # these two settings; they are harmless elsewhere. Only written where there is no such file.
      say "writing /etc/containers/containers.conf (runtime runc, default ulimits)"
      $SUDO mkdir -p /etc/containers
      printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' |
        $SUDO tee /etc/containers/containers.conf >/dev/null
    fi
    engine=podman
  fi
  command -v "$engine" >/dev/null 2>&1 || die "$engine not found"
  "$engine" info >/dev/null 2>&1 || die "'$engine info' fails: the engine does not work here"
  say "engine: $("$engine" --version)"
}

# The name a short image name stands for: docker.io/library/NAME, docker.io/OWNER/NAME.
qualified() {
  local name="$1" first="${1%%/*}"
  if [ "$first" = "$name" ]; then
    echo "docker.io/library/$name"
  elif [[ "$first" == *.* || "$first" == *:* || "$first" == localhost ]]; then
    echo "$name"
  else
    echo "docker.io/$name"
  fi
}

have_image() { "$engine" image inspect "$1" >/dev/null 2>&1; }

# --- base images, pulled or stood in for ----------------------------------------------------------------

ensure_base() {
  local name
  name="$(qualified "$1")"
  have_image "$name" && return 0
  if timeout 180 "$engine" pull -q "$name" >/dev/null 2>&1; then
    say "pulled $name"
    return 0
  fi
  say "$name cannot be pulled; making a local stand-in with that name (docker/standins/README.md)"
  case "$name" in
    docker.io/library/debian:bookworm) standin_debian "$name" ;;
    docker.io/library/rust:*-bookworm) standin_rust "$name" ;;
    gcr.io/distroless/base-nossl-debian12:nonroot) standin_build "$name" distroless-base-nossl.Containerfile docker/standins ;;
    docker.io/library/eclipse-mosquitto:2) standin_build "$name" mosquitto.Containerfile docker/standins ;;
    docker.io/apache/kafka:*) standin_kafka "$name" ;;
    *) die "no stand-in recipe for $name: pull it on a machine that can, or add one to docker/standins" ;;
  esac
}

standin_build() { # name containerfile context [build args...]
  local name="$1" file="$2" context="$3"
  shift 3
  ensure_base debian:bookworm
  "$engine" build -q -f "docker/standins/$file" -t "$name" "$@" "$context" >/dev/null ||
    die "building the stand-in $name failed"
  say "made $name from docker/standins/$file"
}

standin_debian() {
  command -v mmdebstrap >/dev/null 2>&1 || apt_install mmdebstrap
  local tar="$work/debian.tar"
  $SUDO mmdebstrap --variant=minbase --quiet bookworm "$tar" http://deb.debian.org/debian ||
    die "mmdebstrap failed"
  "$engine" import --change 'CMD ["bash"]' "$tar" "$1" >/dev/null
  rm -f "$tar"
  say "made $1 with mmdebstrap --variant=minbase bookworm"
}

standin_rust() {
  local name="$1" version sysroot ctx="$work/rust-standin"
  version="${name##*:}"
  version="${version%-bookworm}"
  command -v rustc >/dev/null 2>&1 || die "the stand-in for $name needs Rust $version on this machine"
  case "$(rustc --version)" in
    "rustc $version."*) ;;
    *) die "the stand-in for $name is made from this machine's toolchain, which is $(rustc --version), not $version" ;;
  esac
  sysroot="$(rustc --print sysroot)"
  mkdir -p "$ctx/toolchain" "$ctx/ca"
  # Hard links where the toolchain is on the same file system: 600 MB are not copied.
  cp -al "$sysroot/bin" "$sysroot/lib" "$ctx/toolchain/" 2>/dev/null || cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/toolchain/"
  # The machine's own extra CA certificates (a proxy that re-signs TLS to crates.io), if any.
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  standin_build "$name" rust.Containerfile "$ctx" --build-arg "TOOLCHAIN=$(basename "$sysroot")"
  rm -rf "$ctx"
}

standin_kafka() {
  local name="$1" version libs ctx="$work/kafka-standin"
  version="${name##*:}"
  libs="$(MKG_KAFKA_VERSION="$version" scripts/install-kafka.sh)"
  mkdir -p "$ctx"
  cp -al "$libs" "$ctx/libs" 2>/dev/null || cp -a "$libs" "$ctx/libs"
  cp docker/standins/kafka-run "$ctx/"
  standin_build "$name" kafka.Containerfile "$ctx"
  rm -rf "$ctx"
}

# --- build ------------------------------------------------------------------------------------------

build() {
  local base size
  sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | while read -r base; do
    ensure_base "$base"
  done
  say "building $IMAGE from the Dockerfile"
  local format=()
  # podman writes OCI images by default, which have no HEALTHCHECK.
  [ "$engine" = podman ] && format=(--format docker)
  # Also tagged with the crate's version, the tag deploy/kubernetes names.
  local version
  version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
  "$engine" build "${format[@]}" -t "$IMAGE" -t "mqtt-kafka-gateway:$version" . || die "the build failed"
  size="$("$engine" image inspect --format '{{.Size}}' "$IMAGE")"
  say "$IMAGE: $size bytes ($((size / 1000000)) MB; the target is at most $((SIZE_LIMIT / 1000000)) MB)"
}

# --- test -------------------------------------------------------------------------------------------

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # port what
  local i
  for ((i = 0; i < WAIT_SECS * 2; i++)); do
    mkg_port_open "$1" && return 0
    sleep 0.5
  done
  die "$2 did not listen on 127.0.0.1:$1 within ${WAIT_SECS}s"
}

pids=()
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do "$engine" rm -f "$c" >/dev/null 2>&1 || true; done
  [ -n "${compose_down:-}" ] && $compose_down >/dev/null 2>&1
  for c in "${pids[@]}"; do kill "$c" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

start_brokers() {
  scripts/install-mosquitto.sh
  scripts/install-kafka.sh >/dev/null
  mport="$(free_port)"
  kport="$(free_port)"
  local cport
  cport="$(free_port)"
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nuser %s\n' "$mport" "$(id -un)" >"$work/mosquitto.conf"
  "$(mkg_find_bin mosquitto)" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
  pids+=($!)
  scripts/kafka-server.sh "$work/kafka" "$kport" "$cport" >"$work/kafka.out" 2>&1 &
  pids+=($!)
  wait_port "$mport" Mosquitto
  wait_port "$kport" Kafka
  say "Mosquitto on 127.0.0.1:$mport, Kafka on 127.0.0.1:$kport"
}

publish() { # port topic payload
  "$(mkg_find_bin mosquitto_pub)" -h 127.0.0.1 -p "$1" -q 1 -t "$2" -m "$3"
}

# The first record of a topic as "key<TAB>value", read by Kafka's own console consumer.
consume_one() { # bootstrap topic
  java -Dlog4j2.level=error -cp "$MKG_KAFKA_LIBS/*" org.apache.kafka.tools.consumer.ConsoleConsumer \
    --bootstrap-server "$1" --topic "$2" --from-beginning --max-messages 1 --timeout-ms $((WAIT_SECS * 1000)) \
    --formatter-property print.key=true --formatter-property key.separator=$'\t' 2>>"$work/consumer.log" |
    grep -m 1 $'\t' || true
}

# Checks a "key<TAB>value" line against the spec's record for a message on `topic`.
check_record() { # line topic device_id
  python3 - "$1" "$2" "$3" "$SPEC_PAYLOAD" <<'PY' || die "the record is not the spec's: $1"
import json, sys, time
line, topic, device, payload = sys.argv[1:]
key, _, value = line.partition("\t")
v = json.loads(value)
assert key == device, f"key {key!r}"
assert list(v) == ["original_topic", "device_id", "payload", "timestamp"], list(v)
assert v["original_topic"] == topic and v["device_id"] == device, v
assert v["payload"] == json.loads(payload), v["payload"]
assert abs(v["timestamp"] - time.time()) < 600, v["timestamp"]
PY
}

container_pid() { "$engine" inspect --format '{{.State.Pid}}' "$1"; }

run_gateway() { # name config_dir http_port [env...]
  local name="$1" dir="$2" hport="$3"
  shift 3
  local env=(-e "MQTT_BROKER=127.0.0.1:$mport" -e "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$kport"
    -e "GATEWAY_HTTP__LISTEN=127.0.0.1:$hport" -e LOG_FORMAT=json)
  local e
  for e in "$@"; do env+=(-e "$e"); done
  containers+=("$name")
  # podman without systemd cannot schedule the HEALTHCHECK (it says so on stderr, kept in engine.log);
  # check_health runs it on demand instead.
  "$engine" run -d --name "$name" --network host --read-only --cap-drop ALL \
    -v "$dir:/etc/mqtt-kafka-gateway:ro" "${env[@]}" "$IMAGE" >/dev/null 2>>"$work/engine.log" || {
    cat "$work/engine.log" >&2
    die "$engine run failed"
  }
}

wait_ready() { # name
  local i
  for ((i = 0; i < WAIT_SECS; i++)); do
    # As the README says to: the binary by name (the image's PATH), its configuration from GATEWAY_CONFIG.
    if "$engine" exec "$1" mqtt-kafka-gateway probe >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  "$engine" logs "$1" >&2 || true
  die "$1: the probe did not turn healthy within ${WAIT_SECS}s"
}

# The image's own HEALTHCHECK, run by the engine.
check_health() { # name
  local status i
  if [ "$engine" = podman ]; then
    status="$("$engine" healthcheck run "$1" 2>&1 && echo healthy)" || die "$1: podman healthcheck run: $status"
  else
    for ((i = 0; i < WAIT_SECS; i++)); do
      status="$("$engine" inspect --format '{{.State.Health.Status}}' "$1")"
      [ "$status" = healthy ] && break
      sleep 1
    done
  fi
  [ "${status##*$'\n'}" = healthy ] || die "$1: health is $status"
  say "$1: the image's HEALTHCHECK says healthy"
}

stop_exits_zero() { # name
  local code
  "$engine" stop -t 30 "$1" >/dev/null
  code="$("$engine" inspect --format '{{.State.ExitCode}}' "$1")"
  [ "$code" = 0 ] || {
    "$engine" logs "$1" >&2
    die "$1 exited with $code after SIGTERM"
  }
  say "$1: stopped (SIGTERM), exit code 0"
}

test_image() {
  local size uid pid hport name cfg line
  size="$("$engine" image inspect --format '{{.Size}}' "$IMAGE")"
  [ "$size" -le "$SIZE_LIMIT" ] || die "$IMAGE is $size bytes, over the $SIZE_LIMIT-byte target"
  say "size: $size bytes, within $SIZE_LIMIT"
  uid="$("$engine" image inspect --format '{{.Config.User}}' "$IMAGE")"
  [[ "$uid" =~ ^[1-9][0-9]*(:[1-9][0-9]*)?$ ]] || die "the image's user is '$uid', not a numeric non-root uid"
  # Nothing to run but the gateway: no shell.
  if "$engine" run --rm --entrypoint /bin/sh "$IMAGE" -c true >/dev/null 2>&1; then
    die "the image has a shell"
  fi
  say "user $uid, no /bin/sh"

  cfg="$work/config"
  mkdir -p "$cfg"
  cp config/routes.yaml "$cfg/routes.yaml"
  "$engine" run --rm --network none -v "$cfg:/etc/mqtt-kafka-gateway:ro" "$IMAGE" validate >/dev/null ||
    die "validate of the shipped routes.yaml inside the image failed"

  start_brokers

  # 1. The spec's defaults: cmnd/# to raw_iot_data.
  name="mkg-image-test-$$"
  hport="$(free_port)"
  run_gateway "$name" "$cfg" "$hport"
  wait_ready "$name"
  check_health "$name"
  pid="$(container_pid "$name")"
  read -r _ uid _ < <(grep '^Uid:' "/proc/$pid/status")
  [ "$uid" != 0 ] || die "the gateway runs as root"
  awk '$5 == "/" { split($6, o, ","); if (o[1] != "ro") exit 1 }' "/proc/$pid/mountinfo" ||
    die "the root file system is writable"
  say "the gateway process runs as uid $uid on a read-only root"
  # Every line the gateway wrote is a JSON object (podman's own complaints, time="..." level=..., aside).
  "$engine" logs "$name" 2>&1 | grep -v '^time=".*level=' | python3 -c '
import json, sys
lines = sys.stdin.read().splitlines()
assert len(lines) >= 3, lines
for line in lines:
    assert isinstance(json.loads(line), dict), line' || die "LOG_FORMAT=json did not give JSON lines"
  publish "$mport" "$SPEC_TOPIC" "$SPEC_PAYLOAD"
  line="$(consume_one "127.0.0.1:$kport" raw_iot_data)"
  check_record "$line" "$SPEC_TOPIC" f2-e4fd45f654be
  say "the spec's message became the spec's record in raw_iot_data"

  # 2. A route added by an editor's rename-save in the mounted directory, while it runs.
  python3 - "$cfg/routes.yaml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
route = "  - name: added-live\n    filter: added/#\n    topic: added_live\n\n"
assert "\nshutdown:" in text
open(path + ".new", "w").write(text.replace("\nshutdown:", "\n" + route + "shutdown:", 1))
PY
  mv "$cfg/routes.yaml.new" "$cfg/routes.yaml"
  local i
  for ((i = 0; i < WAIT_SECS; i++)); do
    "$engine" logs "$name" 2>&1 | grep -q 'added-live' && break
    sleep 1
  done
  publish "$mport" added/f2-e4fd45f654be/x "$SPEC_PAYLOAD"
  line="$(consume_one "127.0.0.1:$kport" added_live)"
  [ -n "$line" ] || {
    "$engine" logs "$name" >&2
    die "the route added to the mounted directory did not take effect"
  }
  say "a route added to the mounted directory took effect without a restart"
  stop_exits_zero "$name"

  # 3. The spec's overrides: KAFKA_TOPIC and MQTT_TOPIC_PATTERN.
  name="mkg-image-env-$$"
  cp config/routes.yaml "$cfg/routes.yaml"
  hport="$(free_port)"
  run_gateway "$name" "$cfg" "$hport" KAFKA_TOPIC=image_overridden MQTT_TOPIC_PATTERN='site/+/#'
  wait_ready "$name"
  publish "$mport" site/f2-e4fd45f654be/state "$SPEC_PAYLOAD"
  line="$(consume_one "127.0.0.1:$kport" image_overridden)"
  python3 -c 'import json, sys; assert json.loads(sys.argv[1].partition("\t")[2])["original_topic"] == "site/f2-e4fd45f654be/state"' "$line" ||
    die "KAFKA_TOPIC/MQTT_TOPIC_PATTERN: got '$line'"
  say "KAFKA_TOPIC and MQTT_TOPIC_PATTERN override the route"
  stop_exits_zero "$name"
}

# podman-compose from PyPI, pinned, in a venv of its own: Debian 12's 1.0.3 turns an exec-form health
# check into `/bin/sh -c ...`, which an image without a shell cannot run.
PODMAN_COMPOSE_VERSION=1.6.0
podman_compose() {
  local venv="$MKG_CACHE_DIR/podman-compose-$PODMAN_COMPOSE_VERSION"
  if [ ! -x "$venv/bin/podman-compose" ]; then
    say "installing podman-compose $PODMAN_COMPOSE_VERSION (PyPI) into $venv"
    if ! python3 -m venv "$venv" >&2 || ! "$venv/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION" >&2; then
      rm -rf "$venv"
      die "installing podman-compose failed"
    fi
  fi
  echo "$venv/bin/podman-compose"
}

test_compose() {
  local compose project=mkg-compose-test gw kafka_ctr line mp kp hp i code
  if [ "$engine" = podman ]; then
    compose=("$(podman_compose)" -p "$project" -f docker-compose.yml)
  else
    compose=(docker compose -p "$project" -f docker-compose.yml)
  fi
  ensure_base eclipse-mosquitto:2
  ensure_base "$(sed -n 's/^ *image: \(apache\/kafka:.*\)/\1/p' docker-compose.yml)"
  mp="$(free_port)"
  kp="$(free_port)"
  hp="$(free_port)"
  compose_down="${compose[*]} down"
  # What an interrupted earlier run may have left of the project.
  "${compose[@]}" down >/dev/null 2>&1 || true
  say "compose: ${compose[*]} up -d (ports $mp, $kp, $hp)"
  MKG_MQTT_PORT=$mp MKG_KAFKA_PORT=$kp MKG_HTTP_PORT=$hp "${compose[@]}" up -d >"$work/compose.log" 2>&1 || {
    cat "$work/compose.log" >&2
    die "compose up failed"
  }
  gw="$("$engine" ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=mqtt-kafka-gateway")"
  kafka_ctr="$("$engine" ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=kafka")"
  if [ -z "$gw" ] || [ -z "$kafka_ctr" ]; then
    die "compose did not start the gateway and Kafka: $("$engine" ps -a)"
  fi
  for ((i = 0; i < WAIT_SECS * 2; i++)); do
    if "$engine" healthcheck run "$gw" >/dev/null 2>&1 ||
      [ "$("$engine" inspect --format '{{.State.Health.Status}}' "$gw" 2>/dev/null)" = healthy ]; then
      break
    fi
    sleep 1
  done
  ((i < WAIT_SECS * 2)) || {
    "$engine" logs "$gw" >&2
    die "compose: the gateway did not turn healthy"
  }
  say "compose: the gateway is healthy"
  publish "$mp" "$SPEC_TOPIC" "$SPEC_PAYLOAD"
  line="$("$engine" exec "$kafka_ctr" /opt/kafka/bin/kafka-console-consumer.sh --bootstrap-server kafka:29092 \
    --topic raw_iot_data --from-beginning --max-messages 1 --timeout-ms $((WAIT_SECS * 1000)) \
    --formatter-property print.key=true --formatter-property key.separator=$'\t' 2>/dev/null | grep -m 1 $'\t')" ||
    die "compose: no record in raw_iot_data"
  check_record "$line" "$SPEC_TOPIC" f2-e4fd45f654be
  say "compose: the spec's message became the spec's record in raw_iot_data"
  # `compose stop` and `down` signal every service at once, so the broker may be gone before the gateway
  # stops. The hardest order, made certain: Mosquitto first, then the gateway, which must exit 0 by itself
  # before the engine's SIGKILL 10 s later (a reconnect's DNS lookup of a name that no longer resolves
  # once held it for 25 s).
  "$engine" stop -t 10 "$("$engine" ps -q --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=mosquitto")" >/dev/null
  sleep 2
  "$engine" stop -t 10 "$gw" >/dev/null
  code="$("$engine" inspect --format '{{.State.ExitCode}}' "$gw")"
  [ "$code" = 0 ] || {
    "$engine" logs "$gw" 2>&1 | tail -n 40 >&2
    die "compose: with Mosquitto stopped first, the gateway exited $code after SIGTERM, not 0 (its last log lines above)"
  }
  say "compose: with Mosquitto stopped first, the gateway exited 0 after SIGTERM"
  "${compose[@]}" stop >/dev/null 2>&1
  "${compose[@]}" down >/dev/null 2>&1
  compose_down=""
}

work="$(mktemp -d)"
trap cleanup EXIT

case "${1:-}" in
  build)
    pick_engine
    build
    ;;
  test)
    pick_engine
    build
    test_image
    test_compose
    say "all checks passed"
    ;;
  *)
    echo "usage: $0 build|test" >&2
    exit 2
    ;;
esac
