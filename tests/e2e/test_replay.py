"""``asset-sink replay`` end to end: the group's offsets move on the real broker, and the
worker re-reads the range as duplicates."""

from __future__ import annotations

import argparse
import time

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from sink._ops import kafka_target
from sink.errors import FatalError
from sink.replay import GroupOffsets, PartitionPlan
from tests.cli_support import run_cli as _cli

from .conftest import committed_total, make_event, produce, row_count, wait_for, worker_env

N = 200


def _replay(capsys, bootstrap: str, topic: str, *args: str) -> tuple[int, str, str]:
    return _cli(
        capsys,
        "replay",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topic,
        "--group-id",
        f"g-{topic}",
        *args,
    )


def _committed(bootstrap: str, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}"})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return [tp.offset for tp in tps]


def _wait_group_empty(bootstrap: str, group: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def empty() -> bool:
        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
        return not desc.members

    wait_for(empty, 30, f"group {group} to have no member")


def _batch_total(worker, field: str) -> int:
    return sum(line.get(field, 0) for line in worker.log_lines() if line.get("action") == "batch")


def test_replay_to_earliest_rereads_the_stored_range_as_duplicates_and_stores_nothing_twice(
    kafka_bootstrap, new_topic, migrated_db, spawn_worker, capsys
):
    topic = new_topic(partitions=2)
    new_topic(name=f"{topic}.dlq")
    produce(kafka_bootstrap, topic, [orjson.dumps(make_event(i)) for i in range(N)])
    env = worker_env(kafka_bootstrap, migrated_db, topic)
    first = spawn_worker(env)
    wait_for(
        lambda: committed_total(kafka_bootstrap, f"g-{topic}", topic, 2) == N,
        60,
        "every offset committed",
    )
    assert first.terminate()[0] == 0
    _wait_group_empty(kafka_bootstrap, f"g-{topic}")

    code, out, err = _replay(capsys, kafka_bootstrap, topic, "--to-earliest", "--execute")

    assert code == 0, err
    assert f"total: {N} messages to replay" in out
    assert _committed(kafka_bootstrap, topic, 2) == [0, 0]
    second = spawn_worker(env)
    wait_for(
        lambda: committed_total(kafka_bootstrap, f"g-{topic}", topic, 2) == N,
        60,
        "the replayed range committed again",
    )
    assert second.terminate()[0] == 0
    assert _batch_total(second, "duplicates") == N
    assert _batch_total(second, "inserted") == 0
    assert row_count(migrated_db) == N


def test_replay_is_refused_while_the_group_has_an_active_member(kafka_bootstrap, new_topic, capsys):
    topic = new_topic(partitions=1)
    produce(kafka_bootstrap, topic, [b"x"] * 10)
    assert _replay(capsys, kafka_bootstrap, topic, "--to-latest", "--execute")[0] == 0
    member = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{topic}",
            "enable.auto.commit": False,
        }
    )
    member.subscribe([topic])
    try:

        def assigned() -> bool:
            member.poll(0.2)
            return bool(member.assignment())

        wait_for(assigned, 30, "the member's assignment")

        code, out, err = _replay(capsys, kafka_bootstrap, topic, "--to-earliest", "--execute")

        assert code == 2
        assert "1 active member(s)" in err
        assert 'autoscaling.keda.sh/paused-replicas="0"' in err
        assert "kubectl scale deploy/" in err and "--replicas=0" in err
        assert _committed(kafka_bootstrap, topic, 1) == [10]
        # a dry run still shows the plan, and says --execute would be refused
        code, out, err = _replay(capsys, kafka_bootstrap, topic, "--to-earliest", "--dry-run")
        assert code == 0
        assert "total: 10 messages to replay" in out
        assert "--execute is refused" in err
        # a member joining between the check and the change: the broker refuses, and the
        # message is the same
        offsets = GroupOffsets(
            kafka_target(
                argparse.Namespace(
                    bootstrap_servers=kafka_bootstrap, topic=topic, group_id=f"g-{topic}"
                )
            ),
            topic=topic,
            group_id=f"g-{topic}",
        )
        with pytest.raises(FatalError, match="paused-replicas"):
            offsets.commit([PartitionPlan(0, 10, 0, 10, 0)])
        assert _committed(kafka_bootstrap, topic, 1) == [10]
    finally:
        member.close()


