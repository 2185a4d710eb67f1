#!/usr/bin/env bash
# Builds the example plugins and runs the gateway on the embedded store with
# the shipped gateway.toml. Extra arguments go to the gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib.sh
ensure_wasm_target
bash plugins/build.sh
exec cargo run --release --locked --bin gateway -- --config gateway.toml "$@"
