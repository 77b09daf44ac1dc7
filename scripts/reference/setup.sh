#!/usr/bin/env bash
# Create <repo>/.venv-ref with scgpt 0.2.4 + PyTorch (CPU use) for the
# reference scripts in this folder.  Usage:
#   bash scripts/reference/setup.sh
#   .venv-ref/bin/python scripts/reference/make_scgpt_fixtures.py
# Environment: PYTHON (default python3, needs >= 3.9; tested with 3.11),
# TORCH_INDEX_URL (optional extra index for torch, e.g. a CPU-only wheel index).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.venv-ref"
python="${PYTHON:-python3}"
req="$here/requirements.txt"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install --upgrade pip >/dev/null

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
grep -v -E '^[[:space:]]*scgpt[[:space:]]*==' "$req" >"$tmp"

if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" install --extra-index-url "$TORCH_INDEX_URL" "$(grep -E '^torch==' "$req")"
fi
"${pip[@]}" install -r "$tmp"
# scgpt's declared dependencies (torchtext, scvi-tools, cell-gears, ...) are
# not needed and torchtext does not install against current torch.
"${pip[@]}" install --no-deps "$(grep -E '^[[:space:]]*scgpt[[:space:]]*==' "$req" | tr -d '[:space:]')"

# smoke test: the imports the scripts need, through the stand-ins
REF_DIR="$here" "$venv/bin/python" - <<'PY'
import os, sys
sys.path.insert(0, os.environ["REF_DIR"])
import scgpt_env  # noqa: F401
from scgpt_env import scgpt, torch
print(f"ok: scgpt {scgpt.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
PY
