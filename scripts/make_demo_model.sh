#!/usr/bin/env bash
# Pretrains the bundled demo model (assets/demo/model) with cellforge itself on the bundled
# demo dataset's raw counts. Small on purpose (185k parameters) so the first run embeds,
# fine-tunes and annotates in seconds on a laptop CPU. Usage: scripts/make_demo_model.sh [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/cellforge}
out=assets/demo/model
tmp=$(mktemp -d)
"$bin" pretrain --corpus assets/demo/pbmcs_small.h5ad --output "$tmp/model" --layer counts \
  --epochs 20 --d-model 64 --nlayers 2 --nhead 4 --max-len 200 --batch-size 32 \
  --lr 1e-3 --schedule cosine:0.05 --cell-prompt-after 100 --seed 0 --device cpu \
  2>&1 | tee "$tmp/pretrain.log"
mkdir -p "$out"
for f in config.json model.safetensors vocab.json train_log.json; do
  install -m 0644 "$tmp/model/$f" "$out/$f"
done
grep -E "^(validation|pretrained)" "$tmp/pretrain.log" | sed "s#$tmp/##" > "$out/pretrain.log"
rm -rf "$tmp"
