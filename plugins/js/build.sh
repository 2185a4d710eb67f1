#!/usr/bin/env bash
# Builds the JavaScript hooks in this folder into WebAssembly components with
# ComponentizeJS (SpiderMonkey/StarlingMonkey), against the same WIT package
# as the Rust plugins, and writes them to ../dist/js_<name>.wasm, e.g.
# plugins/dist/js_metadata_tagger.wasm.
#
# Usage: plugins/js/build.sh   (from anywhere; needs Node.js >= 20 and npm)
#
# Installs the pinned devDependencies into plugins/js/node_modules first
# (`npm ci`, from the npm registry only; nothing is downloaded at build time).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

wit=../../wit/hooks@0.1.0
dist=../dist

command -v node >/dev/null || { echo "error: node is not installed (need Node.js >= 20 with npm)" >&2; exit 1; }

# Reinstall only when the lock file changed since the last install.
if [[ ! -f node_modules/.package-lock.json ]] || ! cmp -s package-lock.json node_modules/.gateway-installed-lock; then
    echo "installing JS build tools (npm ci)" >&2
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json node_modules/.gateway-installed-lock
fi

componentize=node_modules/@bytecodealliance/componentize-js/src/cli.js

# plugin folder -> WIT world it targets
declare -A worlds=(
    [metadata-tagger]=metadata-plugin
)

mkdir -p "$dist"
for plugin in "${!worlds[@]}"; do
    out="$dist/js_${plugin//-/_}.wasm"
    echo "componentizing $plugin (world ${worlds[$plugin]})" >&2
    # Every optional engine feature is disabled, so the component imports
    # nothing but gateway:hooks/host (no WASI at all): console.* is a no-op
    # (log with host.log), Math.random is deterministic and there are no
    # timers, clocks, fetch or files, none of which the gateway grants anyway.
    node "$componentize" "$plugin/src/index.js" \
        --wit "$wit" \
        --world-name "${worlds[$plugin]}" \
        --disable stdio random clocks http fetch-event \
        --out "$out.tmp"
    mv "$out.tmp" "$out"
    printf '  %-28s %8d bytes\n' "$(basename "$out")" "$(stat -c %s "$out")"
done
