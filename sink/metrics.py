"""Every Prometheus metric of the worker, in one registry.

Labels are bounded: topic, partition, reason, result, stage — never tenant, asset or event ids.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

# Upper bounds (seconds) of the ingest-delay histogram; the writer counts rows per bucket in SQL.
INGEST_DELAY_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0
)

MESSAGES_CONSUMED = Counter(
    "asset_sink_messages_consumed", "Kafka messages taken into a batch.", ["topic"],
    registry=REGISTRY,
)
EVENTS_WRITTEN = Counter(
    "asset_sink_events_written",
    "Valid events handled by the writer: inserted, or duplicate of a stored identical event.",
    ["result"], registry=REGISTRY,
)
EVENTS_REJECTED = Counter(
    "asset_sink_events_rejected", "Messages rejected to the dead-letter topic, by reason.",
    ["reason"], registry=REGISTRY,
)
TOMBSTONES = Counter(
    "asset_sink_tombstones", "Messages with a null value, counted and skipped.",
    registry=REGISTRY,
)
DLQ_MESSAGES = Counter(
    "asset_sink_dlq_messages", "Messages acknowledged by the dead-letter topic.",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "asset_sink_consumer_lag",
    "Messages between the group's committed offset and the high watermark.",
    ["topic", "partition"], registry=REGISTRY,
)
CONSUMER_LAG_SECONDS = Gauge(
    "asset_sink_consumer_lag_seconds",
    "Age of the oldest consumed but not yet committed message (0 when caught up).",
    ["topic", "partition"], registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "asset_sink_batch_size", "Messages per flushed batch.",
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000), registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "asset_sink_batch_duration_seconds", "Time spent per batch in each stage.", ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
LAST_COMMIT = Gauge(
    "asset_sink_last_commit_timestamp_seconds",
    "Unix time of the last successful offset commit.", registry=REGISTRY,
)
RETRIES = Counter(
    "asset_sink_retries", "Transient failures that paused consumption, by component.",
    ["component"], registry=REGISTRY,
)
READY = Gauge(
    "asset_sink_ready", "1 when partitions are assigned and PostgreSQL answers.",
    registry=REGISTRY,
)


class BulkHistogram(Collector):
    """A histogram fed with per-bucket counts, so a batch's rows are observed in one call.

    The writer aggregates per-row values into buckets in SQL; observing row by row in Python
    would be per-event work on the hot path.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = tuple(buckets)
        self._counts = [0.0] * (len(self._bounds) + 1)  # last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._bounds

    def observe_counts(self, counts: Iterable[tuple[int, float]], total: float) -> None:
        """Add ``(bucket_index, count)`` pairs (index ``len(bounds)`` is +Inf) and their sum.

        Counts may be fractional when they are estimated from a sample of rows."""
        with self._lock:
            for index, count in counts:
                self._counts[min(index, len(self._bounds))] += count
            self._sum += total

    def collect(self) -> Iterable[HistogramMetricFamily]:
        with self._lock:
            cumulative, running = [], 0.0
            for bound, count in zip((*self._bounds, float("inf")), self._counts, strict=True):
                running += count
                cumulative.append((_le(bound), running))
            total = self._sum
        yield HistogramMetricFamily(self._name, self._doc, buckets=cumulative, sum_value=total)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


INGEST_DELAY = BulkHistogram(
    "asset_sink_ingest_delay_seconds",
    "ingested_at minus recorded_at of inserted events.",
    INGEST_DELAY_BUCKETS,
)
REGISTRY.register(INGEST_DELAY)
