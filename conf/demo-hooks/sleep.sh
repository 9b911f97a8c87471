#!/bin/sh
# Stop the fake backend started by wake.sh: SIGTERM, then SIGKILL after 5 s.
set -u
pidfile="run/backend-$LLMUX_PORT.pid"
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")

running() {  # a zombie waiting for init to reap it is not running
    [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]
}

kill "$pid" 2>/dev/null
i=0
while running "$pid"; do
    i=$((i + 1))
    if [ "$i" -gt 50 ]; then kill -9 "$pid" 2>/dev/null; break; fi
    sleep 0.1
done
rm -f "$pidfile"
