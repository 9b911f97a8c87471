#!/bin/sh
# Start the model's unit and wait until its server answers. systemd owns the
# process tree, so nothing here needs a pidfile.
set -eu
. "$(dirname "$0")/lib.sh"
ctl start "$UNIT"
wait_healthy unit_active
