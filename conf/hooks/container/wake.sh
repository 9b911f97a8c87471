#!/bin/sh
# Start the model's container and wait until its server answers.
set -eu
. "$(dirname "$0")/lib.sh"
"$CONTAINER_ENGINE" start "$NAME" >/dev/null
wait_healthy running
