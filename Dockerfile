# The gateway's container image. Build and test it with scripts/image.sh build and scripts/image.sh test
# (README, "Container image"); plain `docker build .` or `podman build .` works too.
#
# Two stages: a Rust toolchain image compiles a release binary with OpenSSL and zlib built in (the
# static-deps feature); the runtime is distroless: glibc, libgcc_s, CA certificates and the binary, no
# shell, no package manager. Under 50 MB in all, and nothing in it that an attacker could use.

FROM rust:1.95-bookworm AS build
# cmake: librdkafka is built from its bundled sources. The image already has the C compiler, make and
# perl that OpenSSL's own build needs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cache mounts (BuildKit, buildah) keep the crates.io downloads and the target dir between builds on one
# machine, so that a change to src/ recompiles the gateway, not librdkafka and OpenSSL. (An empty-main
# "dependencies first" layer is not used: it breaks as soon as the manifest names a target it cannot
# find.) The binary is copied out of the cache, which is not part of the image, and stripped: symbols
# are 60 % of its size, and a panic's message and location survive without them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features static-deps --bin mqtt-kafka-gateway \
 && mkdir -p /out/bin "/out/lib/$(gcc -dumpmachine)" \
 && cp target/release/mqtt-kafka-gateway /out/bin/ \
 && strip /out/bin/mqtt-kafka-gateway \
 && cp "$(gcc -print-file-name=libgcc_s.so.1)" "/out/lib/$(gcc -dumpmachine)/"

# The binary links glibc and libgcc_s (Rust's unwinder), nothing else: OpenSSL, zlib, zstd and curl are
# inside it. distroless `base-nossl` has glibc (Debian 12, the build stage's) and the CA bundle that
# Kafka TLS, MQTT TLS and the registry trust when no CA file is configured; libgcc_s comes from the build
# stage. Not distroless `cc`: its libstdc++, libgomp and OpenSSL (8 MB) would go unused.
FROM gcr.io/distroless/base-nossl-debian12:nonroot
COPY --from=build /out/lib/ /usr/lib/
COPY --from=build /out/bin/mqtt-kafka-gateway /usr/local/bin/mqtt-kafka-gateway
# The shipped configuration: the spec's route. Mount a directory of your own over
# /etc/mqtt-kafka-gateway (a ConfigMap, say), not a single file: the gateway watches the directory, and
# a single-file bind mount never sees an editor's rename-save or a ConfigMap's swap.
COPY config/routes.yaml /etc/mqtt-kafka-gateway/routes.yaml
# distroless's `nonroot` user, by number, so that Kubernetes' runAsNonRoot can verify it. The gateway
# writes nothing to its filesystem: run it with a read-only root.
USER 65532:65532
# The configuration every command reads (run, validate, check, probe), and the spec's brokers, as named
# on a compose network.
ENV GATEWAY_CONFIG=/etc/mqtt-kafka-gateway/routes.yaml \
    MQTT_BROKER=mosquitto:1883 \
    KAFKA_BOOTSTRAP_SERVERS=kafka:29092
# Metrics, /healthz and /readyz (http.listen).
EXPOSE 9180
# The binary asks its own /readyz (on the port of http.listen): the image has no shell, curl or wget.
# Healthy once MQTT is subscribed and Kafka answers. Kubernetes uses its own HTTP probes instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/mqtt-kafka-gateway", "probe"]
ENTRYPOINT ["/usr/local/bin/mqtt-kafka-gateway"]
CMD ["run"]
