#!/bin/sh
# Start llmux's fake backend for $LLMUX_MODEL on $LLMUX_PORT, detached, and
# return at once: llmux then polls the alive hook until it answers.
# Its output goes to a file: a daemon holding our stdout would be a bug.
set -eu
mkdir -p run
pidfile="run/backend-$LLMUX_PORT.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    exit 0  # already running: wake is idempotent
fi
gpu=""
if [ -n "${FAKE_GPU_LEDGER:-}" ]; then
    # the demo's fake GPU: take this model's memory first, or fail as a real OOM would
    "${LLMUX_PYTHON:-python3}" -m llmux.demo.fake_gpu reserve --ledger "$FAKE_GPU_LEDGER" \
        --capacity "${FAKE_GPU_CAPACITY:-24GiB}" --owner "$LLMUX_PORT" --bytes "$FAKE_GPU_BYTES"
    gpu="--gpu-ledger $FAKE_GPU_LEDGER"
fi
# shellcheck disable=SC2086
"${LLMUX_PYTHON:-python3}" -m llmux.demo.fake_backend --port "$LLMUX_PORT" --model "$LLMUX_MODEL" \
    --startup-ms "${FAKE_LOAD_MS:-500}" --tokens-per-sec "${FAKE_TOKENS_PER_SEC:-20}" \
    --latency-ms "${FAKE_LATENCY_MS:-50}" $gpu >"run/backend-$LLMUX_PORT.log" 2>&1 &
echo $! >"$pidfile"
