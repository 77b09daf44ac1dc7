#!/usr/bin/env bash
# Refreshes docs/screenshot.png: the real cellforge window under Xvfb (software Vulkan via
# Mesa's lavapipe when there is no GPU), after the app has opened the bundled demo dataset
# and model and run embed -> UMAP -> Leiden by itself (`--demo --run ... --screenshot`).
# Usage: scripts/screenshot.sh [BIN]   (default: builds and uses target/release/cellforge)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
  if [ -z "${CMAKE:-}" ] && [ -x .venv/bin/cmake ]; then export CMAKE="$PWD/.venv/bin/cmake"; fi
  cargo build --release --locked -p cellforge
  bin=target/release/cellforge
fi
command -v xvfb-run >/dev/null || { echo "xvfb-run is missing (apt-get install xvfb)" >&2; exit 1; }
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
# X11 only: Xvfb has no Wayland compositor.
unset WAYLAND_DISPLAY
xvfb-run -a -s "-screen 0 1400x900x24" "$bin" --demo --run embed,umap,leiden \
  --screenshot docs/screenshot.png
