#!/usr/bin/env bash
# Build llama-cpp-python from its source distribution (CPU only) once, cache the wheel outside
# the clone, and install it into .venv. The slow llama.cpp runtime test needs it.
#   bash scripts/llama_cpp_wheel.sh            # build if missing, then install
# The wheel is kept in ${TUNESMITH_WHEELS:-~/.cache/tunesmith-ci/wheels}; delete it to rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
version="0.3.36"
wheels="${TUNESMITH_WHEELS:-$HOME/.cache/tunesmith-ci/wheels}"
py="${PYTHON:-.venv/bin/python}"
[[ -x "$py" ]] || py=python3
mkdir -p "$wheels"
wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -1 || true)
if [[ -z "$wheel" ]]; then
  echo "building llama-cpp-python $version from source (CPU only; ~10 CPU-minutes, once)"
  start=$(date +%s)
  # CPU only, no BLAS, no examples/tools/server/tests/multimodal: the library the bindings load.
  # GGML_NATIVE=OFF: the cached wheel must run on any x86-64 CI box, not only the one that built it.
  CMAKE_ARGS="-DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF \
-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$py" -m pip wheel --no-deps --no-binary llama-cpp-python --disable-pip-version-check \
      -w "$wheels" "llama-cpp-python==$version"
  echo "built in $(( $(date +%s) - start )) s"
  wheel=$(ls "$wheels"/llama_cpp_python-"$version"-*.whl | head -1)
fi
# its other dependencies (numpy, jinja2, typing-extensions) come with tunesmith
"$py" -m pip install -q --disable-pip-version-check --no-deps "$wheel" "diskcache>=5.6.1"
"$py" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'ready')"
