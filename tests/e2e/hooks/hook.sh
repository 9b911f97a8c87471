#!/bin/sh
# The test suite's hook: `hook.sh wake|sleep|alive`, state under $LLMUX_TEST_DIR.
#
# Every run appends "<monotonic-ish time> start|end <kind> <model> [rc]" to
# events.log. A file faults/<kind>-<model> is sourced first when present: it
# can `exit 3`, `sleep 100`, print to stderr, or set variables.
# Model env: HOOK_WAKE_SECS / HOOK_SLEEP_SECS (extra time the hook takes),
# FAKE_ARGS (more fake-backend options), FAKE_GPU_LEDGER and FAKE_GPU_BYTES (a fake
# GPU, llmux.demo.fake_gpu: the wake reserves that much there, or fails as OOM).
set -u
kind=$1
dir=$LLMUX_TEST_DIR
mkdir -p "$dir/run"
pidfile="$dir/run/backend-$LLMUX_PORT.pid"
stamp() { echo "$(date +%s.%N) $1 $kind $LLMUX_MODEL ${2:-}" >>"$dir/events.log"; }
running() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]; }

stamp start
fault="$dir/faults/$kind-$LLMUX_MODEL"
if [ -f "$fault" ]; then
    . "$fault"
fi

case $kind in
wake)
    sleep "${HOOK_WAKE_SECS:-0}"
    rc=0
    if ! { [ -f "$pidfile" ] && running "$(cat "$pidfile")"; }; then
        gpu=""
        if [ -n "${FAKE_GPU_LEDGER:-}" ]; then  # a fake GPU: reserve first, or fail as OOM
            "$LLMUX_PYTHON" -m llmux.demo.fake_gpu reserve --ledger "$FAKE_GPU_LEDGER" \
                --owner "$LLMUX_PORT" --bytes "$FAKE_GPU_BYTES" \
                ${FAKE_GPU_CAPACITY:+--capacity "$FAKE_GPU_CAPACITY"} \
                ${FAKE_GPU_RELEASE_MS:+--release-ms "$FAKE_GPU_RELEASE_MS"} || rc=1
            gpu="--gpu-ledger $FAKE_GPU_LEDGER"
        fi
        if [ $rc = 0 ]; then
            # shellcheck disable=SC2086
            "$LLMUX_PYTHON" -m llmux.demo.fake_backend --port "$LLMUX_PORT" --model "$LLMUX_MODEL" \
                --access-log "$dir/access-$LLMUX_MODEL.log" $gpu \
                ${FAKE_ARGS:-} >>"$dir/run/backend-$LLMUX_PORT.log" 2>&1 &
            echo $! >"$pidfile"
        fi
    fi
    ;;
sleep)
    sleep "${HOOK_SLEEP_SECS:-0}"
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null
        i=0
        while running "$pid" && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.02; done
        kill -9 "$pid" 2>/dev/null
        rm -f "$pidfile"
    fi
    rc=0
    ;;
alive)
    # a TCP connect is enough: the fake backend listens only once it is ready
    bash -c "exec 3<>/dev/tcp/127.0.0.1/$LLMUX_PORT" 2>/dev/null
    rc=$?
    ;;
esac
stamp end "$rc"
exit $rc
