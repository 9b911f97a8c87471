#!/bin/sh
# Start a llama.cpp server for $LLMUX_MODEL on $LLMUX_PORT and wait until it answers.
#   LLAMA_KIND=server  the C++ llama-server (default)
#   LLAMA_KIND=python  llama-cpp-python's llama_cpp.server
#   LLAMA_SERVER_BIN   the llama-server binary (default: the one install.sh built)
#   LLAMA_GGUF         the model file (default: the one install.sh fetched)
#   LLAMA_ARGS         more server options, e.g. "-ngl 99 -c 8192"
#   LLAMA_SCOPE=1      run the server in a systemd scope of its own (systemd-run
#                      --scope; SYSTEMD_USER=1 adds --user), outside llmux's
#                      cgroup: then stopping llmux's unit does not kill it
# The server runs detached in a process group of its own (setsid), its output in
# run/llama-PORT.log, its pid in run/llama-PORT.pid. Idempotent.
set -eu
. "$(dirname "$0")/lib.sh"
mkdir -p "$RUN_DIR"
if [ -f "$PIDFILE" ] && running "$(cat "$PIDFILE")" && probe "$(ready_path)"; then
    exit 0
fi
model=${LLAMA_GGUF:-$(cat "$REAL_DIR/model.path")}
threads=${LLAMA_THREADS:-2}
# systemd-run --scope moves the server into a unit of its own, then execs it (same pid)
scope=""
if [ "${LLAMA_SCOPE:-0}" = 1 ]; then
    scope="systemd-run --scope --quiet --collect --unit=llmux-llama-$LLMUX_PORT"
    [ "${SYSTEMD_USER:-0}" = 1 ] && scope="$scope --user"
fi
if [ "${LLAMA_KIND:-server}" = server ]; then
    # shellcheck disable=SC2086 # LLAMA_ARGS is a list of options, $scope a command prefix
    setsid $scope "${LLAMA_SERVER_BIN:-$REAL_DIR/llama-server/bin/llama-server}" -m "$model" \
        --alias "$LLMUX_MODEL" --host 127.0.0.1 --port "$LLMUX_PORT" -c 2048 --parallel 2 \
        -t "$threads" ${LLAMA_ARGS:-} >"$LOGFILE" 2>&1 </dev/null &
else
    # shellcheck disable=SC2086 # $scope is a command prefix
    setsid $scope "$REAL_DIR/venv/bin/python" -m llama_cpp.server --model "$model" \
        --model_alias "$LLMUX_MODEL" --host 127.0.0.1 --port "$LLMUX_PORT" --n_ctx 2048 \
        --n_threads "$threads" --interrupt_requests False >"$LOGFILE" 2>&1 </dev/null &
fi
echo $! >"$PIDFILE"
# wait here, so a server that dies while loading fails the wake with its log
i=0
until probe "$(ready_path)"; do
    if ! running "$(cat "$PIDFILE")"; then
        echo "server exited while starting; last log lines:" >&2
        tail -n 20 "$LOGFILE" >&2
        exit 1
    fi
    i=$((i + 1))
    [ $i -lt 600 ] || { echo "not ready after 60 s" >&2; exit 1; }
    sleep 0.1
done
