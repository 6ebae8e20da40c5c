"""The worker: consume ``asset-events``, store each valid event once, dead-letter the rest.

The data flow of one batch is in :meth:`Worker._flush`: decode → validate → write (COPY,
idempotent) → dead-letter → commit offsets. Offsets are committed only after the rows are
committed in PostgreSQL and the dead-letter topic acknowledged the rejects, so a crash at any
point re-delivers messages whose effects are harmless to repeat.

Rebalances (cooperative-sticky): on revoke the open batch is flushed within the drain bound,
or its revoked partitions' messages are dropped (uncommitted, they go to the new owner); on
loss nothing is committed. Outages: a failed write or dead-letter publish pauses every
assigned partition, backs off exponentially (capped), keeps polling so the group membership
holds, and retries the same batch; readiness is false meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from sink import metrics
from sink.batch import Batch
from sink.config import Settings, add_arguments
from sink.contract import Rejection, load_contract
from sink.dlq import DeadLetter, DeadLetterPublisher
from sink.errors import FatalError, RetryableError
from sink.health import HealthServer, HealthState
from sink.writer import PostgresWriter, WriteResult

log = logging.getLogger(__name__)

_MAX_FETCH_PER_POLL = 2000  # messages per consume() call; bounds one loop turn's work
_PARTITION_ENSURE_EVERY_S = 3600.0  # re-ensure partitions hourly (month rollover)
_COMMIT_ATTEMPTS = 3
_IN_FLIGHT_POLL_S = 0.01  # seconds; consume() timeout while a write is under way
_PAUSED_LAG_REFRESH_S = 2.0  # seconds between broker lag queries while paused

TP = tuple[str, int]


def _consumer_config(settings: Settings, stats_cb: Callable[[str], None]) -> dict[str, Any]:
    return {
        **settings.kafka_properties,
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "partition.assignment.strategy": settings.kafka_properties.get(
            "partition.assignment.strategy", "cooperative-sticky"
        ),
        "auto.offset.reset": settings.kafka_properties.get("auto.offset.reset", "earliest"),
        # bounded prefetch: memory stays flat whatever the backlog (librdkafka default 64 MiB)
        "queued.max.messages.kbytes": int(
            settings.kafka_properties.get("queued.max.messages.kbytes", 16384)
        ),
        "statistics.interval.ms": int(
            settings.kafka_properties.get("statistics.interval.ms", 5000)
        ),
        "stats_cb": stats_cb,
        "error_cb": _on_kafka_error,
        "client.id": settings.kafka_properties.get("client.id", "asset-event-sink"),
    }


def _on_kafka_error(err: KafkaError) -> None:
    if err.fatal():
        log.error("fatal Kafka client error: %s", err.str(), extra={"action": "kafka_fatal"})
    else:
        log.warning("Kafka client error: %s", err.str(), extra={"action": "kafka_error"})


class Worker:
    """Runs the consume loop until :meth:`stop` (or SIGTERM/SIGINT via :meth:`install_signals`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        writer: PostgresWriter | None = None,
        dlq: DeadLetterPublisher | None = None,
    ) -> None:
        self.settings = settings
        self.health = HealthState(stall_after_s=max(60.0, settings.drain_timeout_s * 3))
        writers = [writer or PostgresWriter(settings.database_url)]
        writers += [PostgresWriter(settings.database_url)
                    for _ in range(settings.db_connections - 1)]
        # one thread and one PostgreSQL session per lane; batches take the lanes in turn and
        # are committed in the order they were taken, so offsets only move forward
        self._lanes = [
            _Lane(w, ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"asset-sink-db{i}"))
            for i, w in enumerate(writers)
        ]
        self._turns = 0
        self._dlq = dlq or DeadLetterPublisher(
            settings.bootstrap_servers, settings.dlq_topic, settings.kafka_properties
        )
        self._consumer = Consumer(_consumer_config(settings, self._on_stats))
        self._batch = Batch(
            max_events=settings.batch_max_events,
            max_bytes=settings.batch_max_bytes,
            max_wait_s=settings.batch_max_wait_ms / 1000.0,
        )
        self._contract = load_contract()  # compiled once; fails fast on a broken schema
        self._assigned: set[TP] = set()
        self._paused = False
        self._in_callback = False
        self._subscribed = False
        self._stopping = False
        # batches being written, oldest first; the next batch is decoded and validated
        # meanwhile
        self._flights: deque[_Flight] = deque()
        self._last_ensure = 0.0
        self._lag_refreshed = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to stop: it flushes, commits and closes (bounded by drain_timeout_s)."""
        if not self._stopping:
            log.info("stop requested; draining", extra={"action": "stop_requested"})
        self._stopping = True
        self.health.stopping = True

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self) -> int:
        """Consume until stopped. Returns the process exit code (0 after a clean drain)."""
        s = self.settings
        log.info("starting", extra={"action": "start", "settings": s.log_fields()})
        self._check_topics()
        self._ensure_partitions_with_retry()
        if self._stopping:
            self._close()
            return 0
        self._consumer.subscribe(
            [s.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._subscribed = True
        try:
            while not self._stopping:
                self._turn()
            drained = self._flush_all(deadline=time.monotonic() + s.drain_timeout_s)
            log.info(
                "drained" if drained else "drain timed out; uncommitted messages will be "
                "redelivered", extra={"action": "drain", "drained": drained},
            )
        finally:
            self._close()
        return 0

    def _close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the consumer failed: %s", exc, extra={"action": "close"})
        self._dlq.close()
        for lane in self._lanes:
            lane.db.submit(lane.writer.close).result()
            lane.db.shutdown()
        log.info("stopped", extra={"action": "stopped"})

    def _check_topics(self) -> None:
        """Wait for the broker; refuse to start without a dead-letter topic to write to."""
        s, attempt = self.settings, 0
        while not self._stopping:
            try:
                topics = self._consumer.list_topics(timeout=10).topics
            except KafkaException as exc:
                self._backoff(attempt, RetryableError(f"Kafka metadata unavailable: {exc}"),
                              "kafka")
                attempt += 1
                continue
            dlq = topics.get(s.dlq_topic)
            if dlq is None or dlq.error is not None:
                raise FatalError(
                    f"dead-letter topic {s.dlq_topic!r} does not exist; create it (same "
                    "retention as the source topic or longer) or set SINK_DLQ_TOPIC"
                )
            source = topics.get(s.topic)
            if source is None or source.error is not None:
                log.warning("topic %s does not exist yet; waiting for it", s.topic,
                            extra={"action": "topic_missing"})
            return

    def _ensure_partitions_with_retry(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                lane = self._lanes[0]
                created = lane.db.submit(
                    lane.writer.ensure_partitions, self.settings.partitions_ahead
                ).result()
            except RetryableError as exc:
                self.health.database_ok = False
                self._backoff(attempt, exc, "db")
                attempt += 1
                continue
            self.health.database_ok = True
            self._last_ensure = time.monotonic()
            log.info("partitions ensured",
                     extra={"action": "partitions", "partitions_created": created})
            return

    # -- the loop -------------------------------------------------------------------------

    def _turn(self) -> None:
        self.health.beat()
        batch = self._batch
        # while a batch is being written, come back soon to commit it as soon as it is stored
        wait = _IN_FLIGHT_POLL_S if self._flights else 1.0
        msgs = self._consumer.consume(
            num_messages=max(1, min(batch.room(), _MAX_FETCH_PER_POLL)),
            timeout=min(batch.wait_left(), wait),
        )
        self._take(msgs)
        self._update_lag_seconds()
        while self._flights and (self._flights[0].future is None
                                 or self._flights[0].future.done()):
            # written (or failed): commit without waiting, oldest first
            if not self._land(self._flights[0], deadline=None):
                return
        if batch.ready():
            flight = self._prepare(batch)  # overlaps the writes under way
            if len(self._flights) >= len(self._lanes) and not self._land(
                self._flights[0], deadline=None
            ):
                return  # stop requested while retrying: the drain stores every batch
            self._batch = batch.successor()
            self._submit(flight)
        if time.monotonic() - self._last_ensure > _PARTITION_ENSURE_EVERY_S:
            self._ensure_partitions_with_retry()

    def _take(self, msgs: list[Any]) -> None:
        counted: dict[str, int] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise FatalError(f"Kafka consumer failed: {err.str()}")
                log.warning("consume error: %s", err.str(), extra={"action": "consume_error"})
                continue
            topic = msg.topic()
            if (topic, msg.partition()) not in self._assigned:
                continue  # fetched before a revoke: the new owner consumes it
            self._batch.add(msg)
            counted[topic] = counted.get(topic, 0) + 1
        for topic, n in counted.items():
            metrics.MESSAGES_CONSUMED.labels(topic=topic).inc(n)

    def _flush_all(self, *, deadline: float | None) -> bool:
        """Land the batch in flight, then the open batch; False if the deadline passed first.

        Used on revocation and at shutdown, where everything consumed must be stored and
        committed (or left uncommitted) before returning.
        """
        while self._flights:
            if not self._land(self._flights[0], deadline=deadline):
                return False
        if self._batch.messages:
            flight = self._prepare(self._batch)
            self._batch = self._batch.successor()
            self._submit(flight)
            if not self._land(flight, deadline=deadline):
                return False
        return True

    def _submit(self, flight: _Flight) -> None:
        """Start the write of ``flight`` on the next lane (free: at most one batch per lane
        is in flight, and they land in order)."""
        flight.lane = self._lanes[self._turns % len(self._lanes)]
        self._turns += 1
        flight.future = flight.lane.db.submit(self._write, flight.lane.writer, flight.rows)
        self._flights.append(flight)

    def _prepare(self, batch: Batch) -> _Flight:
        """decode + validate: split the batch into rows to store and messages to reject."""
        start = time.perf_counter()
        rows: list[tuple[Any, ...]] = []
        row_msgs: list[Any] = []
        letters: list[DeadLetter] = []
        max_bytes = self.settings.max_message_bytes
        decode = self._contract.decode
        tombstones = 0
        for msg in batch.messages:
            value = msg.value()
            if value is None:
                tombstones += 1
                continue
            verdict = decode(value, max_bytes=max_bytes)
            if isinstance(verdict, Rejection):
                letters.append(_letter(msg, verdict))
            else:
                rows.append((*verdict, msg.topic(), msg.partition(), msg.offset()))
                row_msgs.append(msg)
        metrics.BATCH_DURATION.labels(stage="validate").observe(time.perf_counter() - start)
        return _Flight(batch=batch, rows=rows, row_msgs=row_msgs, letters=letters,
                       tombstones=tombstones)

    @staticmethod
    def _write(writer: PostgresWriter, rows: list[tuple[Any, ...]]) -> WriteResult:
        """Runs on a lane's database thread."""
        start = time.perf_counter()
        result = writer.write(rows)
        metrics.BATCH_DURATION.labels(stage="write").observe(time.perf_counter() - start)
        return result

    def _land(self, flight: _Flight, *, deadline: float | None) -> bool:
        """write (wait for it) → dead-letter → commit offsets, retrying transient failures.

        Returns True once the batch is stored and its offsets committed; False if
        ``deadline`` passed (or a stop was requested while retrying without one): the
        flight then stays pending and nothing of it is committed.
        """
        attempt = 0
        while True:
            try:
                if flight.result is None:
                    if flight.future is None:
                        lane = flight.lane or self._lanes[0]
                        flight.future = lane.db.submit(self._write, lane.writer, flight.rows)
                    try:
                        result = flight.future.result(
                            None if deadline is None else max(deadline - time.monotonic(), 0.0)
                        )
                    except TimeoutError:
                        return False  # still running: a later land waits for it again
                    flight.result = result
                    metrics.TOMBSTONES.inc(flight.tombstones)
                    flight.letters.extend(
                        _letter(flight.row_msgs[i], rej) for i, rej in result.rejected
                    )
                    metrics.EVENTS_WRITTEN.labels(result="inserted").inc(result.inserted)
                    metrics.EVENTS_WRITTEN.labels(result="duplicate").inc(result.duplicates)
                    for letter in flight.letters:
                        metrics.EVENTS_REJECTED.labels(reason=str(letter.rejection.reason)).inc()
                start = time.perf_counter()
                self._dlq.publish(flight.letters)
                self._commit(flight.batch.next_offsets)
                metrics.BATCH_DURATION.labels(stage="commit").observe(time.perf_counter() - start)
            except RetryableError as exc:
                flight.future = None  # the write failed: resubmit it after the backoff
                self.health.database_ok = flight.result is not None  # only the DLQ failed
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                self._pause()
                self._backoff(attempt, exc, "dlq" if flight.result else "db", deadline=deadline)
                attempt += 1
                if self._stopping and deadline is None:
                    return False  # the drain retries under its own deadline
                continue
            break
        self.health.database_ok = True
        self._resume()
        metrics.BATCH_SIZE.observe(len(flight.batch))
        log.info(
            "batch stored",
            extra={
                "action": "batch",
                "messages": len(flight.batch),
                "inserted": flight.result.inserted,
                "duplicates": flight.result.duplicates,
                "rejected": len(flight.letters),
            },
        )
        if self._flights and self._flights[0] is flight:
            self._flights.popleft()
        return True

    def _commit(self, offsets: dict[TP, int]) -> None:
        """Commit synchronously. A failed commit is logged, not retried forever: the events
        are stored, so a redelivery after a lost commit only produces duplicates."""
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in
               self._assigned]
        if not tps:
            return
        for attempt in range(_COMMIT_ATTEMPTS):
            try:
                self._consumer.commit(offsets=tps, asynchronous=False)
            except KafkaException as exc:
                err = exc.args[0]
                log.warning("offset commit failed: %s", err.str(),
                            extra={"action": "commit_failed", "attempt": attempt + 1})
                if not err.retriable() or attempt + 1 == _COMMIT_ATTEMPTS:
                    return
                time.sleep(0.2 * (attempt + 1))
                continue
            metrics.LAST_COMMIT.set(time.time())
            return

    # -- outages ----------------------------------------------------------------------------

    def _backoff(self, attempt: int, exc: Exception, component: str,
                 deadline: float | None = None) -> None:
        delay = min(self.settings.backoff_max_s, 0.25 * 2**attempt) * random.uniform(0.8, 1.2)
        if deadline is not None:
            delay = max(0.0, min(delay, deadline - time.monotonic()))
        metrics.RETRIES.labels(component=component).inc()
        log.warning(
            "%s; retrying in %.1fs", exc, delay,
            extra={"action": "backoff", "component": component, "attempt": attempt + 1},
        )
        end = time.monotonic() + delay
        while not (self._stopping and deadline is None):
            left = end - time.monotonic()
            if left <= 0:
                return
            self.health.beat()
            if self._in_callback or not self._subscribed:
                time.sleep(min(left, 0.5))
            else:
                # keep polling: the group membership holds (max.poll.interval.ms) and
                # rebalance callbacks run; paused partitions deliver nothing
                self._take(self._consumer.consume(num_messages=_MAX_FETCH_PER_POLL,
                                                  timeout=min(left, 0.5)))
                self._update_lag_seconds()
                self._refresh_lag_while_paused()

    def _pause(self) -> None:
        if not self._paused and self._assigned:
            self._consumer.pause([TopicPartition(t, p) for t, p in self._assigned])
            self._paused = True

    def _resume(self) -> None:
        if self._paused:
            self._consumer.resume([TopicPartition(t, p) for t, p in self._assigned])
            self._paused = False

    # -- rebalance callbacks (run inside consume()) ----------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        consumer.incremental_assign(partitions)
        new = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned |= new
        if self._paused:
            consumer.pause(partitions)
        self.health.assigned_partitions = len(self._assigned)
        log.info("partitions assigned", extra={"action": "assign", "partitions": sorted(new)})

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        pending = set(self._batch.next_offsets)
        for flight in self._flights:
            pending |= set(flight.batch.next_offsets)
        if pending & revoked:
            self._in_callback = True
            try:
                flushed = self._flush_all(
                    deadline=time.monotonic() + self.settings.drain_timeout_s
                )
            finally:
                self._in_callback = False
            if not flushed:
                # a batch still in flight keeps its rows (storing them again later is
                # harmless) but commits only partitions still assigned when it lands
                self._forget(revoked, "revoked before its batch could be stored")
        self._release(revoked)
        log.info("partitions revoked", extra={"action": "revoke", "partitions": sorted(revoked)})

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        self._forget(lost, "lost: another member may own them already")
        self._release(lost)
        log.warning("partitions lost", extra={"action": "lost", "partitions": sorted(lost)})

    def _forget(self, tps: set[TP], why: str) -> None:
        dropped = self._batch.drop_partitions(tps)
        if dropped:
            log.warning("dropped %d uncommitted messages: %s", dropped, why,
                        extra={"action": "drop_uncommitted", "messages": dropped})

    def _release(self, tps: set[TP]) -> None:
        self._assigned -= tps
        self.health.assigned_partitions = len(self._assigned)
        for topic, partition in tps:
            for gauge in (metrics.CONSUMER_LAG, metrics.CONSUMER_LAG_SECONDS):
                with contextlib.suppress(KeyError):
                    gauge.remove(topic, str(partition))

    # -- lag --------------------------------------------------------------------------------

    def _update_lag_seconds(self) -> None:
        now = time.time()
        first = dict(self._batch.first_timestamp)
        for flight in reversed(self._flights):  # newest first: the oldest timestamp wins
            first.update(flight.batch.first_timestamp)
        for topic, partition in self._assigned:
            ts = first.get((topic, partition))
            metrics.CONSUMER_LAG_SECONDS.labels(topic=topic, partition=str(partition)).set(
                0.0 if ts is None else max(now - ts, 0.0)
            )

    def _refresh_lag_while_paused(self) -> None:
        """librdkafka stops refreshing the high watermark of paused partitions (its statistics
        then freeze the lag): ask the broker directly, at most every few seconds."""
        now = time.monotonic()
        if not self._paused or now - self._lag_refreshed < _PAUSED_LAG_REFRESH_S:
            return
        self._lag_refreshed = now
        tps = [TopicPartition(t, p) for t, p in self._assigned]
        try:
            committed = self._consumer.committed(tps, timeout=2.0)
            for tp in committed:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
                start = tp.offset if tp.offset >= 0 else low  # nothing committed yet
                metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    max(high - start, 0)
                )
        except KafkaException as exc:  # the broker may be what is down
            log.debug("lag refresh failed: %s", exc, extra={"action": "lag_refresh"})

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka statistics: committed offset to high watermark, per assigned partition."""
        if self._paused:
            return  # frozen for paused partitions: _refresh_lag_while_paused sets the gauge
        stats = orjson.loads(stats_json)
        for topic, tstats in stats.get("topics", {}).items():
            for pid, p in tstats.get("partitions", {}).items():
                partition = int(pid)
                if partition < 0 or (topic, partition) not in self._assigned:
                    continue
                hi, committed = p.get("hi_offset", -1), p.get("committed_offset", -1)
                if hi >= 0 and committed >= 0:
                    lag = max(hi - committed, 0)
                elif hi >= 0:
                    lag = max(hi - max(p.get("lo_offset", 0), 0), 0)  # nothing committed yet
                else:
                    continue
                metrics.CONSUMER_LAG.labels(topic=topic, partition=pid).set(lag)


@dataclass(frozen=True, slots=True)
class _Lane:
    """One PostgreSQL session and the thread that uses it."""

    writer: PostgresWriter
    db: ThreadPoolExecutor


@dataclass(slots=True)
class _Flight:
    """A prepared batch on its way to PostgreSQL, the dead-letter topic and the commit."""

    batch: Batch
    rows: list[tuple[Any, ...]]
    row_msgs: list[Any]  # the message of each row, for rejections the writer returns
    letters: list[DeadLetter]
    tombstones: int = 0
    lane: _Lane | None = None
    future: Future[WriteResult] | None = None
    result: WriteResult | None = None  # set once the write committed


def _letter(msg: Any, rejection: Rejection) -> DeadLetter:
    kind, ts = msg.timestamp()
    return DeadLetter(
        rejection=rejection,
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        timestamp_ms=ts if kind else None,
        key=msg.key(),
        value=msg.value(),
        headers=msg.headers(),
    )


def _run(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    logging.getLogger().setLevel(settings.log_level)
    worker = Worker(settings)
    worker.install_signals()
    server = None
    if settings.metrics_port:
        server = HealthServer(worker.health, settings.metrics_port)
        server.start()
    try:
        return worker.run()
    finally:
        if server is not None:
            server.stop()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="consume the topic and store events (the worker)",
        description="Consume AssetEvents from Kafka and store each valid one exactly once; "
        "rejected messages go to the dead-letter topic. Every flag also reads SINK_<NAME>.",
    )
    add_arguments(parser)
    parser.set_defaults(func=_run)
