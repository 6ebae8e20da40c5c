"""Move the worker's committed offsets: re-read a range of the topic, or skip one.

``asset-sink replay`` plans per partition — committed offset now, low and high watermark,
target — and, with ``--execute``, commits the targets for the group through the Kafka admin
API. Targets are clamped to ``[low watermark, high watermark]``. Re-reading is harmless: the
worker stores each ``event_id`` once, so replayed events are counted as duplicates and the
table does not change (events that were dead-lettered are dead-lettered again).

Kafka accepts offsets for a group only while it has no active member, so the command refuses
(exit 2) while any worker of the group runs; the message says how to stop them. A partition
without a committed offset counts from its low watermark, where the worker would start it
(``auto.offset.reset=earliest``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec  # what confluent_kafka.admin re-exports

from sink._ops import (
    REQUEST_TIMEOUT_S,
    KafkaTarget,
    add_kafka_options,
    add_mode_options,
    epoch_ms,
    format_ms,
    format_table,
    instant_arg,
    kafka_target,
)
from sink.errors import FatalError

TargetKind = Literal["earliest", "latest", "datetime", "shift", "offset"]


@dataclass(frozen=True, slots=True)
class Target:
    """Where to move: ``value`` is ms since the epoch for ``datetime``, the signed distance
    for ``shift`` (negative = back), the offset for ``offset``, unused otherwise."""

    kind: TargetKind
    value: int = 0

    def describe(self) -> str:
        if self.kind == "datetime":
            return f"to the first offset at or after {format_ms(self.value)}"
        if self.kind == "shift":
            return f"shifted by {self.value:+d}"
        if self.kind == "offset":
            return f"to offset {self.value}"
        return f"to the {self.kind} offset"


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What the broker says about one partition: ``committed`` is None when the group has no
    offset there; ``timestamp_offset`` (for ``datetime`` targets) is None when no message is
    that recent."""

    partition: int
    committed: int | None
    low: int
    high: int
    timestamp_offset: int | None = None


@dataclass(frozen=True, slots=True)
class PartitionPlan:
    """One partition's move: the worker resumes at ``target``; ``replay`` messages it had
    consumed are read again, ``skip`` messages it had not consumed are passed over."""

    partition: int
    committed: int | None
    low: int
    high: int
    target: int

    @property
    def position(self) -> int:
        """Where the worker would resume without the move."""
        base = self.low if self.committed is None else self.committed
        return min(max(base, self.low), self.high)

    @property
    def replay(self) -> int:
        return max(self.position - self.target, 0)

    @property
    def skip(self) -> int:
        return max(self.target - self.position, 0)


def plan_partition(state: PartitionState, target: Target) -> PartitionPlan:
    """The clamped target of one partition (pure)."""
    base = state.low if state.committed is None else state.committed
    raw: int
    if target.kind == "earliest":
        raw = state.low
    elif target.kind == "latest":
        raw = state.high
    elif target.kind == "offset":
        raw = target.value
    elif target.kind == "shift":
        raw = base + target.value
    else:  # datetime: nothing that recent means the end
        raw = state.high if state.timestamp_offset is None else state.timestamp_offset
    return PartitionPlan(
        state.partition,
        state.committed,
        state.low,
        state.high,
        min(max(raw, state.low), state.high),
    )


