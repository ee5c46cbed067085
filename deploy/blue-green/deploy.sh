#!/usr/bin/env bash
# Blue-green deploy: runs BINARY on the inactive colour's instances, moves all new
# sessions to them at once, then drains the old colour's instances (their clients
# reconnect through HAProxy to the new ones) and waits for them to exit.
#
#   deploy/blue-green/deploy.sh BINARY
#
# Steps: find the active colour; start the other colour's instances with BINARY
# (each reused if it already runs BINARY and is ready); wait until they are ready (DEPLOY_READY_TIMEOUT
# seconds, default 60) and HAProxy sees it up: if it never is, stop it, leave the
# weights as they were, print "rolled back: <colour> did not become ready", exit 1;
# switch the weights (new 100, old 0) through HAProxy's runtime API; record the new
# active colour; drain the old colour's instances (at once, each over the drain
# window) and wait for them to exit; print a summary with their drain reports.
#
# Idempotent: if the active colour already runs BINARY and the other is stopped,
# there is nothing to do (exit 0). Needs a running HAProxy and the state directory
# (scripts/cluster up, or see docs/operations.md). Environment: BATON_DEPLOY_DIR,
# BATON_LB_PORT, BATON_COLOUR_SIZE, BATON_BLUE_PORT, BATON_GREEN_PORT,
# DEPLOY_READY_TIMEOUT.
set -euo pipefail
# shellcheck source=deploy/blue-green/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -eq 1 ] || die "usage: $(basename "$0") BINARY"
BIN=$(resolve_binary "$1")
find_colours
if colour_running "$OLD"; then
    echo "active: $OLD ($(colour_bin "$OLD")); deploying to $NEW" >&2
else
    echo "active: $OLD (not running); deploying to $NEW" >&2
fi

if colour_all_running "$OLD" && [ "$(colour_bin "$OLD")" = "$BIN" ] && ! colour_running "$NEW"; then
    echo "nothing to do: $OLD is active and already runs $BIN, $NEW is stopped"
    exit 0
fi

bring_up "$NEW" "$BIN"

step "switching traffic: $NEW weight 100, $OLD weight 0 (new sessions go to $NEW; $OLD's clients stay until it drains)"
set_split "$NEW" 100

step "recording $NEW as the active colour"
set_active "$NEW"

step "draining $OLD (its clients reconnect through HAProxy to $NEW)"
reports=$(drain_colour "$OLD")

step "done"
printf 'deployed %s\n' "$BIN"
printf '  active: %s\n' "$NEW"
for i in $(instances_of "$NEW"); do
    printf '    %s: pid %s, %s, HAProxy %s (status|weight|sessions)\n' "$i" "$(pid_of "$i")" "$(url_of "$i")" "$(server_state "$i")"
done
print_drained "$OLD" "$reports"
