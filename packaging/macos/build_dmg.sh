#!/usr/bin/env bash
# Builds dist/cellforge-<version>.dmg on macOS (not buildable on the Linux CI): a universal
# binary in cellforge.app with the demo data and model in Contents/MacOS/assets (where the app
# looks next to its executable), the .h5ad document type, and an icon.
# Needs: Rust with both Apple targets, CMake >= 3.26, Xcode command line tools.
set -euo pipefail
cd "$(dirname "$0")/../.."
for t in aarch64-apple-darwin x86_64-apple-darwin; do
  cargo build --release --locked -p cellforge --target "$t"
done
version=$(target/aarch64-apple-darwin/release/cellforge --version | awk '{print $2}')
app=dist/macos/cellforge.app
rm -rf dist/macos && mkdir -p "$app/Contents/MacOS/assets/demo/model" "$app/Contents/Resources"
lipo -create -output "$app/Contents/MacOS/cellforge" \
  target/aarch64-apple-darwin/release/cellforge target/x86_64-apple-darwin/release/cellforge
cp assets/demo/pbmcs_small.h5ad "$app/Contents/MacOS/assets/demo/"
cp assets/demo/model/* "$app/Contents/MacOS/assets/demo/model/"
sed "s/VERSION/$version/g" packaging/macos/Info.plist > "$app/Contents/Info.plist"
iconset=dist/macos/cellforge.iconset && mkdir -p "$iconset"
for s in 16 32 64 128 256; do sips -z $s $s assets/icon/cellforge-256.png --out "$iconset/icon_${s}x${s}.png" >/dev/null; done
iconutil -c icns "$iconset" -o "$app/Contents/Resources/cellforge.icns"
codesign --force --deep --sign - "$app"   # ad-hoc; use a Developer ID for distribution
hdiutil create -volname cellforge -srcfolder "$app" -ov -format UDZO "dist/cellforge-$version.dmg"
