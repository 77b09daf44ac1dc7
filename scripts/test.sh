#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (apt packages, a Python venv with
# anndata/scanpy for interop checks, CMake >= 3.26 for the static HDF5 build) and runs every
# check: formatting, clippy, the Rust test suite (which calls Python anndata), the Python
# verifier's self-test.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  for p in pkg-config mesa-vulkan-drivers xvfb; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  # Debian's python3 needs python3-venv for `python3 -m venv`.
  python3 -c "import ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import anndata, scanpy, cmake, leidenalg, umap" >/dev/null 2>&1; then
  .venv/bin/pip install -q -r scripts/interop/requirements.txt
fi
export CMAKE="$root/.venv/bin/cmake"
# A clean build gains nothing from incremental state, and it costs gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CELLFORGE_PYTHON="$root/.venv/bin/python"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The verifier must accept anndata's own rewrite of every fixture and reject mutations.
fx=$(mktemp -d)
"$CELLFORGE_PYTHON" scripts/interop/make_fixtures.py "$fx" --shared-data "${CELLFORGE_SHARED_DATA:-$root/../shared/data}" >/dev/null
"$CELLFORGE_PYTHON" scripts/interop/verify_roundtrip.py --self-test "$fx"
rm -rf "$fx"

# Last, so its summary is the closing line of the run.
cargo nextest run --workspace --locked --no-fail-fast
