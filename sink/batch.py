"""A batch of consumed messages: what it holds, when it is ready, which offsets it covers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Batch:
    """Messages in consumption order, closed on count, value bytes or age.

    ``next_offsets`` maps ``(topic, partition)`` to the offset to commit once every message
    of the batch is stored or dead-lettered (last offset + 1). ``first_timestamp`` keeps the
    Kafka timestamp (seconds) of each partition's oldest message, for lag-in-seconds.
    """

    max_events: int
    max_bytes: int
    max_wait_s: float
    messages: list[Any] = field(default_factory=list)
    value_bytes: int = 0
    opened_at: float = 0.0  # time.monotonic() of the first message
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    first_timestamp: dict[tuple[str, int], float] = field(default_factory=dict)

    def successor(self) -> Batch:
        """A new empty batch with the same limits."""
        return Batch(max_events=self.max_events, max_bytes=self.max_bytes,
                     max_wait_s=self.max_wait_s)

    def add(self, msg: Any) -> None:
        if not self.messages:
            self.opened_at = time.monotonic()
        self.messages.append(msg)
        value = msg.value()
        if value is not None:
            self.value_bytes += len(value)
        tp = (msg.topic(), msg.partition())
        self.next_offsets[tp] = msg.offset() + 1
        if tp not in self.first_timestamp:
            kind, ts = msg.timestamp()
            self.first_timestamp[tp] = ts / 1000.0 if kind and ts > 0 else time.time()

    def __len__(self) -> int:
        return len(self.messages)

    def room(self) -> int:
        """How many more messages fit before the count limit."""
        return max(self.max_events - len(self.messages), 0)

    def ready(self) -> bool:
        if not self.messages:
            return False
        return (
            len(self.messages) >= self.max_events
            or self.value_bytes >= self.max_bytes
            or time.monotonic() - self.opened_at >= self.max_wait_s
        )

    def wait_left(self) -> float:
        """Seconds until the age limit closes the batch (the full wait when empty)."""
        if not self.messages:
            return self.max_wait_s
        return max(self.max_wait_s - (time.monotonic() - self.opened_at), 0.0)

    def drop_partitions(self, partitions: set[tuple[str, int]]) -> int:
        """Forget the messages of ``partitions`` (revoked or lost); returns how many."""
        if not partitions or not self.messages:
            return 0
        kept = [m for m in self.messages if (m.topic(), m.partition()) not in partitions]
        dropped = len(self.messages) - len(kept)
        self.messages = kept
        self.value_bytes = sum(len(m.value() or b"") for m in kept)
        for tp in partitions:
            self.next_offsets.pop(tp, None)
            self.first_timestamp.pop(tp, None)
        return dropped

    def clear(self) -> None:
        self.messages = []
        self.value_bytes = 0
        self.next_offsets = {}
        self.first_timestamp = {}
