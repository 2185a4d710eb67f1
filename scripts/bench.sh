#!/usr/bin/env bash
# Runs the benchmark harness (examples/bench; results and method in BENCHMARKS.md).
#
#   scripts/bench.sh                      # full run, both stores (~4-5 min)
#   scripts/bench.sh --quick              # about a minute, one summary line at the end (… CMD=<c=16>/<c=1> CPU=<gateway µs per request, embedded, c=32> CPU-read/probe=<the same for GET /v1/sessions/{id} / GET /healthz> CPU-list/patch/append=<the same for GET …/messages?latest=20 / PATCH …/metadata / POST …/messages>)
#   scripts/bench.sh --install-secantus   # first build the Rust SecantusDB server (~6 min, needs cmake)
#   scripts/bench.sh --only hooks,swap    # other arguments go to the harness (see --help)
#
# Builds the plugins and `target/release/gateway`, makes a venv with the Python
# peer (`strands-mongodb-session-manager`), starts a MongoDB-wire server on
# 127.0.0.1 unless MONGODB_URI is set — the Rust SecantusDB build
# (`secantusd-rs`) when it is installed, else the Python SecantusDB server from
# the test venv — and runs the harness. Output is also written to
# target/bench/bench-<time>.{md,json}.
#
# Environment: MONGODB_URI (use this server instead), BENCH_SERVER_LABEL (what
# it is), BENCH_VENV (peer venv; default target/bench-venv), BENCH_TOOLS (where
# --install-secantus installs; default target/bench-tools), SECANTUS_RS (path
# of a secantusd-rs binary), BENCH_GATEWAY_LOG (the gateways' RUST_LOG, default info),
# BENCH_SKIP_BUILD=1 (use what is built), BENCH_GATEWAY_BIN / BENCH_BIN (binaries
# to run, e.g. copies that a concurrent build cannot replace mid-run),
# BENCH_GATEWAY_WRAPPER (prefix for the gateway command, e.g. a profiler).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH_VENV="${BENCH_VENV:-$CARGO_TARGET_DIR/bench-venv}"
BENCH_TOOLS="${BENCH_TOOLS:-$CARGO_TARGET_DIR/bench-tools}"
SECANTUS_VERSION=0.5.3-beta.196

args=()
install=0
for a in "$@"; do
  case "$a" in
    --install-secantus) install=1 ;;
    *) args+=("$a") ;;
  esac
done

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  ensure_wasm_target
  bash plugins/build.sh
  echo "== building the gateway and the harness (release)"
  cargo build --release --locked -p session-gateway -p bench --bin gateway --bin bench
fi
GATEWAY_BIN="${BENCH_GATEWAY_BIN:-$CARGO_TARGET_DIR/release/gateway}"
BENCH_BIN="${BENCH_BIN:-$CARGO_TARGET_DIR/release/bench}"

if ! "$BENCH_VENV/bin/python" -c 'import strands_mongodb_session_manager' 2>/dev/null; then
  echo "== creating $BENCH_VENV (strands-mongodb-session-manager, the Python peer)"
  python3 -m venv "$BENCH_VENV"
  "$BENCH_VENV/bin/pip" install --quiet --disable-pip-version-check "strands-mongodb-session-manager==0.2.0"
fi
export BENCH_PYTHON="$BENCH_VENV/bin/python"

DATA_DIR=""
cleanup() {
  stop_services
  if [[ -n "$DATA_DIR" ]]; then rm -rf "$DATA_DIR"; fi
}
trap cleanup EXIT

if [[ -n "${MONGODB_URI:-}" ]]; then
  export BENCH_SERVER_LABEL="${BENCH_SERVER_LABEL:-the MongoDB server at MONGODB_URI}"
  echo "== using MONGODB_URI from the environment ($BENCH_SERVER_LABEL)"
else
  SECANTUS_RS="${SECANTUS_RS:-$BENCH_TOOLS/bin/secantusd-rs}"
  if [[ ! -x "$SECANTUS_RS" ]] && command -v secantusd-rs >/dev/null; then SECANTUS_RS=$(command -v secantusd-rs); fi
  if [[ ! -x "$SECANTUS_RS" && $install == 1 ]]; then
    command -v cmake >/dev/null || { apt-get update -qq && apt-get install -y -qq cmake; }
    echo "== building secantusd-rs $SECANTUS_VERSION into $BENCH_TOOLS (several minutes)"
    CARGO_HOME="$BENCH_TOOLS/cargo-home" CARGO_TARGET_DIR="$BENCH_TOOLS/target" \
      cargo install secantus-mdb --version "$SECANTUS_VERSION" --ignore-rust-version --root "$BENCH_TOOLS"
    SECANTUS_RS="$BENCH_TOOLS/bin/secantusd-rs"
  fi
  if [[ -x "$SECANTUS_RS" ]]; then
    MONGO_PORT=$(free_port)
    DATA_DIR=$(mktemp -d "${TMPDIR:-/tmp}/secantus-bench-XXXXXX")
    echo "== starting $("$SECANTUS_RS" --version 2>&1 | head -1) on 127.0.0.1:$MONGO_PORT (data: $DATA_DIR)"
    "$SECANTUS_RS" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$DATA_DIR" --cache-size 1G \
      --log-level WARNING >"$DATA_DIR.log" 2>&1 &
    SERVICE_PIDS+=($!)
    wait_port "$MONGO_PORT" 60
    export BENCH_SERVER_LABEL="SecantusDB secantusd-rs $("$SECANTUS_RS" --version 2>&1 | head -1 | awk '{print $NF}') (Rust, WiredTiger, default durability)"
  else
    echo "== secantusd-rs not found (scripts/bench.sh --install-secantus builds it): falling back to the Python server"
    ensure_venv
    start_mongo_wire
    export BENCH_SERVER_LABEL="SecantusDB secantusd-py (Python, in-memory) — fallback"
  fi
  export MONGODB_URI="mongodb://127.0.0.1:${MONGO_PORT}"
  export BENCH_SERVER_PID="${SERVICE_PIDS[-1]}"   # CPU time per operation of the server
fi

mkdir -p "$CARGO_TARGET_DIR/bench"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$CARGO_TARGET_DIR/bench/bench-$stamp"
"$BENCH_BIN" --gateway-bin "$GATEWAY_BIN" \
  --python "$BENCH_PYTHON" --json-out "$out.json" "${args[@]}" | tee "$out.md"
echo "== results: $out.md, $out.json"
