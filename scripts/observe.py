#!/usr/bin/env python3
"""Run the worker against the local stack under a realistic load and plot what its dashboard shows.

    eval "$(scripts/stack.sh env)"
    scripts/observe.py                         # both scenarios -> docs/img/*.png, *.csv, *.json
    scripts/observe.py --scenario healthy      # one of them
    scripts/observe.py --replot docs/img/healthy-run.json   # redraw from the saved series

Each scenario creates a fresh topic (6 partitions), a dead-letter topic and a fresh, migrated
database, starts ``asset-sink run`` as a subprocess, produces a steady stream (2,000 events/s
by default, about 1 % of it invalid in several ways, a few redelivered duplicates), scrapes
``/metrics`` and ``/readyz`` every second, and draws the series of the Grafana dashboard
(``deploy/helm/asset-event-sink/dashboards/asset-event-sink.json``) the way its PromQL does:
rates over a 5 s window, ``histogram_quantile`` over a 10 s window.

- ``healthy``: a burst of extra events in the middle, so lag rises and falls.
- ``postgres-outage``: the worker writes to a private PostgreSQL 15 (``scripts/stack.sh`` with
  its own ``SINK_STACK_DIR`` and port) that is stopped for 15 s mid-run, then started again.

Output per scenario, in ``--out`` (default ``docs/img``): ``<name>.png``; ``<name>.csv`` with
every scraped sample (one row per scrape, one column per series, ``t_s`` = seconds since the
producer started) plus ``observe_*`` columns: what the load generator sent, the HTTP status of
``/readyz`` and the group's lag per partition as the brokers report it (committed offsets and
fresh high watermarks, what kafka-exporter and KEDA see); ``<name>.json`` with the
scenario, the events produced by kind, the marked intervals, the worker's backoff log lines,
end-of-run checks (rows stored, dead letters) and the figures quoted in docs/runbook.md.
Needs ``pip install -e '.[docs]'`` (matplotlib). Exit 1 if an end-of-run check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sink.migrate import apply_migrations  # noqa: E402

PARTITIONS = 6
SCRAPE_EVERY_S = 1.0
RATE_WINDOW_S = 5.0  # rate() window of the plots
QUANTILE_WINDOW_S = 10.0  # histogram_quantile() window of the plots
STATS_INTERVAL_MS = 1000  # librdkafka statistics (consumer lag gauge) every second, not 5 s
DRAIN_TIMEOUT_S = 180.0  # after the last event: wait this long at most for the worker to finish

# Invalid messages: kind -> share of the invalid ones. The kind is the reason expected.
INVALID_KINDS: dict[str, float] = {
    "schema": 0.45,
    "invalid_json": 0.15,
    "unsupported_version": 0.15,
    "nul_character": 0.10,
    "not_an_object": 0.08,
    "conflicting_duplicate": 0.05,
    "too_large": 0.02,
}
EVENT_TYPES = (
    ("task.started", None), ("task.succeeded", "success"), ("task.failed", "failure"),
    ("task.succeeded", "success"), ("asset.status_changed", None), ("lease.acquired", None),
)
ERRORS = (("IP_BANNED", 403), ("TIMEOUT", 504), ("CAPTCHA", 429), ("BAD_CREDENTIALS", 401))


@dataclass(frozen=True, slots=True)
class Scenario:
    """One observed run. Times are seconds after the producer starts."""

    name: str
    rate: float = 2000.0  # events/s, steady
    duration_s: float = 90.0  # of the steady stream
    invalid_ratio: float = 0.01
    duplicates_every_s: float = 10.0  # re-send a few recent events (a producer retrying)
    duplicates_each: int = 20
    burst_at_s: float | None = None
    burst_events: int = 0
    burst_over_s: float = 3.0
    outage_at_s: float | None = None
    outage_s: float = 15.0

    @property
    def title(self) -> str:
        load = f"{self.rate:,.0f} events/s for {self.duration_s:.0f} s"
        if self.burst_at_s is not None:
            return (f"healthy run: {load}, burst of {self.burst_events:,} events at "
                    f"t={self.burst_at_s:.0f} s")
        if self.outage_at_s is not None:
            return f"PostgreSQL outage: {load}, PostgreSQL stopped for {self.outage_s:.0f} s"
        return load


SCENARIOS = {
    "healthy": Scenario("healthy-run", burst_at_s=40.0, burst_events=60_000),
    "postgres-outage": Scenario("postgres-outage", outage_at_s=30.0, outage_s=15.0),
}


# ---------------------------------------------------------------------------- load generator


class Generator:
    """Message values shaped like the sample events; deterministic for a seed."""

    def __init__(self, seed: int) -> None:
        self._rnd = random.Random(seed)
        self._recent: list[tuple[bytes, bytes]] = []  # (key, value) of recent valid events
        self._counter = 0

    def valid(self) -> tuple[bytes, bytes]:
        rnd = self._rnd
        self._counter += 1
        now = dt.datetime.now(dt.UTC)
        event_type, outcome = rnd.choice(EVENT_TYPES)
        asset = f"acct-{rnd.randrange(2000):06d}"
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            "tenant_id": f"tenant-{rnd.choice('aaaabbbcdefgh')}",
            "asset_id": asset,
            "event_type": event_type,
            "occurred_at": (now - dt.timedelta(milliseconds=rnd.randrange(2000)))
            .isoformat(timespec="milliseconds"),
            "recorded_at": now.isoformat(timespec="milliseconds"),
            "version": "1.0",
            "correlation_id": f"corr-{self._counter // 4}",
            "task_type": rnd.choice(("login", "checkout", "scrape")),
            "provider_id": f"provider-{rnd.randrange(12)}",
            "sku_category": rnd.choice(("proxy", "account", "captcha")),
            "env": "prod",
            "source": f"worker-{rnd.randrange(20)}",
        }
        if outcome is not None:
            event["outcome"] = outcome
            event["latency_ms"] = rnd.randrange(40, 3000)
            if outcome == "failure":
                code, status = rnd.choice(ERRORS)
                event.update(error_code=code, http_status=status, severity="error",
                             error_message=f"{code.lower()} from upstream")
            else:
                event["http_status"] = 200
        if event_type == "asset.status_changed":
            event.update(old_status="active", new_status=rnd.choice(("idle", "banned")))
        if rnd.random() < 0.6:
            event["payload"] = {"attempt": 1 + rnd.randrange(3), "region": "eu-west-1"}
        value = orjson.dumps(event)
        key = asset.encode()
        self._recent.append((key, value))
        if len(self._recent) > 20_000:
            del self._recent[:10_000]
        return key, value

    def duplicates(self, n: int) -> list[tuple[bytes, bytes]]:
        """``n`` valid events sent a few seconds ago, byte for byte (stored once)."""
        old = self._recent[: max(len(self._recent) - 4000, 0)] or self._recent
        return self._rnd.sample(old, min(n, len(old)))

    def invalid(self) -> tuple[str, bytes | None, bytes]:
        """``(kind, key, value)``; kind is the rejection reason the worker must report."""
        rnd = self._rnd
        kind = rnd.choices(list(INVALID_KINDS), weights=list(INVALID_KINDS.values()))[0]
        key, value = self.valid()
        self._recent.pop()  # not a stored event: never re-send it as a duplicate
        event = orjson.loads(value)
        if kind == "schema":
            broken = rnd.choice((
                ("http_status", 700), ("latency_ms", -1), ("severity", "fatal"),
                ("event_id", "12345"), ("colour", "red"),
                ("occurred_at", event["occurred_at"][:19]),
            ))
            event[broken[0]] = broken[1]
            return kind, key, orjson.dumps(event)
        if kind == "invalid_json":
            return kind, key, value[: len(value) // 2]
        if kind == "unsupported_version":
            event["version"] = "2.0"
            return kind, key, orjson.dumps(event)
        if kind == "nul_character":
            event["error_message"] = "upstream said \x00"
            return kind, key, orjson.dumps(event)
        if kind == "not_an_object":
            return kind, None, rnd.choice((b"[1,2,3]", b'"task.failed"', b"null"))
        if kind == "too_large":
            event["payload"] = {"page": "x" * 70_000}
            return kind, key, orjson.dumps(event)
        # conflicting_duplicate: an event_id already sent, with other content
        old_key, old_value = self.duplicates(1)[0]
        event = orjson.loads(old_value)
        event["latency_ms"] = event.get("latency_ms", 0) + 1
        return kind, old_key, orjson.dumps(event)


class Load:
    """Produces the scenario's stream from a thread; counts what it sent, by kind."""

    def __init__(self, scenario: Scenario, bootstrap: str, topic: str, seed: int) -> None:
        self.scenario = scenario
        self.topic = topic
        self.counts: dict[str, int] = {
            "valid": 0, "duplicate": 0, **dict.fromkeys(INVALID_KINDS, 0)
        }
        self.sent = 0
        self.failed = 0
        self.burst: tuple[float, float] | None = None  # actual (start, end), seconds
        self._gen = Generator(seed)
        self._producer = Producer({
            "bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
            "enable.idempotence": True, "queue.buffering.max.messages": 500_000,
            "log_level": 4,
            "message.max.bytes": 1_048_576,
        })
        self._thread = threading.Thread(target=self._run, name="observe-load", daemon=True)
        self.started_at = 0.0  # monotonic

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed += 1

    def _send(self, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key,
                                       on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.01)
        self.sent += 1

    def _run(self) -> None:
        s, gen, rnd = self.scenario, self._gen, random.Random(7)
        planned = 0
        next_dups = s.duplicates_every_s
        try:
            while True:
                t = time.monotonic() - self.started_at
                if t >= s.duration_s:
                    break
                due = int(s.rate * t)
                burst_due = 0
                if s.burst_at_s is not None and t >= s.burst_at_s:
                    if self.burst is None:
                        self.burst = (t, t)
                    burst_due = int(s.burst_events * min((t - s.burst_at_s) / s.burst_over_s, 1))
                    due += burst_due
                while planned < due:
                    if rnd.random() < s.invalid_ratio:
                        kind, key, value = gen.invalid()
                    else:
                        kind, (key, value) = "valid", gen.valid()
                    self._send(key, value)
                    self.counts[kind] += 1
                    planned += 1
                if (self.burst is not None and self.burst[0] == self.burst[1]
                        and burst_due >= s.burst_events):
                    self.burst = (self.burst[0], time.monotonic() - self.started_at)
                if t >= next_dups:
                    for key, value in gen.duplicates(s.duplicates_each):
                        self._send(key, value)
                        self.counts["duplicate"] += 1
                    next_dups += s.duplicates_every_s
                self._producer.poll(0)
                time.sleep(0.005)
        finally:
            self.failed += self._producer.flush(60)


