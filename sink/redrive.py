"""The dead-letter topic from the shell: ``asset-sink dlq inspect`` and ``dlq redrive``.

``inspect`` reads the dead-letter topic from its low to its high watermarks as of the call,
with an assigned (never committing) consumer of a throwaway group, and reports the records
per reason with a few samples. It changes nothing.

``redrive`` re-publishes dead-letter records to the worker's topic once their cause is fixed:
the original key, value and headers, without the ``asset-sink.*`` headers the dead-lettering
added, plus ``asset-sink.redriven-from: <dlq topic>/<partition>/<offset>`` so a record that
fails again (and comes back with that header) is visibly looping. Progress is the redrive
group's committed offsets on the dead-letter topic, committed only after the broker
acknowledged every record re-published before them (``acks=all``, idempotent producer): a
second ``--execute`` starts where the first stopped and re-sends nothing. A crash between the
acknowledgement and the commit re-sends at most one chunk, which the worker stores once (it
keys events by ``event_id``).

Records not selected (``--reason``, ``--since``) are passed over for good by that group: the
default group is per reason (``<worker group>-redrive`` for all, ``…-redrive.<reason>`` with
``--reason``) so redriving one reason never hides another. Records whose value was truncated
on the way to the dead-letter topic cannot be redriven from it; they are reported with their
original coordinates (replay those from the source topic instead).
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from sink._ops import (
    REQUEST_TIMEOUT_S,
    KafkaTarget,
    add_kafka_options,
    add_mode_options,
    epoch_ms,
    format_ms,
    format_table,
    instant_arg,
    json_line,
    kafka_target,
    ms_datetime,
)
from sink.dlq import HEADER_PREFIX
from sink.errors import FatalError

log = logging.getLogger(__name__)

REDRIVEN_FROM = HEADER_PREFIX + "redriven-from"
VALUE_PREVIEW_CHARS = 200
CHUNK_RECORDS = 500  # records re-published between two progress commits
STALL_TIMEOUT_S = 30.0  # no record and no end-of-partition for this long: give up, seconds

Header = tuple[str, str | bytes | None]


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record of the dead-letter topic with the sink's headers decoded."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    own: Mapping[str, str] = field(default_factory=dict)  # asset-sink.* without the prefix

    @classmethod
    def from_message(cls, msg: Any) -> DeadLetterRecord:
        kind, ts = msg.timestamp()
        headers = tuple((str(k), v) for k, v in (msg.headers() or ()))
        own = {k[len(HEADER_PREFIX) :]: _text(v) for k, v in headers if k.startswith(HEADER_PREFIX)}
        return cls(
            msg.topic(),
            msg.partition(),
            msg.offset(),
            ts if kind else None,
            msg.key(),
            msg.value(),
            headers,
            own,
        )

    @property
    def coordinates(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def reason(self) -> str:
        return self.own.get("reason") or "unknown"

    @property
    def original(self) -> str:
        """``topic/partition/offset`` of the rejected message, ``?`` parts when unknown."""
        return "/".join(
            self.own.get(f"original.{k}") or "?" for k in ("topic", "partition", "offset")
        )

    @property
    def truncated(self) -> bool:
        return "value.truncated.from" in self.own

    def preview(self, chars: int = VALUE_PREVIEW_CHARS) -> str | None:
        if self.value is None:
            return None
        return self.value[: chars * 4].decode("utf-8", "replace")[:chars]

    def as_json(self) -> dict[str, Any]:
        o = self.own
        return {
            "dlq": {
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
                "timestamp": ms_datetime(self.timestamp_ms),
            },
            "reason": self.reason,
            "detail": o.get("detail"),
            "field": o.get("field") or None,
            "original": {
                "topic": o.get("original.topic"),
                "partition": _int_or_none(o.get("original.partition")),
                "offset": _int_or_none(o.get("original.offset")),
                "timestamp": ms_datetime(_int_or_none(o.get("original.timestamp"))),
            },
            "rejected_at": o.get("rejected.at"),
            "redriven_from": o.get("redriven-from"),
            "value_truncated_from": _int_or_none(o.get("value.truncated.from")),
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
            "value": self.preview(),
        }


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or ""


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def redrive_headers(record: DeadLetterRecord) -> list[Header]:
    """The record's original headers (every ``asset-sink.*`` header removed, including an
    earlier ``redriven-from``) followed by ``asset-sink.redriven-from``."""
    out = [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]
    out.append((REDRIVEN_FROM, record.coordinates.encode()))
    return out


class Verdict(StrEnum):
    REDRIVE = "redrive"
    FILTERED = "filtered"  # not selected by --reason / --since
    UNREDRIVABLE = "unredrivable"  # truncated or without value


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead-letter records a redrive re-publishes."""

    reason: str | None = None
    since_ms: int | None = None  # dead-lettered at or after (the record's timestamp)

    def verdict(self, record: DeadLetterRecord) -> Verdict:
        if self.reason is not None and record.reason != self.reason:
            return Verdict.FILTERED
        if self.since_ms is not None and (record.timestamp_ms or 0) < self.since_ms:
            return Verdict.FILTERED
        if record.value is None or record.truncated:
            return Verdict.UNREDRIVABLE
        return Verdict.REDRIVE


