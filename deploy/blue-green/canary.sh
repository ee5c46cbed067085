#!/usr/bin/env bash
# Canary deploy: runs BINARY on the inactive colour's instances and moves live
# sessions onto them in steps, comparing their error rate with the old colour's at
# each one, then drains the old colour.
#
#   deploy/blue-green/canary.sh BINARY [STEP...]     (default steps: 5 25 50 100)
#
# The new colour is brought up as in deploy.sh (each instance reused if it already
# runs BINARY and is ready; "rolled back: <colour> did not become ready", exit 1, if
# one never is). Then for each STEP (a percentage; increasing, the last one 100):
#
#  1. The canary's share. HAProxy's weights steer only new sessions and every client
#     is sticky, so weights alone would leave the canary without clients. The script
#     counts the transports (engine.io connections) of every instance (`baton status`)
#     and sheds the difference from the old colour's instances, in proportion to
#     what each holds (`baton drain --count N --wait`, paced over CANARY_SHED_WINDOW,
#     default the drain window), while the weights send every new session to the
#     canary (new 100, old 0). Shed clients reconnect through HAProxy and land on
#     the canary. Then the weights are set to new=STEP, old=100-STEP, so that new
#     sessions keep the split. The line "holding STEP%: ..." says the share reached.
#  2. The watch, for CANARY_STEP_SECONDS (default 30), every second: each canary
#     instance's /readyz and supervisor (a restart is a crash), and the error rate
#     of each colour over the step: the growth of baton_server_errors_total over
#     that of baton_events_in_total (events its clients sent), both from /metrics,
#     summed over the colour's instances. The canary is rolled back if its /readyz
#     fails twice, if one of its instances crashes, or if it has had at least
#     CANARY_MIN_ERRORS (default 3) errors in the step and its rate is more than
#     CANARY_ERROR_MARGIN (default 1) percentage points above the old colour's.
#
# A rollback sets the weights back (old 100, new 0) and drains the canary: its
# clients reconnect through HAProxy to the old colour. It prints "rolled back at
# STEP%: <reason>" and exits 1. After the last step (100: every new session to the
# canary, nothing shed), the new colour is recorded as active and the old one is
# drained.
#
# Environment: as deploy.sh, plus CANARY_STEP_SECONDS, CANARY_MIN_ERRORS,
# CANARY_ERROR_MARGIN and CANARY_SHED_WINDOW (a baton duration: 10s, 2500ms).
set -euo pipefail
# shellcheck source=deploy/blue-green/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 1 ] || die "usage: $(basename "$0") BINARY [STEP...] (percentages, default 5 25 50 100)"
BIN=$(resolve_binary "$1")
shift
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(5 25 50 100)
HOLD=${CANARY_STEP_SECONDS:-30}
MIN_ERRORS=${CANARY_MIN_ERRORS:-3}
MARGIN=${CANARY_ERROR_MARGIN:-1}
[[ $HOLD =~ ^[0-9]+$ ]] || die "CANARY_STEP_SECONDS must be a number of seconds, not '$HOLD'"
[[ $MIN_ERRORS =~ ^[0-9]+$ ]] || die "CANARY_MIN_ERRORS must be a number, not '$MIN_ERRORS'"
[[ $MARGIN =~ ^[0-9]+$ ]] || die "CANARY_ERROR_MARGIN must be a whole number of percentage points, not '$MARGIN'"
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
colour_running "$OLD" || die "the active colour $OLD is not running: nothing to roll back to (use deploy.sh)"
SHED_WINDOW=${CANARY_SHED_WINDOW:-$(drain_window_seconds)s}
duration_seconds "$SHED_WINDOW" >/dev/null || die "CANARY_SHED_WINDOW must be a duration (10s, 2500ms), not '$SHED_WINDOW'"
TOKEN=$(env_get BATON_ADMIN_TOKEN)
[ -n "$TOKEN" ] || die "no BATON_ADMIN_TOKEN in $ENV_FILE: the canary needs it to count and shed sessions"
echo "active: $OLD ($(colour_bin "$OLD")); canary on $NEW, steps ${STEPS[*]}%, ${HOLD}s each" >&2

bring_up "$NEW" "$BIN"

# Transports (engine.io connections) of NAME, from `baton status`; 0 if it does not answer.
transports_of() {
    local n
    n=$(json_field transports "$(status_json "$1")")
    echo "${n:-0}"
}

# Transports of each colour: sets T_NEW, T_OLD and, per old instance, T_OF[name].
declare -A T_OF
count_transports() {
    local i n
    T_NEW=0 T_OLD=0
    for i in $(instances_of "$NEW"); do T_NEW=$((T_NEW + $(transports_of "$i"))); done
    for i in $(instances_of "$OLD"); do
        n=$(transports_of "$i")
        T_OF[$i]=$n
        T_OLD=$((T_OLD + n))
    done
}

# N as a percentage of D, to a tenth: "23.4%" (D of 0 counts as 1).
percent() {
    local n=$1 d=$(($2 > 0 ? $2 : 1))
    printf '%d.%d%%' $((n * 100 / d)) $((n * 1000 / d % 10))
}

share_text() {
    local total=$((T_NEW + T_OLD))
    if [ "$total" = 0 ]; then
        echo "no sessions yet"
    else
        printf '%s holds %d of %d transports (%s)' "$NEW" "$T_NEW" "$total" "$(percent "$T_NEW" "$total")"
    fi
}

