#!/usr/bin/env bash
# How long a newcomer waits (issue #16): a fresh clone of this checkout's HEAD, then
# scripts/run.sh, timed until GET /healthz answers.
#
#   scripts/cold_start.sh [WORKDIR]
#
# Clones into WORKDIR (default: a new temporary directory), so nothing is built yet: no target/,
# no plugins/dist, no plugin cache. Crates already in ~/.cargo/registry are not downloaded again;
# a fresh machine also fetches them first. Needs port 8080 (the shipped gateway.toml's) free.
# Prints the wall time and the CPU time other virtual machines stole meanwhile (/proc/stat), then
# stops the gateway. Run it on an otherwise idle machine: a build uses both cores.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
if curl -sf http://127.0.0.1:8080/healthz >/dev/null 2>&1; then
  echo "something already answers on 127.0.0.1:8080" >&2
  exit 2
fi
git clone -q "$src" "$work/clone"
cd "$work/clone"
steal() { awk '/^cpu /{print $9}' /proc/stat; }
s0=$(steal)
t0=$(date +%s.%N)
setsid scripts/run.sh >"$work/run.log" 2>&1 &
run=$!
trap 'kill -- -$run 2>/dev/null || true' EXIT
until curl -sf http://127.0.0.1:8080/healthz >/dev/null 2>&1; do
  if ! kill -0 "$run" 2>/dev/null; then
    tail -20 "$work/run.log" >&2
    echo "scripts/run.sh ended before the gateway listened (log: $work/run.log)" >&2
    exit 1
  fi
  sleep 0.5
done
t1=$(date +%s.%N)
s1=$(steal)
awk -v a="$t0" -v b="$t1" -v s=$((s1 - s0)) \
  'BEGIN { w = b - a; printf "fresh clone to listening: %.1f s (%d min %02d s), steal %d ticks\n", w, int(w / 60), int(w) % 60, s }'
grep -E 'Finished .release' "$work/run.log" | head -1
