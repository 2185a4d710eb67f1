#!/usr/bin/env bash
# Soak: mixed load against the gateway binary for SOAK_SECS (default 600 s),
# reporting throughput, errors and RSS growth. CI runs the 60 s variant as
# part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib.sh
ensure_wasm_target
bash plugins/build.sh >/dev/null
SOAK_SECS="${SOAK_SECS:-600}" cargo test --release --locked -p session-gateway --test soak -- --nocapture