def parse_partitions(text: str) -> tuple[int, ...]:
    """``0,1,5`` or ranges ``0-3,7`` → sorted distinct partition numbers; ValueError else."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
        except ValueError:
            raise ValueError(f"{part!r} is not a partition number or range (0,1 or 0-3)") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"{part!r} is not a partition number or range (0,1 or 0-3)")
        out.update(range(lo, hi + 1))
    if not out:
        raise ValueError("no partition given")
    return tuple(sorted(out))


def _partitions_arg(text: str) -> tuple[int, ...]:
    try:
        return parse_partitions(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- Kafka ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupMember:
    client_id: str
    host: str
    partitions: tuple[int, ...]  # of the replayed topic


def stop_workers_hint(group: str) -> str:
    """How to empty a consumer group run by the Helm chart (release name unknown here)."""
    deploy = "<release>-asset-event-sink"
    return (
        f"Kafka changes a group's offsets only while the group has no member: stop the "
        f"workers of group {group!r} first, then run this again.\n"
        f"  with KEDA (the ScaledObject owns the replica count):\n"
        f"    kubectl annotate scaledobject/{deploy} "
        f'autoscaling.keda.sh/paused-replicas="0" --overwrite\n'
        f"  without KEDA:\n"
        f"    kubectl scale deploy/{deploy} --replicas=0\n"
        f"Wait until the pods are gone (the group empties within the session timeout), check "
        f"with --dry-run (it lists the members left), then --execute. Afterwards remove the "
        f"annotation (kubectl annotate scaledobject/{deploy} "
        f"autoscaling.keda.sh/paused-replicas-) or scale back up."
    )


class GroupOffsets:
    """Reads and moves one group's offsets on one topic through the admin API.

    Every call blocks for at most :data:`REQUEST_TIMEOUT_S` per request and raises
    :class:`FatalError` with the broker's message when a request fails.
    """

    def __init__(self, target: KafkaTarget, *, topic: str, group_id: str) -> None:
        self._admin = AdminClient(target.client_config(consumer=False))
        self.topic = topic
        self.group_id = group_id

    def partitions(self) -> list[int]:
        """The topic's partition numbers; FatalError if the topic does not exist."""
        try:
            meta = self._admin.list_topics(topic=self.topic, timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise FatalError(f"Kafka metadata unavailable: {exc}") from exc
        found = meta.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            raise FatalError(f"topic {self.topic!r} does not exist")
        return sorted(found.partitions)

    def members(self) -> list[GroupMember]:
        """The group's active members (empty for an empty or unknown group)."""
        future = self._admin.describe_consumer_groups(
            [self.group_id], request_timeout=REQUEST_TIMEOUT_S
        )[self.group_id]
        desc = _result(future, f"describing group {self.group_id!r}")
        out = []
        for m in desc.members:
            tps = m.assignment.topic_partitions if m.assignment else []
            out.append(
                GroupMember(
                    m.client_id,
                    m.host,
                    tuple(sorted(tp.partition for tp in tps if tp.topic == self.topic)),
                )
            )
        return out

    def states(self, partitions: Sequence[int], target: Target) -> list[PartitionState]:
        """Committed offsets and watermarks (and the timestamp lookup) of ``partitions``."""
        request = ConsumerGroupTopicPartitions(
            self.group_id, [TopicPartition(self.topic, p) for p in partitions]
        )
        listed = _result(
            self._admin.list_consumer_group_offsets([request], request_timeout=REQUEST_TIMEOUT_S)[
                self.group_id
            ],
            f"reading the offsets of group {self.group_id!r}",
        )
        committed: dict[int, int | None] = {}
        for tp in listed.topic_partitions:
            if tp.error is not None:
                raise FatalError(f"reading the offset of {self.topic}[{tp.partition}]: {tp.error}")
            committed[tp.partition] = tp.offset if tp.offset >= 0 else None
        low = self._list_offsets(partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        high = self._list_offsets(partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        at: dict[int, int] = {}
        if target.kind == "datetime":
            at = self._list_offsets(partitions, OffsetSpec.for_timestamp(target.value))
        return [
            PartitionState(
                p, committed.get(p), low[p], high[p], at[p] if at.get(p, -1) >= 0 else None
            )
            for p in partitions
        ]

    def commit(self, plans: Iterable[PartitionPlan]) -> None:
        """Set the group's offsets to the plans' targets. Raises :class:`FatalError` naming the
        partitions the broker refused (all of them when a member joined meanwhile)."""
        tps = [TopicPartition(self.topic, p.partition, p.target) for p in plans]
        request = ConsumerGroupTopicPartitions(self.group_id, tps)
        done = _result(
            self._admin.alter_consumer_group_offsets([request], request_timeout=REQUEST_TIMEOUT_S)[
                self.group_id
            ],
            f"changing the offsets of group {self.group_id!r}",
            group=self.group_id,
        )
        failed = [
            f"{tp.partition}: {tp.error}" for tp in done.topic_partitions if tp.error is not None
        ]
        if failed:
            raise FatalError(
                f"the broker refused offsets of {self.topic} ({'; '.join(failed)})"
                f"\n{stop_workers_hint(self.group_id)}"
            )

    def _list_offsets(self, partitions: Sequence[int], spec: OffsetSpec) -> dict[int, int]:
        futures = self._admin.list_offsets(
            {TopicPartition(self.topic, p): spec for p in partitions},
            request_timeout=REQUEST_TIMEOUT_S,
        )
        return {
            tp.partition: _result(f, f"listing offsets of {self.topic}").offset
            for tp, f in futures.items()
        }


def _result(future: Any, doing: str, *, group: str | None = None) -> Any:
    try:
        return future.result(timeout=REQUEST_TIMEOUT_S * 2)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        text = err.str() if hasattr(err, "str") else str(err)
        more = f"\n{stop_workers_hint(group)}" if group and _is_membership_error(err) else ""
        raise FatalError(f"{doing} failed: {text}{more}") from exc
    except TimeoutError as exc:
        raise FatalError(f"{doing} timed out; is the broker reachable?") from exc


def _is_membership_error(err: Any) -> bool:
    code = err.code() if hasattr(err, "code") else None
    return code in (
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.NON_EMPTY_GROUP,
    )


# -- command ----------------------------------------------------------------------------------


def render_plan(plans: Sequence[PartitionPlan]) -> str:
    """The plan as an aligned table with a total line."""
    rows = [(p.partition, p.committed, p.low, p.high, p.target, p.replay, p.skip) for p in plans]
    table = format_table(
        ("partition", "committed", "low", "high", "target", "replay", "skip"), rows
    )
    replay = sum(p.replay for p in plans)
    skip = sum(p.skip for p in plans)
    return f"{table}\ntotal: {replay} messages to replay, {skip} to skip"


def _target(args: argparse.Namespace) -> Target:
    if args.to_earliest:
        return Target("earliest")
    if args.to_latest:
        return Target("latest")
    if args.to_datetime is not None:
        return Target("datetime", epoch_ms(args.to_datetime))
    if args.shift_by is not None:
        return Target("shift", args.shift_by)
    return Target("offset", args.to_offset)


def _run(args: argparse.Namespace) -> int:
    kafka = kafka_target(args)
    target = _target(args)
    offsets = GroupOffsets(kafka, topic=kafka.topic, group_id=kafka.group_id)
    existing = offsets.partitions()
    chosen = list(args.partitions) if args.partitions else existing
    unknown = sorted(set(chosen) - set(existing))
    if unknown:
        raise FatalError(
            f"topic {kafka.topic!r} has partitions {existing[0]}..{existing[-1]}; "
            f"no partition {', '.join(map(str, unknown))}"
        )
    members = offsets.members()
    if members and args.execute:
        raise FatalError(
            _members_text(kafka.group_id, members) + "\n" + stop_workers_hint(kafka.group_id)
        )
    plans = [plan_partition(s, target) for s in offsets.states(chosen, target)]
    mode = "execute" if args.execute else "dry run: nothing changed"
    print(f"group {kafka.group_id}, topic {kafka.topic}: {target.describe()} ({mode})")
    print(render_plan(plans))
    if not args.execute:
        if members:
            print(
                _members_text(kafka.group_id, members)
                + "; --execute is refused until the group is empty",
                file=sys.stderr,
            )
        return 0
    offsets.commit(plans)
    after = {s.partition: s.committed for s in offsets.states(chosen, Target("earliest"))}
    wrong = [p.partition for p in plans if after.get(p.partition) != p.target]
    if wrong:
        raise FatalError(f"offsets of partitions {wrong} did not take; run again")
    print(
        f"committed: the group resumes at the targets "
        f"({sum(p.replay for p in plans)} messages to replay)"
    )
    return 0


def _members_text(group: str, members: Sequence[GroupMember]) -> str:
    listed = ", ".join(
        f"{m.client_id}@{m.host.lstrip('/')} (partitions {','.join(map(str, m.partitions)) or '-'})"
        for m in members
    )
    return f"group {group!r} has {len(members)} active member(s): {listed}"


def register(subparsers: Any) -> None:
    """Add ``asset-sink replay``."""
    parser = subparsers.add_parser(
        "replay",
        help="move the worker group's committed offsets (re-read or skip a range)",
        description="Show, and with --execute commit, new offsets of the worker's consumer "
        "group on its topic. Targets are clamped to [low watermark, high watermark]. The "
        "group must have no active member (stop the workers first). Re-read events are "
        "stored once: the worker counts them as duplicates.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--to-earliest", action="store_true", help="the low watermark (everything still retained)"
    )
    where.add_argument(
        "--to-latest",
        action="store_true",
        help="the high watermark (skip everything not yet consumed)",
    )
    where.add_argument(
        "--to-datetime",
        type=instant_arg,
        metavar="T",
        help="the first message at or after T (ISO 8601, no offset = UTC, or "
        "a duration ago: 2h, 3d); the end when nothing is that recent",
    )
    where.add_argument(
        "--shift-by",
        type=int,
        metavar="N",
        help="N messages from the committed offset (negative = back)",
    )
    where.add_argument("--to-offset", type=int, metavar="O", help="offset O on each partition")
    parser.add_argument(
        "--partitions",
        type=_partitions_arg,
        default=None,
        metavar="P,…",
        help="only these partitions (0,1 or 0-3; default all)",
    )
    add_kafka_options(parser)
    add_mode_options(parser, "commit the target offsets")
    parser.set_defaults(func=_run)