def redrive_group(worker_group: str, reason: str | None) -> str:
    """The default progress group: one per reason, so one reason never hides another."""
    base = f"{worker_group}-redrive"
    return base if reason is None else f"{base}.{reason}"


# -- reading ----------------------------------------------------------------------------------


class DeadLetterReader:
    """An assigned consumer over the dead-letter topic, from given offsets to the high
    watermarks as of :meth:`bounds`.

    Never subscribes (no group membership, no rebalance); commits only through
    :meth:`commit`. Raises :class:`FatalError` when the topic is missing or reading stalls for
    :data:`STALL_TIMEOUT_S`.
    """

    def __init__(self, kafka: KafkaTarget, topic: str, group_id: str) -> None:
        self.topic = topic
        self._consumer = Consumer(
            {
                **kafka.client_config(consumer=True),
                "group.id": group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "client.id": "asset-sink-dlq",
            }
        )

    def bounds(self, *, from_committed: bool) -> dict[int, tuple[int, int]]:
        """Per partition ``(start, end)``: start at the group's committed offset (when
        ``from_committed`` and there is one) or the low watermark; end at the high watermark."""
        try:
            meta = self._consumer.list_topics(topic=self.topic, timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise FatalError(f"Kafka metadata unavailable: {exc}") from exc
        found = meta.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            raise FatalError(f"dead-letter topic {self.topic!r} does not exist")
        partitions = sorted(found.partitions)
        committed: dict[int, int] = {}
        if from_committed:
            try:
                tps = self._consumer.committed(
                    [TopicPartition(self.topic, p) for p in partitions], timeout=REQUEST_TIMEOUT_S
                )
            except KafkaException as exc:
                raise FatalError(f"reading the redrive progress failed: {exc}") from exc
            committed = {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
        out: dict[int, tuple[int, int]] = {}
        for p in partitions:
            try:
                low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=REQUEST_TIMEOUT_S
                )
            except KafkaException as exc:
                raise FatalError(
                    f"reading the watermarks of {self.topic}[{p}] failed: {exc}"
                ) from exc
            start = min(max(committed.get(p, low), low), high)
            out[p] = (start, high)
        return out

    def read(self, bounds: Mapping[int, tuple[int, int]]) -> Iterator[DeadLetterRecord]:
        """Every record in ``[start, end)`` of each partition, partition order interleaved."""
        todo = {p for p, (start, end) in bounds.items() if start < end}
        if not todo:
            return
        self._consumer.assign([TopicPartition(self.topic, p, bounds[p][0]) for p in todo])
        last_progress = time.monotonic()
        while todo:
            msgs = self._consumer.consume(500, timeout=0.5)
            if not msgs and time.monotonic() - last_progress > STALL_TIMEOUT_S:
                raise FatalError(
                    f"reading {self.topic} stalled: no record for "
                    f"{STALL_TIMEOUT_S:.0f}s with partitions {sorted(todo)} "
                    "unfinished"
                )
            for msg in msgs:
                err = msg.error()
                p = msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(p)  # everything up to the current end was read
                        continue
                    if err.fatal():
                        raise FatalError(f"reading {self.topic} failed: {err.str()}")
                    log.warning("consume error: %s", err.str(), extra={"action": "consume"})
                    continue
                last_progress = time.monotonic()
                offset = msg.offset()
                if p not in todo or offset is None or offset >= bounds[p][1]:
                    continue
                if offset + 1 >= bounds[p][1]:
                    todo.discard(p)
                yield DeadLetterRecord.from_message(msg)

    def commit(self, positions: Mapping[int, int]) -> None:
        """Commit ``positions`` (next offset per partition) synchronously; FatalError if not."""
        if not positions:
            return
        try:
            self._consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in positions.items()],
                asynchronous=False,
            )
        except KafkaException as exc:
            raise FatalError(
                f"committing the redrive progress failed: {exc}; the records of the last "
                "chunk were re-published and will be re-sent by the next run (the worker "
                "stores each event once)"
            ) from exc

    def close(self) -> None:
        self._consumer.close()


