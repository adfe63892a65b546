#!/usr/bin/env bash
# Runs one of Kafka's own command-line tools from the jars install-kafka.sh fetched (the tarball's bin/
# scripts are not kept), e.g. to change a SCRAM password in a running broker:
#
#   scripts/kafka-tool.sh kafka.admin.ConfigCommand --bootstrap-server 127.0.0.1:9092 --alter \
#     --add-config 'SCRAM-SHA-512=[password=new-secret]' --entity-type users --entity-name alice
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/lib.sh
. "$here/lib.sh"
[ $# -ge 1 ] || {
  echo "usage: $0 MAIN_CLASS [ARGS...]" >&2
  exit 2
}
"$here/kafka-server.sh" --check
class="$1"
shift
exec java -Xmx256m -cp "$MKG_KAFKA_LIBS/*" "$class" "$@"
