#!/usr/bin/env bash
# Runs every test: installs what a fresh machine lacks (wasm32-wasip2 target, a
# Python venv with SecantusDB and moto), builds the plugins (Rust, JS, Python), starts a
# MongoDB-wire server on 127.0.0.1, and runs the whole suite against both stores.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -- api     # extra args go to `cargo test` (e.g. a filter); other stages are skipped
#
# Every stage runs even when an earlier one failed (a failure in one must not
# hide the results of the others). At the end a summary prints one line per
# stage (name, pass/FAIL, seconds) and the test counts of cargo and pytest
# added up; the exit status is non-zero when any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib.sh

LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gateway-test.XXXXXX")
SUMMARY=()
FAILED_STAGES=0

# stage NAME COMMAND...: runs COMMAND in a subshell with `set -e`, its output
# shown as it comes and kept in $LOG_DIR/NAME.log; records pass/fail and time.
stage() {
  local name=$1; shift
  local log="$LOG_DIR/${name// /_}.log" start=$SECONDS rc
  echo "== [$name]"
  ( set -e; "$@" ) 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  record "$name" "$rc" $((SECONDS - start))
}

record() { # name rc seconds
  local verdict=pass
  if [[ $2 -ne 0 ]]; then verdict="FAIL (exit $2)"; FAILED_STAGES=$((FAILED_STAGES + 1)); fi
  SUMMARY+=("$(printf '%-34s %-14s %5d s' "$1" "$verdict" "$3")")
}

setup() { ensure_wasm_target; ensure_venv; }
plugins_rust() { bash plugins/build.sh; }
plugins_js() { bash plugins/js/build.sh; (cd plugins/js && npm test --silent); }
plugins_python() { VENV="$VENV" bash plugins/python/build.sh; }
plugin_unit_tests() {
  cd plugins && cargo test --quiet --target "$(rustc -vV | sed -n 's/^host: //p')"
}
# The workspace's test binaries, built once, then run TEST_JOBS at a time (default
# 3; most wait on servers, sockets or deadlines rather than on the CPU), the
# longest first; each binary's output is printed whole when it ends, after a
# `Running` line as cargo prints it. With extra arguments (a filter), plain
# `cargo test` instead.
gateway_tests() {
  if [[ ${#CARGO_ARGS[@]} -gt 0 ]]; then
    cargo test --workspace --locked --no-fail-fast "${CARGO_ARGS[@]}"
    return
  fi
  local list="$LOG_DIR/test-binaries.tsv" out="$LOG_DIR/binaries" failed=()
  mkdir -p "$out"
  cargo test --workspace --locked --no-run --message-format=json-render-diagnostics |
    python3 scripts/test_binaries.py >"$list"
  echo "running $(wc -l <"$list") test binaries, ${TEST_JOBS:-3} at a time"
  local name dir exe
  while IFS=$'\t' read -r name dir exe; do
    while [[ $(jobs -rp | wc -l) -ge ${TEST_JOBS:-3} ]]; do wait -n || true; done
    (
      start=$SECONDS rc=0
      (cd "$dir" && "$exe") >"$out/$name.log" 2>&1 || rc=$?
      echo "$rc" >"$out/$name.rc"
      {
        flock 9
        echo "     Running $name ($((SECONDS - start)) s)"
        cat "$out/$name.log"
      } 9>"$out/.print-lock"
    ) &
  done <"$list"
  wait
  while IFS=$'\t' read -r name dir exe; do
    [[ "$(cat "$out/$name.rc" 2>/dev/null)" == 0 ]] || failed+=("$name")
  done <"$list"
  cargo test --workspace --locked --doc || failed+=("doc tests")
  if [[ ${#failed[@]} -gt 0 ]]; then
    echo "== failed test binaries: ${failed[*]}"
    return 1
  fi
}
# The per-write transaction path (what servers before MongoDB 8.0 get) under the
# store contract, since the default path on SecantusDB is the group commit.
mongo_transaction_path() { MONGODB_WRITE_PATH=transaction cargo test --locked -p session-gateway --test store_contract; }
schemathesis() { VENV="$VENV" bash scripts/schemathesis.sh; }
# Issue #15: imports flow one way (no cycles, nothing upward), no file over
# 800 lines, every module in lib.rs's crate map; and the tool's own tests.
module_graph() { python3 -m unittest -q scripts/test_module_graph.py && python3 scripts/module_graph.py --check; }
# scripts/run.sh builds the gateway without the default features (mongodb,
# aws) for the shipped config: keep that build compiling and warning-free.
minimal_build() { cargo clippy --locked -p session-gateway --bins --no-default-features -- -D warnings; }
strands_adapter() {
  VENV="$VENV" GATEWAY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/gateway" bash examples/strands-adapter/test.sh
}

CARGO_ARGS=()
if [[ "${1:-}" == "--" ]]; then shift; CARGO_ARGS=("$@"); fi

stage "setup (wasm target, venv)" setup
stage "plugins: Rust build" plugins_rust
stage "plugins: JavaScript build+test" plugins_js
stage "plugins: Python build" plugins_python

start=$SECONDS
if start_mongo_wire; then rc=0; else rc=$?; fi
record "MongoDB-wire server" "$rc" $((SECONDS - start))
trap stop_services EXIT

export MONGODB_URI="mongodb://127.0.0.1:${MONGO_PORT:-1}"
export REQUIRE_MONGODB=1
export SECANTUSD="$VENV/bin/secantusd-py"   # tests/faults.rs starts its own servers to stop and restart them
export MOTO_SERVER="$VENV/bin/moto_server"  # tests/notifications.rs starts its own moto_server processes
export REQUIRE_MOTO=1
export RUST_BACKTRACE=1

stage "plugin unit tests" plugin_unit_tests
echo "== gateway tests (embedded + MongoDB at $MONGODB_URI)"
stage "gateway tests (cargo test)" gateway_tests
if [[ ${#CARGO_ARGS[@]} -eq 0 ]]; then
  stage "store contract, per-write MongoDB path" mongo_transaction_path
  stage "module graph (scripts/module_graph.py --check)" module_graph
  stage "minimal build (scripts/run.sh's features)" minimal_build
  stage "schemathesis" schemathesis
  stage "Strands adapter (pytest)" strands_adapter
fi

# Test counts over every stage's log: cargo's "test result:" lines and pytest's closing line.
read -r passed failed < <(cat "$LOG_DIR"/*.log | awk '
  /^test result: / { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
  /^=+ .*(passed|failed).* in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed,?$/) p += $(i-1); if ($(i) ~ /^failed,?$/) f += $(i-1) } }
  END { print p + 0, f + 0 }')

echo
echo "== summary (logs: $LOG_DIR)"
for line in "${SUMMARY[@]}"; do echo "$line"; done
echo "stages passed: $(( ${#SUMMARY[@]} - FAILED_STAGES )) of ${#SUMMARY[@]}"
echo "tests: $passed passed, $failed failed"
if [[ $FAILED_STAGES -ne 0 ]]; then exit 1; fi