# ---------------------------------------------------------------------------- scraping


@dataclass(slots=True)
class Scrape:
    """One scrape: seconds since the producer started, and every sample by series name."""

    t: float
    unix: float
    samples: dict[str, float] = field(default_factory=dict)


def series_name(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def scrape_once(port: int) -> tuple[dict[str, float], int]:
    """The worker's samples (``_created`` ones left out) and the HTTP status of ``/readyz``."""
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            out[series_name(sample.name, sample.labels)] = float(sample.value)
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return out, status


class Scraper:
    """Scrapes every second from a thread, adding the load generator's counters."""

    def __init__(self, port: int, load: Load, worker: subprocess.Popen[bytes], *,
                 bootstrap: str, group: str) -> None:
        self.port = port
        self.load = load
        self.worker = worker
        self.scrapes: list[Scrape] = []
        # The group's lag as the broker sees it (what kafka-exporter and KEDA read): committed
        # offsets from the coordinator, high watermarks queried afresh. Never joins the group.
        self._broker = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                 "enable.auto.commit": False, "log_level": 4})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="observe-scrape", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._broker.close()

    def _broker_lag(self) -> dict[str, float]:
        topic = self.load.topic
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        out = {}
        for tp in self._broker.committed(tps, timeout=2):
            low, high = self._broker.get_watermark_offsets(tp, timeout=2, cached=False)
            start = tp.offset if tp.offset >= 0 else low
            out[series_name("observe_broker_group_lag", {"partition": str(tp.partition)})] = \
                float(max(high - start, 0))
        return out

    def _run(self) -> None:
        tick = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            record = Scrape(t=now - self.load.started_at, unix=time.time())
            try:
                samples, status = scrape_once(self.port)
                record.samples.update(samples)
                record.samples["observe_readyz_http_status"] = float(status)
            except (OSError, urllib.error.URLError):
                if self.worker.poll() is not None:
                    return
            with contextlib.suppress(Exception):
                record.samples.update(self._broker_lag())
            for kind, n in self.load.counts.items():
                record.samples[series_name("observe_produced_total", {"kind": kind})] = float(n)
            self.scrapes.append(record)
            tick += SCRAPE_EVERY_S
            self._stop.wait(max(tick - time.monotonic(), 0.0))


