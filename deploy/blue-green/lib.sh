# shellcheck shell=bash
# Shared by deploy.sh, canary.sh, status.sh (next to it) and scripts/cluster: the
# state directory's paths, HAProxy's runtime API, and starting, checking, draining
# and stopping the two colours. Sourced, not run; the caller sets `set -euo pipefail`.
#
# Environment (all optional):
#   BATON_DEPLOY_DIR   state directory (default: <repo>/.deploy)
#   BATON_LB_PORT      HAProxy's frontend on 127.0.0.1 (default 8080)
#   BATON_BLUE_PORT    blue's port on 127.0.0.1 (default 3101)
#   BATON_GREEN_PORT   green's port on 127.0.0.1 (default 3102)
#
# The state directory holds: env (the instances' environment, KEY=VALUE lines in
# shell syntax, sourced with `set -a`), active (blue or green), <colour>.pid,
# <colour>.bin (the binary the colour runs or last ran), <colour>.log, haproxy.cfg
# (rendered from haproxy.cfg next to this file), haproxy.pid, haproxy.sock (runtime
# API, level admin), and for scripts/cluster redis.pid.

BG_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BG_HOME/../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$REPO_ROOT/scripts/lib/common.sh"

BATON_DEPLOY_DIR=${BATON_DEPLOY_DIR:-$REPO_ROOT/.deploy}
case $BATON_DEPLOY_DIR in
    /*) ;;
    *) BATON_DEPLOY_DIR=$PWD/$BATON_DEPLOY_DIR ;;
esac
BATON_LB_PORT=${BATON_LB_PORT:-8080}
BATON_BLUE_PORT=${BATON_BLUE_PORT:-3101}
BATON_GREEN_PORT=${BATON_GREEN_PORT:-3102}

STATE_DIR=$BATON_DEPLOY_DIR
ENV_FILE=$STATE_DIR/env
ACTIVE_FILE=$STATE_DIR/active
HAP_TEMPLATE=$BG_HOME/haproxy.cfg
HAP_CFG=$STATE_DIR/haproxy.cfg
HAP_PID=$STATE_DIR/haproxy.pid
HAP_SOCK=$STATE_DIR/haproxy.sock
HAP_BACKEND=baton

warn() { printf '%s: warning: %s\n' "$(basename "$0")" "$*" >&2; }

# Installs the command-line tools the scripts use if they are missing (Debian).
ensure_tools() {
    command -v curl >/dev/null || { step "installing curl"; apt_install curl ca-certificates; }
    command -v socat >/dev/null || { step "installing socat"; apt_install socat; }
}

# --- colours ---------------------------------------------------------------------

check_colour() {
    case ${1:-} in
        blue | green) ;;
        *) die "not a colour: '${1:-}' (blue or green)" ;;
    esac
}

other() {
    check_colour "$1"
    if [ "$1" = blue ]; then echo green; else echo blue; fi
}

port() {
    check_colour "$1"
    if [ "$1" = blue ]; then echo "$BATON_BLUE_PORT"; else echo "$BATON_GREEN_PORT"; fi
}

url_of() { echo "http://127.0.0.1:$(port "$1")"; }
pid_file() { echo "$STATE_DIR/$1.pid"; }
log_file() { echo "$STATE_DIR/$1.log"; }

# The pid recorded for COLOUR (empty if none).
pid_of() {
    local f
    f=$(pid_file "$1")
    if [ -f "$f" ]; then cat "$f"; fi
}

# The binary COLOUR runs (or last ran), from COLOUR.bin (empty if none).
bin_of() {
    local f=$STATE_DIR/$1.bin
    if [ -f "$f" ]; then cat "$f"; fi
}

# True if PID is a live process (a zombie does not count).
pid_alive() {
    local pid=${1:-} state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [ -r "/proc/$pid/stat" ]; then
        state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
        [ "$state" != Z ] || return 1
    fi
}

# True if COLOUR's recorded process is alive.
running() {
    check_colour "$1"
    pid_alive "$(pid_of "$1")"
}

# True if something accepts TCP connections on 127.0.0.1:PORT.
port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The colour taking traffic, from the state directory's `active` (blue if unset).
active_colour() {
    local c=blue
    if [ -f "$ACTIVE_FILE" ]; then c=$(tr -d '[:space:]' <"$ACTIVE_FILE"); fi
    check_colour "$c"
    echo "$c"
}

set_active() {
    check_colour "$1"
    printf '%s\n' "$1" >"$ACTIVE_FILE.tmp"
    mv "$ACTIVE_FILE.tmp" "$ACTIVE_FILE"
}

# --- the env file ----------------------------------------------------------------

require_env_file() {
    [ -f "$ENV_FILE" ] || die "no $ENV_FILE (the instances' environment): run scripts/cluster up, or write it by hand (see docs/operations.md)"
}

# The value of KEY in the env file (empty if it does not set it).
env_get() {
    require_env_file
    (
        unset "$1"
        set -a
        # shellcheck disable=SC1090
        . "$ENV_FILE"
        printf '%s' "${!1:-}"
    )
}

# A humantime duration (what baton accepts: 10s, 500ms, 1m 30s, 2min, 1h) in whole
# seconds, rounded up. A bare number counts as seconds.
duration_seconds() {
    local rest=${1// /} ms=0 n unit
    [ -n "$rest" ] || { echo 0; return; }
    if [[ $rest =~ ^[0-9]+$ ]]; then
        echo "$rest"
        return
    fi
    while [ -n "$rest" ]; do
        [[ $rest =~ ^([0-9]+)([a-zA-Z]+)(.*)$ ]] || { warn "cannot read the duration '$1'"; return 1; }
        n=${BASH_REMATCH[1]} unit=${BASH_REMATCH[2]} rest=${BASH_REMATCH[3]}
        n=$((10#$n))
        case $unit in
            ns | nsec) ms=$((ms + n / 1000000)) ;;
            us | usec) ms=$((ms + n / 1000)) ;;
            ms | msec) ms=$((ms + n)) ;;
            s | sec | secs | second | seconds) ms=$((ms + n * 1000)) ;;
            m | min | mins | minute | minutes) ms=$((ms + n * 60000)) ;;
            h | hr | hrs | hour | hours) ms=$((ms + n * 3600000)) ;;
            d | day | days) ms=$((ms + n * 86400000)) ;;
            *) warn "cannot read the duration '$1'"; return 1 ;;
        esac
    done
    echo $(((ms + 999) / 1000))
}

# The instances' drain window in seconds: BATON_DRAIN_WINDOW from the env file, else
# from this shell's environment (which the instances inherit), else baton's 10s.
drain_window_seconds() {
    local w=
    if [ -f "$ENV_FILE" ]; then w=$(env_get BATON_DRAIN_WINDOW); fi
    duration_seconds "${w:-${BATON_DRAIN_WINDOW:-10s}}" || echo 10
}

# --- HAProxy -----------------------------------------------------------------------

# Sends one runtime API command (several may be joined with `;`) to haproxy.sock
# and prints the answer.
hap() {
    [ -S "$HAP_SOCK" ] || die "no HAProxy runtime API at $HAP_SOCK: is HAProxy running? (scripts/cluster up)"
    command -v socat >/dev/null || ensure_tools
    printf '%s\n' "$*" | socat -t 5 - "UNIX-CONNECT:$HAP_SOCK"
}

hap_running() {
    pid_alive "$(cat "$HAP_PID" 2>/dev/null || true)" && [ -S "$HAP_SOCK" ]
}

require_haproxy() {
    hap_running || die "HAProxy is not running (no live pid in $HAP_PID or no $HAP_SOCK): run scripts/cluster up"
}

# Sets the runtime weights of baton/blue and baton/green (0-256). The larger one
# is set first, in the same runtime API call, so that there is never a moment with
# both at 0 (which would leave new sessions without a server).
set_weights() {
    local b=$1 g=$2 cmd out
    [[ $b =~ ^[0-9]+$ && $g =~ ^[0-9]+$ && $b -le 256 && $g -le 256 ]] || die "bad weights: blue=$b green=$g (0-256)"
    if [ "$b" -ge "$g" ]; then
        cmd="set server $HAP_BACKEND/blue weight $b; set server $HAP_BACKEND/green weight $g"
    else
        cmd="set server $HAP_BACKEND/green weight $g; set server $HAP_BACKEND/blue weight $b"
    fi
    out=$(hap "$cmd")
    # Success is an empty answer per command; anything else is HAProxy's complaint.
    [ -z "${out//[[:space:]]/}" ] || die "HAProxy refused '$cmd': $out"
}

# Sets weights by role: COLOUR gets N, the other colour 100-N.
set_split() {
    local c=$1 n=$2
    if [ "$c" = blue ]; then set_weights "$n" $((100 - n)); else set_weights $((100 - n)) "$n"; fi
}

# HAProxy's view of baton/COLOUR from `show stat`: "status|weight|current sessions",
# e.g. "UP|100|12" or "DOWN|0|0". Columns are found by name in the CSV header.
server_state() {
    hap "show stat" | awk -F, -v be="$HAP_BACKEND" -v sv="$1" '
        NR == 1 { for (i = 1; i <= NF; i++) { h = $i; sub(/^# */, "", h); col[h] = i }; next }
        $1 == be && $2 == sv { print $col["status"] "|" $col["weight"] "|" $col["scur"]; exit }'
}

