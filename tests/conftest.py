"""Fixtures for tests that need the real PostgreSQL and Kafka started by ``scripts/stack.sh``.

Environment (printed by ``scripts/stack.sh env``):

- ``SINK_DATABASE_URL``: superuser URL of the primary PostgreSQL server;
- ``SINK_TEST_DATABASE_URLS``: comma-separated superuser URLs of every server the version-sensitive
  tests run on (PostgreSQL 15 and 18);
- ``SINK_BOOTSTRAP_SERVERS``: the Kafka bootstrap servers.

A fixture whose variable is missing fails the test (it never skips): a suite that silently skips
its integration tests proves nothing. Databases and topics are named with a uuid per test, so
tests never see each other's data, and are dropped at teardown.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

STACK_HINT = 'run: scripts/stack.sh up && eval "$(scripts/stack.sh env)"'
TOPIC_READY_TIMEOUT = 30.0  # seconds
_TESTS_DIR = Path(__file__).resolve().parent
_MARKED_DIRS = {"integration": "integration", "e2e": "e2e"}  # tests/<dir> -> marker


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks tests under tests/integration and tests/e2e with the marker of their directory."""
    for item in items:
        try:
            first = item.path.resolve().relative_to(_TESTS_DIR).parts[0]
        except (ValueError, IndexError):
            continue
        marker = _MARKED_DIRS.get(first)
        if marker is not None:
            item.add_marker(marker)


def _required_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(f"{name} is not set; {STACK_HINT}", pytrace=False)
    return value


def _with_database(url: str, dbname: str) -> str:
    """``url`` with its database (the URL path) replaced by ``dbname``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def _test_server_urls() -> list[str]:
    raw = os.environ.get("SINK_TEST_DATABASE_URLS", "")
    return [url.strip() for url in raw.split(",") if url.strip()]


_server_ids: dict[str, str] = {}


def _server_id(url: str) -> str:
    """``pgNN`` from the server's major version; ``unreachable`` when it does not answer
    (the test then fails in the fixture with the connection error)."""
    if url not in _server_ids:
        try:
            with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
                _server_ids[url] = f"pg{conn.info.server_version // 10000}"
        except psycopg.Error:
            _server_ids[url] = "unreachable"
    return _server_ids[url]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrizes ``any_version_db`` over SINK_TEST_DATABASE_URLS, ids from server_version."""
    if "any_version_db" not in metafunc.fixturenames:
        return
    urls = _test_server_urls()
    if not urls:
        # One case whose fixture fails with the hint, rather than a silently empty parametrization.
        metafunc.parametrize("any_version_db", [""], ids=["no-servers"], indirect=True)
        return
    metafunc.parametrize(
        "any_version_db", urls, ids=[_server_id(url) for url in urls], indirect=True
    )


@contextmanager
def database_on(server_url: str) -> Iterator[str]:
    """Creates ``t_<uuid hex>`` on ``server_url`` and yields its URL; on exit drops it
    WITH (FORCE), so connections left open by the code under test do not keep it alive."""
    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """Superuser URL of the primary PostgreSQL server (SINK_DATABASE_URL)."""
    return _required_env("SINK_DATABASE_URL")


@pytest.fixture
def fresh_db(pg_server_url: str) -> Iterator[str]:
    """URL of a new, empty database on the primary server, dropped after the test."""
    with database_on(pg_server_url) as url:
        yield url


@pytest.fixture
def any_version_db(request: pytest.FixtureRequest) -> Iterator[str]:
    """Like ``fresh_db``, once per server in SINK_TEST_DATABASE_URLS (ids ``pg15``, ``pg18``)."""
    server_url: str = request.param
    if not server_url:
        _required_env("SINK_TEST_DATABASE_URLS")
    with database_on(server_url) as url:
        yield url


@pytest.fixture
def migrated_db(fresh_db: str) -> str:
    """``fresh_db`` with every migration applied by ``sink.migrate.apply_migrations``."""
    from sink.migrate import apply_migrations

    apply_migrations(fresh_db)
    return fresh_db


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Kafka bootstrap servers (SINK_BOOTSTRAP_SERVERS)."""
    return _required_env("SINK_BOOTSTRAP_SERVERS")


@pytest.fixture(scope="session")
def _kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


def _wait_for_topic(admin: AdminClient, topic: str, partitions: int) -> None:
    """Blocks until every partition of ``topic`` has a leader, or fails the test."""
    deadline = time.monotonic() + TOPIC_READY_TIMEOUT
    while True:
        metadata = admin.list_topics(topic=topic, timeout=5)
        found = metadata.topics.get(topic)
        if (
            found is not None
            and found.error is None
            and len(found.partitions) == partitions
            and all(p.leader >= 0 and p.error is None for p in found.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"topic {topic} not ready after {TOPIC_READY_TIMEOUT}s", pytrace=False)
        time.sleep(0.1)


@contextmanager
def topics_on(admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Yields a factory ``create(partitions=1, *, config=None, name=None) -> str`` that creates
    a topic (replication factor 1, optional topic ``config``), named ``name`` or else
    ``t-<uuid hex>``, and returns its name once every partition has a leader; on exit deletes
    every topic it created."""
    created: list[str] = []

    def create(
        partitions: int = 1, *, config: Mapping[str, str] | None = None, name: str | None = None
    ) -> str:
        name = name or f"t-{uuid.uuid4().hex}"
        topic = NewTopic(
            name, num_partitions=partitions, replication_factor=1, config=dict(config or {})
        )
        futures = admin.create_topics([topic], operation_timeout=TOPIC_READY_TIMEOUT)
        futures[name].result(timeout=TOPIC_READY_TIMEOUT)
        created.append(name)
        _wait_for_topic(admin, name, partitions)
        return name

    try:
        yield create
    finally:
        if created:
            futures = admin.delete_topics(created, operation_timeout=TOPIC_READY_TIMEOUT)
            for future in futures.values():
                try:
                    future.result(timeout=TOPIC_READY_TIMEOUT)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                        raise


@pytest.fixture
def new_topic(_kafka_admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Factory ``new_topic(partitions=1, *, config=None, name=None) -> str`` (see
    ``topics_on``); the topics are deleted after the test."""
    with topics_on(_kafka_admin) as create:
        yield create
