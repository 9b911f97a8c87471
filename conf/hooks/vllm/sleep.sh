#!/bin/sh
# Put a vLLM server to sleep (level $VLLM_SLEEP_LEVEL). llmux drains its own
# requests first; this also waits for any vLLM still runs (a client that went
# around llmux), since sleeping with requests in flight has crashed vLLM.
set -eu
. "$(dirname "$0")/lib.sh"
healthy || exit 0  # not running: nothing holds the GPU
if sleeping; then exit 0; fi
i=0
while n=$(busy) && [ -n "$n" ] && [ "$n" -gt 0 ]; do
    i=$((i + 1))
    if [ $i -gt $(( ${VLLM_DRAIN_SECS:-60} * 5 )) ]; then
        echo "vLLM still has $n requests after ${VLLM_DRAIN_SECS:-60}s; not sleeping" >&2
        exit 1
    fi
    sleep 0.2
done
api POST "/sleep?level=$LEVEL" >/dev/null
if ! sleeping; then echo "vLLM does not report is_sleeping=true after /sleep" >&2; exit 1; fi
