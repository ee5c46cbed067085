# shellcheck shell=bash
# HAProxy's side of a deploy, sourced by lib.sh: its runtime API (hap), the
# instances' weights and states as HAProxy sees them, and the config rendered from
# haproxy.cfg.

# Sends one runtime API command (several may be joined with `;`) to haproxy.sock
# and prints the answer.
hap() {
    [ -S "$HAP_SOCK" ] || die "no HAProxy runtime API at $HAP_SOCK: is HAProxy running? (scripts/cluster up)"
    command -v socat >/dev/null || require_tools
    printf '%s\n' "$*" | socat -t 5 - "UNIX-CONNECT:$HAP_SOCK"
}

hap_running() {
    pid_alive "$(cat "$HAP_PID" 2>/dev/null || true)" && [ -S "$HAP_SOCK" ]
}

require_haproxy() {
    hap_running || die "HAProxy is not running (no live pid in $HAP_PID or no $HAP_SOCK): run scripts/cluster up"
}

# Sets the runtime weights of every blue and every green instance (0-256). The
# colour whose weight rises is set first, in the same runtime API call, so that
# there is never a moment with all at 0 (which would leave new sessions without a
# server).
set_weights() {
    local b=$1 g=$2 cmd= out first second i
    [[ $b =~ ^[0-9]+$ && $g =~ ^[0-9]+$ && $b -le 256 && $g -le 256 ]] || die "bad weights: blue=$b green=$g (0-256)"
    if [ "$b" -ge "$g" ]; then first="blue $b" second="green $g"; else first="green $g" second="blue $b"; fi
    for pair in "$first" "$second"; do
        for i in $(instances_of "${pair% *}"); do
            cmd+="${cmd:+; }set server $HAP_BACKEND/$i weight ${pair#* }"
        done
    done
    out=$(hap "$cmd")
    # Success is an empty answer per command; anything else is HAProxy's complaint.
    [ -z "${out//[[:space:]]/}" ] || die "HAProxy refused '$cmd': $out"
}

# Sets weights by role: COLOUR's instances get N, the other colour's 100-N.
set_split() {
    local c=$1 n=$2
    if [ "$c" = blue ]; then set_weights "$n" $((100 - n)); else set_weights $((100 - n)) "$n"; fi
}

# HAProxy's view of baton/NAME from `show stat`: "status|weight|current sessions",
# e.g. "UP|100|12", "DRAIN|100|3" or "DOWN|0|0". Columns are found by name in the
# CSV header.
server_state() {
    hap "show stat" | awk -F, -v be="$HAP_BACKEND" -v sv="$1" '
        NR == 1 { for (i = 1; i <= NF; i++) { h = $i; sub(/^# */, "", h); col[h] = i }; next }
        $1 == be && $2 == sv { print $col["status"] "|" $col["weight"] "|" $col["scur"]; exit }'
}

# Waits until HAProxy's health checks have marked NAME up (rise 2 x inter: about
# 1 s after it answers), so that moving weight onto it cannot leave new sessions
# without a server. TIMEOUT in seconds.
wait_hap_up() {
    local name=$1 timeout=${2:-15} deadline state
    deadline=$((SECONDS + timeout))
    while :; do
        state=$(server_state "$name")
        [ "${state%%|*}" = UP ] && return 0
        [ "$SECONDS" -lt "$deadline" ] || { warn "HAProxy still sees $name as '${state%%|*}' after ${timeout}s"; return 1; }
        sleep 0.2
    done
}

# The template's server lines: one per instance of both colours, the active colour
# (from `active`, blue if unset) at weight 100, the other at 0.
server_lines() {
    local active i w
    active=$(active_colour)
    for i in $(all_instances); do
        w=0
        [ "$(colour_of "$i")" = "$active" ] && w=100
        printf '    server %s 127.0.0.1:%s cookie %s weight %s agent-port %s\n' "$i" "$(port "$i")" "$i" "$w" "$(agent_port "$i")"
    done
}

# Writes $STATE_DIR/haproxy.cfg from the template: every ${VAR} it uses replaced,
# ${BATON_SERVERS} by the server lines (server_lines).
render_haproxy_cfg() {
    local line name servers
    servers=$(server_lines)
    local -A vars=(
        [BATON_DEPLOY_DIR]=$STATE_DIR
        [BATON_LB_PORT]=$BATON_LB_PORT
    )
    {
        printf '# Rendered from %s by %s on %s. Edit the template, not this file.\n' \
            "$HAP_TEMPLATE" "$(basename "$0")" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        while IFS= read -r line || [ -n "$line" ]; do
            for name in "${!vars[@]}"; do
                line=${line//"\${$name}"/"${vars[$name]}"}
            done
            if [[ $line =~ ^[[:space:]]*[$][{]BATON_SERVERS[}][[:space:]]*$ ]]; then
                printf '%s\n' "$servers"
            else
                printf '%s\n' "$line"
            fi
        done <"$HAP_TEMPLATE"
    } >"$HAP_CFG.tmp"
    if grep -v '^[[:space:]]*#' "$HAP_CFG.tmp" | grep -q '[$][{]'; then
        die "$HAP_TEMPLATE uses a variable render_haproxy_cfg does not know: $(grep -v '^[[:space:]]*#' "$HAP_CFG.tmp" | grep -m1 '[$][{]')"
    fi
    mv "$HAP_CFG.tmp" "$HAP_CFG"
}

