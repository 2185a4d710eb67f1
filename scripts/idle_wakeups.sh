#!/usr/bin/env bash
# How often an idle gateway wakes up (issue #16: "nothing wakes when nothing is running").
#
#   scripts/idle_wakeups.sh [GATEWAY_BINARY] [SECONDS]
#
# Starts the binary (default target/release/gateway) with this checkout's gateway.toml — its example
# plugins, the embedded store — in a temporary directory, on a free port on 127.0.0.1, waits until it
# is ready and 12 s more (so that the blocking pool's idle threads have exited), then counts the
# context switches (voluntary + involuntary, from /proc/<pid>/task/*/status) of every thread over
# SECONDS (default 10) while no request is made. Prints the total and the threads that woke.
# Nothing else runs in the temporary directory, so the plugin watcher's file events are the
# gateway's own.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/gateway}
secs=${2:-10}
[ -x "$bin" ] || { echo "no gateway binary at $bin (cargo build --release -p session-gateway)" >&2; exit 2; }
[ -f plugins/dist/metadata_validator.wasm ] || { echo "plugins/dist is empty (plugins/build.sh)" >&2; exit 2; }
work=$(mktemp -d)
snap=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work" "$snap"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -e "s#^listen = .*#listen = \"127.0.0.1:$port\"#" \
    -e "s#^path = \"data/gateway.redb\"#path = \"$work/gateway.redb\"#" \
    -e "s#^cache_dir = .*#cache_dir = \"$work/cache\"#" \
    -e "s#wasm = \"plugins/#wasm = \"$PWD/plugins/#" \
    gateway.toml > "$work/gateway.toml"
env -u MONGODB_URI "$bin" --config "$work/gateway.toml" > "$snap/log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$snap/log" >&2; exit 1; }
    sleep 0.2
done
sleep 12
count() {
    for t in /proc/"$pid"/task/*; do
        awk -v tid="$(basename "$t")" -v name="$(cat "$t/comm")" \
            '/^voluntary_ctxt_switches/{v=$2} /^nonvoluntary_ctxt_switches/{n=$2} END{print tid, name, v+n}' "$t/status"
    done | sort
}
count > "$snap/before"
sleep "$secs"
count > "$snap/after"
join "$snap/before" "$snap/after" | awk -v bin="$(basename "$bin")" -v secs="$secs" '
    { d = $5 - $3; total += d; if (d > 0) woke = woke " " $2 "=" d }
    END { printf "%s: %d context switches in %d s idle;%s\n", bin, total, secs, (woke == "" ? " no thread woke" : " woke:" woke) }'
