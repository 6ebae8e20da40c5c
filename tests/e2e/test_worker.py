"""The worker end to end, on the real broker and database from scripts/stack.sh."""

from __future__ import annotations

import collections
import socket
import time
import urllib.error
import urllib.request
import uuid

import orjson
import psycopg
import pytest

from sink import metrics

from .conftest import (
    committed_total,
    invalid_samples,
    make_event,
    produce,
    read_all,
    row_count,
    valid_samples,
    wait_for,
    worker_env,
)

REASON_OF_SAMPLE = {
    "not JSON at all": "invalid_json",
    "JSON but not an object": "not_an_object",
    "version of another schema": "unsupported_version",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def _samples(text: str, prefix: str) -> list[float]:
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(prefix)]


def _headers(msg) -> dict[str, str]:
    return {k: (v or b"").decode() for k, v in (msg.headers() or [])}


def _writer_login(db_url: str) -> str:
    """A login role that holds only asset_sink_writer, and its URL."""
    name = f"w_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE asset_sink_writer")
    return db_url.replace("postgresql://postgres@", f"postgresql://{name}@")


def test_mixed_stream_stores_each_valid_event_once_and_dead_letters_the_rest(
    kafka_bootstrap, new_topic, migrated_db, thread_worker
):
    topic = new_topic(partitions=3)
    new_topic(name=f"{topic}.dlq")
    valid = valid_samples()
    invalid = invalid_samples()
    nul_event = make_event(1, error_message="bad\u0000byte")
    too_large = orjson.dumps(make_event(2, payload={"blob": "x" * 5000}))
    headers_in = [("trace", b"abc")]
    # first wave: everything but the redeliveries
    first = [*valid, *(s["message"].encode() for s in invalid), None,
             orjson.dumps(nul_event), too_large]
    produce(kafka_bootstrap, topic, first, headers=[headers_in] * len(first))
    env = worker_env(kafka_bootstrap, _writer_login(migrated_db), topic,
                     SINK_MAX_MESSAGE_BYTES="4096")
    written_before = metrics.EVENTS_WRITTEN.labels(result="duplicate")._value.get()
    worker = thread_worker(env)
    wait_for(lambda: row_count(migrated_db) == len(valid), 60, "the valid samples stored")
    # second wave: an identical redelivery and a conflicting reuse of an event_id
    original = orjson.loads(valid[1])
    conflicting = orjson.dumps({**original, "asset_id": "someone-else"})
    produce(kafka_bootstrap, topic, [valid[0], valid[1], conflicting])
    expected_letters = len(invalid) + 3  # + nul, too_large, conflicting
    letters = read_all(kafka_bootstrap, f"{topic}.dlq", expected_letters, timeout=60)
    total = len(first) + 3
    wait_for(lambda: committed_total(kafka_bootstrap, f"g-{topic}", topic, 3) == total, 30,
             "every offset committed")
    worker.stop()

    assert row_count(migrated_db) == len(valid)
    assert row_count(migrated_db, "SELECT count(DISTINCT event_id) FROM asset_events") == len(
        valid)
    assert metrics.EVENTS_WRITTEN.labels(result="duplicate")._value.get() - written_before == 2
    reasons = collections.Counter(_headers(m)["asset-sink.reason"] for m in letters)
    expected = collections.Counter(REASON_OF_SAMPLE.get(s["why"], "schema") for s in invalid)
    expected.update(["nul_character", "too_large", "conflicting_duplicate"])
    assert reasons == expected
    by_reason = {_headers(m)["asset-sink.reason"]: m for m in letters}
    conflict = by_reason["conflicting_duplicate"]
    assert conflict.value() == conflicting
    h = _headers(conflict)
    assert h["asset-sink.original.topic"] == topic
    assert h["asset-sink.field"] == "event_id"
    assert h["asset-sink.sink.version"]
    schema_letter = next(m for m in letters if b"http_status" in m.value() and b"700" in m.value())
    sh = _headers(schema_letter)
    assert "http_status" in sh["asset-sink.detail"]
    assert sh["trace"] == "abc"  # original headers kept
    assert int(sh["asset-sink.original.offset"]) >= 0
    # Kafka coordinates make every row traceable to its message
    with psycopg.connect(migrated_db) as conn:
        coords = conn.execute(
            "SELECT count(*) FROM asset_events WHERE kafka_topic = %s "
            "AND kafka_partition IS NOT NULL AND kafka_offset IS NOT NULL", (topic,)
        ).fetchone()[0]
    assert coords == len(valid)


