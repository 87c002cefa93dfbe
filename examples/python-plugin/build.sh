#!/usr/bin/env bash
# Builds the Python example into OUT_DIR (default: ./out) as python_example.wasm plus
# python_example.toml (this manifest with the wasm's sha256), ready for a plugin dir.
# Needs `pip install componentize-py==0.25.1`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/out}"
mkdir -p "$out"
componentize-py -d "$here/../../wit" -w credential-type componentize -p "$here" app \
  -o "$out/python_example.wasm"
sum="$(sha256sum "$out/python_example.wasm" | cut -d' ' -f1)"
{ echo "sha256 = \"$sum\""; cat "$here/manifest.toml"; } > "$out/python_example.toml"
chmod 0644 "$out/python_example.wasm" "$out/python_example.toml"
echo "built $out/python_example.wasm ($(wc -c < "$out/python_example.wasm") bytes, sha256 $sum)"
