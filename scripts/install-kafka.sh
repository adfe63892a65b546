#!/usr/bin/env bash
# Fetches the Apache Kafka broker (KRaft mode) as plain jars from Maven Central
# into a cache directory, so that tests and local runs need no Kafka tarball.
# Idempotent: a marker file makes a second run instant. Prints the libs dir.
#
#   MKG_CACHE_DIR      cache root (default: $HOME/.cache/mqtt-kafka-gateway)
#   MKG_KAFKA_VERSION  Kafka version (default in lib.sh)
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
KAFKA_VERSION="$MKG_KAFKA_VERSION"
# Kafka's broker logs through slf4j 1.7 (slf4j-api) and log4j2 (log4j-core);
# the bridge between the two must match the log4j-core Kafka depends on.
LOG4J_VERSION="${MKG_LOG4J_VERSION:-2.25.4}"
KAFKA_HOME="$MKG_KAFKA_HOME"
LIBS="$MKG_KAFKA_LIBS"
MARKER="$MKG_KAFKA_MARKER"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

java_major() {
  # "17.0.15" -> 17, "1.8.0_392" -> 8
  local v
  v="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p' | head -n1)"
  v="${v#1.}"
  echo "${v%%.*}"
}

if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  echo "install-kafka: installing openjdk-17-jre-headless" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  if [ "$(java_major)" -lt 17 ] && [ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ]; then
    echo "install-kafka: the default 'java' is older than 17; select Java 17 with update-alternatives" >&2
    exit 1
  fi
fi

if [ -f "$MARKER" ]; then
  echo "$LIBS"
  exit 0
fi

if ! command -v mvn >/dev/null 2>&1; then
  echo "install-kafka: installing maven" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq maven >/dev/null
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat > "$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.mqtt-kafka-gateway</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- kafka-console-producer/consumer, kafka-topics etc. for manual checks -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <!-- only the Connect plugin-path tool needs it (with Jetty/Jersey) -->
        <exclusion>
          <groupId>org.apache.kafka</groupId>
          <artifactId>connect-runtime</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
POM

rm -rf "$LIBS"
mkdir -p "$LIBS"
if ! (cd "$work" && mvn -B -q dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$LIBS" >"$work/mvn.log" 2>&1); then
  cat "$work/mvn.log" >&2
  echo "install-kafka: maven could not fetch Kafka $KAFKA_VERSION" >&2
  exit 1
fi

if ! ls "$LIBS"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1; then
  echo "install-kafka: kafka_2.13-$KAFKA_VERSION.jar missing from $LIBS" >&2
  exit 1
fi
echo "$KAFKA_VERSION" > "$MARKER"
echo "$LIBS"