# -- inspect ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ReasonStats:
    records: int = 0
    first_ms: int | None = None
    last_ms: int | None = None

    def add(self, record: DeadLetterRecord) -> None:
        self.records += 1
        ts = record.timestamp_ms
        if ts is not None:
            self.first_ms = ts if self.first_ms is None else min(self.first_ms, ts)
            self.last_ms = ts if self.last_ms is None else max(self.last_ms, ts)


def _inspect(args: argparse.Namespace) -> int:
    kafka = kafka_target(args)
    reader = DeadLetterReader(kafka, kafka.dlq_topic, f"asset-sink-dlq-inspect-{uuid.uuid4().hex}")
    stats: dict[str, ReasonStats] = collections.defaultdict(ReasonStats)
    samples: list[DeadLetterRecord] = []
    looping = 0
    try:
        bounds = reader.bounds(from_committed=False)
        for record in reader.read(bounds):
            stats[record.reason].add(record)
            looping += "redriven-from" in record.own
            if len(samples) < args.limit and args.reason in (None, record.reason):
                samples.append(record)
    finally:
        reader.close()
    total = sum(s.records for s in stats.values())
    by_reason = sorted(stats.items(), key=lambda kv: (-kv[1].records, kv[0]))
    if args.json:
        print(
            json_line(
                {
                    "type": "summary",
                    "topic": kafka.dlq_topic,
                    "records": total,
                    "redriven_before": looping,
                    "partitions": {
                        str(p): {"low": lo, "high": hi} for p, (lo, hi) in bounds.items()
                    },
                    "by_reason": {
                        r: {
                            "records": s.records,
                            "first": ms_datetime(s.first_ms),
                            "last": ms_datetime(s.last_ms),
                        }
                        for r, s in by_reason
                    },
                }
            )
        )
        for record in samples:
            print(json_line({"type": "record", **record.as_json()}))
        return 0
    print(
        f"dead-letter topic {kafka.dlq_topic}: {total} records in {len(bounds)} "
        f"partitions ({looping} of them had been redriven before)"
    )
    if not total:
        return 0
    print(
        format_table(
            ("reason", "records", "first", "last"),
            [(r, s.records, format_ms(s.first_ms), format_ms(s.last_ms)) for r, s in by_reason],
        )
    )
    if samples:
        print(
            f"\nfirst {len(samples)} records"
            + (f" with reason {args.reason}" if args.reason else "")
            + ":"
        )
    for record in samples:
        print(_sample_block(record))
    return 0


