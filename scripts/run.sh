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
model=assets/demo/model
work=$(mktemp -d)
"$bin" inspect "$demo"
# scGPT's preprocessing of the demo's raw counts (per-donor highly variable genes, bins).
"$bin" preprocess "$demo" --output "$work/preprocessed.h5ad" --layer counts --log1p \
  --n-hvg 500 --batch-key donor
# Embed every cell with the bundled demo model, map them and cluster.
"$bin" embed "$demo" --model "$model" --output "$work/embedded.h5ad" --max-length 200
"$bin" neighbors "$work/embedded.h5ad" -o "$work/neighbors.h5ad" --use-rep X_scGPT
"$bin" umap "$work/neighbors.h5ad" -o "$work/umap.h5ad"
"$bin" leiden "$work/umap.h5ad" -o "$work/clustered.h5ad"
# Fine-tune the demo model for cell types (5 epochs), annotate, and draw the result.
"$bin" finetune --reference "$demo" --label-key cell_type --model "$model" \
  --output "$work/annotator" --epochs 5 --lr 1e-3 --max-len 200
"$bin" annotate --model "$work/annotator" --query "$work/clustered.h5ad" \
  --output "$work/annotated.h5ad"
"$bin" plot "$work/annotated.h5ad" -o "$work/umap_predicted.png" --color predicted_cell_type
"$bin" inspect "$work/annotated.h5ad"
echo "Results in $work (annotated.h5ad, umap_predicted.png)."