# Waits until HAProxy's health checks have marked COLOUR up (rise 2 x inter 1s: ~2 s
# after /readyz turns 200), so that moving weight onto it cannot leave new sessions
# without a server. TIMEOUT in seconds.
wait_hap_up() {
    local c=$1 timeout=${2:-15} deadline state
    deadline=$((SECONDS + timeout))
    while :; do
        state=$(server_state "$c")
        [ "${state%%|*}" = UP ] && return 0
        [ "$SECONDS" -lt "$deadline" ] || { warn "HAProxy still sees $c as '${state%%|*}' after ${timeout}s"; return 1; }
        sleep 0.5
    done
}

# Writes $STATE_DIR/haproxy.cfg from the template: every ${VAR} it uses replaced,
# the active colour (from `active`, blue if unset) with weight 100, the other 0.
render_haproxy_cfg() {
    local active bw=100 gw=0 line name
    active=$(active_colour)
    if [ "$active" = green ]; then bw=0 gw=100; fi
    local -A vars=(
        [BATON_DEPLOY_DIR]=$STATE_DIR
        [BATON_LB_PORT]=$BATON_LB_PORT
        [BATON_BLUE_PORT]=$BATON_BLUE_PORT
        [BATON_GREEN_PORT]=$BATON_GREEN_PORT
        [BATON_BLUE_WEIGHT]=$bw
        [BATON_GREEN_WEIGHT]=$gw
    )
    {
        printf '# Rendered from %s by %s on %s. Edit the template, not this file.\n' \
            "$HAP_TEMPLATE" "$(basename "$0")" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        while IFS= read -r line || [ -n "$line" ]; do
            for name in "${!vars[@]}"; do
                line=${line//"\${$name}"/"${vars[$name]}"}
            done
            printf '%s\n' "$line"
        done <"$HAP_TEMPLATE"
    } >"$HAP_CFG.tmp"
    if grep -v '^[[:space:]]*#' "$HAP_CFG.tmp" | grep -q '[$][{]'; then
        die "$HAP_TEMPLATE uses a variable render_haproxy_cfg does not know: $(grep -v '^[[:space:]]*#' "$HAP_CFG.tmp" | grep -m1 '[$][{]')"
    fi
    mv "$HAP_CFG.tmp" "$HAP_CFG"
}

# --- instances ---------------------------------------------------------------------

# GET /readyz of COLOUR: prints the HTTP status, 000 if nothing answers.
readyz_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$(url_of "$1")/readyz" || true
}

