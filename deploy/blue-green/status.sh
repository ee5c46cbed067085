#!/usr/bin/env bash
# Prints the state of the blue-green setup: the active colour; for each instance its
# supervisor, process, restarts after crashes, port, /readyz answer, transports
# (engine.io connections; of them on long-polling) and draining flag (`baton status
# --json`, with the env file's admin token), and HAProxy's view of it (status,
# weight, current sessions, from the runtime API's `show stat`); then what needs an
# operator's attention: an active colour with no instance UP in HAProxy, an instance
# that died and is not supervised, one being restarted, one that restarted.
# Always exits 0: what is down is shown as such.
#
#   deploy/blue-green/status.sh
#
# Environment: BATON_DEPLOY_DIR, BATON_LB_PORT, BATON_COLOUR_SIZE, BATON_BLUE_PORT,
# BATON_GREEN_PORT.
set -euo pipefail
# shellcheck source=deploy/blue-green/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_tools

echo "state dir: $STATE_DIR"
if [ -f "$ACTIVE_FILE" ]; then
    echo "active:    $(active_colour)"
else
    echo "active:    (no $ACTIVE_FILE: blue by default)"
fi
active=$(active_colour)
hap_ok=
if hap_running; then
    hap_ok=1
    echo "HAProxy:   pid $(cat "$HAP_PID"), http://127.0.0.1:$BATON_LB_PORT, runtime API $HAP_SOCK"
else
    echo "HAProxy:   not running"
fi

notes=()
active_up=0
echo
printf '%-9s %-10s %-8s %-8s %-6s %-6s %-10s %-7s %-8s %-9s %-6s %-8s %s\n' \
    instance supervisor pid restarts port readyz transports polling draining haproxy weight sessions binary
for i in $(all_instances); do
    sup=- pid=- readyz=- transports=- polling=- draining=- hstatus=- hweight=- hsessions=-
    if supervised "$i"; then sup=$(supervisor_of "$i"); elif [ -e "$(stop_file "$i")" ] || [ -z "$(supervisor_of "$i")" ]; then sup=stopped; else sup=dead; fi
    if running "$i"; then
        pid=$(pid_of "$i")
    elif [ "$sup" != stopped ]; then
        pid=dead
    else
        pid=stopped
    fi
    restarts=$(restarts_of "$i")
    code=$(readyz_code "$i")
    if [ "$code" != 000 ]; then
        readyz=$code
        body=$(status_json "$i")
        transports=$(json_field transports "$body")
        polling=$(json_field polling "$body")
        draining=$(json_field draining "$body")
    fi
    if [ -n "$hap_ok" ]; then
        IFS='|' read -r hstatus hweight hsessions <<<"$(server_state "$i" || true)"
        hstatus=${hstatus:--}
    fi
    if [ "$(colour_of "$i")" = "$active" ] && [ "${hstatus%% *}" = UP ]; then active_up=$((active_up + 1)); fi
    if [ "$sup" = dead ]; then
        notes+=("$i died and its supervisor is gone: nothing restarts it (start it again: scripts/cluster up)")
    elif [ "$pid" = dead ]; then
        notes+=("$i is not running; its supervisor restarts it (restart $restarts so far; see $(log_file "$i"))")
    elif [ "$restarts" != 0 ]; then
        notes+=("$i was restarted $restarts time(s) after dying (the '=== ... died' lines in $(log_file "$i"))")
    fi
    printf '%-9s %-10s %-8s %-8s %-6s %-6s %-10s %-7s %-8s %-9s %-6s %-8s %s\n' \
        "$i" "$sup" "$pid" "$restarts" "$(port "$i")" "$readyz" "${transports:--}" "${polling:--}" "${draining:--}" \
        "${hstatus// /_}" "${hweight:--}" "${hsessions:--}" "$(bin_of "$i" || true)"
done
if [ -n "$hap_ok" ] && [ "$active_up" = 0 ]; then
    notes=("OUTAGE: no instance of the active colour $active is UP in HAProxy: new sessions have no server" "${notes[@]}")
fi

echo
if [ ${#notes[@]} = 0 ]; then
    echo "attention: nothing"
else
    echo "attention:"
    printf '  %s\n' "${notes[@]}"
fi
echo
echo "logs: $STATE_DIR/<instance>.log; metrics: curl http://127.0.0.1:<port>/metrics"
exit 0