def write_csv(path: Path, scrapes: Sequence[Scrape]) -> None:
    columns: dict[str, None] = {}
    for s in scrapes:
        columns.update(dict.fromkeys(s.samples))
    names = sorted(columns, key=lambda c: (c.startswith("observe_"), c))
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["t_s", "unix_time", *names])
        for s in scrapes:
            out.writerow([f"{s.t:.3f}", f"{s.unix:.3f}",
                          *(_fmt(s.samples.get(n)) for n in names)])


def read_csv(path: Path) -> list[Scrape]:
    with path.open(newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows)
        out = []
        for row in rows:
            samples = {n: float(v) for n, v in zip(header[2:], row[2:], strict=True) if v != ""}
            out.append(Scrape(t=float(row[0]), unix=float(row[1]), samples=samples))
    return out


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return ""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(round(value, 6))


# ---------------------------------------------------------------------------- PromQL, offline


def _series(scrapes: Sequence[Scrape], prefix: str) -> dict[str, dict[str, str]]:
    """Series names starting with ``prefix`` (a metric name) -> their labels."""
    found: dict[str, dict[str, str]] = {}
    for s in scrapes:
        for name in s.samples:
            if name == prefix or name.startswith(prefix + "{"):
                found.setdefault(name, _labels(name))
    return found


def _labels(name: str) -> dict[str, str]:
    return dict(_LABEL.findall(name[name.find("{"):])) if "{" in name else {}


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _window_start(scrapes: Sequence[Scrape], i: int, window: float) -> int:
    """The earliest scrape at most ``window`` (give or take half a scrape) before scrape i."""
    j = i
    while j > 0 and scrapes[i].t - scrapes[j - 1].t <= window + SCRAPE_EVERY_S / 2:
        j -= 1
    return j


