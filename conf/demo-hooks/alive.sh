#!/bin/sh
# Exit 0 when the backend answers GET /health (no curl needed).
exec "${LLMUX_PYTHON:-python3}" -c '
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=1).read()
except Exception:
    sys.exit(1)
' "http://127.0.0.1:$LLMUX_PORT/health"
