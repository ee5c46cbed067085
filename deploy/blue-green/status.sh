#!/usr/bin/env bash
# Prints the state of the blue-green setup: the active colour; for each colour its
# process, binary, port, /readyz answer, sockets and draining flag (`baton status
# --json`, with the env file's admin token); and HAProxy's view of each server (status,
# weight, current sessions, from the runtime API's `show stat`). Always exits 0:
# what is down is shown as such.
#
#   deploy/blue-green/status.sh
#
# Environment: BATON_DEPLOY_DIR, BATON_LB_PORT, BATON_BLUE_PORT, BATON_GREEN_PORT.
set -euo pipefail
# shellcheck source=deploy/blue-green/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_tools

# A scalar field of `baton status --json`'s one line (no jq needed): "sockets":12 -> 12.
json_field() {
    sed -n "s/.*\"$1\":\\(\"[^\"]*\"\\|[^,}]*\\).*/\\1/p" <<<"$2" | tr -d '"'
}

echo "state dir: $STATE_DIR"
if [ -f "$ACTIVE_FILE" ]; then
    echo "active:    $(active_colour)"
else
    echo "active:    (no $ACTIVE_FILE: blue by default)"
fi
hap_ok=
if hap_running; then
    hap_ok=1
    echo "HAProxy:   pid $(cat "$HAP_PID"), http://127.0.0.1:$BATON_LB_PORT, runtime API $HAP_SOCK"
else
    echo "HAProxy:   not running"
fi

token=
if [ -f "$ENV_FILE" ]; then token=$(env_get BATON_ADMIN_TOKEN); fi

echo
printf '%-6s %-8s %-6s %-7s %-8s %-9s %-9s %-7s %-9s %s\n' \
    colour pid port readyz sockets draining haproxy weight sessions binary
for c in blue green; do
    pid=- readyz=- sockets=- draining=- hstatus=- hweight=- hsessions=-
    if running "$c"; then
        pid=$(pid_of "$c")
    elif [ -n "$(pid_of "$c")" ]; then
        pid="dead"
    else
        pid="stopped"
    fi
    code=$(readyz_code "$c")
    if [ "$code" != 000 ]; then
        readyz=$code
        if [ -n "$token" ] && [ -x "$(bin_of "$c")" ]; then
            # The token goes through the environment, not the command line where ps shows it.
            body=$(BATON_ADMIN_TOKEN=$token timeout 5 "$(bin_of "$c")" status --url "$(url_of "$c")" --json 2>/dev/null || true)
            sockets=$(json_field sockets "$body")
            draining=$(json_field draining "$body")
        fi
    fi
    if [ -n "$hap_ok" ]; then
        IFS='|' read -r hstatus hweight hsessions <<<"$(server_state "$c" || true)"
        hstatus=${hstatus:--}
    fi
    bin=$(bin_of "$c")
    printf '%-6s %-8s %-6s %-7s %-8s %-9s %-9s %-7s %-9s %s\n' \
        "$c" "$pid" "$(port "$c")" "$readyz" "${sockets:--}" "${draining:--}" \
        "${hstatus// /_}" "${hweight:--}" "${hsessions:--}" "${bin:--}"
done

echo
echo "logs: $STATE_DIR/{blue,green}.log; metrics: curl http://127.0.0.1:<port>/metrics"
exit 0
