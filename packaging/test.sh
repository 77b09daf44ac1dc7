#!/usr/bin/env bash
# The packaging test: builds the .deb (packaging/build.sh), installs it (dpkg -i on this
# machine when run as root, otherwise dpkg -x into a scratch root; CELLFORGE_PKG_SCRATCH=1
# forces the scratch root), then from the installed files only:
#   - `cellforge --version` and the man page;
#   - ldd of the installed binary lists no libhdf5 and no libcuda;
#   - a headless fine-tune (3 epochs) of the bundled demo model on the bundled demo data and
#     `cellforge annotate` of the demo, with the output checked (and read by Python anndata
#     when one is available) and the installed demo file unchanged;
#   - installed size, and cold start to the first frame under Xvfb when xvfb-run exists.
# Usage: packaging/test.sh [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bash packaging/build.sh "${1:-}"
deb=$(ls dist/cellforge_*.deb)
scratch=$(mktemp -d)
installed=0
if [ "$(id -u)" = 0 ] && [ -z "${CELLFORGE_PKG_SCRATCH:-}" ]; then
  dpkg -i "$deb" >/dev/null
  installed=1
  prefix=/usr
  trap 'dpkg -r cellforge >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
else
  dpkg -x "$deb" "$scratch/root"
  prefix=$scratch/root/usr
  trap 'rm -rf "$scratch"' EXIT
fi
cf=$prefix/bin/cellforge
fail() { echo "packaging test FAILED: $*" >&2; exit 1; }

version=$("$cf" --version)
grep -q '^cellforge [0-9]' <<< "$version" || fail "--version"
echo "ok: $("$cf" --version)"
man=$(zcat "$prefix/share/man/man1/cellforge.1.gz")   # (no `| grep -q`: pipefail + SIGPIPE)
grep -q '^\.SS cellforge annotate' <<< "$man" || fail "man page"
echo "ok: man page"
[ -f "$prefix/share/applications/cellforge.desktop" ] || fail "desktop entry"
grep -q '\*.h5ad' "$prefix/share/mime/packages/cellforge.xml" || fail "MIME type"
echo "ok: desktop entry, icon, MIME type for .h5ad"

ldd "$cf" > "$scratch/ldd.txt" || true
if grep -Ei 'libhdf5|libcuda|libcudart|libnvrtc|libcublas' "$scratch/ldd.txt"; then
  fail "the binary links HDF5 or CUDA dynamically"
fi
echo "ok: ldd lists no libhdf5 and no libcuda ($(wc -l < "$scratch/ldd.txt") libraries: $(awk '{print $1}' "$scratch/ldd.txt" | tr '\n' ' '))"

demo=$prefix/share/cellforge/demo
before=$(sha256sum "$demo/pbmcs_small.h5ad" | cut -d' ' -f1)
"$cf" finetune --reference "$demo/pbmcs_small.h5ad" --label-key cell_type --model "$demo/model" \
  --output "$scratch/tuned" --epochs 3 --lr 1e-3 --batch-size 32 --max-len 200 --device cpu \
  > "$scratch/finetune.log" 2>&1 || { cat "$scratch/finetune.log"; fail "finetune"; }
"$cf" annotate --model "$scratch/tuned" --query "$demo/pbmcs_small.h5ad" \
  --output "$scratch/annotated.h5ad" --device cpu > "$scratch/annotate.log" 2>&1 \
  || { cat "$scratch/annotate.log"; fail "annotate"; }
grep -E '^(device|annotated)' "$scratch/annotate.log" || true
"$cf" inspect "$scratch/annotated.h5ad" --json > "$scratch/inspect.json"
grep -q '"predicted_cell_type"' "$scratch/inspect.json" || fail "no predicted_cell_type in the output"
grep -q '"n_obs": *1200' "$scratch/inspect.json" || fail "the output does not have 1,200 cells"
after=$(sha256sum "$demo/pbmcs_small.h5ad" | cut -d' ' -f1)
[ "$before" = "$after" ] || fail "the installed demo file changed"
py=${CELLFORGE_PYTHON:-$root/.venv/bin/python}
if "$py" -c 'import anndata' 2>/dev/null; then
  "$py" - "$scratch/annotated.h5ad" <<'PY'
import sys, anndata as ad
a = ad.read_h5ad(sys.argv[1])
pred, truth = a.obs["predicted_cell_type"].astype(str), a.obs["cell_type"].astype(str)
acc = float((pred == truth).mean())
conf = a.obs["predicted_cell_type_confidence"]
assert a.n_obs == 1200 and conf.between(0, 1).all(), "bad confidences"
assert acc > 0.4, f"accuracy {acc:.3f} is no better than guessing the largest class"
print(f"ok: anndata reads the annotation; accuracy vs cell_type {acc:.3f} after 3 epochs")
PY
else
  echo "(no Python anndata: skipped the accuracy check)"
fi
echo "ok: headless fine-tune + annotate of the bundled demo from the installed binary"

if [ "$installed" = 1 ]; then
  size=$(dpkg-query -W -f='${Installed-Size}' cellforge)
else
  size=$(du -sk "$prefix" | awk '{print $1}')
fi
echo "installed size: ${size} KiB (.deb $(du -k "$deb" | cut -f1) KiB)"
if command -v xvfb-run >/dev/null; then
  export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$scratch}
  for i in 1 2 3; do
    CELLFORGE_STARTUP_TRACE=exit WAYLAND_DISPLAY= timeout 120 \
      xvfb-run -a -s "-screen 0 1400x900x24" "$cf" 2>&1 | grep 'first frame' || true
  done
fi
echo "packaging test passed"
