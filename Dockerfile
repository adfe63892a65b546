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
# busybox, for its `wget`: docker-compose.yml's health check asks the gateway's /readyz over HTTP, and
# the slim image has no HTTP client. busybox is one 0.8 MB binary needing only libc; curl would bring
# libcurl and a dozen libraries (Kerberos, LDAP, SSH, RTMP) for the same request. Its wget exits
# non-zero on a refused connection and on any non-2xx answer (a 503 from /readyz). Kubernetes probes
# do not use it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g busybox \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /src/target/release/mqtt-kafka-gateway /usr/local/bin/mqtt-kafka-gateway
# The shipped routes.yaml: the spec's route. Mount your own over it (a ConfigMap, say).
COPY routes.yaml /etc/mqtt-kafka-gateway/routes.yaml
USER 10001:10001
# Metrics, /healthz and /readyz (http.listen).
EXPOSE 9180
# The spec's defaults, for a compose network with services named mosquitto and kafka.
ENV MQTT_BROKER=mosquitto:1883 \
    KAFKA_BOOTSTRAP_SERVERS=kafka:29092
ENTRYPOINT ["/usr/local/bin/mqtt-kafka-gateway"]
CMD ["--config", "/etc/mqtt-kafka-gateway/routes.yaml"]
