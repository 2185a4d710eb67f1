#!/usr/bin/env bash
# Tests the Strands adapter against a real gateway.
#
#   examples/strands-adapter/test.sh [pytest args]
#
# VENV         Python venv to use/create (default: <repo>/.venv)
# GATEWAY_BIN  gateway binary the tests start (default: <repo>/target/debug/gateway,
#              built with `cargo build --bin gateway` when missing)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
GATEWAY_BIN_GIVEN="${GATEWAY_BIN:-}"
GATEWAY_BIN="${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/gateway}"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "== creating $VENV"
  python3 -m venv "$VENV"
fi

# The versions CI tests with (the package itself accepts ranges, see pyproject.toml).
PINS=(orjson==3.13.0 httpx==0.28.1)

# Reinstall only when the adapter's pyproject.toml or the pins changed (the install is editable).
stamp="$VENV/.session-gateway-strands.stamp"
want="$( (cat "$HERE/pyproject.toml"; echo "${PINS[*]}") | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]] || ! "$VENV/bin/python" -c 'import session_gateway_strands, strands, pytest, orjson, httpx' 2>/dev/null; then
  echo "== installing examples/strands-adapter[test] into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$HERE[test]" "${PINS[@]}"
  echo "$want" >"$stamp"
fi

if [[ ! -x "$GATEWAY_BIN" ]]; then
  if [[ -n "$GATEWAY_BIN_GIVEN" ]]; then
    echo "GATEWAY_BIN=$GATEWAY_BIN is not an executable: build it with \`cargo build --bin gateway\`" >&2
    exit 1
  fi
  echo "== building the gateway ($GATEWAY_BIN is missing)"
  (cd "$ROOT" && cargo build --bin gateway)
fi

echo "== strands adapter tests (strands-agents $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("strands-agents"))'), gateway $GATEWAY_BIN)"
cd "$HERE"
GATEWAY_BIN="$GATEWAY_BIN" PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
