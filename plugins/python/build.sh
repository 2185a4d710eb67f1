#!/usr/bin/env bash
# Builds the Python hooks in this folder into WebAssembly components with
# componentize-py (PyPI), against the same WIT package as the Rust and JS
# plugins (wit/hooks@0.1.0), and writes each to ../dist/py_<name>.wasm, e.g.
# plugins/dist/py_metadata_tagger.wasm. Runs each plugin's unit tests first.
#
#   plugins/python/build.sh
#
# Needs python3 (>= 3.10). componentize-py is installed into $VENV (default
# <repo>/.venv) when missing; it bundles CPython itself, so the component does
# not depend on the Python that built it.
#
# --stub-wasi turns every WASI import into a trap, so the components import
# nothing but gateway:hooks/host: no files, clock or network (log with
# host.log, not print).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(cd ../.. && pwd)
VENV="${VENV:-$ROOT/.venv}"
VERSION=0.25.1

if [[ "$("$VENV/bin/componentize-py" --version 2>/dev/null)" != "componentize-py $VERSION" ]]; then
    echo "installing componentize-py $VERSION into $VENV" >&2
    [[ -x "$VENV/bin/pip" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$VERSION"
fi

wit="$ROOT/wit/hooks@0.1.0"
dist=$(mkdir -p ../dist && cd ../dist && pwd)

# plugin folder -> the WIT world it targets; its entry point is <folder>/app.py
declare -A worlds=(
    [metadata-tagger]=metadata-plugin
)

for name in "${!worlds[@]}"; do
    out="$dist/py_${name//-/_}.wasm"
    (
        cd "$name"
        PYTHONDONTWRITEBYTECODE=1 python3 -m unittest --quiet 2>&1 | tail -n 1
        "$VENV/bin/componentize-py" -d "$wit" -w "${worlds[$name]}" \
            componentize --stub-wasi app -o "$out" >/dev/null
    )
    echo "built $out ($(($(stat -c %s "$out") / 1024)) KiB)"
done
