"""The dead-letter topic: where every rejected message goes, with why.

A dead-letter record keeps the original key, value and headers, and adds headers (all
prefixed ``asset-sink.``): ``reason`` (machine-readable), ``detail`` (a sentence naming the
field and rule), ``field``, ``original.topic``, ``original.partition``, ``original.offset``,
``original.timestamp`` (ms since the epoch), ``sink.version`` and ``rejected.at`` (RFC 3339).

:meth:`DeadLetterPublisher.publish` returns only once the broker acknowledged every record
(``acks=all``, idempotent producer); otherwise it raises :class:`RetryableError` and the
caller must not commit the source offsets. Delivery to the dead-letter topic is therefore
at-least-once: a crash between the acknowledgement and the offset commit sends a record twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Producer

from sink import __version__, metrics
from sink.contract import Rejection
from sink.errors import RetryableError

log = logging.getLogger(__name__)

HEADER_PREFIX = "asset-sink."
# A record the broker refuses as too large is resent with its value cut to this size, with
# the original size in a header: the source message stays in its topic for inspection.
TRUNCATED_VALUE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected source message and why it was rejected."""

    rejection: Rejection
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] | None


Headers = list[tuple[str, str | bytes | None]]


def dead_letter_headers(letter: DeadLetter, *, rejected_at: str) -> Headers:
    """The original headers followed by the sink's own."""
    out: Headers = list(letter.headers or ())
    own = {
        "reason": str(letter.rejection.reason),
        "detail": letter.rejection.detail,
        "field": letter.rejection.field,
        "original.topic": letter.topic,
        "original.partition": str(letter.partition),
        "original.offset": str(letter.offset),
        "original.timestamp": "" if letter.timestamp_ms is None else str(letter.timestamp_ms),
        "sink.version": __version__,
        "rejected.at": rejected_at,
    }
    out.extend((HEADER_PREFIX + k, v.encode("utf-8", "replace")) for k, v in own.items())
    return out


class DeadLetterPublisher:
    """Produces dead-letter records and waits for their acknowledgement."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        kafka_properties: Mapping[str, str] | None = None,
        *,
        timeout_s: float = 30.0,
    ) -> None:
        conf: dict[str, Any] = {
            # client properties (security, etc.) are shared with the consumer; consumer-only
            # ones would make the producer complain, so pass through only what applies.
            **{k: v for k, v in (kafka_properties or {}).items() if _applies_to_producer(k)},
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "client.id": "asset-event-sink-dlq",
        }
        self._producer = Producer(conf)
        self._topic = topic
        self._timeout_s = timeout_s

    @property
    def topic(self) -> str:
        return self._topic

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Send every letter and block until all are acknowledged.

        Raises :class:`RetryableError` if any record was not acknowledged within the timeout;
        the caller then keeps the source offsets uncommitted and retries the batch.
        """
        if not letters:
            return
        rejected_at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        failures: list[str] = []
        pending = {"n": 0}

        def on_delivery(err: KafkaError | None, msg: Any, letter: DeadLetter) -> None:
            pending["n"] -= 1
            if err is None:
                metrics.DLQ_MESSAGES.inc()
                return
            if err.code() == KafkaError.MSG_SIZE_TOO_LARGE and letter.value is not None and len(
                letter.value
            ) > TRUNCATED_VALUE_BYTES:
                self._produce(letter, rejected_at, on_delivery, pending, truncate=True)
                return
            failures.append(f"{letter.topic}[{letter.partition}]@{letter.offset}: {err.str()}")

        for letter in letters:
            self._produce(letter, rejected_at, on_delivery, pending, truncate=False)
        remaining = self._producer.flush(self._timeout_s)
        if pending["n"] > 0:  # a truncated resend was queued from a callback during flush
            remaining = self._producer.flush(self._timeout_s)
        if remaining or failures:
            metrics.RETRIES.labels(component="dlq").inc()
            raise RetryableError(
                f"dead-letter topic {self._topic!r} did not acknowledge "
                f"{remaining + len(failures)} record(s): {'; '.join(failures[:3])}"
            )

    def _produce(
        self,
        letter: DeadLetter,
        rejected_at: str,
        on_delivery: Any,
        pending: dict[str, int],
        *,
        truncate: bool,
    ) -> None:
        headers = dead_letter_headers(letter, rejected_at=rejected_at)
        value = letter.value
        if truncate and value is not None:
            headers.append((HEADER_PREFIX + "value.truncated.from", str(len(value)).encode()))
            value = value[:TRUNCATED_VALUE_BYTES]
        def delivered(err: KafkaError | None, msg: Any) -> None:
            on_delivery(err, msg, letter)

        while True:
            try:
                self._producer.produce(
                    self._topic, key=letter.key, value=value, headers=headers,
                    on_delivery=delivered,
                )
                pending["n"] += 1
                return
            except BufferError:
                self._producer.poll(0.1)  # local queue full: serve callbacks, then retry

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.flush(timeout_s)


_CONSUMER_ONLY_PREFIXES = (
    "group.", "session.", "heartbeat.", "max.poll.", "auto.offset.", "fetch.", "queued.",
    "partition.assignment", "isolation.", "enable.partition.eof", "check.crcs",
    "auto.commit", "enable.auto", "consume.", "allow.auto.create",
)


def _applies_to_producer(prop: str) -> bool:
    return not prop.startswith(_CONSUMER_ONLY_PREFIXES)