# Moves live sessions so that the canary holds STEP% of them (see the header).
shift_share() {
    local p=$1 want move left i n k=0 size dir
    count_transports
    want=$(((T_NEW + T_OLD) * p / 100))
    move=$((want - T_NEW))
    if [ "$move" -le 0 ] || [ "$T_OLD" = 0 ] || [ "$p" = 100 ]; then
        echo "nothing to shed: $(share_text)" >&2
        return
    fi
    step "shedding $move of $OLD's $T_OLD transports to $NEW over $SHED_WINDOW ($(share_text))"
    set_split "$NEW" 100
    dir=$(mktemp -d)
    left=$move
    size=$(colour_size)
    for i in $(instances_of "$OLD"); do
        k=$((k + 1))
        if [ "$k" = "$size" ]; then n=$left; else n=$((move * ${T_OF[$i]} / T_OLD)); fi
        [ "$n" -le "${T_OF[$i]}" ] || n=${T_OF[$i]}
        left=$((left - n))
        [ "$n" -gt 0 ] || continue
        (
            if ! BATON_ADMIN_TOKEN=$TOKEN timeout $(($(duration_seconds "$SHED_WINDOW") + 30)) "$(bin_of "$i")" drain \
                --url "$(url_of "$i")" --count "$n" --window "$SHED_WINDOW" --wait --json >"$dir/$i" 2>&1; then
                warn "$i: the shed of $n failed: $(tail -n 1 "$dir/$i")"
            fi
        ) &
    done
    wait
    for i in $(instances_of "$OLD"); do
        if [ -f "$dir/$i" ]; then echo "$i's shed report: $(cat "$dir/$i")" >&2; fi
    done
    rm -rf "$dir"
}

# Sum of metric METRIC over COLOUR's instances (an instance that does not answer counts 0).
colour_metric() {
    local i s=0 v
    for i in $(instances_of "$1"); do
        v=$(metric_sum "$i" "$2" || echo 0)
        s=$((s + v))
    done
    echo "$s"
}

STEP=0
rollback() {
    step "rolling back at $STEP%: $1"
    set_split "$OLD" 100
    echo "weights: $OLD 100, $NEW 0" >&2
    step "draining $NEW (its clients reconnect through HAProxy to $OLD)"
    echo "$NEW's drain reports:" >&2
    drain_colour "$NEW" | sed 's/^/  /' >&2
    echo "rolled back at $STEP%: $1"
    exit 1
}

declare -A RESTARTS
for STEP in "${STEPS[@]}"; do
    step "canary at $STEP%"
    for i in $(instances_of "$NEW"); do RESTARTS[$i]=$(restarts_of "$i"); done
    shift_share "$STEP"
    set_split "$NEW" "$STEP"
    count_transports
    echo "holding $STEP%: weights $NEW $STEP, $OLD $((100 - STEP)); $(share_text); watching $NEW for ${HOLD}s" >&2
    base_err_new=$(colour_metric "$NEW" baton_server_errors_total)
    base_ev_new=$(colour_metric "$NEW" baton_events_in_total)
    base_err_old=$(colour_metric "$OLD" baton_server_errors_total)
    base_ev_old=$(colour_metric "$OLD" baton_events_in_total)
    ready_failures=0
    for ((t = 1; t <= HOLD; t++)); do
        sleep 1
        for i in $(instances_of "$NEW"); do
            if [ "$(restarts_of "$i")" != "${RESTARTS[$i]}" ] || ! supervised "$i"; then
                rollback "$i crashed (restarted by its supervisor; see $(log_file "$i"))"
            fi
            code=$(readyz_code "$i")
            if [ "$code" != 200 ]; then
                ready_failures=$((ready_failures + 1))
                warn "$i's /readyz answered $code (failure $ready_failures in this step)"
                [ "$ready_failures" -lt 2 ] || rollback "$NEW's /readyz failed twice (last answer: $code from $i)"
            fi
        done
        err_new=$(($(colour_metric "$NEW" baton_server_errors_total) - base_err_new))
        ev_new=$(($(colour_metric "$NEW" baton_events_in_total) - base_ev_new))
        err_old=$(($(colour_metric "$OLD" baton_server_errors_total) - base_err_old))
        ev_old=$(($(colour_metric "$OLD" baton_events_in_total) - base_ev_old))
        # Rates in hundredths of a percent, compared in whole numbers.
        rate_new=$((err_new * 10000 / (ev_new > 0 ? ev_new : 1)))
        rate_old=$((err_old * 10000 / (ev_old > 0 ? ev_old : 1)))
        if [ "$err_new" -ge "$MIN_ERRORS" ] && [ "$rate_new" -gt $((rate_old + MARGIN * 100)) ]; then
            rollback "$NEW's error rate $(percent "$err_new" "$ev_new") ($err_new errors in $ev_new events) is above $OLD's $(percent "$err_old" "$ev_old") ($err_old in $ev_old) by more than CANARY_ERROR_MARGIN=$MARGIN points"
        fi
    done
    count_transports
    echo "$STEP%: $NEW healthy: $(share_text); errors $err_new in $ev_new events (old colour: $err_old in $ev_old)" >&2
    if [ "$ev_new" -lt 20 ] && [ "$STEP" != 100 ]; then
        warn "$NEW's clients sent only $ev_new events in this step: too few to judge its error rate (a longer CANARY_STEP_SECONDS gives it more)"
    fi
done

step "recording $NEW as the active colour"
set_active "$NEW"

step "draining $OLD (its clients reconnect through HAProxy to $NEW)"
reports=$(drain_colour "$OLD")

step "done"
printf 'canary of %s finished: %s active at 100%% after steps %s%%\n' "$BIN" "$NEW" "${STEPS[*]}"
for i in $(instances_of "$NEW"); do
    printf '  %s: pid %s, %s\n' "$i" "$(pid_of "$i")" "$(url_of "$i")"
done
print_drained "$OLD" "$reports"
