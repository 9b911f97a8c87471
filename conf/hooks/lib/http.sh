# shellcheck shell=sh
# Shared by the systemd and container hooks: is a backend answering, and waiting until it does.
#   HEALTH_URL   default http://127.0.0.1:$LLMUX_PORT/health (llama-server, vLLM, TGI)
#   START_SECS   how long a start may take before the wake fails (default 900)
HEALTH_URL=${HEALTH_URL:-http://127.0.0.1:$LLMUX_PORT/health}

http_ok() {  # exit 0 when GET $HEALTH_URL answers 2xx
    curl -fsS --max-time 5 -o /dev/null "$HEALTH_URL" 2>/dev/null
}

wait_healthy() {  # wait_healthy CHECK_STILL_RUNNING_COMMAND...
    i=0
    until http_ok; do
        if ! "$@"; then
            echo "the backend stopped while starting" >&2
            return 1
        fi
        i=$((i + 1))
        if [ $i -ge $(( ${START_SECS:-900} * 5 )) ]; then
            echo "$HEALTH_URL not healthy after ${START_SECS:-900}s" >&2
            return 1
        fi
        sleep 0.2
    done
}
