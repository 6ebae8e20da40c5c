"""The local services answer, and the fixtures over them create and clean up what they promise."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from tests.conftest import database_on, topics_on


def _major(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.info.server_version // 10000


def _database_exists(server_url: str, name: str) -> bool:
    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name]).fetchone()
    assert row is not None
    return bool(row[0])


def test_test_servers_include_postgresql_15_and_18() -> None:
    urls = [u for u in os.environ.get("SINK_TEST_DATABASE_URLS", "").split(",") if u]

    majors = {_major(url) for url in urls}

    assert {15, 18} <= majors, f"SINK_TEST_DATABASE_URLS servers are {sorted(majors)}"


def test_fresh_db_is_a_new_empty_database_on_the_primary_server(
    fresh_db: str, pg_server_url: str
) -> None:
    with psycopg.connect(fresh_db) as conn:
        row = conn.execute("SELECT current_database(), inet_server_port()").fetchone()
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()
    with psycopg.connect(pg_server_url) as conn:
        primary_port = conn.execute("SELECT inet_server_port()").fetchone()

    assert row is not None and primary_port is not None
    name, port = row
    assert name.startswith("t_") and len(name) == 34
    assert tables == (0,)
    assert port == primary_port[0]


def test_database_is_dropped_on_exit_even_while_a_connection_is_open(pg_server_url: str) -> None:
    with database_on(pg_server_url) as url:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        lingering = psycopg.connect(url)
        assert _database_exists(pg_server_url, str(name))

    try:
        assert not _database_exists(pg_server_url, str(name))
        assert _connection_is_dead(lingering)
    finally:
        lingering.close()


def _connection_is_dead(conn: psycopg.Connection[object]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_any_version_db_runs_on_the_server_its_id_names(
    any_version_db: str, request: pytest.FixtureRequest
) -> None:
    with psycopg.connect(any_version_db) as conn:
        name = conn.execute("SELECT current_database()").fetchone()

    assert f"pg{_major(any_version_db)}" == request.node.callspec.id
    assert name is not None and name[0].startswith("t_")


def test_messages_produced_to_each_partition_of_a_new_topic_come_back(
    new_topic: Callable[..., str], kafka_bootstrap: str
) -> None:
    topic = new_topic(partitions=3)
    sent = {(i % 3, f"k{i}".encode(), f"v{i}".encode()) for i in range(30)}
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    for partition, key, value in sent:
        producer.produce(topic, value=value, key=key, partition=partition)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: set[tuple[int, bytes, bytes]] = set()
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(received) < len(sent) and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.5):
                assert msg.error() is None, msg.error()
                received.add((msg.partition(), msg.key(), msg.value()))
    finally:
        consumer.close()

    assert received == sent


def test_topics_are_deleted_on_exit(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    with topics_on(admin) as create:
        topic = create(2)
        assert len(admin.list_topics(topic=topic, timeout=10).topics[topic].partitions) == 2

    deadline = time.monotonic() + 10
    while topic in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.1)
    assert topic not in admin.list_topics(timeout=10).topics
