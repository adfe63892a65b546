# Shared settings for the scripts in this directory; source it, don't run it.
# shellcheck shell=bash

# Kafka release fetched by install-kafka.sh and run by kafka-server.sh.
MKG_KAFKA_VERSION="${MKG_KAFKA_VERSION:-4.3.1}"
MKG_CACHE_DIR="${MKG_CACHE_DIR:-$HOME/.cache/mqtt-kafka-gateway}"
MKG_KAFKA_HOME="$MKG_CACHE_DIR/kafka-$MKG_KAFKA_VERSION"
MKG_KAFKA_LIBS="$MKG_KAFKA_HOME/libs"
MKG_KAFKA_MARKER="$MKG_KAFKA_HOME/.complete"

# Prints the path of a mosquitto binary (mosquitto lives in /usr/sbin, which is
# not on every user's PATH), or nothing.
mkg_find_bin() {
  local name="$1" dir
  if command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
    return 0
  fi
  for dir in /usr/sbin /usr/local/sbin /usr/bin /usr/local/bin; do
    if [ -x "$dir/$name" ]; then
      echo "$dir/$name"
      return 0
    fi
  done
  return 1
}

# True when something accepts TCP connections on 127.0.0.1:$1.
mkg_port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1
}
