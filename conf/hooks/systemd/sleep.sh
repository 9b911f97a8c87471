#!/bin/sh
# Stop the model's unit; systemd sends SIGTERM to its whole cgroup, then SIGKILL
# after the unit's TimeoutStopSec.
set -eu
. "$(dirname "$0")/lib.sh"
ctl stop "$UNIT"
if unit_active; then echo "$UNIT is still active after stop" >&2; exit 1; fi
