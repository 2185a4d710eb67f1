#!/usr/bin/env bash
# Builds the JavaScript hooks in this folder into WebAssembly components,
# against the same WIT package as the Rust plugins (wit/hooks@0.1.0), and
# writes each to ../dist/js_<name>.wasm, e.g. plugins/dist/js_metadata_tagger.wasm.
#
#   plugins/js/build.sh                            # QuickJS (default)
#   plugins/js/build.sh --backend starlingmonkey   # SpiderMonkey, via ComponentizeJS
#
# Needs Node.js >= 20 and npm. Installs the pinned devDependencies into
# plugins/js/node_modules first (`npm ci`, npm registry only; nothing else is
# downloaded).
#
# Both backends stub out or leave out every WASI import: the components import
# nothing but gateway:hooks/host. See README.md for what that means for a
# plugin (no clock, deterministic Math.random, console.* via host.log).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

backend=${JS_BACKEND:-quickjs}
while [[ $# -gt 0 ]]; do
    case $1 in
        --backend) backend=${2:?--backend needs a value}; shift 2 ;;
        --backend=*) backend=${1#--backend=}; shift ;;
        -h|--help) sed -n '2,15p' "$(basename "${BASH_SOURCE[0]}")"; exit 0 ;;
        *) echo "error: unknown argument $1" >&2; exit 2 ;;
    esac
done
case $backend in
    quickjs|starlingmonkey) ;;
    *) echo "error: --backend must be quickjs or starlingmonkey, not $backend" >&2; exit 2 ;;
esac

command -v node >/dev/null || { echo "error: node is not installed (need Node.js >= 20 with npm)" >&2; exit 1; }

# (Re)install only when the lock file changed since the last install.
if ! cmp -s package-lock.json node_modules/.gateway-installed-lock 2>/dev/null; then
    echo "installing JS build tools (npm ci)" >&2
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json node_modules/.gateway-installed-lock
fi

wit=$(cd ../../wit/hooks@0.1.0 && pwd)
dist=$(mkdir -p ../dist && cd ../dist && pwd)

# plugin folder -> the WIT world it targets; its entry point is <folder>/src/index.js
declare -A worlds=(
    [metadata-tagger]=metadata-plugin
)

for plugin in "${!worlds[@]}"; do
    src=$(cd "$plugin/src" && pwd)
    out="$dist/js_${plugin//-/_}.wasm"
    echo "componentizing $plugin (world ${worlds[$plugin]}, $backend)" >&2
    case $backend in
        quickjs)
            # --sync: plain (non-async) component-model ABI, which the host
            # calls; --stub-wasi: every WASI import becomes a trap, so the
            # component imports only gateway:hooks.
            node node_modules/componentize-qjs/cli.mjs \
                --wit "$wit" --world "${worlds[$plugin]}" \
                --js "$src/index.js" --module-root "$src" \
                --sync --stub-wasi \
                --output "$out.tmp" >/dev/null
            ;;
        starlingmonkey)
            # Every optional engine feature disabled: no WASI imports at all.
            node node_modules/@bytecodealliance/componentize-js/src/cli.js "$src/index.js" \
                --wit "$wit" --world-name "${worlds[$plugin]}" \
                --disable stdio random clocks http fetch-event \
                --out "$out.tmp"
            ;;
    esac
    mv "$out.tmp" "$out"
    printf '  %-28s %8d bytes\n' "$(basename "$out")" "$(stat -c %s "$out")"
done
