#!/bin/sh
# Wake a vLLM server from sleep mode (or start it with $VLLM_START) and check it
# is really awake. Level 2 reloads the weights: wake the weights, reload them,
# then wake the KV cache and reset the prefix cache. Idempotent.
set -eu
. "$(dirname "$0")/lib.sh"
if ! healthy; then
    if [ -z "${VLLM_START:-}" ]; then
        echo "vLLM at $VLLM_URL is not running and VLLM_START is not set" >&2
        exit 1
    fi
    sh -c "$VLLM_START"
    i=0
    until healthy; do
        i=$((i + 1))
        [ $i -lt $(( ${VLLM_START_SECS:-900} * 2 )) ] || { echo "not healthy after start" >&2; exit 1; }
        sleep 0.5
    done
fi
if sleeping; then
    if [ "$LEVEL" = 2 ]; then
        api POST "/wake_up?tags=weights" >/dev/null
        api POST /collective_rpc '{"method":"reload_weights"}' >/dev/null
        api POST "/wake_up?tags=kv_cache" >/dev/null
        api POST /reset_prefix_cache >/dev/null
    else
        api POST /wake_up >/dev/null
    fi
fi
if sleeping; then echo "vLLM still reports is_sleeping=true after wake_up" >&2; exit 1; fi
if [ -n "${VLLM_WARMUP_MODEL:-}" ]; then
    api POST /v1/completions "{\"model\":\"$VLLM_WARMUP_MODEL\",\"prompt\":\"hi\",\"max_tokens\":1}" >/dev/null
fi
