# shellcheck shell=sh disable=SC2034
# Shared by the llama.cpp hooks: where things are and how to stop a server.
# LLMUX_REAL_DIR is where install.sh put the servers and the model.
REAL_DIR=${LLMUX_REAL_DIR:-$HOME/.cache/llmux-real}
RUN_DIR=${LLAMA_RUN_DIR:-run}
PIDFILE="$RUN_DIR/llama-$LLMUX_PORT.pid"
LOGFILE="$RUN_DIR/llama-$LLMUX_PORT.log"

running() {  # a zombie waiting to be reaped is not running
    [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]
}

probe() {  # exit 0 when GET http://127.0.0.1:$LLMUX_PORT$1 answers 200
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$LLMUX_PORT$1" 2>/dev/null
        return
    fi
    "$REAL_DIR/venv/bin/python" -c '
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
' "http://127.0.0.1:$LLMUX_PORT$1"
}

ready_path() {  # llama-server has /health; llama_cpp.server does not
    if [ "${LLAMA_KIND:-server}" = server ]; then echo /health; else echo /v1/models; fi
}
