#!/usr/bin/env bash
# The production backends on loopback, for the integration tests and for trying the
# production profile on one machine: PostgreSQL, Redis, an S3-compatible server (moto) and an
# MLflow tracking server (PostgreSQL backend store, artifacts proxied to S3).
#
#   scripts/services.sh start    start everything (idempotent) and write the env file
#   scripts/services.sh stop     stop everything this script started (by pid file)
#   scripts/services.sh status   say what runs
#   scripts/services.sh env      print the path of the env file (source it to use the servers)
#   scripts/services.sh start-ui / stop-ui
#                                `dagster dev` (webserver + daemon) on 127.0.0.1:$MLOPS_UI_PORT
#                                for workspace.yaml, with the caller's DAGSTER_HOME/MLOPS_* env
#                                (through scripts/dagster-dev.sh)
#   scripts/services.sh ui-url   print the URL of the running UI
#
# Everything binds to 127.0.0.1. The default ports lie below Linux's ephemeral range
# (32768-60999), so an outgoing connection of this machine cannot be holding them; a port that
# another server already listens on is skipped for the next free one (the env file records the
# ports in use). A port set through its variable is used as given. State and logs live in
# $MLOPS_SERVICES_DIR (default
# ${TMPDIR:-/tmp}/mlops-services-<uid>). Credentials are generated on the first start and kept
# only in $MLOPS_SERVICES_DIR/services.env (mode 600): never in the repository.
# Every wait is bounded (WAIT_SECONDS, default 60).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${MLOPS_SERVICES_DIR:-${TMPDIR:-/tmp}/mlops-services-$(id -u)}"
BIN="${MLOPS_VENV_BIN:-$REPO/.venv/bin}"
BUCKET="${MLOPS_S3_BUCKET:-mlops-suite}"
WAIT_SECONDS="${WAIT_SECONDS:-60}"
ENV_FILE="$STATE/services.env"

log() { echo "[services] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Run a command as the PostgreSQL server user: root may not run postgres.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$dir" ] && [ -x "$dir/initdb" ] || die "PostgreSQL server not installed (apt: postgresql)"
    echo "$dir"
}

