#!/usr/bin/env bash
# Runs every test: installs what a fresh machine lacks (wasm32-wasip2 target, a
# Python venv with SecantusDB and moto), builds the plugins (Rust, JS, Python), starts a
# MongoDB-wire server on 127.0.0.1, and runs the whole suite against both stores.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -- api     # extra args go to `cargo test` (e.g. a filter)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib.sh

ensure_wasm_target
ensure_venv
bash plugins/build.sh
echo "== JavaScript plugin (componentize-qjs, from npm)"
bash plugins/js/build.sh
(cd plugins/js && npm test --silent)
echo "== Python plugin (componentize-py, from PyPI)"
VENV="$VENV" bash plugins/python/build.sh

start_mongo_wire
trap stop_services EXIT

export MONGODB_URI="mongodb://127.0.0.1:${MONGO_PORT}"
export REQUIRE_MONGODB=1
export SECANTUSD="$VENV/bin/secantusd-py"   # tests/faults.rs starts its own servers to stop and restart them
export MOTO_SERVER="$VENV/bin/moto_server"  # tests/notifications.rs starts its own moto_server processes
export REQUIRE_MOTO=1
export RUST_BACKTRACE=1

echo "== plugin unit tests (host target)"
(cd plugins && cargo test --quiet --target "$(rustc -vV | sed -n 's/^host: //p')" 2>&1 | tail -n 5) || { echo "plugin tests failed"; exit 1; }

echo "== gateway tests (embedded + MongoDB at $MONGODB_URI)"
shift_args=()
if [[ "${1:-}" == "--" ]]; then shift; shift_args=("$@"); fi
cargo test --workspace --locked --no-fail-fast "${shift_args[@]}"

if [[ ${#shift_args[@]} -eq 0 ]]; then
  echo "== schemathesis against /openapi.json (no 5xx, responses match the document)"
  VENV="$VENV" bash scripts/schemathesis.sh

  echo "== Strands Agents adapter (Python) against the gateway binary"
  VENV="$VENV" GATEWAY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/gateway" bash examples/strands-adapter/test.sh
fi
