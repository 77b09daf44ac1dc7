# Builds dist\cellforge-<version>-x64.msi on Windows (not buildable on the Linux CI).
# Needs: Rust (MSVC toolchain), CMake >= 3.26 (static HDF5), the WiX v4 CLI
# (`dotnet tool install --global wix`), and ImageMagick for the .ico.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")
cargo build --release --locked -p cellforge
$version = (& target\release\cellforge.exe --version).Split(" ")[1]
$dist = "dist\windows"
New-Item -ItemType Directory -Force -Path "$dist\assets\demo\model" | Out-Null
Copy-Item target\release\cellforge.exe $dist
Copy-Item assets\demo\pbmcs_small.h5ad "$dist\assets\demo"
Copy-Item assets\demo\model\* "$dist\assets\demo\model"
magick assets\icon\cellforge-256.png -define icon:auto-resize=256,64,48,32,16 "$dist\cellforge.ico"
wix build packaging\windows\cellforge.wxs -d Version=$version -d Dist=$dist -arch x64 `
  -o "dist\cellforge-$version-x64.msi"
