#!/bin/sh
# Exit 0 when the unit is active and its server answers.
set -u
. "$(dirname "$0")/lib.sh"
unit_active && http_ok
