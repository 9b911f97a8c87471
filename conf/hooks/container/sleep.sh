#!/bin/sh
# Stop the model's container (SIGTERM, SIGKILL after CONTAINER_STOP_SECS).
set -eu
. "$(dirname "$0")/lib.sh"
"$CONTAINER_ENGINE" stop -t "${CONTAINER_STOP_SECS:-30}" "$NAME" >/dev/null
if running; then echo "container $NAME is still running after stop" >&2; exit 1; fi
