#!/usr/bin/env bash
# Runs the gateway against local Mosquitto (127.0.0.1:1883) and Kafka (127.0.0.1:9092) with the shipped
# routes.yaml. Installs and starts both brokers first if nothing listens on those ports
# (scripts/services.sh). Extra arguments go to the gateway. Ctrl-C stops the gateway; the brokers keep
# running until `scripts/services.sh stop`.
set -euo pipefail

cd "$(dirname "$0")/.."

scripts/install-build-deps.sh
scripts/services.sh start

# A target dir outside the work tree keeps rdkafka's slow (cmake) build warm across clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mqtt-kafka-gateway/target}"
# The consume example too, so scripts/consume.sh starts at once.
cargo build --release --bin mqtt-kafka-gateway --example consume

export MQTT_BROKER="${MQTT_BROKER:-127.0.0.1:1883}"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
cat <<MSG
Gateway starting with config/routes.yaml (MQTT $MQTT_BROKER -> Kafka $KAFKA_BOOTSTRAP_SERVERS). In another shell:
  mosquitto_pub -h 127.0.0.1 -t cmnd/f2-e4fd45f654be/access-control-mode/J1/door-sensors -m '{"door-sensor-1": false}'
  scripts/consume.sh raw_iot_data
MSG
exec "$CARGO_TARGET_DIR/release/mqtt-kafka-gateway" --config config/routes.yaml "$@"