# Sum of the Prometheus metric NAME (all label sets) on COLOUR's /metrics; 0 when the
# metric is absent. Fails if /metrics does not answer.
metric_sum() {
    local body
    body=$(curl -sf --max-time 2 "$(url_of "$1")/metrics") || return 1
    awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d\n", s }' <<<"$body"
}

# Starts `BINARY serve` as COLOUR in the background (nohup, its own session, so it
# outlives this script and a Ctrl-C here), with the env file's variables plus
# BATON_LISTEN=127.0.0.1:<port> and BATON_INSTANCE_ID=<colour>; logs to COLOUR.log
# (appended: earlier runs stay above a "=== started" line); writes COLOUR.pid and
# COLOUR.bin. Refuses if COLOUR is already running or its port is taken.
start_colour() {
    local c=$1 bin=$2 p log pid
    check_colour "$c"
    if [ -z "$bin" ] || [ ! -f "$bin" ] || [ ! -x "$bin" ]; then die "not an executable file: '$bin'"; fi
    require_env_file
    if running "$c"; then die "$c is already running (pid $(pid_of "$c"), $(bin_of "$c"))"; fi
    p=$(port "$c")
    if port_busy "$p"; then die "port $p ($c) is already taken by another process"; fi
    log=$(log_file "$c")
    printf '=== %s started: %s serve on 127.0.0.1:%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$bin" "$p" >>"$log"
    # The subshell exits at once: the instance is re-parented to init and never left
    # as a zombie of this script; its own stdio points at the log, not at our pipes.
    pid=$(
        set -a
        # shellcheck disable=SC1090
        . "$ENV_FILE"
        set +a
        export BATON_LISTEN=127.0.0.1:$p BATON_INSTANCE_ID=$c
        nohup setsid "$bin" serve </dev/null >>"$log" 2>&1 &
        echo $!
    )
    printf '%s\n' "$pid" >"$(pid_file "$c")"
    printf '%s\n' "$bin" >"$STATE_DIR/$c.bin"
    echo "$c: started pid $pid ($bin serve on 127.0.0.1:$p, log $log)" >&2
}

