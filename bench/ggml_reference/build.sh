#!/usr/bin/env bash
# Build the llama.cpp reference quantizers as a shared library for make_golden.py.
#   bash build.sh SRC OUT_DIR
# SRC: a llama.cpp work tree (ggml/src/ggml-quants.c) or a ggml work tree (src/ggml-quants.c).
# From a bare mirror: git --git-dir=MIRROR archive HEAD | tar -x -C SRC
# Flags follow how llama.cpp builds ggml-base on x86-64: no -march, so no FMA contraction;
# -ffp-contract=off keeps that true on machines whose default target has FMA.
set -euo pipefail
src=${1:?llama.cpp or ggml checkout}
out=${2:?output directory}
if [[ -f $src/ggml/src/ggml-quants.c ]]; then g=$src/ggml; else g=$src; fi
[[ -f $g/src/ggml-quants.c ]] || { echo "no ggml-quants.c under $src" >&2; exit 2; }
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
gcc -O2 -std=gnu11 -fPIC -shared -DNDEBUG -ffp-contract=off \
    -I"$g/include" -I"$g/src" -I"$g/src/ggml-cpu" \
    "$here/ggml_ref.c" "$g/src/ggml-quants.c" -lm -o "$out/libggml_ref.so"
echo "$out/libggml_ref.so"
