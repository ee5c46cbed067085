#!/usr/bin/env bash
# Canary deploy: runs BINARY on the inactive colour and moves traffic onto it in
# steps, watching it at each one, then drains the old colour.
#
#   deploy/blue-green/canary.sh BINARY [STEP...]     (default steps: 5 25 50 100)
#
# The new colour is brought up as in deploy.sh (reused if it already runs BINARY and
# is ready; "rolled back: <colour> did not become ready", exit 1, if it never is).
# Then for each STEP (a percentage; increasing, the last one 100): weights new=STEP,
# old=100-STEP, held for CANARY_STEP_SECONDS (default 30) while, every second, the
# new colour's /readyz and its baton_server_errors_total (from /metrics, absent
# counts as 0) are checked. If /readyz fails twice in a step, or the counter grows
# by more than CANARY_MAX_ERRORS (default 0) during the step: weights back to
# old=100 new=0, the new colour drained, "rolled back at STEP%: <reason>", exit 1.
# After the last step: the new colour recorded as active, the old one drained.
#
# Weights only steer NEW sessions (HAProxy's roundrobin over servers whose weight
# is not 0). A client that already has a sticky cookie (BATON_SERVER) stays on its
# server whatever the weights, until that server drains and closes its transport.
# So at "50%" half of the new sessions go to the new colour, not half the clients;
# the old colour's existing clients move only in the final drain, and on a rollback
# the new colour's clients move back when it is drained.
set -euo pipefail
# shellcheck source=deploy/blue-green/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 1 ] || die "usage: $(basename "$0") BINARY [STEP...] (percentages, default 5 25 50 100)"
BIN=$(resolve_binary "$1")
shift
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(5 25 50 100)
HOLD=${CANARY_STEP_SECONDS:-30}
MAX_ERRORS=${CANARY_MAX_ERRORS:-0}
[[ $HOLD =~ ^[0-9]+$ ]] || die "CANARY_STEP_SECONDS must be a number of seconds, not '$HOLD'"
[[ $MAX_ERRORS =~ ^[0-9]+$ ]] || die "CANARY_MAX_ERRORS must be a number, not '$MAX_ERRORS'"
prev=0
for s in "${STEPS[@]}"; do
    if ! [[ $s =~ ^[0-9]+$ ]] || [ "$s" -lt 1 ] || [ "$s" -gt 100 ]; then
        die "a step is a percentage from 1 to 100, not '$s'"
    fi
    [ "$s" -gt "$prev" ] || die "steps must increase: $s after $prev"
    prev=$s
done
[ "$prev" -eq 100 ] || die "the last step must be 100 (got ${STEPS[*]})"

find_colours
running "$OLD" || die "the active colour $OLD is not running: nothing to roll back to (use deploy.sh)"
echo "active: $OLD (pid $(pid_of "$OLD"), $(bin_of "$OLD")); canary on $NEW, steps ${STEPS[*]}%, ${HOLD}s each" >&2

bring_up "$NEW" "$BIN"

STEP=0
rollback() {
    step "rolling back at $STEP%: $1"
    set_split "$OLD" 100
    echo "weights: $OLD 100, $NEW 0" >&2
    step "draining $NEW (its clients reconnect through HAProxy to $OLD)"
    drain_colour "$NEW"
    echo "$NEW's drain report: $DRAIN_REPORT" >&2
    echo "rolled back at $STEP%: $1"
    exit 1
}

for STEP in "${STEPS[@]}"; do
    step "canary at $STEP%: $NEW weight $STEP, $OLD weight $((100 - STEP)); watching $NEW for ${HOLD}s"
    set_split "$NEW" "$STEP"
    base=$(metric_sum "$NEW" baton_server_errors_total || echo 0)
    errors=$base
    ready_failures=0
    for ((i = 1; i <= HOLD; i++)); do
        sleep 1
        code=$(readyz_code "$NEW")
        if [ "$code" != 200 ]; then
            ready_failures=$((ready_failures + 1))
            warn "$NEW's /readyz answered $code (failure $ready_failures in this step)"
            [ "$ready_failures" -lt 2 ] || rollback "$NEW's /readyz failed twice (last answer: $code)"
        fi
        if errors=$(metric_sum "$NEW" baton_server_errors_total); then
            if [ $((errors - base)) -gt "$MAX_ERRORS" ]; then
                rollback "$NEW's baton_server_errors_total grew by $((errors - base)) (more than CANARY_MAX_ERRORS=$MAX_ERRORS)"
            fi
        fi
    done
    echo "$STEP%: $NEW healthy ($(server_state "$NEW") in HAProxy, errors +$((errors - base)))" >&2
done

step "recording $NEW as the active colour"
set_active "$NEW"

step "draining $OLD (its clients reconnect through HAProxy to $NEW)"
drain_colour "$OLD"

step "done"
printf 'canary of %s finished: %s active at 100%% after steps %s%%\n' "$BIN" "$NEW" "${STEPS[*]}"
printf '  active: %s (pid %s, %s)\n' "$NEW" "$(pid_of "$NEW")" "$(url_of "$NEW")"
printf '  %s drained and stopped; its drain report: %s\n' "$OLD" "$DRAIN_REPORT"
