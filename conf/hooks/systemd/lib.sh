# shellcheck shell=sh
# One systemd unit per model.
#   MODEL_UNIT   default llmux-model@$LLMUX_MODEL.service (see conf/systemd/)
#   SYSTEMD_USER   1: use the user's manager (systemctl --user)
UNIT=${MODEL_UNIT:-llmux-model@$LLMUX_MODEL.service}
. "$(dirname "$0")/../lib/http.sh"

ctl() {
    if [ "${SYSTEMD_USER:-0}" = 1 ]; then systemctl --user "$@"; else systemctl "$@"; fi
}

unit_active() { ctl is-active --quiet "$UNIT"; }