# wait_for NAME COMMAND...: retry COMMAND once a second, at most WAIT_SECONDS times.
wait_for() {
    local name="$1"
    shift
    for _ in $(seq 1 "$WAIT_SECONDS"); do
        if "$@" >/dev/null 2>&1; then
            log "$name is up"
            return 0
        fi
        sleep 1
    done
    for file in "$STATE"/*.log; do  # the logs go with the state dir: show them before dying
        [ -f "$file" ] || continue
        log "--- last lines of $file"
        tail -n 25 "$file" >&2
    done
    die "$name did not come up within ${WAIT_SECONDS} tries (logs in $STATE/*.log)"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# choose_port VARIABLE DEFAULT [CHOSEN...]: the value of VARIABLE when set; else DEFAULT or,
# when another server listens there or it is one of CHOSEN, the next free port above it (at
# most 50 tried).
choose_port() {
    local variable="$1" port="$2"
    shift 2
    if [ -n "${!variable:-}" ]; then
        echo "${!variable}"
        return 0
    fi
    for _ in $(seq 1 50); do
        if ! port_open "$port" && [[ " $* " != *" $port "* ]]; then
            echo "$port"
            return 0
        fi
        log "port $port is taken; trying $((port + 1)) for $variable"
        port=$((port + 1))
    done
    die "no free port in the 50 tried for $variable: set $variable"
}

# claim_port NAME PORT VARIABLE: fail clearly when another server listens on PORT.
claim_port() {
    port_open "$2" && die "$1 cannot start: port $2 is taken by another server (set $3)"
    return 0
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# detach PIDFILE LOG COMMAND...: run COMMAND in the background as the leader of a new session
# and process group (so stop can end it with all its workers); its pid goes to PIDFILE.
detach() {
    local pidfile="$1" logfile="$2"
    shift 2
    setsid sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" >"$logfile" 2>&1 </dev/null &
    for _ in $(seq 1 50); do [ -s "$pidfile" ] && return 0; sleep 0.1; done
    die "could not start $1"
}

write_env_file() {
    [ -f "$ENV_FILE" ] && return 0
    local pg_port redis_port s3_port mlflow_port pg_password redis_password s3_key s3_secret
    pg_password="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    redis_password="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    s3_key="AKIA$(head -c 12 /dev/urandom | base64 | tr -dc 'A-Z0-9' | head -c 16)"
    s3_secret="$(head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    pg_port="$(choose_port MLOPS_PG_PORT 15432)"
    redis_port="$(choose_port MLOPS_REDIS_PORT 16379)"
    s3_port="$(choose_port MLOPS_S3_PORT 15000)"
    mlflow_port="$(choose_port MLOPS_MLFLOW_PORT 15001 "$s3_port")"
    (
        umask 077
        cat >"$ENV_FILE" <<EOF
# Written by scripts/services.sh: the production profile against the loopback servers.
export MLOPS_PROFILE=production
export MLOPS_PG_HOST=127.0.0.1
export MLOPS_PG_PORT=$pg_port
export MLOPS_PG_USER=mlops
export MLOPS_PG_PASSWORD=$pg_password
export MLOPS_PG_DB=dagster
export MLOPS_REDIS_HOST=127.0.0.1
export MLOPS_REDIS_PORT=$redis_port
export MLOPS_REDIS_PASSWORD=$redis_password
export MLOPS_S3_BUCKET=$BUCKET
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export MLOPS_S3_PORT=$s3_port
export AWS_ACCESS_KEY_ID=$s3_key
export AWS_SECRET_ACCESS_KEY=$s3_secret
export AWS_DEFAULT_REGION=us-east-1
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
export MLOPS_MLFLOW_PORT=$mlflow_port
EOF
    )
}

start_postgres() {
    local bin data="$STATE/postgres"
    bin="$(pg_bin)"
    if [ ! -f "$data/PG_VERSION" ]; then
        mkdir -p "$data" "$STATE/pgsock"
        printf '%s\n' "$MLOPS_PG_PASSWORD" >"$STATE/pg.pw"
        if [ "$(id -u)" -eq 0 ]; then chown postgres "$data" "$STATE/pgsock" "$STATE/pg.pw"; fi
        as_pg "$bin/initdb" -D "$data" -U "$MLOPS_PG_USER" --pwfile="$STATE/pg.pw" \
            --auth=scram-sha-256 -E UTF8 >"$STATE/initdb.log" 2>&1 ||
            die "initdb failed: $(tail -n 5 "$STATE/initdb.log")"
        rm -f "$STATE/pg.pw"
    fi
    if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "postgres already running"
    else
        claim_port postgres "$MLOPS_PG_PORT" MLOPS_PG_PORT
        touch "$STATE/postgres.log"
        if [ "$(id -u)" -eq 0 ]; then chown postgres "$STATE/postgres.log"; fi
        as_pg "$bin/pg_ctl" -D "$data" -l "$STATE/postgres.log" -w -t "$WAIT_SECONDS" \
            -o "-c listen_addresses=127.0.0.1 -p $MLOPS_PG_PORT -k $STATE/pgsock" start >/dev/null ||
            die "postgres did not start: $(tail -n 5 "$STATE/postgres.log")"
    fi
    wait_for postgres env PGPASSWORD="$MLOPS_PG_PASSWORD" psql -h 127.0.0.1 -p "$MLOPS_PG_PORT" \
        -U "$MLOPS_PG_USER" -d postgres -c 'select 1'
    for db in dagster mlflow; do
        PGPASSWORD="$MLOPS_PG_PASSWORD" psql -h 127.0.0.1 -p "$MLOPS_PG_PORT" -U "$MLOPS_PG_USER" \
            -d postgres -tAc "select 1 from pg_database where datname = '$db'" | grep -q 1 ||
            PGPASSWORD="$MLOPS_PG_PASSWORD" createdb -h 127.0.0.1 -p "$MLOPS_PG_PORT" \
                -U "$MLOPS_PG_USER" "$db"
    done
}

start_redis() {
    command -v redis-server >/dev/null || die "redis-server not installed (apt: redis-server)"
    mkdir -p "$STATE/redis"
    (
        umask 077
        cat >"$STATE/redis.conf" <<EOF
bind 127.0.0.1
port $MLOPS_REDIS_PORT
requirepass $MLOPS_REDIS_PASSWORD
dir $STATE/redis
pidfile $STATE/redis.pid
logfile $STATE/redis.log
daemonize yes
save ""
appendonly no
EOF
    )
    if running "$STATE/redis.pid"; then
        log "redis already running"
    else
        claim_port redis "$MLOPS_REDIS_PORT" MLOPS_REDIS_PORT
        redis-server "$STATE/redis.conf"
    fi
    wait_for redis env REDISCLI_AUTH="$MLOPS_REDIS_PASSWORD" redis-cli -h 127.0.0.1 \
        -p "$MLOPS_REDIS_PORT" ping
}

start_s3() {
    [ -x "$BIN/moto_server" ] || die "moto_server not in $BIN (pip: moto[server])"
    if running "$STATE/s3.pid"; then
        log "s3 (moto) already running"
    else
        claim_port s3 "$MLOPS_S3_PORT" MLOPS_S3_PORT
        detach "$STATE/s3.pid" "$STATE/s3.log" "$BIN/moto_server" -H 127.0.0.1 -p "$MLOPS_S3_PORT"
    fi
    wait_for s3 port_open "$MLOPS_S3_PORT"
    "$BIN/python" - "$BUCKET" <<'EOF'
import sys

import boto3

s3 = boto3.client("s3")
bucket = sys.argv[1]
if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
    s3.create_bucket(Bucket=bucket)
EOF
}

start_mlflow() {
    if running "$STATE/mlflow.pid"; then
        log "mlflow already running"
    else
        claim_port mlflow "$MLOPS_MLFLOW_PORT" MLOPS_MLFLOW_PORT
        # The backend URI carries the password: pass it in the environment, not on argv.
        MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://$MLOPS_PG_USER:$MLOPS_PG_PASSWORD@127.0.0.1:$MLOPS_PG_PORT/mlflow" \
            MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 \
            detach "$STATE/mlflow.pid" "$STATE/mlflow.log" \
            "$BIN/mlflow" server --host 127.0.0.1 --port "$MLOPS_MLFLOW_PORT" --workers 1 \
            --serve-artifacts --artifacts-destination "s3://$BUCKET/mlflow"
    fi
    wait_for mlflow curl -fsS --max-time 5 "http://127.0.0.1:$MLOPS_MLFLOW_PORT/health"
}

start_ui() {
    [ -n "${DAGSTER_HOME:-}" ] || die "set DAGSTER_HOME (the instance the UI shows)"
    mkdir -p "$STATE" "$DAGSTER_HOME"
    local port
    if running "$STATE/dagster-ui.pid"; then
        log "dagster UI already running"
        port="$(cat "$STATE/dagster-ui.port")"
    else
        port="$(choose_port MLOPS_UI_PORT 13000)"
        claim_port "dagster UI" "$port" MLOPS_UI_PORT
        echo "$port" >"$STATE/dagster-ui.port"
        # dagster-dev.sh restores SIGINT/SIGTERM, which a background start leaves ignored, so
        # stop-ui's SIGTERM ends it at once instead of after WAIT_SECONDS and a SIGKILL.
        (cd "$REPO" && detach "$STATE/dagster-ui.pid" "$STATE/dagster-ui.log" \
            bash "$REPO/scripts/dagster-dev.sh" 127.0.0.1 "$port")
    fi
    WAIT_SECONDS="${UI_WAIT_SECONDS:-180}" wait_for "dagster UI on port $port" \
        curl -fsS --max-time 5 "http://127.0.0.1:$port/server_info"
    log "dagster UI: $(ui_url)"
}

ui_url() {
    [ -f "$STATE/dagster-ui.port" ] || die "the dagster UI was not started (start-ui)"
    echo "http://127.0.0.1:$(cat "$STATE/dagster-ui.port")"
}

stop_pidfile() {
    local name="$1" file="$2"
    if running "$file"; then
        local pid
        pid="$(cat "$file")"
        # Started by detach: the pid leads a process group with the server's workers.
        kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 "$WAIT_SECONDS"); do
            kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
        log "$name stopped"
    fi
    rm -f "$file"
}

start() {
    mkdir -p "$STATE"
    chmod 755 "$STATE"
    write_env_file
    # shellcheck disable=SC1090
    source "$ENV_FILE"
    start_postgres
    start_redis
    start_s3
    start_mlflow
    log "all services up; env file: $ENV_FILE"
}

stop() {
    [ -d "$STATE" ] || return 0
    stop_pidfile "dagster UI" "$STATE/dagster-ui.pid"
    rm -f "$STATE/dagster-ui.port"
    stop_pidfile mlflow "$STATE/mlflow.pid"
    stop_pidfile s3 "$STATE/s3.pid"
    stop_pidfile redis "$STATE/redis.pid"
    if [ -f "$STATE/postgres/postmaster.pid" ]; then
        as_pg "$(pg_bin)/pg_ctl" -D "$STATE/postgres" -m fast -w -t "$WAIT_SECONDS" stop \
            >/dev/null && log "postgres stopped"
    fi
}

status() {
    for name in mlflow s3 redis dagster-ui; do
        if running "$STATE/$name.pid"; then echo "$name: running"; else echo "$name: stopped"; fi
    done
    [ -f "$ENV_FILE" ] || return 0
    # shellcheck disable=SC1090
    source "$ENV_FILE"
    if port_open "$MLOPS_PG_PORT"; then echo "postgres: running"; else echo "postgres: stopped"; fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "$ENV_FILE" ;;
    start-ui) start_ui ;;
    ui-url) ui_url ;;
    stop-ui) stop_pidfile "dagster UI" "$STATE/dagster-ui.pid"; rm -f "$STATE/dagster-ui.port" ;;
    *) echo "usage: $0 start|stop|status|env|start-ui|stop-ui|ui-url" >&2; exit 2 ;;
esac
