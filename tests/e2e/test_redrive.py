"""``asset-sink dlq inspect`` and ``dlq redrive`` end to end: a rejected event is redriven
once its cause is fixed, is stored, and is never sent twice."""

from __future__ import annotations

import uuid

import orjson
import psycopg
from confluent_kafka import Consumer, TopicPartition

from tests.cli_support import run_cli as _cli

from .conftest import make_event, produce, read_all, row_count, wait_for, worker_env


def _dlq(capsys, bootstrap: str, topic: str, *args: str) -> tuple[int, str, str]:
    action, *rest = args
    return _cli(
        capsys,
        "dlq",
        action,
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topic,
        "--group-id",
        f"g-{topic}",
        "--dlq-topic",
        f"{topic}.dlq",
        *rest,
    )


def _high(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    finally:
        consumer.close()


def _headers(msg) -> dict[str, str]:
    return {k: (v or b"").decode() for k, v in (msg.headers() or [])}


def test_an_event_rejected_for_a_missing_task_is_stored_after_redrive_and_never_resent(
    kafka_bootstrap, new_topic, fresh_db, thread_worker, capsys
):
    from sink.migrate import apply_migrations

    apply_migrations(fresh_db, with_reference_fks=True)
    topic = new_topic(partitions=1)
    new_topic(name=f"{topic}.dlq")
    task_id = uuid.uuid4()
    orphan = make_event(1, task_id=str(task_id))
    good = [make_event(i) for i in range(2, 5)]
    values = [orjson.dumps(orphan), b"not json", *(orjson.dumps(e) for e in good)]
    headers = [[("trace", b"t-1")], None, None, None, None]
    produce(
        kafka_bootstrap, topic, values, keys=[b"acct-1", None, None, None, None], headers=headers
    )
    thread_worker(worker_env(kafka_bootstrap, fresh_db, topic))
    read_all(kafka_bootstrap, f"{topic}.dlq", 2, timeout=60)
    wait_for(lambda: row_count(fresh_db) == 3, 30, "the events without a missing task")

    code, out, _ = _dlq(capsys, kafka_bootstrap, topic, "inspect", "--json")
    assert code == 0
    lines = [orjson.loads(line) for line in out.splitlines()]
    summary, records = lines[0], lines[1:]
    assert summary["records"] == 2
    assert {r: v["records"] for r, v in summary["by_reason"].items()} == {
        "missing_reference": 1,
        "invalid_json": 1,
    }
    missing = next(r for r in records if r["reason"] == "missing_reference")
    assert missing["original"] == {
        "topic": topic,
        "partition": 0,
        "offset": 0,
        "timestamp": missing["original"]["timestamp"],
    }
    assert str(task_id) in missing["detail"]
    assert missing["value"] == orjson.dumps(orphan).decode()[:200]

    # a dry run sends nothing and records no progress
    main_high = _high(kafka_bootstrap, topic)
    code, out, _ = _dlq(
        capsys, kafka_bootstrap, topic, "redrive", "--reason", "missing_reference", "--dry-run"
    )
    assert code == 0
    assert "total: 1 records to re-publish" in out
    assert _high(kafka_bootstrap, topic) == main_high

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO task_orders (task_id, status) VALUES (%s, 'done')", (task_id,))
    code, out, err = _dlq(
        capsys, kafka_bootstrap, topic, "redrive", "--reason", "missing_reference", "--execute"
    )

    assert code == 0, err
    assert "total: 1 records re-published" in out
    assert "1 filtered" in out  # the invalid JSON stays where it is
    wait_for(lambda: row_count(fresh_db) == 4, 30, "the redriven event stored")
    assert (
        row_count(fresh_db, f"SELECT count(*) FROM asset_events WHERE task_id = '{task_id}'") == 1
    )
    redriven = read_all(kafka_bootstrap, topic, 6)[-1]
    assert redriven.key() == b"acct-1"
    assert redriven.value() == orjson.dumps(orphan)
    h = _headers(redriven)
    assert h["trace"] == "t-1"
    assert h["asset-sink.redriven-from"] == f"{topic}.dlq/0/{missing['dlq']['offset']}"
    assert not any(k.startswith("asset-sink.") and k != "asset-sink.redriven-from" for k in h)

    # the progress is recorded: a second redrive sends nothing
    high_after = _high(kafka_bootstrap, topic)
    code, out, _ = _dlq(
        capsys, kafka_bootstrap, topic, "redrive", "--reason", "missing_reference", "--execute"
    )
    assert code == 0
    assert "total: 0 records re-published" in out
    assert _high(kafka_bootstrap, topic) == high_after
    assert _high(kafka_bootstrap, f"{topic}.dlq") == 2  # stored, not rejected again


def test_a_redriven_record_that_fails_again_returns_marked_with_where_it_came_from(
    kafka_bootstrap, new_topic, migrated_db, thread_worker, capsys
):
    topic = new_topic(partitions=1)
    new_topic(name=f"{topic}.dlq")
    produce(kafka_bootstrap, topic, [b"not json"])
    thread_worker(worker_env(kafka_bootstrap, migrated_db, topic))
    read_all(kafka_bootstrap, f"{topic}.dlq", 1, timeout=60)

    code, out, err = _dlq(capsys, kafka_bootstrap, topic, "redrive", "--execute")
    assert code == 0, err
    assert "total: 1 records re-published" in out
    letters = read_all(kafka_bootstrap, f"{topic}.dlq", 2, timeout=60)

    assert len(letters) == 2
    again = _headers(letters[1])
    assert again["asset-sink.reason"] == "invalid_json"
    assert again["asset-sink.redriven-from"] == f"{topic}.dlq/0/0"
    assert again["asset-sink.original.offset"] == "1"  # the redriven copy's offset
    code, out, _ = _dlq(capsys, kafka_bootstrap, topic, "inspect")
    assert code == 0
    assert "2 records in 1 partitions (1 of them had been redriven before)" in out
    assert f"redriven from {topic}.dlq/0/0 before" in out
