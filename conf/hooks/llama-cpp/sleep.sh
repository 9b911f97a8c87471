#!/bin/sh
# Stop the server wake.sh started: SIGTERM to its process group, then, once the
# server exited or after LLAMA_STOP_GRACE seconds (default 10), SIGKILL to
# whatever is left of the group. Succeeds when nothing is left.
set -u
. "$(dirname "$0")/lib.sh"
[ -f "$PIDFILE" ] || exit 0
pid=$(cat "$PIDFILE")
# "-PID" is the group (wake.sh started the server with setsid); dash's kill has no "--"
kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
i=0
limit=$(( ${LLAMA_STOP_GRACE:-10} * 10 ))
while running "$pid" && [ $i -lt $limit ]; do i=$((i + 1)); sleep 0.1; done
if kill -KILL "-$pid" 2>/dev/null; then sleep 0.2; fi
if running "$pid"; then echo "server $pid survived SIGKILL" >&2; exit 1; fi
rm -f "$PIDFILE"
