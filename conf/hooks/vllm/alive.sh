#!/bin/sh
# Exit 0 only when vLLM is up AND awake: /health alone answers 200 while it sleeps.
set -u
. "$(dirname "$0")/lib.sh"
healthy || { echo "vLLM at $VLLM_URL is not healthy" >&2; exit 1; }
sleeping
state=$?
[ "$state" = 1 ] && exit 0
[ "$state" = 0 ] && echo "vLLM is asleep" >&2 || echo "vLLM /is_sleeping unreadable" >&2
exit 1
