# Shared helpers for scripts/*.sh (sourced, not run).

VENV="${VENV:-$ROOT/.venv}"

ensure_wasm_target() {
  if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "== installing the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
  fi
}

# A Python venv with the test servers: SecantusDB (MongoDB wire protocol) and moto (SNS/SQS).
ensure_venv() {
  if [[ ! -x "$VENV/bin/secantusd-py" || ! -x "$VENV/bin/moto_server" ]]; then
    echo "== creating $VENV (SecantusDB, moto)"
    # Debian/Ubuntu ship `venv` without ensurepip unless python3-venv is installed.
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null && command -v apt-get >/dev/null; then
      echo "== installing python3-venv (apt)"
      apt-get update -qq && apt-get install -y -qq python3-venv
    fi
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/scripts/requirements-test.txt"
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port seconds
  local port=$1 deadline=$((SECONDS + $2))
  until python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null; do
    if (( SECONDS > deadline )); then echo "nothing listening on $port after $2 s" >&2; return 1; fi
    sleep 0.2
  done
}

SERVICE_PIDS=()

start_mongo_wire() {
  if [[ -n "${MONGODB_URI:-}" ]]; then
    echo "== using MONGODB_URI from the environment"
    MONGO_PORT="${MONGODB_URI##*:}"; MONGO_PORT="${MONGO_PORT%%/*}"
    return
  fi
  MONGO_PORT=$(free_port)
  MONGO_LOG="${TMPDIR:-/tmp}/secantusd-$MONGO_PORT.log"
  echo "== starting SecantusDB on 127.0.0.1:$MONGO_PORT (log: $MONGO_LOG)"
  "$VENV/bin/secantusd-py" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path :memory: >"$MONGO_LOG" 2>&1 &
  SERVICE_PIDS+=($!)
  wait_port "$MONGO_PORT" 60
}

stop_services() {
  for pid in "${SERVICE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SERVICE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
