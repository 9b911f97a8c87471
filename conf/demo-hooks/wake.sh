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
"${LLMUX_PYTHON:-python3}" -m llmux.demo.fake_backend --port "$LLMUX_PORT" --model "$LLMUX_MODEL" \
    --startup-ms "${FAKE_LOAD_MS:-500}" --tokens-per-sec "${FAKE_TOKENS_PER_SEC:-20}" \
    --latency-ms "${FAKE_LATENCY_MS:-50}" >"run/backend-$LLMUX_PORT.log" 2>&1 &
echo $! >"$pidfile"