def test_a_row_postgresql_refuses_is_isolated_and_the_rest_of_the_batch_lands(
    kafka_bootstrap, new_topic, migrated_db, thread_worker
):
    topic = new_topic(partitions=1)
    new_topic(name=f"{topic}.dlq")
    good = [make_event(i) for i in range(50)]
    # a rule the database holds beyond the contract (added by a DBA, say): the row is valid
    # per the schema, and PostgreSQL refuses it
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE asset_events ADD CONSTRAINT no_quarantined_assets "
                     "CHECK (asset_id <> 'quarantined')")
    bad = make_event(99, asset_id="quarantined")
    values = [orjson.dumps(e) for e in good[:25]] + [orjson.dumps(bad)] + [
        orjson.dumps(e) for e in good[25:]]
    produce(kafka_bootstrap, topic, values)
    worker = thread_worker(worker_env(kafka_bootstrap, migrated_db, topic))
    letters = read_all(kafka_bootstrap, f"{topic}.dlq", 1, timeout=60)
    wait_for(lambda: row_count(migrated_db) == 50, 30, "the 50 good events")
    worker.stop()
    assert len(letters) == 1
    h = _headers(letters[0])
    assert h["asset-sink.reason"] == "db_rejected"
    assert "SQLSTATE 23514" in h["asset-sink.detail"]  # check_violation
    assert "no_quarantined_assets" in h["asset-sink.detail"]
    assert letters[0].value() == orjson.dumps(bad)


def test_events_for_a_missing_task_go_to_the_dead_letter_topic_when_reference_fks_are_on(
    kafka_bootstrap, new_topic, fresh_db, thread_worker
):
    from sink.migrate import apply_migrations

    apply_migrations(fresh_db, with_reference_fks=True)
    known = uuid.uuid4()
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO task_orders (task_id) VALUES (%s)", (known,))
    topic = new_topic(partitions=1)
    new_topic(name=f"{topic}.dlq")
    ok = make_event(1, task_id=str(known))
    orphan = make_event(2, task_id=str(uuid.uuid4()))
    produce(kafka_bootstrap, topic, [orjson.dumps(ok), orjson.dumps(orphan)])
    worker = thread_worker(worker_env(kafka_bootstrap, fresh_db, topic))
    letters = read_all(kafka_bootstrap, f"{topic}.dlq", 1, timeout=60)
    wait_for(lambda: row_count(fresh_db) == 1, 30, "the event with a known task")
    worker.stop()
    assert [_headers(m)["asset-sink.reason"] for m in letters] == ["missing_reference"]
    assert orphan["task_id"] in _headers(letters[0])["asset-sink.detail"]


