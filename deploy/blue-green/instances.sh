# shellcheck shell=bash
# The instances' side of a deploy, sourced by lib.sh: the two colours, each of
# BATON_COLOUR_SIZE instances (blue-1, blue-2, ...), their ports, pids, binaries and
# logs, and starting, checking, draining and stopping them.
#
# Invariant: an instance is started only under its supervisor (supervise.sh), which
# restarts it when it dies without being asked to stop; every deliberate stop goes
# through stop_instance or drain_instance, which first write <instance>.stop so that
# the supervisor lets the exit stand.

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

# Instances per colour (BATON_COLOUR_SIZE, default 2).
colour_size() {
    local n=${BATON_COLOUR_SIZE:-2}
    [[ $n =~ ^[1-9][0-9]?$ ]] || die "BATON_COLOUR_SIZE must be a number from 1 to 99, not '$n'"
    echo "$n"
}

# The instances of COLOUR, in order: blue-1 blue-2 ...
instances_of() {
    local c=$1 i n
    check_colour "$c"
    n=$(colour_size)
    for ((i = 1; i <= n; i++)); do printf '%s-%d\n' "$c" "$i"; done
}

all_instances() { instances_of blue; instances_of green; }

# Fails unless NAME is one of this setup's instances (colour-number, number within
# BATON_COLOUR_SIZE).
check_instance() {
    local name=${1:-} n
    [[ $name =~ ^(blue|green)-([0-9]+)$ ]] || die "not an instance: '$name' (blue-1, green-2, ...)"
    n=${BASH_REMATCH[2]}
    [ "$n" -ge 1 ] && [ "$n" -le "$(colour_size)" ] ||
        die "no instance $name: a colour has $(colour_size) instances (BATON_COLOUR_SIZE)"
}

colour_of() { echo "${1%-*}"; }

