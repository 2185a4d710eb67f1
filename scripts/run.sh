#!/usr/bin/env bash
# Builds the example plugins and runs the gateway on the embedded store with
# the shipped gateway.toml (or $GATEWAY_CONFIG). Extra arguments go to the
# gateway.
#
# The release build holds only the optional parts the config uses: the
# `mongodb` feature when storage.type is "mongodb", `aws` when
# [notify.targets] names a destination. The shipped gateway.toml needs
# neither, which takes about a third off a cold build (BENCHMARKS.md, "Cold
# release build"). `cargo build --release` builds everything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib.sh
CONFIG="${GATEWAY_CONFIG:-gateway.toml}"
FEATURES=$(python3 - "$CONFIG" <<'PY'
import sys, tomllib
try:
    with open(sys.argv[1], "rb") as f:
        cfg = tomllib.load(f)
except Exception:
    print("mongodb,aws")  # unreadable here: build everything, let the gateway report it
    raise SystemExit
features = []
if cfg.get("storage", {}).get("type") == "mongodb":
    features.append("mongodb")
if cfg.get("notify", {}).get("targets"):
    features.append("aws")
print(",".join(features))
PY
)
ensure_wasm_target
bash plugins/build.sh
echo "== building the gateway (release; optional features: ${FEATURES:-none})"
exec cargo run --release --locked --bin gateway --no-default-features --features "$FEATURES" -- --config "$CONFIG" "$@"
