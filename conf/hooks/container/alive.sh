#!/bin/sh
# Exit 0 when the container runs and its server answers.
set -u
. "$(dirname "$0")/lib.sh"
running && http_ok
