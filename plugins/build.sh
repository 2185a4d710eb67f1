#!/usr/bin/env bash
# Builds every plugin and fixture in this workspace as a WebAssembly component
# (wasm32-wasip2, release profile) and copies each to
# dist/<crate_name_with_underscores>.wasm, e.g. dist/metadata_validator.wasm,
# dist/fixture_loop.wasm.
#
# Usage: plugins/build.sh [extra cargo build arguments]   (from anywhere)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

target=wasm32-wasip2
if ! rustup target list --installed | grep -qx "$target"; then
    echo "installing Rust target $target" >&2
    rustup target add "$target"
fi

locked=()
if [[ -f Cargo.lock ]]; then
    locked=(--locked)
fi

# Diagnostics are rendered on stderr as usual; stdout carries cargo's JSON
# messages, from which we take the paths of the components it produced (this
# follows CARGO_TARGET_DIR and friends).
messages=$(cargo build --release --target "$target" "${locked[@]}" \
    --message-format=json-render-diagnostics "$@")
mapfile -t components < <(
    grep '"reason":"compiler-artifact"' <<<"$messages" |
        grep -o '"filenames":\["[^"]*\.wasm"' |
        sed 's/.*\["//; s/"$//'
)
if [[ ${#components[@]} -eq 0 ]]; then
    echo "error: cargo produced no .wasm component" >&2
    exit 1
fi

# Replace only what this workspace builds: dist/ also holds components built
# by other toolchains (plugins/js/build.sh).
mkdir -p dist
for component in "${components[@]}"; do
    cp "$component" dist/
done

echo "components in $(pwd)/dist:"
for f in dist/*.wasm; do
    printf '  %-28s %8d bytes\n' "$(basename "$f")" "$(stat -c %s "$f")"
done