# An instance's HTTP port: its colour's first port (BATON_BLUE_PORT / BATON_GREEN_PORT)
# + 2 x (number - 1). The port after it is its HAProxy agent's (agent_port).
port() {
    local name=$1 base c
    check_instance "$name"
    c=$(colour_of "$name")
    if [ "$c" = blue ]; then base=$BATON_BLUE_PORT; else base=$BATON_GREEN_PORT; fi
    echo $((base + 2 * (${name##*-} - 1)))
}

agent_port() { echo $(($(port "$1") + 1)); }

url_of() { echo "http://127.0.0.1:$(port "$1")"; }
pid_file() { echo "$STATE_DIR/$1.pid"; }
supervisor_file() { echo "$STATE_DIR/$1.supervisor"; }
stop_file() { echo "$STATE_DIR/$1.stop"; }
log_file() { echo "$STATE_DIR/$1.log"; }

# The pid recorded for NAME's baton process (empty if none).
pid_of() {
    local f
    f=$(pid_file "$1")
    if [ -f "$f" ]; then cat "$f" 2>/dev/null || true; fi
}

supervisor_of() {
    local f
    f=$(supervisor_file "$1")
    if [ -f "$f" ]; then cat "$f" 2>/dev/null || true; fi
}

# The binary NAME runs (or last ran), from NAME.bin (empty if none).
bin_of() {
    local f=$STATE_DIR/$1.bin
    if [ -f "$f" ]; then cat "$f" 2>/dev/null || true; fi
}

# How many times NAME's supervisor restarted it after it died (0 if never).
restarts_of() {
    local f=$STATE_DIR/$1.restarts
    if [ -f "$f" ]; then cat "$f"; else echo 0; fi
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

# True if NAME's baton process is alive.
running() { pid_alive "$(pid_of "$1")"; }

# True if NAME's supervisor is alive (it restarts NAME when NAME dies).
supervised() { pid_alive "$(supervisor_of "$1")"; }

# True if any instance of COLOUR runs.
colour_running() {
    local i
    for i in $(instances_of "$1"); do running "$i" && return 0; done
    return 1
}

# True if every instance of COLOUR runs.
colour_all_running() {
    local i
    for i in $(instances_of "$1"); do running "$i" || return 1; done
}

# The binary COLOUR runs: its instances' one binary, empty if they differ or none ran.
colour_bin() {
    local i b first=
    for i in $(instances_of "$1"); do
        b=$(bin_of "$i")
        if [ -z "$first" ]; then first=${b:-none}; elif [ "$first" != "${b:-none}" ]; then return 0; fi
    done
    [ "$first" = none ] || echo "$first"
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

# GET /readyz of NAME: prints the HTTP status, 000 if nothing answers.
readyz_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$(url_of "$1")/readyz" || true
}

# Sum of the Prometheus metric METRIC (all label sets) on NAME's /metrics; 0 when the
# metric is absent. Fails if /metrics does not answer.
metric_sum() {
    local body
    body=$(curl -sf --max-time 2 "$(url_of "$1")/metrics") || return 1
    awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d\n", s }' <<<"$body"
}

# `baton status --json` of NAME (one line), with the env file's admin token; empty if
# there is no token, no binary, or no answer.
status_json() {
    local name=$1 token bin
    token=$(env_get BATON_ADMIN_TOKEN)
    bin=$(bin_of "$name")
    [ -n "$token" ] && [ -x "$bin" ] || return 0
    # The token goes through the environment, not the command line where ps shows it.
    BATON_ADMIN_TOKEN=$token timeout 5 "$bin" status --url "$(url_of "$name")" --json 2>/dev/null || true
}

# A scalar field of a one-line JSON object (no jq needed): "sockets":12 -> 12.
json_field() {
    sed -n "s/.*\"$1\":\\(\"[^\"]*\"\\|[^,}]*\\).*/\\1/p" <<<"$2" | tr -d '"'
}

# Starts NAME on BINARY in the background, under its supervisor (supervise.sh, nohup,
# its own session, so both outlive this script and a Ctrl-C here), with the env
# file's variables plus BATON_LISTEN=127.0.0.1:<port>, BATON_LB_AGENT_LISTEN=
# 127.0.0.1:<port+1> and BATON_INSTANCE_ID=<name>. Logs go to NAME.log (appended: each
# start adds a "=== <time> started" line); NAME.pid is baton's pid, NAME.supervisor
# the supervisor's, NAME.bin the binary. Refuses if NAME runs or its port is taken.
start_instance() {
    local name=$1 bin=$2 p sup
    check_instance "$name"
    if [ -z "$bin" ] || [ ! -f "$bin" ] || [ ! -x "$bin" ]; then die "not an executable file: '$bin'"; fi
    require_env_file
    if running "$name" || supervised "$name"; then
        die "$name is already running (pid $(pid_of "$name"), supervisor $(supervisor_of "$name"), $(bin_of "$name"))"
    fi
    p=$(port "$name")
    if port_busy "$p"; then die "port $p ($name) is already taken by another process"; fi
    if port_busy $((p + 1)); then die "port $((p + 1)) ($name's HAProxy agent) is already taken by another process"; fi
    rm -f "$(stop_file "$name")" "$(pid_file "$name")" "$STATE_DIR/$name.restarts"
    printf '%s\n' "$bin" >"$STATE_DIR/$name.bin"
    # The subshell exits at once: the supervisor is re-parented to init and never
    # left as a zombie of this script; its stdio points at the log, not at our pipes.
    sup=$(
        set -a
        # shellcheck disable=SC1090
        . "$ENV_FILE"
        set +a
        export BATON_LISTEN=127.0.0.1:$p BATON_LB_AGENT_LISTEN=127.0.0.1:$((p + 1)) BATON_INSTANCE_ID=$name
        nohup setsid "$BG_HOME/supervise.sh" "$STATE_DIR" "$name" "$bin" </dev/null >>"$(log_file "$name")" 2>&1 &
        echo $!
    )
    printf '%s\n' "$sup" >"$(supervisor_file "$name")"
    # The supervisor writes NAME.pid once baton runs.
    for _ in $(seq 1 50); do [ -s "$(pid_file "$name")" ] && break; sleep 0.1; done
    echo "$name: started pid $(pid_of "$name") under supervisor $sup ($bin serve on 127.0.0.1:$p, log $(log_file "$name"))" >&2
}

# The last lines NAME logged since it was last started (after the last "=== " line),
# without terminal colour codes.
log_tail() {
    awk '/^=== / { n = 0; next } { buf[n++ % 8] = $0 } END { for (i = (n > 8 ? n - 8 : 0); i < n; i++) print "    " buf[i % 8] }' \
        "$(log_file "$1")" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' || true
}

# Polls NAME's /readyz until it answers 200 (returns 0), NAME dies (its supervisor
# gone, or a restart counted since this call began: a build that crashes at start
# is not waited for) or TIMEOUT seconds pass (returns 1, with the log's last lines).
wait_ready() {
    local name=$1 timeout=${2:-60} deadline code=000 restarts
    deadline=$((SECONDS + timeout))
    restarts=$(restarts_of "$name")
    while :; do
        code=$(readyz_code "$name")
        [ "$code" = 200 ] && return 0
        if ! supervised "$name" || [ "$(restarts_of "$name")" != "$restarts" ]; then
            warn "$name exited before becoming ready; the end of its log ($(log_file "$name")):"
            log_tail "$name" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            warn "$name not ready after ${timeout}s (last /readyz: $code); the end of its log ($(log_file "$name")):"
            log_tail "$name" >&2
            return 1
        fi
        sleep 0.5
    done
}

# Waits up to TIMEOUT seconds for NAME's baton process and its supervisor to exit.
wait_exit() {
    local name=$1 timeout=$2 pid sup deadline
    pid=$(pid_of "$name")
    sup=$(supervisor_of "$name")
    deadline=$((SECONDS + timeout))
    while pid_alive "$pid" || pid_alive "$sup"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# Kills NAME and its supervisor with SIGKILL after a warning, and waits for them.
kill_instance() {
    local name=$1 pid sup
    pid=$(pid_of "$name")
    sup=$(supervisor_of "$name")
    warn "$name (pid $pid) did not exit in time: kill -9"
    touch "$(stop_file "$name")"
    kill -9 "$sup" 2>/dev/null || true
    kill -9 "$pid" 2>/dev/null || true
    wait_exit "$name" 5 || warn "$name (pid $pid) survived kill -9"
}

# Asks NAME to stop for good: the supervisor will not restart it; SIGTERM to baton
# (it drains on SIGTERM), without waiting.
signal_instance() {
    local name=$1 pid
    touch "$(stop_file "$name")"
    pid=$(pid_of "$name")
    if pid_alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    # A supervisor waiting out a restart delay has no baton to signal: it sees the
    # stop file when it wakes; SIGTERM wakes it now.
    pid=$(supervisor_of "$name")
    if pid_alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
}

# Stops NAME: SIGTERM, then waits up to the drain window + 10 s, then kill -9.
# Removes its pid files; its .bin and .log stay.
stop_instance() {
    local name=$1 window
    check_instance "$name"
    if running "$name" || supervised "$name"; then
        window=$(drain_window_seconds)
        echo "$name: stopping pid $(pid_of "$name") (SIGTERM, up to $((window + 10))s)" >&2
        signal_instance "$name"
        wait_exit "$name" $((window + 10)) || kill_instance "$name"
    fi
    rm -f "$(pid_file "$name")" "$(supervisor_file "$name")"
}

# Drains NAME with `baton drain --wait --json` (the binary it runs, the env file's
# admin token): baton tells HAProxy's agent check it drains (HAProxy sends it no new
# session but keeps its sticky ones), closes its clients' transports spread over the
# drain window so they reconnect through HAProxy to the other instances, answers
# with its drain report, then exits 0 (its supervisor, told to stop, lets it). Waits
# up to the drain window + 10 s for the exit, then kill -9 with a warning. Without a
# token, or if baton drain fails, SIGTERM (baton drains on it too). Prints the drain
# report (one JSON line), or a note saying why there is none.
drain_instance() {
    local name=$1 token window bin err report=
    check_instance "$name"
    if ! running "$name"; then
        echo "$name: not running, nothing to drain" >&2
        stop_instance "$name" # its supervisor, if one waits to restart it
        echo "($name was not running)"
        return 0
    fi
    touch "$(stop_file "$name")"
    token=$(env_get BATON_ADMIN_TOKEN)
    window=$(drain_window_seconds)
    bin=$(bin_of "$name")
    if [ -n "$token" ] && [ -x "$bin" ]; then
        echo "$name: draining (baton drain --wait, up to $((window + 10))s)" >&2
        err=$(mktemp)
        # The token goes through the environment, not the command line where ps shows it.
        if ! report=$(BATON_ADMIN_TOKEN=$token timeout $((window + 10)) \
            "$bin" drain --url "$(url_of "$name")" --wait --json 2>"$err"); then
            report=
            warn "$name: baton drain failed ($(tail -n 1 "$err")); sending SIGTERM instead (baton drains on it too)"
            signal_instance "$name"
        fi
        rm -f "$err"
    else
        warn "$name: no BATON_ADMIN_TOKEN in $ENV_FILE (or no binary $bin); sending SIGTERM instead (baton drains on it too)"
        signal_instance "$name"
    fi
    if wait_exit "$name" $((window + 10)); then
        echo "$name: exited" >&2
    else
        kill_instance "$name"
    fi
    rm -f "$(pid_file "$name")" "$(supervisor_file "$name")"
    echo "${report:-(no drain report: $name was stopped by SIGTERM; its log $(log_file "$name") has the 'drain finished' line)}"
}

# Drains every instance of COLOUR at once (each over the drain window) and waits for
# them all; prints one "NAME: report" line per instance.
drain_colour() {
    local c=$1 i dir
    check_colour "$c"
    dir=$(mktemp -d)
    for i in $(instances_of "$c"); do
        drain_instance "$i" >"$dir/$i" &
    done
    wait
    for i in $(instances_of "$c"); do printf '%s: %s\n' "$i" "$(cat "$dir/$i")"; done
    rm -rf "$dir"
}

# Stops every instance of COLOUR at once (SIGTERM: each drains) and waits for them.
stop_colour() {
    local i
    for i in $(instances_of "$1"); do stop_instance "$i" & done
    wait
}

# Starts every instance of COLOUR on BINARY.
start_colour() {
    local i
    for i in $(instances_of "$1"); do start_instance "$i" "$2"; done
}