def rate(scrapes: Sequence[Scrape], names: Sequence[str], window: float) -> list[float]:
    """Per-second increase of the sum of counters ``names`` over ``window`` (absent = 0)."""
    total = [sum(s.samples.get(n, 0.0) for n in names) for s in scrapes]
    out = []
    for i, s in enumerate(scrapes):
        j = _window_start(scrapes, i, window)
        span = s.t - scrapes[j].t
        out.append((total[i] - total[j]) / span if span > 0 else math.nan)
    return out


def histogram_quantile(q: float, scrapes: Sequence[Scrape], metric: str,
                       match: dict[str, str], window: float) -> list[float]:
    """``histogram_quantile(q, sum by (le) (rate(metric_bucket{match}[window])))`` per scrape."""
    buckets: dict[float, list[str]] = {}
    for name, labels in _series(scrapes, metric + "_bucket").items():
        if all(labels.get(k) == v for k, v in match.items()):
            buckets.setdefault(float(labels["le"]), []).append(name)
    bounds = sorted(buckets)
    out = []
    for i, s in enumerate(scrapes):
        j = _window_start(scrapes, i, window)
        counts = [sum(s.samples.get(n, 0.0) - scrapes[j].samples.get(n, 0.0)
                      for n in buckets[b]) for b in bounds]
        out.append(_quantile(q, bounds, counts))
    return out


def _quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float:
    """Prometheus' histogram_quantile on cumulative bucket counts (last bound +Inf)."""
    if not bounds or cumulative[-1] <= 0:
        return math.nan
    rank = q * cumulative[-1]
    for k, (bound, count) in enumerate(zip(bounds, cumulative, strict=True)):
        if count >= rank:
            if math.isinf(bound):
                return bounds[k - 1] if k > 0 else math.nan
            lower, below = (bounds[k - 1], cumulative[k - 1]) if k > 0 else (0.0, 0.0)
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
    return math.nan


def gauge(scrapes: Sequence[Scrape], name: str) -> list[float]:
    return [s.samples.get(name, math.nan) for s in scrapes]