# The last lines COLOUR logged since it was last started (after the last "=== "
# line start_colour writes), without terminal colour codes.
log_tail() {
    awk '/^=== / { n = 0; next } { buf[n++ % 8] = $0 } END { for (i = (n > 8 ? n - 8 : 0); i < n; i++) print "    " buf[i % 8] }' \
        "$(log_file "$1")" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' || true
}

# Polls COLOUR's /readyz until it answers 200 (returns 0), the process dies or
# TIMEOUT seconds pass (returns 1, with the log's last lines).
wait_ready() {
    local c=$1 timeout=${2:-60} deadline code=000
    deadline=$((SECONDS + timeout))
    while :; do
        code=$(readyz_code "$c")
        [ "$code" = 200 ] && return 0
        if ! running "$c"; then
            warn "$c exited before becoming ready; the end of its log ($(log_file "$c")):"
            log_tail "$c" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            warn "$c not ready after ${timeout}s (last /readyz: $code); the end of its log ($(log_file "$c")):"
            log_tail "$c" >&2
            return 1
        fi
        sleep 0.5
    done
}

# Waits up to TIMEOUT seconds for COLOUR's process to exit.
wait_exit() {
    local c=$1 timeout=$2 pid deadline
    pid=$(pid_of "$c")
    deadline=$((SECONDS + timeout))
    while pid_alive "$pid"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# Kills COLOUR with SIGKILL after a warning, and waits for it to go.
kill_colour() {
    local c=$1 pid
    pid=$(pid_of "$c")
    warn "$c (pid $pid) did not exit in time: kill -9"
    kill -9 "$pid" 2>/dev/null || true
    wait_exit "$c" 5 || warn "$c (pid $pid) survived kill -9"
}

# Sends SIGTERM to COLOUR (baton drains on SIGTERM too) without waiting.
signal_colour() {
    local pid
    pid=$(pid_of "$1")
    if pid_alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
}

# Stops COLOUR: SIGTERM, then waits up to the drain window + 10 s, then kill -9.
# Removes its pid file; its .bin and .log stay.
stop_colour() {
    local c=$1 window
    check_colour "$c"
    if running "$c"; then
        window=$(drain_window_seconds)
        echo "$c: stopping pid $(pid_of "$c") (SIGTERM, up to $((window + 10))s)" >&2
        signal_colour "$c"
        wait_exit "$c" $((window + 10)) || kill_colour "$c"
    fi
    rm -f "$(pid_file "$c")"
}

# Drains COLOUR: POST /admin/drain with the env file's admin token (baton marks
# itself not ready, lets HAProxy see it, closes its clients' transports spread over
# the drain window so they reconnect through HAProxy to the other colour, then
# exits 0); waits up to the drain window + 10 s for the process to exit, then
# kill -9 with a warning. Leaves the drain report (the log's "drain finished" line
# from this run, or a note) in DRAIN_REPORT.
drain_colour() {
    local c=$1 token window offset code log
    check_colour "$c"
    DRAIN_REPORT=
    if ! running "$c"; then
        echo "$c: not running, nothing to drain" >&2
        rm -f "$(pid_file "$c")"
        DRAIN_REPORT="($c was not running)"
        return 0
    fi
    token=$(env_get BATON_ADMIN_TOKEN)
    window=$(drain_window_seconds)
    log=$(log_file "$c")
    offset=$(wc -c <"$log" 2>/dev/null || echo 0)
    offset=${offset// /}
    if [ -n "$token" ]; then
        # The token goes through stdin (-H @-), not the command line where ps shows it.
        code=$(printf 'Authorization: Bearer %s\n' "$token" |
            curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST -H @- "$(url_of "$c")/admin/drain" || true)
    else
        code="(no BATON_ADMIN_TOKEN in $ENV_FILE)"
    fi
    if [ "$code" = 202 ]; then
        echo "$c: drain started (POST /admin/drain: 202); waiting up to $((window + 10))s for it to exit" >&2
    else
        warn "$c: POST /admin/drain answered $code; sending SIGTERM instead (baton drains on it too)"
        signal_colour "$c"
    fi
    if wait_exit "$c" $((window + 10)); then
        echo "$c: exited" >&2
    else
        kill_colour "$c"
    fi
    rm -f "$(pid_file "$c")"
    DRAIN_REPORT=$(tail -c +$((offset + 1)) "$log" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' |
        grep 'drain finished' | tail -n 1 | sed 's/^.*report=//' || true)
    [ -n "$DRAIN_REPORT" ] || DRAIN_REPORT="(no 'drain finished' line in $log)"
}

# Brings COLOUR up on BINARY for a deploy or canary, with its weight as it is (0
# for the inactive colour): reuses it if it already runs BINARY and is ready, else
# stops it and starts BINARY; waits for /readyz (DEPLOY_READY_TIMEOUT, default 60 s)
# and for HAProxy's health checks to see it up. If it never gets ready: stops it,
# leaves the weights as they were, prints "rolled back: COLOUR did not become ready"
# and exits 1.
bring_up() {
    local c=$1 bin=$2 timeout=${DEPLOY_READY_TIMEOUT:-60}
    [[ $timeout =~ ^[0-9]+$ ]] || die "DEPLOY_READY_TIMEOUT must be a number of seconds, not '$timeout'"
    if running "$c"; then
        if [ "$(bin_of "$c")" = "$bin" ] && [ "$(readyz_code "$c")" = 200 ]; then
            step "reusing $c: it already runs $bin and is ready (pid $(pid_of "$c"))"
        else
            step "stopping $c: it runs $(bin_of "$c"), or is not ready"
            stop_colour "$c"
        fi
    fi
    if ! running "$c"; then
        step "starting $c with $bin"
        start_colour "$c" "$bin"
    fi
    step "waiting until $c is ready (timeout ${timeout}s)"
    if ! wait_ready "$c" "$timeout"; then
        stop_colour "$c"
        echo "rolled back: $c did not become ready"
        exit 1
    fi
    step "waiting until HAProxy's health checks see $c up"
    if ! wait_hap_up "$c" 15; then
        stop_colour "$c"
        echo "rolled back: $c did not become ready (HAProxy's checks of /readyz did not pass)"
        exit 1
    fi
}

# Absolute path of BINARY, which must be an executable file.
resolve_binary() {
    local b=${1:-}
    [ -n "$b" ] || die "usage: $(basename "$0") BINARY"
    if [ ! -f "$b" ] || [ ! -x "$b" ]; then die "not an executable file: '$b'"; fi
    echo "$(cd "$(dirname "$b")" && pwd)/$(basename "$b")"
}

# For deploy.sh and canary.sh: checks the tools, the env file and HAProxy, and sets
# OLD (the active colour) and NEW (the other one).
find_colours() {
    ensure_tools
    require_env_file
    require_haproxy
    step "finding the active colour"
    OLD=$(active_colour)
    NEW=$(other "$OLD")
}
