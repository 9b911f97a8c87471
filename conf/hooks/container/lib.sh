# shellcheck shell=sh
# One container per model, created once by the operator (see README), for example
#   podman create --name llmux-qwen -p 127.0.0.1:8002:8000 --device nvidia.com/gpu=all \
#       docker.io/vllm/vllm-openai --model Qwen/Qwen2.5-7B-Instruct
#   CONTAINER_ENGINE     podman or docker (default: podman when installed)
#   MODEL_CONTAINER       default llmux-$LLMUX_MODEL
#   CONTAINER_STOP_SECS  grace before the engine kills the container (default 30)
NAME=${MODEL_CONTAINER:-llmux-$LLMUX_MODEL}
if [ -z "${CONTAINER_ENGINE:-}" ]; then
    if command -v podman >/dev/null 2>&1; then CONTAINER_ENGINE=podman; else CONTAINER_ENGINE=docker; fi
fi
. "$(dirname "$0")/../lib/http.sh"

running() { [ "$("$CONTAINER_ENGINE" inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null)" = true ]; }
