#!/usr/bin/env bash
# The one command for llmux's benchmarks: installs what they need, then runs them.
#
#   benchmarks/run.sh            # the full run (about 10 min): writes docs/performance.md
#   benchmarks/run.sh --smoke    # a few seconds, targets not judged (CI runs this)
#
# Needs: nginx and wrk (Debian packages, installed here when missing and root),
# a virtualenv for llmux (.venv-bench) and one for the LiteLLM proxy
# (~/.cache/llmux-bench/litellm, or $LLMUX_BENCH_LITELLM), which stays out of llmux's.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    else
        echo "run.sh: please install ${missing[*]} (apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi
export PATH="$PATH:/usr/sbin"

if [ -n "${LLMUX_BENCH_PYTHON:-}" ]; then
    PY=$LLMUX_BENCH_PYTHON  # an environment that has llmux, psutil and matplotlib (tox)
else
    VENV=${LLMUX_BENCH_VENV:-.venv-bench}
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q -e '.[test]' matplotlib  # the test extra: the unit-suite row
    PY=$VENV/bin/python
fi

if [[ " $* " != *" --smoke "* && " $* " != *" --no-peers "* ]]; then
    LITELLM=${LLMUX_BENCH_LITELLM:-$HOME/.cache/llmux-bench/litellm}
    if [ ! -x "$LITELLM/bin/litellm" ]; then
        python3 -m venv "$LITELLM"
        "$LITELLM/bin/pip" install -q 'litellm[proxy]'
    fi
    export LLMUX_BENCH_LITELLM=$LITELLM
fi

exec "$PY" -m benchmarks "$@"
