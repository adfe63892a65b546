#!/usr/bin/env bash
# Prints the records of a Kafka topic, from the beginning: scripts/consume.sh raw_iot_data [BOOTSTRAP]
# (BOOTSTRAP defaults to localhost:9092, the local Kafka of scripts/services.sh).
#
# Uses the build that scripts/run.sh made (same target dir), so it does not compile librdkafka again.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mqtt-kafka-gateway/target}"
cargo build -q --release --example consume
exec "$CARGO_TARGET_DIR/release/examples/consume" "$@"
