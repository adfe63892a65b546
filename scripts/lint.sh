#!/usr/bin/env bash
# The fast gates, run by CI before the tests: formatting (rustfmt.toml), clippy with every warning an
# error over every target, and the doc links. A formatting slip fails here in seconds, not after the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-build-deps.sh
for tool in rustfmt clippy; do
  if ! cargo "${tool/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "lint: cargo ${tool/rustfmt/fmt} is missing; install it with: rustup component add $tool" >&2
    exit 1
  fi
done
# The same target dir as scripts/test.sh: clippy shares librdkafka's build with the tests.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mqtt-kafka-gateway/target}"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# Doc links, private items included: a link that a move or a rename left pointing nowhere fails here.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --document-private-items --locked --quiet
