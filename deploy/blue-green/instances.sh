# shellcheck shell=bash
# The instances' side of a deploy, sourced by lib.sh: the two colours, their ports,
# pids, binaries and logs, and starting, checking, draining and stopping them.

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

# Drains COLOUR with `baton drain --wait --json` (the binary the colour runs, the env
# file's admin token): baton marks itself not ready, lets HAProxy see it, closes its
# clients' transports spread over the drain window so they reconnect through
# HAProxy to the other colour, answers with its drain report, then exits 0. Waits up
# to the drain window + 10 s for the process to exit, then kill -9 with a warning.
# Without a token, or if baton drain fails, SIGTERM (baton drains on it too). Leaves
# the drain report (one JSON line), or a note saying why there is none, in
# DRAIN_REPORT.
drain_colour() {
    local c=$1 token window bin err
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
    bin=$(bin_of "$c")
    if [ -n "$token" ] && [ -x "$bin" ]; then
        echo "$c: draining (baton drain --wait, up to $((window + 10))s)" >&2
        err=$(mktemp)
        # The token goes through the environment, not the command line where ps shows it.
        if ! DRAIN_REPORT=$(BATON_ADMIN_TOKEN=$token timeout $((window + 10)) \
            "$bin" drain --url "$(url_of "$c")" --wait --json 2>"$err"); then
            DRAIN_REPORT=
            warn "$c: baton drain failed ($(tail -n 1 "$err")); sending SIGTERM instead (baton drains on it too)"
            signal_colour "$c"
        fi
        rm -f "$err"
    else
        warn "$c: no BATON_ADMIN_TOKEN in $ENV_FILE (or no binary $bin); sending SIGTERM instead (baton drains on it too)"
        signal_colour "$c"
    fi
    if wait_exit "$c" $((window + 10)); then
        echo "$c: exited" >&2
    else
        kill_colour "$c"
    fi
    rm -f "$(pid_file "$c")"
    [ -n "$DRAIN_REPORT" ] || DRAIN_REPORT="(no drain report: $c was stopped by SIGTERM; its log $(log_file "$c") has the 'drain finished' line)"
}