def _sample_block(record: DeadLetterRecord) -> str:
    o = record.own
    lines = [
        f"{record.coordinates}  {record.reason}"
        + (f" ({o['field']})" if o.get("field") else "")
        + f"  rejected {o.get('rejected.at') or format_ms(record.timestamp_ms)}",
        f"  original: {record.original}"
        + (f"  key {record.key.decode('utf-8', 'replace')!r}" if record.key else ""),
        f"  detail:   {o.get('detail') or '-'}",
    ]
    if o.get("redriven-from"):
        lines.append(f"  redriven from {o['redriven-from']} before")
    if record.truncated:
        lines.append(f"  value truncated from {o['value.truncated.from']} bytes")
    preview = record.preview()
    lines.append(f"  value:    {'(null)' if preview is None else preview}")
    return "\n".join(lines)


# -- redrive ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Progress:
    """What one redrive run saw, per partition and per reason."""

    read: collections.Counter[int] = field(default_factory=collections.Counter)
    verdicts: collections.Counter[tuple[int, Verdict]] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    unredrivable: list[DeadLetterRecord] = field(default_factory=list)

    def count(self, verdict: Verdict) -> int:
        return sum(n for (_, v), n in self.verdicts.items() if v == verdict)


class _Republisher:
    """Produces redriven records and waits for their acknowledgement (acks=all, idempotent)."""

    def __init__(self, kafka: KafkaTarget, topic: str) -> None:
        self._producer = Producer(
            {
                **kafka.client_config(consumer=False),
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                # Java clients' key hashing: a redriven record lands where its key's other
                # records were produced by a Java producer
                "partitioner": "murmur2_random",
                "client.id": "asset-sink-redrive",
            }
        )
        self._topic = topic
        self._failures: list[str] = []

    def send(self, record: DeadLetterRecord) -> None:
        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                self._failures.append(f"{record.coordinates}: {err.str()}")

        while True:
            try:
                self._producer.produce(
                    self._topic,
                    key=record.key,
                    value=record.value,
                    headers=redrive_headers(record),
                    on_delivery=delivered,
                )
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: serve callbacks, then retry

    def settle(self) -> None:
        """Block until everything sent is acknowledged; FatalError otherwise (the caller must
        then not record progress past those records)."""
        remaining = self._producer.flush(REQUEST_TIMEOUT_S * 2)
        if remaining or self._failures:
            raise FatalError(
                f"topic {self._topic!r} did not acknowledge {remaining + len(self._failures)} "
                f"redriven record(s) ({'; '.join(self._failures[:3])}); progress was not "
                "committed past them: run the redrive again"
            )


def _redrive(args: argparse.Namespace) -> int:
    kafka = kafka_target(args)
    if kafka.dlq_topic == kafka.topic:
        raise FatalError(
            "the dead-letter topic and the topic are the same; check --dlq-topic / --topic"
        )
    group = args.redrive_group or redrive_group(kafka.group_id, args.reason)
    selection = Selection(args.reason, None if args.since is None else epoch_ms(args.since))
    reader = DeadLetterReader(kafka, kafka.dlq_topic, group)
    out = _Republisher(kafka, kafka.topic) if args.execute else None
    progress = _Progress()
    try:
        bounds = reader.bounds(from_committed=True)
        positions: dict[int, int] = {}
        pending = 0
        for record in reader.read(bounds):
            if args.max is not None and progress.count(Verdict.REDRIVE) >= args.max:
                break
            verdict = selection.verdict(record)
            progress.read[record.partition] += 1
            progress.verdicts[record.partition, verdict] += 1
            if verdict is Verdict.REDRIVE:
                progress.reasons[record.reason] += 1
                if out is not None:
                    out.send(record)
                    pending += 1
            elif verdict is Verdict.UNREDRIVABLE:
                progress.unredrivable.append(record)
            positions[record.partition] = record.offset + 1
            if out is not None and pending >= CHUNK_RECORDS:
                out.settle()
                reader.commit(positions)
                positions, pending = {}, 0
        if out is not None:
            out.settle()
            reader.commit(positions)
    finally:
        reader.close()
    _report(args, kafka, group, bounds, progress)
    return 0


