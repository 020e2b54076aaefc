#!/usr/bin/env bash
# Fetch the llama-cpp-python sdist and build its wheel ONCE (a CPU-only build from source takes minutes).
#
# Why: the OpenAI-compatible agent tests run llama-cpp-python's server on a tiny GGUF, and the GGUF
# is made with the converter shipped inside the same sdist. Both files are kept in $SPIRAL_CACHE
# (default .cache/, git-ignored) and mirrored to $SPIRAL_SHARED_CACHE (default ~/.cache/spiral-video)
# so a fresh clone on the same machine (CI) copies them instead of downloading and rebuilding.
set -euo pipefail
VER="${LLAMA_CPP_VERSION:-0.3.36}"
PIP="${PIP:-.venv/bin/pip}"
CACHE="${SPIRAL_CACHE:-.cache}"
SHARED="${SPIRAL_SHARED_CACHE:-$HOME/.cache/spiral-video}"
SDIST="llama_cpp_python-$VER.tar.gz"
mkdir -p "$CACHE/sdist" "$CACHE/wheels" "$SHARED/sdist" "$SHARED/wheels"

if [ ! -f "$CACHE/sdist/$SDIST" ]; then
  if [ -f "$SHARED/sdist/$SDIST" ]; then
    cp "$SHARED/sdist/$SDIST" "$CACHE/sdist/"
  else
    echo "llama-cpp: downloading the $SDIST source distribution (~75 MB)"
    "$PIP" download -q --no-binary :all: --no-deps "llama-cpp-python==$VER" -d "$CACHE/sdist"
    cp "$CACHE/sdist/$SDIST" "$SHARED/sdist/" || true
  fi
fi

wheel="$(ls "$CACHE/wheels"/llama_cpp_python-"$VER"-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$wheel" ]; then
  shared="$(ls "$SHARED/wheels"/llama_cpp_python-"$VER"-*.whl 2>/dev/null | head -n1 || true)"
  if [ -n "$shared" ]; then
    cp "$shared" "$CACHE/wheels/"
  else
    echo "llama-cpp: building the llama-cpp-python $VER wheel from source (once; several minutes on 2 cores)"
    start=$(date +%s)
    # Portable CPU build; no multimodal (mtmd) library and no llama.cpp tools: the tests need neither.
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF}" \
      "$PIP" wheel -q --no-deps -w "$CACHE/wheels" "$CACHE/sdist/$SDIST"
    echo "llama-cpp: wheel built in $(( $(date +%s) - start )) s"
    cp "$CACHE/wheels"/llama_cpp_python-"$VER"-*.whl "$SHARED/wheels/" || true
  fi
fi
