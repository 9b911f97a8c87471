#!/bin/sh
# Exit 0 when the server answers: /health for llama-server, /v1/models for llama_cpp.server.
set -u
. "$(dirname "$0")/lib.sh"
probe "$(ready_path)"
