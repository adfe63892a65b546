#!/usr/bin/env bash
# The project's one test command: installs the build tools, Mosquitto and Kafka (idempotent,
# instant once done) and runs every test target. Extra arguments go to
# `cargo test`, e.g. `scripts/test.sh --test harness_smoke`.
set -euo pipefail

cd "$(dirname "$0")/.."

scripts/install-build-deps.sh
scripts/install-mosquitto.sh
scripts/install-kafka.sh >/dev/null
scripts/install-test-tools.sh

# A target dir outside the work tree keeps rdkafka's slow (cmake) build warm
# across fresh clones of the repository.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mqtt-kafka-gateway/target}"

# --all-targets unless the arguments pick targets themselves (--test NAME, ...).
targets=(--all-targets)
for arg in "$@"; do
  case "$arg" in
    --) break ;;
    --lib | --bins | --bin | --bin=* | --tests | --test | --test=* | --examples | --example | \
    --example=* | --benches | --bench | --bench=* | --doc | --all-targets)
      targets=()
      break
      ;;
  esac
done

status=0
cargo test ${targets[@]+"${targets[@]}"} "$@" || status=$?
# The whole suite also runs the end-to-end suites over MQTT 5, the gateway's other protocol (the tests
# that pick a protocol themselves keep it). One suite on MQTT 5: TEST_MQTT_PROTOCOL=5 scripts/test.sh --test NAME
if [ $# -eq 0 ]; then
  echo "== the end-to-end suites again, over MQTT 5 =="
  TEST_MQTT_PROTOCOL=5 cargo test --test gateway --test faults --test http --test reload --test scaling \
    --test security_mqtt --test security_kafka --test contracts --test check --test registry --test spool --test live_kafka --test live_mqtt --test downlink || status=$?
fi
exit "$status"
