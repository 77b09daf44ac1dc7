#!/usr/bin/env bash
# Builds the Linux packages of cellforge from the release binary:
#   dist/cellforge_<version>_<arch>.deb   (dpkg-deb; installs to /usr)
#   dist/cellforge.AppDir                 (the AppImage tree)
#   dist/cellforge-<version>-<arch>.AppImage, when appimagetool is on PATH
# Both carry the desktop entry, icon, the .h5ad MIME type, the man page and the demo
# dataset and model. Usage: packaging/build.sh [BIN]   (default: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${1:-}
if [ -z "$bin" ]; then
  if [ -z "${CMAKE:-}" ] && [ -x .venv/bin/cmake ]; then export CMAKE="$root/.venv/bin/cmake"; fi
  cargo build --release --locked -p cellforge
  bin=target/release/cellforge
fi
version=$("$bin" --version | awk '{print $2}')
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
dist=$root/dist
rm -rf "$dist" && mkdir -p "$dist"

# The installed tree, shared by the .deb and the AppDir.
stage() {
  local usr=$1
  install -Dm755 "$bin" "$usr/bin/cellforge"
  strip --strip-unneeded "$usr/bin/cellforge" 2>/dev/null || true
  install -Dm644 assets/demo/pbmcs_small.h5ad "$usr/share/cellforge/demo/pbmcs_small.h5ad"
  for f in config.json model.safetensors vocab.json train_log.json pretrain.log; do
    install -Dm644 "assets/demo/model/$f" "$usr/share/cellforge/demo/model/$f"
  done
  install -Dm644 assets/README.md "$usr/share/doc/cellforge/DEMO-DATA.md"
  install -Dm644 packaging/linux/cellforge.desktop "$usr/share/applications/cellforge.desktop"
  install -Dm644 packaging/linux/cellforge-mime.xml "$usr/share/mime/packages/cellforge.xml"
  install -Dm644 assets/icon/cellforge.svg "$usr/share/icons/hicolor/scalable/apps/cellforge.svg"
  install -Dm644 assets/icon/cellforge-256.png "$usr/share/icons/hicolor/256x256/apps/cellforge.png"
  mkdir -p "$usr/share/man/man1"
  packaging/make_manpage.sh "$usr/bin/cellforge" | gzip -9n > "$usr/share/man/man1/cellforge.1.gz"
  install -Dm644 packaging/linux/copyright "$usr/share/doc/cellforge/copyright"
}

# --- .deb ---
pkg=$dist/deb
stage "$pkg/usr"
size_kb=$(du -sk "$pkg/usr" | awk '{print $1}')
# Shared libraries the binary links (glibc, libgcc); Vulkan, X11 and Wayland are loaded at
# run time when present, CUDA only when a driver is installed.
depends="libc6 (>= 2.31), libgcc-s1"
mkdir -p "$pkg/DEBIAN"
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: cellforge
Version: $version
Architecture: $arch
Maintainer: cellforge developers <dev@cellforge.invalid>
Installed-Size: $size_kb
Depends: $depends
Recommends: libvulkan1, mesa-vulkan-drivers, libxkbcommon-x11-0
Section: science
Priority: optional
Homepage: https://github.com/bowang-lab/scGPT
Description: scGPT single-cell foundation model studio (desktop app and CLI)
 Opens .h5ad files, embeds cells with scGPT models on CUDA, Vulkan/Metal (wgpu) or the
 CPU, fine-tunes for cell type annotation, lets you correct labels by pointing and
 clicking, and writes annotated .h5ad files and figures. Includes a demo dataset and a
 small demo model. No Python needed.
CONTROL
cat > "$pkg/DEBIAN/postinst" <<'POST'
#!/bin/sh
set -e
command -v update-mime-database >/dev/null && update-mime-database /usr/share/mime || true
command -v update-desktop-database >/dev/null && update-desktop-database -q /usr/share/applications || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q /usr/share/icons/hicolor || true
exit 0
POST
cp "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/postrm"
chmod 755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/postrm"
deb=$dist/cellforge_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
rm -rf "$pkg"
echo "built $deb ($(du -h "$deb" | cut -f1), installed size ${size_kb} KiB)"

# --- AppDir / AppImage ---
app=$dist/cellforge.AppDir
stage "$app/usr"
ln -s usr/share/applications/cellforge.desktop "$app/cellforge.desktop"
ln -s usr/share/icons/hicolor/256x256/apps/cellforge.png "$app/cellforge.png"
cat > "$app/AppRun" <<'RUN'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
exec "$here/usr/bin/cellforge" "$@"
RUN
chmod 755 "$app/AppRun"
if command -v appimagetool >/dev/null; then
  ARCH=$(uname -m) appimagetool "$app" "$dist/cellforge-$version-$(uname -m).AppImage"
else
  echo "appimagetool not found: left the AppDir in $app (run appimagetool on it to make the AppImage)"
fi
