"""Kafka helpers of the benchmark: fresh topics, producing a dataset, end and committed offsets."""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterable
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

_PRODUCER_CONFIG = {
    "linger.ms": 20,
    "batch.size": 1024 * 1024,
    "queue.buffering.max.kbytes": 256 * 1024,
    "acks": "all",
    "enable.idempotence": True,
}


class Kafka:
    """One broker (``bootstrap``): topic lifecycle and offset queries for the benchmark."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
        self._probe: Consumer | None = None

    def create_topic(self, name: str, partitions: int, *, timeout: float = 30.0) -> None:
        """Create ``name`` and block until its metadata lists every partition with a leader."""
        futures = self.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=timeout,
        )
        futures[name].result(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            meta = self.admin.list_topics(name, timeout=5).topics.get(name)
            if meta is not None and meta.error is None and len(meta.partitions) == partitions \
                    and all(p.leader >= 0 for p in meta.partitions.values()):
                return
            time.sleep(0.1)
        raise TimeoutError(f"topic {name} has no leader for every partition after {timeout}s")

    def delete_topics(self, names: Iterable[str]) -> None:
        """Delete topics, ignoring those that do not exist."""
        names = [n for n in names if n]
        if not names:
            return
        for future in self.admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result(30)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise

    def producer(self, **overrides: Any) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap, **_PRODUCER_CONFIG, **overrides})

    def produce_all(self, topic: str, messages: Iterable[tuple[bytes, bytes]],
                    count: int) -> tuple[array[int], array[int]]:
        """Produce ``count`` ``(key, value)`` messages; return each one's partition and offset.

        Blocks until every message is acknowledged (``acks=all``, idempotent producer, so the
        order within a partition is the order given). Raises ``RuntimeError`` if any delivery
        failed.
        """
        partitions = array("i", [-1]) * count
        offsets = array("q", [-1]) * count
        failures: list[str] = []

        def delivered(index: int) -> Any:
            def callback(err: KafkaError | None, msg: Any) -> None:
                if err is not None:
                    failures.append(err.str())
                    return
                partitions[index] = msg.partition()
                offsets[index] = msg.offset()
            return callback

        producer = self.producer()
        for i, (key, value) in enumerate(messages):
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=delivered(i))
                    break
                except BufferError:
                    producer.poll(0.05)
            if i % 10_000 == 0:
                producer.poll(0)
        remaining = producer.flush(120)
        if remaining or failures:
            raise RuntimeError(f"{remaining} messages not delivered; errors: {failures[:3]}")
        return partitions, offsets

    def end_offsets(self, topic: str) -> dict[int, int]:
        """High watermark of every partition of ``topic``."""
        probe = self._probe_consumer()
        meta = probe.list_topics(topic, timeout=10).topics[topic]
        return {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions}

    def committed(self, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Committed offset of ``group`` on each partition (-1 where nothing is committed)."""
        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(topic, p) for p in partitions])
        future = self.admin.list_consumer_group_offsets([request])[group]
        result = future.result(10)
        return {tp.partition: tp.offset for tp in result.topic_partitions}

    def lag(self, group: str, topic: str, ends: dict[int, int]) -> int:
        """Messages of ``topic`` up to ``ends`` not yet committed by ``group``."""
        done = self.committed(group, topic, ends)
        return sum(end - max(done.get(p, -1), 0) for p, end in ends.items())

    def delete_group(self, group: str) -> None:
        try:
            for future in self.admin.delete_consumer_groups([group], request_timeout=10).values():
                future.result(10)
        except KafkaException:
            pass  # best effort: an empty group expires on its own

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def _probe_consumer(self) -> Consumer:
        if self._probe is None:
            self._probe = Consumer({"bootstrap.servers": self.bootstrap,
                                    "group.id": "bench-probe", "enable.auto.commit": False})
        return self._probe
