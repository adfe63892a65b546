# syntax=docker/dockerfile:1
# Multi-stage build: a Rust toolchain image compiles the gateway (librdkafka is built from the bundled
# sources, which needs cmake), a slim Debian image runs it as a non-root user.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so that editing src/ does not rebuild librdkafka.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin mqtt-kafka-gateway

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /src/target/release/mqtt-kafka-gateway /usr/local/bin/mqtt-kafka-gateway
# The shipped routes.yaml: the spec's route. Mount your own over it (a ConfigMap, say).
COPY routes.yaml /etc/mqtt-kafka-gateway/routes.yaml
USER 10001:10001
# The spec's defaults, for a compose network with services named mosquitto and kafka.
ENV MQTT_BROKER=mosquitto:1883 \
    KAFKA_BOOTSTRAP_SERVERS=kafka:29092
ENTRYPOINT ["/usr/local/bin/mqtt-kafka-gateway"]
CMD ["--config", "/etc/mqtt-kafka-gateway/routes.yaml"]
