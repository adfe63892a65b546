#!/usr/bin/env bash
# Runs a single-node KRaft Kafka broker (broker + controller in one JVM) in the
# foreground, from the jars fetched by install-kafka.sh.
#
#   kafka-server.sh DATA_DIR [PORT [CONTROLLER_PORT]]   (defaults 9092 9093)
#   kafka-server.sh --check      exit 0 if the jars are installed, else say how
#
# DATA_DIR receives server.properties, log4j2.xml, the partition data
# (kraft-logs/) and the broker's own log (logs/server.log). An already
# formatted DATA_DIR is reused as it is. The broker listens on
# PLAINTEXT://127.0.0.1:PORT and its controller on 127.0.0.1:CONTROLLER_PORT.
# Extra JVM options may be given in KAFKA_JVM_OPTS.
#
# Optional, for extra listeners (SASL_SSL, SSL...) and their users:
#   KAFKA_EXTRA_PROPERTIES  a file appended to server.properties; later keys win,
#                           so it may redefine listeners, advertised.listeners...
#   KAFKA_FORMAT_ARGS       extra arguments for formatting a new DATA_DIR, one per
#                           line, e.g. --add-scram / SCRAM-SHA-512=[name=u,password=p]
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"

check_installed() {
  if [ ! -f "$MKG_KAFKA_MARKER" ] || ! ls "$MKG_KAFKA_LIBS"/kafka_2.13-*.jar >/dev/null 2>&1; then
    echo "kafka-server: Kafka $MKG_KAFKA_VERSION is not installed in $MKG_KAFKA_LIBS;" \
         "run scripts/install-kafka.sh (or scripts/test.sh, which installs everything)" >&2
    return 3
  fi
  if ! command -v java >/dev/null 2>&1; then
    echo "kafka-server: java not found; run scripts/install-kafka.sh" >&2
    return 3
  fi
}

if [ "${1:-}" = "--check" ]; then
  check_installed
  exit 0
fi
if [ $# -lt 1 ] || [ $# -gt 3 ]; then
  echo "usage: $0 DATA_DIR [PORT [CONTROLLER_PORT]] | --check" >&2
  exit 2
fi
check_installed || exit $?

mkdir -p "$1"
data="$(cd "$1" && pwd)"
port="${2:-9092}"
cport="${3:-9093}"
mkdir -p "$data/logs" "$data/kraft-logs"

cat > "$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:$cport
log.dirs=$data/kraft-logs
num.partitions=3
default.replication.factor=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
log.retention.hours=24
log.retention.check.interval.ms=60000
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
PROPS
if [ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]; then
  cat "$KAFKA_EXTRA_PROPERTIES" >> "$data/server.properties"
fi

cat > "$data/log4j2.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <File name="server" fileName="$data/logs/server.log">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="kafka.controller" level="info"/>
    <Logger name="org.apache.kafka" level="info"/>
    <Logger name="state.change.logger" level="warn"/>
    <Root level="info">
      <AppenderRef ref="server"/>
    </Root>
  </Loggers>
</Configuration>
XML

cd "$data"
cp="$MKG_KAFKA_LIBS/*"
log4j="-Dlog4j2.configurationFile=$data/log4j2.xml"

if ! ls "$data"/kraft-logs/meta.properties >/dev/null 2>&1; then
  format_args=()
  if [ -n "${KAFKA_FORMAT_ARGS:-}" ]; then
    mapfile -t format_args <<<"$KAFKA_FORMAT_ARGS"
  fi
  cluster_id="$(java -cp "$cp" "$log4j" kafka.tools.StorageTool random-uuid 2>>"$data/logs/format.log")"
  java -cp "$cp" "$log4j" kafka.tools.StorageTool format --standalone \
    -t "$cluster_id" -c "$data/server.properties" "${format_args[@]}" >>"$data/logs/format.log" 2>&1 || {
      cat "$data/logs/format.log" >&2
      echo "kafka-server: formatting $data/kraft-logs failed" >&2
      exit 1
    }
fi

# shellcheck disable=SC2086
exec java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
  -Djava.awt.headless=true "$log4j" -Dkafka.logs.dir="$data/logs" \
  ${KAFKA_JVM_OPTS:-} -cp "$cp" kafka.Kafka "$data/server.properties"
