#!/usr/bin/env bash
# Writes the cellforge(1) man page (roff) to stdout from the binary's own --help texts, so
# the page always matches the build. Usage: packaging/make_manpage.sh BIN > cellforge.1
set -euo pipefail
bin=$1
esc() { sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\\&'/" -e 's/^-/\\-/'; }
version=$("$bin" --version | awk '{print $2}')
cat <<HEAD
.TH CELLFORGE 1 "" "cellforge $version" "User Commands"
.SH NAME
cellforge \- the scGPT single-cell foundation model as a desktop app and command-line tool
.SH SYNOPSIS
.B cellforge
[\fIFILE.h5ad\fR] [\fB\-\-demo\fR] [\fB\-\-model\fR \fIDIR\fR] [\fB\-\-run\fR \fISTEPS\fR]
.br
.B cellforge
\fICOMMAND\fR [\fIOPTIONS\fR]
.SH DESCRIPTION
Started without a command, cellforge opens the desktop app: open an .h5ad file, embed the
cells with an scGPT model, compute UMAP and clusters, fine-tune for cell type annotation,
correct labels by pointing and clicking, and export an annotated .h5ad and figures. The same
engine is available as commands for scripts and servers without a display.
.PP
The bundled demo dataset and demo model are installed under
\fI/usr/share/cellforge/demo\fR.
.SH OPTIONS
.nf
HEAD
"$bin" --help | esc
echo ".fi"
echo ".SH COMMANDS"
for cmd in $("$bin" --help | awk '/^Commands:/{f=1;next} /^$/{f=0} f{print $1}' | grep -v '^help$'); do
  echo ".SS cellforge $cmd"
  echo ".nf"
  "$bin" "$cmd" --help | esc
  echo ".fi"
done
cat <<'TAIL'
.SH FILES
.TP
.I /usr/share/cellforge/demo/pbmcs_small.h5ad
1,200 PBMCs with cell type labels (symphony; GPL >= 3).
.TP
.I /usr/share/cellforge/demo/model
a small scGPT-architecture model cellforge pretrained on the demo data.
.SH SEE ALSO
The official scGPT weights: https://github.com/bowang-lab/scGPT (model zoo); open the
downloaded folder with "Open a model" or \fB\-\-model\fR.
TAIL