def test_dry_run_shows_the_plan_and_changes_no_offset(kafka_bootstrap, new_topic, capsys):
    topic = new_topic(partitions=2)
    produce(kafka_bootstrap, topic, [b"x"] * 40, keys=[str(i).encode() for i in range(40)])
    assert _replay(capsys, kafka_bootstrap, topic, "--to-latest", "--execute")[0] == 0
    before = _committed(kafka_bootstrap, topic, 2)
    assert sum(before) == 40

    code, out, _ = _replay(capsys, kafka_bootstrap, topic, "--to-earliest", "--dry-run")

    assert code == 0
    assert "dry run: nothing changed" in out
    assert "total: 40 messages to replay" in out
    assert _committed(kafka_bootstrap, topic, 2) == before


def _produce_at(bootstrap: str, topic: str, count: int, timestamp_ms: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(count):
        producer.produce(topic, value=b"%d" % i, timestamp=timestamp_ms)
    assert producer.flush(30) == 0


def test_replay_to_datetime_moves_to_the_first_message_at_or_after_the_instant(
    kafka_bootstrap, new_topic, capsys
):
    topic = new_topic(partitions=1)
    now_ms = int(time.time() * 1000)
    _produce_at(kafka_bootstrap, topic, 100, now_ms - 3 * 3600_000)  # three hours ago
    _produce_at(kafka_bootstrap, topic, 50, now_ms - 600_000)  # ten minutes ago
    assert _replay(capsys, kafka_bootstrap, topic, "--to-latest", "--execute")[0] == 0

    code, out, err = _replay(capsys, kafka_bootstrap, topic, "--to-datetime", "1h", "--execute")

    assert code == 0, err
    assert "total: 50 messages to replay" in out
    assert _committed(kafka_bootstrap, topic, 1) == [100]
    # an instant after the last message: the end (nothing to replay)
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000 + 3600))
    assert _replay(capsys, kafka_bootstrap, topic, "--to-datetime", future, "--execute")[0] == 0
    assert _committed(kafka_bootstrap, topic, 1) == [150]


def test_shift_by_moves_relative_to_the_committed_offset_clamped_to_the_watermarks(
    kafka_bootstrap, new_topic, capsys
):
    topic = new_topic(partitions=2)
    produce(kafka_bootstrap, topic, [b"x"] * 60, keys=[str(i).encode() for i in range(60)])
    assert _replay(capsys, kafka_bootstrap, topic, "--to-latest", "--execute")[0] == 0
    high = _committed(kafka_bootstrap, topic, 2)
    assert min(high) >= 5, high

    code, out, _ = _replay(capsys, kafka_bootstrap, topic, "--shift-by", "-5", "--execute")
    assert code == 0
    assert _committed(kafka_bootstrap, topic, 2) == [h - 5 for h in high]
    assert "total: 10 messages to replay" in out

    # beyond either end: clamped to the low and high watermarks
    assert _replay(capsys, kafka_bootstrap, topic, "--shift-by", "-1000", "--execute")[0] == 0
    assert _committed(kafka_bootstrap, topic, 2) == [0, 0]
    assert _replay(capsys, kafka_bootstrap, topic, "--shift-by", "1000", "--execute")[0] == 0
    assert _committed(kafka_bootstrap, topic, 2) == high


def test_partitions_option_moves_only_the_listed_partitions(kafka_bootstrap, new_topic, capsys):
    topic = new_topic(partitions=2)
    produce(kafka_bootstrap, topic, [b"x"] * 40, keys=[str(i).encode() for i in range(40)])
    assert _replay(capsys, kafka_bootstrap, topic, "--to-latest", "--execute")[0] == 0
    high = _committed(kafka_bootstrap, topic, 2)

    code, _, _ = _replay(
        capsys, kafka_bootstrap, topic, "--to-offset", "1", "--partitions", "1", "--execute"
    )

    assert code == 0
    assert _committed(kafka_bootstrap, topic, 2) == [high[0], 1]
    code, _, err = _replay(
        capsys, kafka_bootstrap, topic, "--to-earliest", "--partitions", "7", "--dry-run"
    )
    assert code == 2
    assert "no partition 7" in err