def test_metrics_and_health_endpoints_report_the_worker_state(
    kafka_bootstrap, new_topic, migrated_db, spawn_worker
):
    topic = new_topic(partitions=2)
    new_topic(name=f"{topic}.dlq")
    produce(kafka_bootstrap, topic, [orjson.dumps(make_event(i)) for i in range(100)]
            + [b"not json"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = spawn_worker(worker_env(kafka_bootstrap, migrated_db, topic,
                                SINK_METRICS_PORT=str(port)))
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    wait_for(lambda: get("/readyz")[0] == 200, 60, "/readyz to turn ready")
    assert get("/healthz")[0] == 200
    wait_for(lambda: row_count(migrated_db) == 100, 60, "the events stored")

    def sample(text: str, name: str, **labels: str) -> float:
        for line in text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return -1.0

    def lag_is_zero() -> bool:
        text = get("/metrics")[1]
        return all(sample(text, "asset_sink_consumer_lag{", partition=str(p)) == 0 for p in (0, 1))

    wait_for(lag_is_zero, 30, "consumer lag to reach 0 after the commit")
    text = get("/metrics")[1]
    assert sample(text, "asset_sink_messages_consumed_total", topic=topic) == 101
    assert sample(text, "asset_sink_events_written_total", result="inserted") == 100
    assert sample(text, "asset_sink_events_rejected_total", reason="invalid_json") == 1
    assert sample(text, "asset_sink_dlq_messages_total") == 1
    assert sample(text, "asset_sink_ingest_delay_seconds_count") == 100
    assert sample(text, "asset_sink_batch_duration_seconds_count", stage="write") >= 1
    assert sample(text, "asset_sink_last_commit_timestamp_seconds") > 0
    assert sample(text, "asset_sink_consumer_lag_seconds", partition="0") == 0
    assert w.terminate()[0] == 0


def test_kill_9_mid_stream_then_restart_loses_nothing_and_stores_nothing_twice(
    kafka_bootstrap, new_topic, migrated_db, spawn_worker
):
    topic = new_topic(partitions=3)
    new_topic(name=f"{topic}.dlq")
    n = 30_000
    produce(kafka_bootstrap, topic, [orjson.dumps(make_event(i)) for i in range(n)])
    # a killed member holds its partitions until its session times out: keep that short
    env = worker_env(kafka_bootstrap, migrated_db, topic, SINK_BATCH_MAX_EVENTS="1000",
                     SINK_KAFKA_SESSION_TIMEOUT_MS="6000")
    first = spawn_worker(env)
    wait_for(lambda: row_count(migrated_db) >= 3000, 60, "the first batches")
    first.kill9()
    stored_at_kill = row_count(migrated_db)
    assert stored_at_kill < n, "the worker finished before it could be killed mid-stream"
    second = spawn_worker(env)
    wait_for(lambda: committed_total(kafka_bootstrap, f"g-{topic}", topic, 3) == n, 120,
             "every offset committed after the restart")
    assert second.terminate()[0] == 0
    assert row_count(migrated_db) == n
    assert row_count(migrated_db, "SELECT count(*) FROM asset_event_ids") == n
    redelivered = sum(line.get("duplicates", 0) for line in second.log_lines()
                      if line.get("action") == "batch")
    assert redelivered >= 0  # how many depends on where the kill fell; what counts is n rows


def test_two_workers_in_one_group_store_each_event_once(
    kafka_bootstrap, new_topic, migrated_db, spawn_worker
):
    topic = new_topic(partitions=4)
    new_topic(name=f"{topic}.dlq")
    n = 20_000
    env = worker_env(kafka_bootstrap, migrated_db, topic, SINK_BATCH_MAX_EVENTS="500")
    a = spawn_worker(env)
    b = spawn_worker(env)

    def assigned(w) -> set[tuple[str, int]]:
        owned: set[tuple[str, int]] = set()
        for line in w.log_lines():
            if line.get("action") == "assign":
                owned |= {tuple(tp) for tp in line["partitions"]}
            elif line.get("action") in ("revoke", "lost"):
                owned -= {tuple(tp) for tp in line["partitions"]}
        return owned

    wait_for(lambda: len(assigned(a)) + len(assigned(b)) == 4 and assigned(a) and assigned(b),
             60, "the four partitions shared by both workers")
    assert not assigned(a) & assigned(b)
    produce(kafka_bootstrap, topic, [orjson.dumps(make_event(i)) for i in range(n)])
    wait_for(lambda: committed_total(kafka_bootstrap, f"g-{topic}", topic, 4) == n, 120,
             "every offset committed")
    assert row_count(migrated_db) == n
    assert row_count(migrated_db, "SELECT count(DISTINCT event_id) FROM asset_events") == n
    inserted = {}
    for name, w in (("a", a), ("b", b)):
        inserted[name] = sum(line.get("inserted", 0) for line in w.log_lines()
                             if line.get("action") == "batch")
        assert w.terminate()[0] == 0
    assert inserted["a"] > 0 and inserted["b"] > 0, inserted
    assert inserted["a"] + inserted["b"] == n


def test_sigterm_drains_commits_and_exits_within_the_bound(
    kafka_bootstrap, new_topic, migrated_db, spawn_worker
):
    topic = new_topic(partitions=2)
    new_topic(name=f"{topic}.dlq")
    env = worker_env(kafka_bootstrap, migrated_db, topic, SINK_BATCH_MAX_WAIT_MS="5000",
                     SINK_DRAIN_TIMEOUT_S="10")
    w = spawn_worker(env)
    wait_for(lambda: any(line.get("action") == "assign" for line in w.log_lines()), 60,
             "partitions assigned")
    produce(kafka_bootstrap, topic, [orjson.dumps(make_event(i)) for i in range(500)])
    # the batch stays open for 5 s: SIGTERM within that time must flush it, not drop it
    time.sleep(1.5)
    assert row_count(migrated_db) == 0, "the batch closed before SIGTERM; lengthen its wait"
    code, seconds = w.terminate(timeout=40)
    assert code == 0
    assert seconds < 10
    assert row_count(migrated_db) == 500
    assert committed_total(kafka_bootstrap, f"g-{topic}", topic, 2) == 500
    assert any(line.get("action") == "drain" and line.get("drained") for line in w.log_lines())


@pytest.mark.parametrize("stop_for_s", [6])
def test_postgresql_stopped_and_restarted_under_load_recovers_with_nothing_lost(
    kafka_bootstrap, new_topic, private_pg, spawn_worker, stop_for_s
):
    from sink.migrate import apply_migrations

    url = private_pg.url
    apply_migrations(url)
    topic = new_topic(partitions=2)
    new_topic(name=f"{topic}.dlq")
    n = 20_000
    port = _free_port()
    env = worker_env(kafka_bootstrap, url, topic, SINK_BATCH_MAX_EVENTS="500",
                     SINK_METRICS_PORT=str(port))
    w = spawn_worker(env)
    produce(kafka_bootstrap, topic, [orjson.dumps(make_event(i)) for i in range(n // 2)])
    wait_for(lambda: row_count(url) > 0, 60, "some events stored")
    private_pg.stop()
    produce(kafka_bootstrap, topic, [orjson.dumps(make_event(i)) for i in range(n // 2, n)])
    # during the outage: not ready, and the lag gauge follows the broker's high watermarks
    # even though the partitions are paused
    wait_for(lambda: _get(port, "/readyz")[0] == 503, 15, "/readyz to report the outage")
    wait_for(lambda: sum(_samples(_get(port, "/metrics")[1], "asset_sink_consumer_lag{"))
             >= n // 2, 20, "the lag gauge to count the backlog")
    time.sleep(stop_for_s)
    assert w.proc.poll() is None, "the worker must survive the outage"
    private_pg.start()
    wait_for(lambda: committed_total(kafka_bootstrap, f"g-{topic}", topic, 2) == n, 120,
             "every offset committed after PostgreSQL came back")
    assert row_count(url) == n
    assert row_count(url, "SELECT count(DISTINCT event_id) FROM asset_events") == n
    assert any(line.get("action") == "backoff" for line in w.log_lines())
    assert w.terminate()[0] == 0


def test_offsets_wait_for_the_dead_letter_topic_and_nothing_is_lost_when_it_recovers(
    kafka_bootstrap, new_topic, migrated_db, thread_worker
):
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
    )

    topic = new_topic(partitions=1)
    # a dead-letter topic that refuses every record: its size limit is below any record
    new_topic(name=f"{topic}.dlq", config={"max.message.bytes": "64"})
    good = [orjson.dumps(make_event(i)) for i in range(20)]
    produce(kafka_bootstrap, topic, [*good[:10], b"not json", *good[10:]])
    worker = thread_worker(worker_env(kafka_bootstrap, migrated_db, topic))
    wait_for(lambda: row_count(migrated_db) == 20, 60, "the valid events stored")
    time.sleep(2)  # several retries of the dead-letter publish
    assert committed_total(kafka_bootstrap, f"g-{topic}", topic, 1) == 0
    assert worker.worker.health.ready()[0] is True  # PostgreSQL is fine; only the DLQ failed
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    fix = ConfigResource("topic", f"{topic}.dlq", incremental_configs=[
        ConfigEntry("max.message.bytes", "1048576",
                    incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([fix]).values():
        future.result(30)
    letters = read_all(kafka_bootstrap, f"{topic}.dlq", 1, timeout=60)
    wait_for(lambda: committed_total(kafka_bootstrap, f"g-{topic}", topic, 1) == 21, 60,
             "the offsets committed once the dead letter was acknowledged")
    worker.stop()
    assert [_headers(m)["asset-sink.reason"] for m in letters] == ["invalid_json"]
    assert row_count(migrated_db) == 20


def test_a_broker_restart_under_load_is_survived_with_nothing_lost(
    private_kafka, fresh_db, spawn_worker
):
    from sink.migrate import apply_migrations

    apply_migrations(fresh_db)
    bootstrap = private_kafka.bootstrap
    topic = private_kafka.create_topic(partitions=2)
    n = 10_000
    env = worker_env(bootstrap, fresh_db, topic, SINK_BATCH_MAX_EVENTS="500")
    w = spawn_worker(env)
    produce(bootstrap, topic, [orjson.dumps(make_event(i)) for i in range(n // 2)])
    wait_for(lambda: row_count(fresh_db) == n // 2, 60, "the first half stored")
    private_kafka.stop()
    time.sleep(3)
    assert w.proc.poll() is None, "the worker must survive the broker's absence"
    private_kafka.start()
    produce(bootstrap, topic, [orjson.dumps(make_event(i)) for i in range(n // 2, n)])
    wait_for(lambda: committed_total(bootstrap, f"g-{topic}", topic, 2) == n, 120,
             "every offset committed after the broker came back")
    assert row_count(fresh_db) == n
    assert row_count(fresh_db, "SELECT count(DISTINCT event_id) FROM asset_events") == n
    assert w.terminate()[0] == 0