# ---------------------------------------------------------------------------- the run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """A PostgreSQL 15 of scripts/stack.sh in its own SINK_STACK_DIR and port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="observe-stack-"))
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._env = {k: v for k, v in os.environ.items()
                     if k not in ("SINK_DATABASE_URL", "SINK_TEST_DATABASE_URLS")}
        self._env.update(SINK_STACK_DIR=str(self.dir), SINK_STACK_PG15_PORT=str(self.port))

    def stack(self, *args: str) -> None:
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), *args], env=self._env, check=True,
                       stdout=subprocess.DEVNULL)

    def up(self) -> None:
        self.stack("up", "--pg", "debian", "--no-kafka")

    def down(self) -> None:
        self.stack("down", "pg15")

    def purge(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stack("down", "--purge", "pg15")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    name = f"observe_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server_url, dbname=name)
    try:
        apply_migrations(url)
        yield url
    finally:
        with contextlib.suppress(psycopg.Error), \
                psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_topics(bootstrap: str) -> Iterator[tuple[str, str]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"observe-{uuid.uuid4().hex[:12]}"
    dlq = f"{topic}.dlq"
    for future in admin.create_topics([NewTopic(topic, PARTITIONS, 1),
                                       NewTopic(dlq, 1, 1)]).values():
        future.result(30)
    try:
        yield topic, dlq
    finally:
        for future in admin.delete_topics([topic, dlq]).values():
            with contextlib.suppress(Exception):
                future.result(30)


def dlq_count(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"observe-{uuid.uuid4()}"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return int(high - low)
    finally:
        consumer.close()


def wait_ready(port: int, worker: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited ({worker.returncode}); see {log_path}")
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            if resp.status == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"the worker was not ready within 60 s; see {log_path}")


def run_scenario(scenario: Scenario, out: Path, bootstrap: str, shared_db: str | None) -> int:
    pg = PrivatePostgres() if scenario.outage_at_s is not None else None
    work = Path(tempfile.mkdtemp(prefix=f"observe-{scenario.name}-"))
    log_path = work / "worker.log"
    markers: dict[str, list[float]] = {}
    try:
        if pg is not None:
            print(f"observe: private PostgreSQL 15 on port {pg.port}", file=sys.stderr)
            pg.up()
            server = pg.url
        elif shared_db:
            server = shared_db
        else:
            raise SystemExit('SINK_DATABASE_URL is not set; run: eval "$(scripts/stack.sh env)"')
        with fresh_database(server) as db_url, fresh_topics(bootstrap) as (topic, dlq):
            port = free_port()
            env = {**os.environ, "SINK_BOOTSTRAP_SERVERS": bootstrap,
                   "SINK_DATABASE_URL": db_url, "SINK_TOPIC": topic, "SINK_DLQ_TOPIC": dlq,
                   "SINK_GROUP_ID": f"{topic}-sink", "SINK_METRICS_PORT": str(port),
                   "SINK_KAFKA_STATISTICS_INTERVAL_MS": str(STATS_INTERVAL_MS)}
            exe = shutil.which("asset-sink")
            if exe is None:
                raise SystemExit("asset-sink is not on PATH; run: pip install -e .")
            print(f"observe: {scenario.name}: topic {topic} ({PARTITIONS} partitions), "
                  f"worker log {log_path}", file=sys.stderr)
            with log_path.open("wb") as log_fh:
                worker = subprocess.Popen([exe, "run"], env=env, stdout=log_fh, stderr=log_fh)
            try:
                wait_ready(port, worker, log_path)
                load = Load(scenario, bootstrap, topic, seed=20261201)
                scraper = Scraper(port, load, worker, bootstrap=bootstrap,
                                  group=env["SINK_GROUP_ID"])
                load.start()
                scraper.start()
                if pg is not None and scenario.outage_at_s is not None:
                    markers["outage"] = _outage(pg, load, scenario)
                load.join()
                _wait_caught_up(scraper, load)
                time.sleep(5 * SCRAPE_EVERY_S)  # a flat tail
                scraper.stop()
            finally:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(60)
                except subprocess.TimeoutExpired:
                    worker.kill()
            if load.burst is not None:
                markers["burst"] = list(load.burst)
            checks = _checks(db_url, bootstrap, dlq, load, worker.returncode)
        meta = {
            "scenario": asdict(scenario),
            "title": scenario.title,
            "command": "scripts/observe.py --scenario "
            + ("healthy" if pg is None else "postgres-outage"),
            "partitions": PARTITIONS,
            "worker_settings": {"SINK_KAFKA_STATISTICS_INTERVAL_MS": STATS_INTERVAL_MS,
                                "others": "defaults of asset-sink run"},
            "scrape_every_s": SCRAPE_EVERY_S,
            "rate_window_s": RATE_WINDOW_S,
            "quantile_window_s": QUANTILE_WINDOW_S,
            "produced": load.counts,
            "markers": markers,
            "backoffs": _backoffs(log_path, load),
            "checks": checks,
            "cpus": os.cpu_count(),
            "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        write_csv(out / f"{scenario.name}.csv", scraper.scrapes)
        meta["figures"] = figures(meta, scraper.scrapes)
        (out / f"{scenario.name}.json").write_text(json.dumps(meta, indent=2) + "\n")
        plot(meta, scraper.scrapes, out / f"{scenario.name}.png")
        print(json.dumps({"scenario": scenario.name, "checks": checks,
                          "figures": meta["figures"]}, indent=2))
        return 0 if checks["ok"] else 1
    finally:
        if pg is not None:
            pg.purge()
        shutil.rmtree(work, ignore_errors=True)


def _outage(pg: PrivatePostgres, load: Load, scenario: Scenario) -> list[float]:
    """Stop PostgreSQL at outage_at_s, start it outage_s later: [stopped, started] in t."""
    assert scenario.outage_at_s is not None
    while time.monotonic() - load.started_at < scenario.outage_at_s:
        time.sleep(0.05)
    pg.down()
    stopped = time.monotonic() - load.started_at
    print(f"observe: PostgreSQL stopped at t={stopped:.1f} s", file=sys.stderr)
    while time.monotonic() - load.started_at < stopped + scenario.outage_s:
        time.sleep(0.05)
    pg.up()
    started = time.monotonic() - load.started_at
    print(f"observe: PostgreSQL answering again at t={started:.1f} s", file=sys.stderr)
    return [stopped, started]


def _wait_caught_up(scraper: Scraper, load: Load) -> None:
    """Until the worker consumed everything sent and every partition's lag is 0."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        time.sleep(SCRAPE_EVERY_S)
        if not scraper.scrapes:
            continue
        samples = scraper.scrapes[-1].samples
        consumed = sum(v for k, v in samples.items()
                       if k.startswith("asset_sink_messages_consumed_total"))
        lag = sum(v for k, v in samples.items() if k.startswith("asset_sink_consumer_lag{"))
        if consumed >= load.sent and lag == 0:
            return
    print("observe: the worker did not catch up in time", file=sys.stderr)


def _checks(db_url: str, bootstrap: str, dlq: str, load: Load, returncode: int | None
            ) -> dict[str, Any]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM asset_events").fetchone()
    assert row is not None
    invalid = sum(load.counts[k] for k in INVALID_KINDS)
    dead = dlq_count(bootstrap, dlq)
    checks: dict[str, Any] = {
        "valid_events_produced": load.counts["valid"],
        "rows_stored": row[0],
        "distinct_event_ids_stored": row[1],
        "invalid_produced": invalid,
        "dead_letters": dead,
        "producer_failures": load.failed,
        "worker_exit_code": returncode,
    }
    checks["ok"] = (row[0] == row[1] == load.counts["valid"] and dead == invalid
                    and load.failed == 0 and returncode == 0)
    return checks


def _backoffs(log_path: Path, load: Load) -> list[dict[str, Any]]:
    """The worker's ``backoff`` log lines, with t = seconds since the producer started."""
    start_unix = time.time() - (time.monotonic() - load.started_at)
    out = []
    for line in log_path.read_bytes().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            rec = orjson.loads(line)
            if rec.get("action") in ("backoff", "db_connect"):
                ts = dt.datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp()
                out.append({"t": round(ts - start_unix, 3), "action": rec["action"],
                            "component": rec.get("component"), "attempt": rec.get("attempt"),
                            "msg": rec["msg"][:160]})
    return out


# ---------------------------------------------------------------------------- figures


def _steady(scrapes: Sequence[Scrape], meta: dict[str, Any]) -> list[int]:
    """Indices of scrapes in steady state: producing, away from bursts/outages and the start."""
    s = meta["scenario"]
    quiet: list[tuple[float, float]] = [(-1e9, 10.0), (s["duration_s"] - 1, 1e9)]
    for lo, hi in meta["markers"].values():
        quiet.append((lo - 2, hi + 30))
    return [i for i, x in enumerate(scrapes) if not any(lo <= x.t <= hi for lo, hi in quiet)]


def _pct(values: Sequence[float], q: float) -> float:
    clean = sorted(v for v in values if not math.isnan(v))
    if not clean:
        return math.nan
    return clean[min(int(q * len(clean)), len(clean) - 1)]


def figures(meta: dict[str, Any], scrapes: Sequence[Scrape]) -> dict[str, Any]:
    """The numbers quoted in the runbook, from the same computations as the plot."""
    ins = rate(scrapes, ["asset_sink_events_written_total{result=\"inserted\"}"], RATE_WINDOW_S)
    rej_names = list(_series(scrapes, "asset_sink_events_rejected_total"))
    rej = rate(scrapes, rej_names, RATE_WINDOW_S)
    lag = [sum(v for k, v in x.samples.items() if k.startswith("asset_sink_consumer_lag{"))
           for x in scrapes]
    lag_s = [max([v for k, v in x.samples.items()
                  if k.startswith("asset_sink_consumer_lag_seconds{")] or [math.nan])
             for x in scrapes]
    since = _since_commit(scrapes)
    write99 = histogram_quantile(0.99, scrapes, "asset_sink_batch_duration_seconds",
                                 {"stage": "write"}, QUANTILE_WINDOW_S)
    write50 = histogram_quantile(0.5, scrapes, "asset_sink_batch_duration_seconds",
                                 {"stage": "write"}, QUANTILE_WINDOW_S)
    d50 = histogram_quantile(0.5, scrapes, "asset_sink_ingest_delay_seconds", {},
                             QUANTILE_WINDOW_S)
    d99 = histogram_quantile(0.99, scrapes, "asset_sink_ingest_delay_seconds", {},
                             QUANTILE_WINDOW_S)
    broker = [sum(v for k, v in x.samples.items() if k.startswith("observe_broker_group_lag{"))
              for x in scrapes]
    steady = _steady(scrapes, meta)
    last = scrapes[-1].samples
    size_sum = last.get("asset_sink_batch_size_sum", 0.0)
    size_n = last.get("asset_sink_batch_size_count", 0.0)
    steady_lag = max((broker[i] for i in steady), default=0.0)
    peak = max(range(len(broker)), key=broker.__getitem__)
    back = next((scrapes[i].t for i in range(peak, len(scrapes)) if broker[i] <= steady_lag),
                math.nan)
    not_ready = [x.t for x in scrapes if x.samples.get("asset_sink_ready") == 0]
    out: dict[str, Any] = {
        "steady_inserted_per_s_median": _pct([ins[i] for i in steady], 0.5),
        "steady_rejected_per_s_median": _pct([rej[i] for i in steady], 0.5),
        "peak_inserted_per_s": max(v for v in ins if not math.isnan(v)),
        "steady_total_lag_max": max((lag[i] for i in steady), default=math.nan),
        "steady_lag_seconds_max": _pct([lag_s[i] for i in steady], 1.0),
        "steady_since_commit_max_s": _pct([since[i] for i in steady], 1.0),
        "steady_write_p50_s_median": _pct([write50[i] for i in steady], 0.5),
        "steady_write_p99_s_median": _pct([write99[i] for i in steady], 0.5),
        "steady_ingest_delay_p50_s_median": _pct([d50[i] for i in steady], 0.5),
        "steady_ingest_delay_p99_s_median": _pct([d99[i] for i in steady], 0.5),
        "steady_broker_total_lag_max": steady_lag,
        "peak_total_lag": max(lag),
        "peak_broker_total_lag": broker[peak],
        "peak_broker_total_lag_at_t": scrapes[peak].t,
        "broker_lag_back_to_steady_at_t": back,
        "max_lag_seconds": _pct(lag_s, 1.0),
        "max_ingest_delay_p99_s": _pct(d99, 1.0),
        "max_since_commit_s": _pct(since, 1.0),
        "mean_batch_size": size_sum / size_n if size_n else math.nan,
        "batches": size_n,
        "not_ready_from_t": not_ready[0] if not_ready else None,
        "not_ready_until_t": not_ready[-1] if not_ready else None,
        "not_ready_scrapes": len(not_ready),
        "retries_total": {k: v for k, v in last.items()
                          if k.startswith("asset_sink_retries_total")},
        "rejected_total": {_labels(k)["reason"]: v for k, v in last.items()
                           if k.startswith("asset_sink_events_rejected_total")},
        "duplicates_total": last.get("asset_sink_events_written_total{result=\"duplicate\"}"),
        "inserted_total": last.get("asset_sink_events_written_total{result=\"inserted\"}"),
    }
    outage = meta["markers"].get("outage")
    if outage:
        commits = [x.t for x, s in zip(scrapes, since, strict=True)
                   if x.t > outage[1] and not math.isnan(s) and s < SCRAPE_EVERY_S * 2]
        out["first_commit_after_restart_t"] = commits[0] if commits else None
        during = [i for i, x in enumerate(scrapes) if outage[0] <= x.t <= outage[1]]
        out["worker_gauge_total_lag_max_during_outage"] = max(lag[i] for i in during)
        out["broker_total_lag_max_during_outage"] = max(broker[i] for i in during)
        out["readyz_503_scrapes"] = sum(
            1 for x in scrapes if x.samples.get("observe_readyz_http_status") == 503)
    return {k: (round(v, 4) if isinstance(v, float) and not math.isnan(v) else v)
            for k, v in out.items()}


def _since_commit(scrapes: Sequence[Scrape]) -> list[float]:
    out = []
    for x in scrapes:
        last = x.samples.get("asset_sink_last_commit_timestamp_seconds", 0.0)
        out.append(x.unix - last if last > 0 else math.nan)
    return out


# ---------------------------------------------------------------------------- plotting


def plot(meta: dict[str, Any], scrapes: Sequence[Scrape], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [x.t for x in scrapes]
    fig, axes = plt.subplots(3, 3, figsize=(18, 12.5), sharex=True)
    fig.suptitle(
        f"asset-event-sink — {meta['title']}\n"
        f"1 worker, {meta['partitions']} partitions, default settings (librdkafka statistics "
        f"every {STATS_INTERVAL_MS / 1000:g} s); scraped every "
        f"{meta['scrape_every_s']:.0f} s; rates over {meta['rate_window_s']:.0f} s, "
        f"quantiles over {meta['quantile_window_s']:.0f} s (the dashboard's queries)",
        fontsize=14,
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    # 1. throughput by result (+ what the load generator sent)
    ax = axes[0][0]
    for i, result in enumerate(("inserted", "duplicate")):
        name = f'asset_sink_events_written_total{{result="{result}"}}'
        ax.plot(t, rate(scrapes, [name], RATE_WINDOW_S), color=colors[i], label=result)
    produced = list(_series(scrapes, "observe_produced_total"))
    ax.plot(t, rate(scrapes, produced, RATE_WINDOW_S), color="grey", ls="--", lw=1,
            label="produced (load generator)")
    _axis(ax, "Events written per second by result", "events/s")

    # 2. rejections by reason + dead-letter acknowledgements
    ax = axes[0][1]
    for i, (name, labels) in enumerate(sorted(
            _series(scrapes, "asset_sink_events_rejected_total").items(),
            key=lambda kv: kv[1]["reason"])):
        ax.plot(t, rate(scrapes, [name], RATE_WINDOW_S), color=colors[i % 10],
                label=labels["reason"])
    ax.plot(t, rate(scrapes, ["asset_sink_dlq_messages_total"], RATE_WINDOW_S), color="black",
            ls=":", label="acknowledged by the DLQ")
    _axis(ax, "Rejections per second by reason", "messages/s", legend_cols=2)

    # 3. retries by component
    ax = axes[0][2]
    retries = _series(scrapes, "asset_sink_retries_total")
    for i, (name, labels) in enumerate(sorted(retries.items())):
        ax.plot(t, rate(scrapes, [name], RATE_WINDOW_S), color=colors[(i + 3) % 10],
                label=labels["component"])
    if not retries:
        ax.plot(t, [0.0] * len(t), color=colors[3], label="no retries")
    _axis(ax, "Retries per second by component", "retries/s")

    # 4./5. lag per partition, messages and seconds
    for ax, metric, title, unit in (
        (axes[1][0], "asset_sink_consumer_lag", "Consumer lag per partition", "messages"),
        (axes[1][1], "asset_sink_consumer_lag_seconds", "Consumer lag per partition (age)",
         "seconds"),
    ):
        found = _series(scrapes, metric)
        for name, labels in sorted(found.items(), key=lambda kv: int(kv[1]["partition"])):
            ax.plot(t, gauge(scrapes, name), lw=1.2, label=f"partition {labels['partition']}")
        broker = list(_series(scrapes, "observe_broker_group_lag"))
        if metric == "asset_sink_consumer_lag" and broker:
            ax.plot(t, [max((x.samples.get(n, math.nan) for n in broker), default=math.nan)
                        for x in scrapes],
                    color="black", ls="--", lw=1,
                    label="broker's view, largest partition\n(kafka-exporter, KEDA)")
        _axis(ax, title, unit, legend_cols=2, legend_loc="upper right", headroom=1.8)

    # 6. seconds since the last commit
    ax = axes[1][2]
    ax.plot(t, _since_commit(scrapes), color=colors[4], label="time() - last commit")
    _axis(ax, "Seconds since last offset commit", "seconds")

    # 7. batch stage durations
    ax = axes[2][0]
    for i, stage in enumerate(("validate", "write", "commit")):
        for q, ls in ((0.5, "-"), (0.99, "--")):
            ax.plot(t, histogram_quantile(q, scrapes, "asset_sink_batch_duration_seconds",
                                          {"stage": stage}, QUANTILE_WINDOW_S),
                    color=colors[i], ls=ls, label=f"p{round(q * 100)} {stage}")
    ax.set_yscale("log")
    _axis(ax, "Batch duration by stage", "log scale", legend_cols=3)

    # 8. ingest delay
    ax = axes[2][1]
    for q, ls in ((0.5, "-"), (0.99, "--")):
        ax.plot(t, histogram_quantile(q, scrapes, "asset_sink_ingest_delay_seconds", {},
                                      QUANTILE_WINDOW_S),
                color=colors[5], ls=ls, label=f"p{round(q * 100)}")
    ax.set_yscale("log")
    _axis(ax, "Ingest delay (ingested_at - recorded_at)", "log scale")

    # 9. readiness
    ax = axes[2][2]
    ax.step(t, gauge(scrapes, "asset_sink_ready"), where="post", color=colors[2],
            label="asset_sink_ready")
    _axis(ax, "Ready workers (/readyz)", "")
    ax.set_ylim(-0.1, 1.4)
    ax.set_yticks([0, 1], ["0 (not ready)", "1 (ready)"])

    for row in axes:
        for ax in row:
            _shade(ax, meta)
    for ax in axes[2]:
        ax.set_xlabel("seconds since the producer started")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"observe: wrote {path}", file=sys.stderr)


def _axis(ax: Any, title: str, unit: str, *, legend_cols: int = 1,
          legend_loc: str = "upper left", headroom: float = 1.45) -> None:
    """Title, unit, grid, and head-room above the data for the legend."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_title(title, fontsize=12)
    ax.set_ylabel(unit)
    ax.grid(True, alpha=0.3)
    values = [v for line in ax.get_lines() for v in line.get_ydata()
              if isinstance(v, float | int) and math.isfinite(v) and v > 0]
    if ax.get_yscale() == "log":
        if values:
            ax.set_ylim(min(values) / 1.5, max(values) * 8)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(_duration))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(0, max(values, default=1.0) * headroom)
    ax.legend(fontsize=9, ncols=legend_cols, loc=legend_loc, framealpha=0.9)


def _duration(seconds: float, _pos: Any = None) -> str:
    if seconds < 1:
        return f"{seconds * 1000:g} ms"
    return f"{seconds:g} s"


def _shade(ax: Any, meta: dict[str, Any]) -> None:
    styles = {"burst": ("tab:orange", "burst"), "outage": ("tab:red", "PostgreSQL down")}
    for key, (lo, hi) in meta["markers"].items():
        color, label = styles[key]
        ax.axvspan(lo, max(hi, lo + 0.5), color=color, alpha=0.12, lw=0)
        ax.text(lo, 0.02, f" {label}", transform=ax.get_xaxis_transform(), va="bottom",
                fontsize=8, color=color)


# ---------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--rate", type=float, help="events/s of the steady stream")
    parser.add_argument("--duration", type=float, help="seconds of the steady stream")
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="redraw <name>.png from <name>.json and <name>.csv; no run")
    args = parser.parse_args()
    if args.replot:
        meta = json.loads(args.replot.read_text())
        scrapes = read_csv(args.replot.with_suffix(".csv"))
        meta["figures"] = figures(meta, scrapes)
        args.replot.write_text(json.dumps(meta, indent=2) + "\n")
        plot(meta, scrapes, args.replot.with_suffix(".png"))
        return 0
    bootstrap = os.environ.get("SINK_BOOTSTRAP_SERVERS")
    if not bootstrap:
        raise SystemExit('SINK_BOOTSTRAP_SERVERS is not set; run: eval "$(scripts/stack.sh env)"')
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    rc = 0
    for name in names:
        scenario = SCENARIOS[name]
        overrides = {k: v for k, v in (("rate", args.rate), ("duration_s", args.duration))
                     if v is not None}
        scenario = Scenario(**{**asdict(scenario), **overrides})
        rc |= run_scenario(scenario, args.out, bootstrap, os.environ.get("SINK_DATABASE_URL"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
