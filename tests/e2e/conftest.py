"""Helpers for end-to-end tests: produce to the real broker, run the worker, read results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "samples"


def valid_samples() -> list[bytes]:
    return [line.encode() for line in (SAMPLES / "valid.jsonl").read_text().splitlines() if line]


def invalid_samples() -> list[dict[str, str]]:
    lines = (SAMPLES / "invalid.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def make_event(i: int, *, tenant: str = "bench", **overrides: Any) -> dict[str, Any]:
    event = {
        "event_id": str(uuid.uuid4()),
        "tenant_id": tenant,
        "asset_id": f"acct-{i % 997:06d}",
        "event_type": "task.succeeded" if i % 5 else "task.failed",
        "occurred_at": "2026-12-01T08:00:00.000Z",
        "recorded_at": "2026-12-01T08:00:00.040Z",
        "version": "1.0",
        "provider_id": f"provider-{i % 7}",
        "outcome": "success" if i % 5 else "failure",
        "latency_ms": i % 1000,
        "payload": {"i": i},
    }
    event.update(overrides)
    return event


def produce(bootstrap: str, topic: str, values: list[bytes | None],
            keys: list[bytes | None] | None = None,
            headers: list[Any] | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err.str())

    for i, value in enumerate(values):
        while True:
            try:
                producer.produce(topic, value=value, key=keys[i] if keys else None,
                                 headers=headers[i] if headers else None,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0
    assert not errors, errors


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    """Read ``expected`` messages from the beginning of ``topic`` (fails on timeout)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is None:
                    out.append(msg)
        # anything beyond the expected count is a defect too: look once more
        out.extend(m for m in consumer.consume(500, timeout=1.0) if m.error() is None)
    finally:
        consumer.close()
    return out


def committed_total(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in tps)


def row_count(url: str, sql: str = "SELECT count(*) FROM asset_events") -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(sql).fetchone()[0])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def worker_env(bootstrap: str, db_url: str, topic: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINK_")}
    env.update({
        "SINK_BOOTSTRAP_SERVERS": bootstrap,
        "SINK_DATABASE_URL": db_url,
        "SINK_TOPIC": topic,
        "SINK_GROUP_ID": f"g-{topic}",
        "SINK_DLQ_TOPIC": f"{topic}.dlq",
        "SINK_METRICS_PORT": "0",
        "SINK_BATCH_MAX_WAIT_MS": "200",
        "SINK_BACKOFF_MAX_S": "2",
    })
    env.update(extra)
    return env


class WorkerProcess:
    """``asset-sink run`` as a child process (for kill -9, SIGTERM and multi-worker tests)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sink.cli", "run"], env=env, stdout=self._log,
            stderr=subprocess.STDOUT, cwd=ROOT,
        )

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 40.0) -> tuple[int, float]:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - start

    def log_lines(self) -> list[dict[str, Any]]:
        self._log.flush()
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def spawn(env: dict[str, str]) -> WorkerProcess:
        w = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w

    yield spawn
    for w in started:
        w.close()


class ThreadWorker:
    """The worker in this process (metrics readable from the registry)."""

    def __init__(self, env: dict[str, str]) -> None:
        from sink.config import Settings
        from sink.consumer import Worker

        self.worker = Worker(Settings.from_sources(None, env))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self, timeout: float = 40.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def thread_worker() -> Iterator[Callable[[dict[str, str]], ThreadWorker]]:
    started: list[ThreadWorker] = []

    def start(env: dict[str, str]) -> ThreadWorker:
        w = ThreadWorker(env)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.thread.is_alive():
            w.worker.stop()
            w.thread.join(40)


class PrivatePostgres:
    """A PostgreSQL 15 server of this test's own (scripts/stack.sh in a private directory),
    so the test can stop and restart it without disturbing the shared one."""

    def __init__(self, stack_dir: Path, port: int, kafka_bootstrap: str) -> None:
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._env = {k: v for k, v in os.environ.items() if k != "SINK_DATABASE_URL"}
        self._env.update({"SINK_STACK_DIR": str(stack_dir), "SINK_STACK_PG15_PORT": str(port),
                          "SINK_BOOTSTRAP_SERVERS": kafka_bootstrap})

    def _stack(self, *args: str) -> None:
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), *args], env=self._env, check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self._stack("up", "--pg", "debian", "--no-kafka")

    def stop(self) -> None:
        self._stack("down", "pg15")

    def remove(self) -> None:
        self._stack("down", "--purge", "pg15")


@pytest.fixture
def private_pg(tmp_path: Path, kafka_bootstrap: str) -> Iterator[PrivatePostgres]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg = PrivatePostgres(tmp_path / "stack", port, kafka_bootstrap)
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()


class PrivateKafka:
    """A Kafka broker of this test's own (scripts/stack.sh in a private directory, on free
    ports), so the test can stop and restart it without disturbing the shared one."""

    def __init__(self, stack_dir: Path, port: int, controller_port: int) -> None:
        self.bootstrap = f"127.0.0.1:{port}"
        self._env = {k: v for k, v in os.environ.items()
                     if k not in ("SINK_BOOTSTRAP_SERVERS", "SINK_DATABASE_URL")}
        self._env.update({"SINK_STACK_DIR": str(stack_dir), "SINK_STACK_KAFKA_PORT": str(port),
                          "SINK_STACK_CONTROLLER_PORT": str(controller_port)})

    def _stack(self, *args: str) -> None:
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), *args], env=self._env, check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self._stack("up", "--pg", "none")

    def stop(self) -> None:
        self._stack("down", "kafka")

    def remove(self) -> None:
        self._stack("down", "--purge", "kafka")

    def create_topic(self, partitions: int) -> str:
        from confluent_kafka.admin import AdminClient, NewTopic

        name = f"t-{uuid.uuid4().hex}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(name, partitions, 1), NewTopic(f"{name}.dlq", 1, 1)]
        )
        for future in futures.values():
            future.result(30)
        return name


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(tmp_path / "kafka-stack", _free_port(), _free_port())
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.remove()
