# shellcheck shell=bash
# Shared by deploy.sh, canary.sh, status.sh (next to it) and scripts/cluster: the
# state directory's paths, the env file, and the deploy steps (bringing a colour up).
# It sources its two parts: haproxy.sh (HAProxy's runtime API: weights, server
# states, the rendered config) and instances.sh (starting under supervise.sh,
# checking, draining and stopping the colours' instances). Sourced, not run; the
# caller sets `set -euo pipefail`.
# It installs nothing: a missing tool is named (require_tools), and scripts/cluster,
# the local try-out, installs what it needs.
#
# Environment (all optional):
#   BATON_DEPLOY_DIR   state directory (default: <repo>/.deploy)
#   BATON_LB_PORT      HAProxy's frontend on 127.0.0.1 (default 8080)
#   BATON_COLOUR_SIZE  instances per colour (default 2)
#   BATON_BLUE_PORT    blue-1's port on 127.0.0.1 (default 3101); blue-N's is
#                      BATON_BLUE_PORT + 2(N-1), and each instance's HAProxy agent
#                      listens on the port after its own
#   BATON_GREEN_PORT   green-1's port on 127.0.0.1 (default 3201), the same way
#
# The state directory holds: env (the instances' environment, KEY=VALUE lines in
# shell syntax, sourced with `set -a`), active (blue or green); per instance
# (blue-1 ...): <instance>.pid (baton's pid), <instance>.supervisor (its
# supervisor's pid), <instance>.bin (the binary it runs or last ran),
# <instance>.log, <instance>.restarts (restarts after crashes), <instance>.stop
# (asked to stop: not restarted); haproxy.cfg (rendered from haproxy.cfg next to
# this file), haproxy.pid, haproxy.sock (runtime API, level admin), and for
# scripts/cluster redis.pid.

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
BATON_GREEN_PORT=${BATON_GREEN_PORT:-3201}

STATE_DIR=$BATON_DEPLOY_DIR
ENV_FILE=$STATE_DIR/env
ACTIVE_FILE=$STATE_DIR/active
HAP_TEMPLATE=$BG_HOME/haproxy.cfg
HAP_CFG=$STATE_DIR/haproxy.cfg
HAP_PID=$STATE_DIR/haproxy.pid
HAP_SOCK=$STATE_DIR/haproxy.sock
HAP_BACKEND=baton

warn() { printf '%s: warning: %s\n' "$(basename "$0")" "$*" >&2; }


# Fails, naming them, if the tools the scripts use are missing (curl for /readyz
# and /metrics, socat for HAProxy's runtime API, timeout from coreutils).
require_tools() {
    local t missing=()
    for t in curl socat timeout; do command -v "$t" >/dev/null || missing+=("$t"); done
    [ ${#missing[@]} = 0 ] || die "missing: ${missing[*]} (on Debian: apt-get install curl socat coreutils)"
}

# shellcheck source=deploy/blue-green/instances.sh
. "$BG_HOME/instances.sh"
# shellcheck source=deploy/blue-green/haproxy.sh
. "$BG_HOME/haproxy.sh"

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

# Brings every instance of COLOUR up on BINARY for a deploy or canary, with its
# weight as it is (0 for the inactive colour): reuses an instance that already runs
# BINARY and is ready, else stops it and starts BINARY; waits for /readyz
# (DEPLOY_READY_TIMEOUT, default 60 s) and for HAProxy's checks to see each one up.
# If one never gets ready: stops the colour, leaves the weights as they were, prints
# "rolled back: COLOUR did not become ready" and exits 1.
bring_up() {
    local c=$1 bin=$2 timeout=${DEPLOY_READY_TIMEOUT:-60} i
    [[ $timeout =~ ^[0-9]+$ ]] || die "DEPLOY_READY_TIMEOUT must be a number of seconds, not '$timeout'"
    for i in $(instances_of "$c"); do
        if running "$i" || supervised "$i"; then
            if [ "$(bin_of "$i")" = "$bin" ] && [ "$(readyz_code "$i")" = 200 ]; then
                step "reusing $i: it already runs $bin and is ready (pid $(pid_of "$i"))"
                continue
            fi
            step "stopping $i: it runs $(bin_of "$i"), or is not ready"
            stop_instance "$i"
        fi
        step "starting $i with $bin"
        start_instance "$i" "$bin"
    done
    for i in $(instances_of "$c"); do
        step "waiting until $i is ready (timeout ${timeout}s)"
        if ! wait_ready "$i" "$timeout"; then
            stop_colour "$c"
            echo "rolled back: $c did not become ready"
            exit 1
        fi
    done
    step "waiting until HAProxy's health checks see every $c instance up"
    for i in $(instances_of "$c"); do
        if ! wait_hap_up "$i" 15; then
            stop_colour "$c"
            echo "rolled back: $c did not become ready (HAProxy's checks of $i did not pass)"
            exit 1
        fi
    done
}

# The end of a deploy's summary: COLOUR drained and stopped, then REPORTS
# (drain_colour's lines, one per instance), indented.
print_drained() {
    printf '  %s drained and stopped; drain reports:\n' "$1"
    printf '%s\n' "$2" | sed 's/^/    /'
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
    require_tools
    require_env_file
    require_haproxy
    step "finding the active colour"
    OLD=$(active_colour)
    NEW=$(other "$OLD")
}