def _report(
    args: argparse.Namespace,
    kafka: KafkaTarget,
    group: str,
    bounds: Mapping[int, tuple[int, int]],
    progress: _Progress,
) -> None:
    mode = "execute" if args.execute else "dry run: nothing sent, no progress recorded"
    print(f"dead-letter topic {kafka.dlq_topic} -> {kafka.topic}, progress group {group} ({mode})")
    rows = [
        (
            p,
            start,
            end,
            progress.read[p],
            progress.verdicts[p, Verdict.REDRIVE],
            progress.verdicts[p, Verdict.FILTERED],
            progress.verdicts[p, Verdict.UNREDRIVABLE],
        )
        for p, (start, end) in sorted(bounds.items())
    ]
    print(
        format_table(
            ("partition", "from", "to", "read", "redrive", "filtered", "unredrivable"), rows
        )
    )
    if progress.reasons:
        print(format_table(("reason", "redrive"), sorted(progress.reasons.items())))
    for record in progress.unredrivable[:20]:
        why = "value truncated" if record.truncated else "no value"
        print(
            f"not redrivable ({why}): {record.coordinates}, original {record.original}; "
            "replay it from the source topic",
            file=sys.stderr,
        )
    verb = "re-published" if args.execute else "to re-publish"
    print(
        f"total: {progress.count(Verdict.REDRIVE)} records {verb} to {kafka.topic}, "
        f"{progress.count(Verdict.FILTERED)} filtered, "
        f"{progress.count(Verdict.UNREDRIVABLE)} not redrivable"
    )


def register(subparsers: Any) -> None:
    """Add ``asset-sink dlq inspect`` and ``asset-sink dlq redrive``."""
    parser = subparsers.add_parser(
        "dlq",
        help="inspect the dead-letter topic, redrive its records",
        description="Read the dead-letter topic; re-publish its records to the topic once "
        "their cause is fixed.",
    )
    sub = parser.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    inspect = sub.add_parser(
        "inspect",
        help="count dead-letter records by reason and show samples",
        description="Read the dead-letter topic up to its end as of now (changes nothing) and "
        "show the records per reason and the first records: dead-letter and original "
        "coordinates, reason, detail, the first 200 characters of the value.",
    )
    inspect.add_argument(
        "--limit", type=_count, default=10, metavar="N", help="records shown (default 10)"
    )
    inspect.add_argument("--reason", default=None, help="show only records of this reason")
    inspect.add_argument(
        "--json", action="store_true", help="JSON lines: a summary, then one line per record shown"
    )
    add_kafka_options(inspect, dlq_topic=True)
    inspect.set_defaults(func=_inspect)
    redrive = sub.add_parser(
        "redrive",
        help="re-publish dead-letter records to the topic",
        description="Re-publish the dead-letter records not redriven yet by the progress "
        "group (original key, value and headers, asset-sink.* headers replaced by "
        "asset-sink.redriven-from) and record the progress once the broker acknowledged "
        "them. Records not selected are passed over by that group for good.",
    )
    redrive.add_argument(
        "--reason", default=None, help="only records of this reason (e.g. missing_reference)"
    )
    redrive.add_argument(
        "--since",
        type=instant_arg,
        default=None,
        metavar="T",
        help="only records dead-lettered at or after T (ISO 8601 or a duration ago: 2h, 3d)",
    )
    redrive.add_argument(
        "--max",
        type=_count,
        default=None,
        metavar="N",
        help="stop after N records (redrive in steps)",
    )
    redrive.add_argument(
        "--redrive-group",
        default=None,
        metavar="GROUP",
        help="progress group on the dead-letter topic (default "
        "<group-id>-redrive, or <group-id>-redrive.<reason> with --reason)",
    )
    add_kafka_options(redrive, dlq_topic=True)
    add_mode_options(redrive, "re-publish the records and record the progress")
    redrive.set_defaults(func=_redrive)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return value
