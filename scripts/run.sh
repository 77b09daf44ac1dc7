#!/usr/bin/env bash
# Builds cellforge (release) and runs the main job: the desktop app when a display is
# available, otherwise the CLI on the bundled demo dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Debian's python3 needs python3-venv for `python3 -m venv` (used below for CMake).
if ! python3 -c "import ensurepip" >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
  && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

# The static HDF5 build needs CMake >= 3.26 (Debian 12 ships 3.25): take it from PyPI.
if ! command -v cmake >/dev/null 2>&1 || ! cmake --version | awk 'NR==1{split($3,v,"."); exit !(v[1]>3 || (v[1]==3 && v[2]>=26))}'; then
  [ -x .venv/bin/cmake ] || { python3 -m venv .venv && .venv/bin/pip install -q "cmake>=3.26"; }
  export CMAKE="$root/.venv/bin/cmake"
fi

cargo build --release --locked -p cellforge
bin=target/release/cellforge

if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec "$bin" "$@"
fi

echo "No display found: running the CLI on the bundled demo dataset instead."
demo=assets/demo/pbmcs_small.h5ad
"$bin" inspect "$demo"
out=$(mktemp -d)/demo-converted.h5ad
"$bin" convert "$demo" --output "$out" --compression gzip
"$bin" inspect "$out"
# scGPT's preprocessing of the demo's raw counts (per-donor highly variable genes, bins).
pp=$(dirname "$out")/demo-preprocessed.h5ad
"$bin" preprocess "$demo" --output "$pp" --layer counts --log1p --n-hvg 500 --batch-key donor
"$bin" inspect "$pp"
