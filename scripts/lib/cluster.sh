# Shared by scripts/bench and scripts/profile: a cluster of baton or of its Node.js
# peer (bench/peer) on this machine, with a redis-server of its own and a fresh
# PostgreSQL database; or the floor (bench/floor), one process with nothing behind it.
# Expects BIN (the baton binary), PG (admin URL of PostgreSQL) and LOGS (a directory
# for the logs), FLOOR_BIN (baton-floor) to start the floor, and BENCH_BIN (the load
# generator, baton-bench) for cluster_bench; fills PIDS and URLS, and runs the bench
# against them.

CLUSTER_SIZE=2
# Servers on the last core, the load generator on the first (taskset is util-linux's).
CORES=$(nproc)
if [ "$CORES" -ge 2 ] && command -v taskset >/dev/null; then
    SERVER_CPUS="taskset -c $((CORES - 1))"
    BENCH_CPUS="taskset -c 0-$((CORES - 2))"
else
    SERVER_CPUS=
    BENCH_CPUS=
fi
# Both systems get a per-user chat limit no scenario reaches: the runs measure the
# servers, not their rate limiters. Likewise baton's cap on one user's sockets (the
# peer has none): the bench shares a few receiving users over thousands of sockets.
CHAT_LIMIT=1000000
SOCKET_LIMIT=1000000
DRAIN_WINDOW_S=5

PIDS=()      # the current cluster's instances
URLS=()
REDIS_PID=
DB=

free_port() {
    node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}

# Waits until http://127.0.0.1:PORT/readyz answers 200.
wait_ready() {
    local port=$1 pid=$2 status
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || die "the instance on port $port exited (log: $LOGS)"
        status=$( (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && head -n1 <&3) 2>/dev/null || true)
        case $status in *" 200 "*) return ;; esac
        sleep 0.1
    done
    die "the instance on port $port did not become ready (log: $LOGS)"
}

# Starts one instance of SYSTEM on PORT; its pid in START_PID.
start_instance() {
    local system=$1 port=$2 name=$3 redis_url=$4 db_url=$5
    if [ "$system" = floor ]; then
        $SERVER_CPUS "$FLOOR_BIN" --listen "127.0.0.1:$port" >"$LOGS/$name.log" 2>&1 &
    elif [ "$system" = baton ]; then
        BATON_LISTEN=127.0.0.1:$port DATABASE_URL=$db_url REDIS_URL=$redis_url BATON_INSTANCE_ID=$name \
            BATON_CHAT_RATE=$CHAT_LIMIT BATON_CHAT_BURST=$CHAT_LIMIT BATON_MAX_SOCKETS_PER_USER=$SOCKET_LIMIT \
            BATON_DRAIN_WINDOW=${DRAIN_WINDOW_S}s \
            BATON_DRAIN_LB_DELAY=0s RUST_LOG=warn \
            $SERVER_CPUS "$BIN" serve >"$LOGS/$name.log" 2>&1 &
    else
        PORT=$port DATABASE_URL=$db_url REDIS_URL=$redis_url CHAT_RATE=$CHAT_LIMIT CHAT_BURST=$CHAT_LIMIT \
            DRAIN_WINDOW_MS=$((DRAIN_WINDOW_S * 1000)) NODE_ENV=production \
            $SERVER_CPUS node bench/peer/server.mjs >"$LOGS/$name.log" 2>&1 &
    fi
    START_PID=$!
}

# A cluster of SYSTEM (baton or peer): its own redis-server and database, CLUSTER_SIZE
# instances; or the floor: one instance, no Redis, no database. Fills PIDS and URLS.
start_cluster() {
    local system=$1 round=$2 port redis_port
    PIDS=()
    URLS=()
    if [ "$system" = floor ]; then
        port=$(free_port)
        start_instance floor "$port" "floor-$round" "" ""
        wait_ready "$port" "$START_PID"
        PIDS+=("$START_PID")
        URLS+=("http://127.0.0.1:$port")
        return
    fi
    redis_port=$(free_port)
    $SERVER_CPUS redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        >"$LOGS/redis-$system-$round.log" 2>&1 &
    REDIS_PID=$!
    DB="bench_${system}_$$_$round"
    psql -w -q "$PG" -c "drop database if exists $DB" -c "create database $DB" >/dev/null
    local db_url="${PG%/*}/$DB"
    # The first instance creates the schema; the others start once it is ready.
    for i in $(seq 1 "$CLUSTER_SIZE"); do
        port=$(free_port)
        start_instance "$system" "$port" "$system-$round-$i" "redis://127.0.0.1:$redis_port" "$db_url"
        wait_ready "$port" "$START_PID"
        PIDS+=("$START_PID")
        URLS+=("http://127.0.0.1:$port")
    done
}

stop_cluster() {
    local pid
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
    URLS=()
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=
    fi
    if [ -n "$DB" ]; then
        psql -w -q "$PG" -c "drop database if exists $DB with (force)" >/dev/null || true
        DB=
    fi
}

# Runs `baton-bench` against the current cluster (every instance's URL, every pid
# measured) with ARGS after those, on the load generator's cores; its progress is
# appended to the file STDERR_LOG, its JSON line goes to stdout.
cluster_bench() {
    local stderr_log=$1 url pid args=()
    shift
    for url in "${URLS[@]}"; do args+=(--url "$url"); done
    for pid in "${PIDS[@]}"; do args+=(--server-pid "$pid"); done
    $BENCH_CPUS "$BENCH_BIN" "${args[@]}" "$@" 2>>"$stderr_log"
}
