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
import sys
try:
    import tomllib  # Python 3.11+
    with open(sys.argv[1], "rb") as f:
        cfg = tomllib.load(f)
except Exception:
    print("mongodb,aws")  # no tomllib, or unreadable here: build everything, let the gateway report it
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
# The plugins (their own workspace and target directory) build alongside the
# gateway: the gateway's build leaves a core idle for much of its last minutes.
PLUGIN_LOG=$(mktemp "${TMPDIR:-/tmp}/gateway-plugins.XXXXXX")
echo "== building the example plugins in the background (log: $PLUGIN_LOG)"
bash plugins/build.sh >"$PLUGIN_LOG" 2>&1 &
PLUGINS=$!
echo "== building the gateway (release; optional features: ${FEATURES:-none})"
ARGS=(--release --locked --bin gateway --no-default-features --features "$FEATURES")
if ! cargo build "${ARGS[@]}"; then
  kill "$PLUGINS" 2>/dev/null || true
  exit 1
fi
if ! wait "$PLUGINS"; then
  cat "$PLUGIN_LOG" >&2
  echo "error: building the plugins failed (log above: $PLUGIN_LOG)" >&2
  exit 1
fi
rm -f "$PLUGIN_LOG"
exec cargo run "${ARGS[@]}" -- --config "$CONFIG" "$@"
