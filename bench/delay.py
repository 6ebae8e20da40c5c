"""End-to-end delay at a steady rate: recorded_at (send time) → row visible.

The worker runs first (and has stored a warm-up message), then events are produced at a
steady rate with ``recorded_at`` = the moment each is handed to the producer. Two delays are
measured per event:

* ``visible`` — until the committed offset of the worker's group passed the event's offset,
  seen by polling every ``poll_s`` seconds. The worker commits offsets only after the
  database transaction committed, so this bounds the moment the row became visible from
  above (by at most the poll interval plus one offset-commit round trip). The headline
  p50/p99 are these.
* ``ingested`` — ``ingested_at - recorded_at`` from SQL. ``ingested_at`` defaults to now(),
  the *start* of the writing transaction, so this misses the write itself and is a lower
  bound.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import db
from bench.events import EventFactory, rfc3339
from bench.kafka import Kafka
from bench.procs import wait_until_committed
from bench.worker import sink_env, start_workers


@dataclass(frozen=True, slots=True)
class DelayRun:
    rate: float  # events per second asked for
    achieved_rate: float  # events per second produced
    seconds: float
    events: int
    visible_p50_s: float
    visible_p99_s: float
    visible_max_s: float
    ingested_p50_s: float
    ingested_p99_s: float
    peak_rss_bytes: int


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class _CommitWatcher(threading.Thread):
    """Polls a group's committed offsets; records when each partition's offset advanced."""

    def __init__(self, kafka: Kafka, group: str, topic: str, partitions: list[int],
                 poll_s: float) -> None:
        super().__init__(daemon=True)
        self.kafka, self.group, self.topic = kafka, group, topic
        self.partitions, self.poll_s = partitions, poll_s
        self.samples: list[tuple[float, dict[int, int]]] = []  # (time.time(), committed)
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                done = self.kafka.committed(self.group, self.topic, self.partitions)
            except Exception:
                done = None
            if done is not None:
                self.samples.append((time.time(), done))
            self.stop_event.wait(self.poll_s)

    def visible_at(self, partition: int, offset: int, not_before: int) -> tuple[float, int]:
        """First sample time at which ``offset`` of ``partition`` was committed, searching
        from sample index ``not_before`` (offsets only grow). Returns (time, index)."""
        for i in range(not_before, len(self.samples)):
            at, done = self.samples[i]
            if done.get(partition, -1) > offset:
                return at, i
        return float("nan"), len(self.samples)


def run_delay(kafka: Kafka, *, server_url: str, partitions: int, rate: float, seconds: float,
              log_dir: Path, seed: int, poll_s: float = 0.02, keep: bool = False,
              settings: Mapping[str, str] | None = None) -> DelayRun:
    """Measure the delay distribution of the sink at ``rate`` events/s for ``seconds``."""
    topic = f"bench-delay-{uuid.uuid4().hex[:10]}"
    dlq = topic + ".dlq"
    kafka.create_topic(topic, partitions)
    kafka.create_topic(dlq, 1)
    group = f"bench-delay-{uuid.uuid4().hex[:10]}"
    try:
        with db.fresh_database(server_url, "delay", keep=keep) as url:
            env = sink_env(bootstrap=kafka.bootstrap, database_url=url, topic=topic,
                           group=group, dlq_topic=dlq, settings=settings)
            started = time.monotonic()
            children = start_workers(1, env, log_dir, "delay")
            try:
                return _measure(kafka, url=url, topic=topic, group=group, children=children,
                                started=started, rate=rate, seconds=seconds, seed=seed,
                                poll_s=poll_s)
            finally:
                for child in children:
                    child.stop()
                kafka.delete_group(group)
    finally:
        if not keep:
            kafka.delete_topics([topic, dlq])


def _measure(kafka: Kafka, *, url: str, topic: str, group: str, children: list[Any],
             started: float, rate: float, seconds: float, seed: int,
             poll_s: float) -> DelayRun:
    factory = EventFactory(seed)
    producer = kafka.producer(**{"linger.ms": 1, "batch.size": 64 * 1024})
    # Warm-up: one event stored end to end proves the worker is assigned and writing.
    warm = factory.event(time.time())
    warm["recorded_at"] = warm["occurred_at"]
    producer.produce(topic, orjson.dumps(warm), key=warm["asset_id"].encode())
    producer.flush(30)
    wait_until_committed(kafka, group=group, topic=topic, ends=kafka.end_offsets(topic),
                         children=children, started=started, timeout=120, poll_s=0.1)
    count = int(rate * seconds)
    sent_at = array("d", [0.0]) * count
    parts = array("i", [-1]) * count
    offs = array("q", [-1]) * count

    def delivered(index: int) -> Any:
        def callback(err: Any, msg: Any) -> None:
            if err is None:
                parts[index] = msg.partition()
                offs[index] = msg.offset()
        return callback

    watcher = _CommitWatcher(kafka, group, topic, list(range(len(kafka.end_offsets(topic)))),
                             poll_s)
    watcher.start()
    begin = time.time()
    since = dt.datetime.fromtimestamp(begin - 0.002, dt.UTC)  # after the warm-up event
    for i in range(count):
        due = begin + i / rate
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        now = time.time()
        event = factory.event(now)
        event["recorded_at"] = rfc3339(now)
        sent_at[i] = now
        producer.produce(topic, orjson.dumps(event), key=event["asset_id"].encode(),
                         on_delivery=delivered(i))
        producer.poll(0)
    producer.flush(60)
    produced_for = time.time() - begin
    wait_until_committed(kafka, group=group, topic=topic, ends=kafka.end_offsets(topic),
                         children=children, started=started, timeout=300, poll_s=0.1)
    time.sleep(poll_s * 3)
    watcher.stop_event.set()
    watcher.join()
    visible: list[float] = []
    cursor: dict[int, int] = {}
    for i in sorted(range(count), key=lambda j: (parts[j], offs[j])):
        at, cursor[parts[i]] = watcher.visible_at(parts[i], offs[i], cursor.get(parts[i], 0))
        visible.append(at - sent_at[i])
    ingested = db.delays(url, since)
    for child in children:
        child.sample_rss()
    return DelayRun(
        rate=rate, achieved_rate=count / produced_for, seconds=seconds, events=count,
        visible_p50_s=percentile(visible, 50), visible_p99_s=percentile(visible, 99),
        visible_max_s=max(visible),
        ingested_p50_s=percentile(ingested, 50), ingested_p99_s=percentile(ingested, 99),
        peak_rss_bytes=max(c.peak_rss_bytes for c in children),
    )
