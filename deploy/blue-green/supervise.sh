#!/usr/bin/env bash
# The local cluster's supervisor of one baton instance (on hosts, systemd does this
# job: deploy/systemd/). Started by instances.sh's start_instance, never by hand:
#
#   supervise.sh STATE_DIR NAME BINARY
#
# Runs `BINARY serve` (its environment is this script's) and, when it exits, starts it
# again unless it was asked to stop: STATE_DIR/NAME.stop exists (written by every
# deliberate stop and drain) or it exited 0 (a finished drain). A crash (kill -9, a
# panic, an exit code other than 0) is logged as "=== <time> NAME died: ..." in its log
# and followed by a restart after 0.2 s; the delay doubles (up to 10 s) while it keeps
# dying within 30 s of its start, so a build that cannot start does not spin.
# NAME.pid holds baton's current pid; NAME.restarts counts the restarts. When it
# stops for good it writes NAME.stop itself (a drain started by hand exits 0 without
# one), so that status.sh tells a stopped instance from a dead supervisor.
#
# SIGTERM to this script stops the instance for good (SIGTERM to baton: it drains).
set -uo pipefail

[ $# -eq 3 ] || { echo "usage: $(basename "$0") STATE_DIR NAME BINARY" >&2; exit 2; }
dir=$1 name=$2 bin=$3
stop=$dir/$name.stop
pidfile=$dir/$name.pid
restarts=0
delay_ms=200
child=

stopping() { [ -e "$stop" ]; }
on_term() {
    touch "$stop"
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi
}
trap on_term TERM INT

while ! stopping; do
    printf '=== %s started: %s serve on %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$bin" "${BATON_LISTEN:-?}"
    started=$SECONDS
    "$bin" serve </dev/null &
    child=$!
    printf '%s\n' "$child" >"$pidfile.tmp" && mv "$pidfile.tmp" "$pidfile"
    # A trapped signal interrupts `wait`: wait again until baton itself has exited.
    wait "$child"
    status=$?
    while kill -0 "$child" 2>/dev/null; do
        wait "$child"
        status=$?
    done
    child=
    if stopping || [ "$status" = 0 ]; then
        break
    fi
    if [ "$status" -gt 128 ]; then how="killed by signal $((status - 128))"; else how="exit code $status"; fi
    if [ $((SECONDS - started)) -ge 30 ]; then delay_ms=200; fi
    restarts=$((restarts + 1))
    printf '%s\n' "$restarts" >"$dir/$name.restarts"
    printf '=== %s %s died (%s) after %ss: restart %d in %d ms\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name" "$how" $((SECONDS - started)) "$restarts" "$delay_ms"
    # sleep in the background so that SIGTERM is handled at once.
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))" &
    wait $! 2>/dev/null
    delay_ms=$((delay_ms * 2))
    if [ "$delay_ms" -gt 10000 ]; then delay_ms=10000; fi
done
printf '=== %s %s stopped (exit %s); not restarted\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$name" "${status:-none}"
# Stopped for good, whoever asked (a drain by hand exits 0 without a stop file):
# status.sh tells this from a supervisor that died.
touch "$stop"
rm -f "$pidfile"
