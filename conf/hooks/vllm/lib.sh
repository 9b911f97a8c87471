# shellcheck shell=sh disable=SC2034
# Shared by the vLLM sleep-mode hooks. The server runs with
#   VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --enable-sleep-mode --port $LLMUX_PORT
# Settings (the model's `env:` in the llmux config):
#   VLLM_URL          default http://127.0.0.1:$LLMUX_PORT
#   VLLM_SLEEP_LEVEL  1 (weights to CPU RAM, fast wake; default) or 2 (weights dropped)
#   VLLM_START        shell command that starts the server when it is not running
#                     (e.g. "systemctl start vllm@qwen"); unset: wake fails instead
#   VLLM_START_SECS   how long a cold start may take (default 900)
#   VLLM_DRAIN_SECS   how long sleep waits for vLLM's own running requests (default 60)
#   VLLM_API_KEY      sent as a bearer token when set
#   VLLM_WARMUP_MODEL served model name: one 1-token completion after each wake
VLLM_URL=${VLLM_URL:-http://127.0.0.1:$LLMUX_PORT}
LEVEL=${VLLM_SLEEP_LEVEL:-1}

api() {  # api METHOD PATH [JSON]: print the body, fail on a non-2xx answer
    if [ -n "${3:-}" ]; then
        set -- "$1" "$2" -H "Content-Type: application/json" --data "$3"
    fi
    curl -fsS --max-time "${VLLM_CALL_SECS:-600}" -X "$@" \
        ${VLLM_API_KEY:+-H "Authorization: Bearer $VLLM_API_KEY"} "$VLLM_URL$2"
}

healthy() {  # the engine is up (also true while it sleeps)
    curl -fsS --max-time 5 -o /dev/null "$VLLM_URL/health" 2>/dev/null
}

sleeping() {  # exit 0: asleep, 1: awake, 2: cannot tell
    answer=$(curl -fsS --max-time 5 "$VLLM_URL/is_sleeping" 2>/dev/null) || return 2
    case $answer in
    *'"is_sleeping":true'* | *'"is_sleeping": true'*) return 0 ;;
    *'"is_sleeping":false'* | *'"is_sleeping": false'*) return 1 ;;
    *) return 2 ;;
    esac
}

busy() {  # requests vLLM is running or holding; empty when /metrics cannot be read
    curl -fsS --max-time 5 "$VLLM_URL/metrics" 2>/dev/null | awk '
        /^vllm:num_requests_(running|waiting)[{ ]/ { n += $NF; seen = 1 }
        END { if (seen) printf "%d\n", n }'
}
