"""``python -m bench run``: the benchmark of docs/benchmark.md, end to end.

Needs the local stack (``eval "$(scripts/stack.sh env)"``): SINK_DATABASE_URL names a
PostgreSQL superuser connection (fresh databases are created and dropped on that server) and
SINK_BOOTSTRAP_SERVERS the broker (topics are created and deleted there).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench import db, events, report
from bench.delay import run_delay
from bench.kafka import Kafka
from bench.peer import PeerSettings, ensure_jars, run_peer
from bench.profiling import summarize
from bench.worker import run_sink

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SEED = 20261201
CONTENDERS = ("limit", "limit-ids", "sink", "peer")


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers: {text!r}")
    return values


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("SINK_"):
        raise argparse.ArgumentTypeError(f"expected SINK_NAME=VALUE: {text!r}")
    return key, value


def _peer_variant(text: str) -> PeerSettings:
    """``tasks=2,batch=2000,unnest=false`` → PeerSettings (unset keys keep the defaults)."""
    base = PeerSettings()
    values: dict[str, Any] = {"tasks": base.tasks, "batch_size": base.batch_size,
                              "unnest": base.unnest, "converter": base.converter}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected key=value in {text!r}")
        if key == "tasks":
            values["tasks"] = int(value)
        elif key in ("batch", "batch_size"):
            values["batch_size"] = int(value)
        elif key == "unnest":
            values["unnest"] = value.lower() in ("1", "true", "yes", "on")
        elif key == "converter" and value in ("stock", "payload"):
            values["converter"] = value
        else:
            raise argparse.ArgumentTypeError(f"unknown peer setting {item!r} (tasks=N, "
                                             "batch=N, unnest=BOOL, converter=stock|payload)")
    return PeerSettings(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the benchmark and write bench/results/*.json",
                         description="Generate events, produce them, measure the contenders.")
    run.add_argument("--events", type=int, default=1_000_000, help="events (default 1000000)")
    run.add_argument("--partitions", type=int, default=6, help="topic partitions (default 6)")
    run.add_argument("--repeat", type=int, default=1,
                     help="repetitions of each contender; medians are reported (default 1)")
    run.add_argument("--seed", type=int, default=DEFAULT_SEED, help="generator seed")
    run.add_argument("--contenders", default="limit,limit-ids,sink,peer",
                     help="comma-separated subset of limit,limit-ids,sink,peer (default all)")
    run.add_argument("--no-peer", action="store_true", help="leave the peer out")
    run.add_argument("--peer-variant", action="append", type=_peer_variant, default=[],
                     metavar="tasks=N,batch=N,unnest=BOOL,converter=stock|payload",
                     help="peer tuning to run (repeatable; default "
                          f"{PeerSettings().name})")
    run.add_argument("--peer-cache", type=Path, default=None,
                     help="directory of the peer's resolved jars")
    run.add_argument("--sink-setting", action="append", type=_setting, default=[],
                     metavar="SINK_NAME=VALUE",
                     help="worker setting for every sink run (repeatable), e.g. "
                          "SINK_BATCH_MAX_WAIT_MS=200; default: the worker's defaults")
    run.add_argument("--no-delay", action="store_true", help="skip the delay measurement")
    run.add_argument("--delay-rate", type=float, default=5000.0,
                     help="events/s of the delay run (default 5000)")
    run.add_argument("--delay-seconds", type=float, default=30.0,
                     help="length of the delay run in seconds (default 30)")
    run.add_argument("--profile", action="store_true",
                     help="sample the first sink run with py-spy and summarize the hot spots")
    run.add_argument("--scaling", action="store_true",
                     help="also measure the sink with several workers, partitions, table sizes")
    run.add_argument("--scaling-workers", type=_int_list, default=[1, 2, 4],
                     help="worker processes in one group (default 1,2,4)")
    run.add_argument("--scaling-partitions", type=_int_list, default=[1, 3, 12],
                     help="topic partitions (default 1,3,12)")
    run.add_argument("--preload-rows", type=int, default=500_000,
                     help="rows already in the table for the table-size point of --scaling "
                          "(default 500000; 0 skips it)")
    run.add_argument("--timeout", type=float, default=3600.0,
                     help="give up on one contender run after this many seconds")
    run.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    run.add_argument("--work-dir", type=Path, default=None,
                     help="where generated files go (default a temporary directory)")
    run.add_argument("--keep", action="store_true",
                     help="keep the work directory, topics and databases")
    run.add_argument("--bootstrap-servers", default=os.environ.get("SINK_BOOTSTRAP_SERVERS"))
    run.add_argument("--database-url", default=os.environ.get("SINK_DATABASE_URL"),
                     help="superuser URL of the PostgreSQL server [$SINK_DATABASE_URL]")
    run.set_defaults(func=_run)
    jars = sub.add_parser("peer-jars", help="resolve the peer's jars into the cache and exit")
    jars.add_argument("--peer-cache", type=Path, default=None)
    jars.set_defaults(func=_peer_jars)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def _peer_jars(args: argparse.Namespace) -> int:
    lib = ensure_jars(args.peer_cache) if args.peer_cache else ensure_jars()
    print(lib)
    return 0


class _Session:
    """State of one ``bench run``: clients, work directory, topics to delete."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server_url: str = args.database_url
        self.kafka = Kafka(args.bootstrap_servers)
        self.work = args.work_dir or Path(tempfile.mkdtemp(prefix="asset-sink-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.topics: list[str] = []

    def new_topic(self, partitions: int, label: str) -> str:
        topic = f"bench-{label}-{uuid.uuid4().hex[:10]}"
        self.kafka.create_topic(topic, partitions)
        self.topics.append(topic)
        return topic

    def checkpoint(self) -> None:
        """Flush dirty buffers so no contender pays for the previous one's writes."""
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def close(self) -> None:
        if not self.args.keep:
            self.kafka.delete_topics(self.topics)
            if self.args.work_dir is None:
                shutil.rmtree(self.work, ignore_errors=True)
        self.kafka.close()


def _run(args: argparse.Namespace) -> int:
    if not args.bootstrap_servers or not args.database_url:
        _log('SINK_BOOTSTRAP_SERVERS and SINK_DATABASE_URL must be set; run: '
             'eval "$(scripts/stack.sh env)"')
        return 2
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(contenders) - set(CONTENDERS)
    if unknown:
        _log(f"unknown contenders {sorted(unknown)}; choose from {', '.join(CONTENDERS)}")
        return 2
    if args.no_peer and "peer" in contenders:
        contenders.remove("peer")
    if args.events < 1 or args.partitions < 1 or args.repeat < 1:
        _log("--events, --partitions and --repeat must be positive")
        return 2
    session = _Session(args)
    try:
        result = _bench(session, contenders)
    finally:
        session.close()
    paths = report.write(result, args.results_dir)
    print(report.markdown(result))
    _log(f"results: {paths[0]} (and {paths[1].name})")
    return 0


def _bench(session: _Session, contenders: list[str]) -> dict[str, Any]:
    args, kafka = session.args, session.kafka
    started_at = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    dataset = events.generate(session.work / "dataset", args.events, seed=args.seed)
    _log(f"generated {dataset.events} events ({dataset.value_bytes / dataset.events:.0f} "
         f"bytes/message on average) in {time.perf_counter() - t0:.1f}s")
    topic = session.new_topic(args.partitions, "events")
    dlq = session.new_topic(1, "dlq")
    t0 = time.perf_counter()
    parts, offs = kafka.produce_all(topic, dataset.messages(), dataset.events)
    ends = kafka.end_offsets(topic)
    _log(f"produced to {topic} ({args.partitions} partitions) in "
         f"{time.perf_counter() - t0:.1f}s")
    copy_file = events.write_copy_file(dataset, session.work / "copy.tsv", topic=topic,
                                       partitions=parts, offsets=offs)
    ids_file = events.write_ids_file(copy_file, session.work / "ids.tsv")
    peer_variants: list[PeerSettings] = args.peer_variant or [PeerSettings()]
    lib = None
    if "peer" in contenders:
        lib = ensure_jars(args.peer_cache) if args.peer_cache else ensure_jars()

    runs: dict[str, Any] = {"limit": [], "limit_ids": [], "sink": [],
                            "peers": {v.name: [] for v in peer_variants}}
    profile: dict[str, Any] | None = None
    log_dir = session.work / "logs"
    for rep in range(args.repeat):
        # Rotate the order so no contender always runs first (or last) on a warm machine.
        order = contenders[rep % len(contenders):] + contenders[:rep % len(contenders)]
        for contender in order:
            if contender == "limit":
                runs["limit"].append(_timed_limit(session, copy_file, dataset.events))
            elif contender == "limit-ids":
                runs["limit_ids"].append(_timed_limit(session, copy_file, dataset.events,
                                                      ids_file=ids_file))
            elif contender == "sink":
                profile_path = None
                if args.profile and profile is None:
                    profile_path = args.results_dir / f"profile-{_stamp(started_at)}.txt"
                run, prof = _timed_sink(session, topic, dlq, ends, dataset.events, log_dir,
                                        profile_path)
                runs["sink"].append(run)
                if prof is not None:
                    profile = prof
            else:
                assert lib is not None
                for variant in peer_variants:
                    runs["peers"][variant.name].append(
                        _timed_peer(session, topic, ends, dataset.events, variant, lib))
    delay = None
    if not args.no_delay and "sink" in contenders:
        session.checkpoint()
        _log(f"delay run: {args.delay_rate:.0f} events/s for {args.delay_seconds:.0f}s")
        delay = run_delay(kafka, server_url=session.server_url, partitions=args.partitions,
                          rate=args.delay_rate, seconds=args.delay_seconds, log_dir=log_dir,
                          seed=args.seed + 1, keep=args.keep,
                          settings=dict(args.sink_setting))
        _log(f"delay p50 {delay.visible_p50_s:.3f}s p99 {delay.visible_p99_s:.3f}s")
    scaling = None
    if args.scaling:
        scaling = _scaling(session, dataset, topic, dlq, ends, log_dir)
    return _compose(session, dataset, runs, delay, scaling, profile, started_at,
                    load_before, contenders)


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%SZ")


def _check_rows(url: str, expected: int, who: str) -> None:
    found = db.row_count(url)
    if found != expected:
        raise RuntimeError(f"{who}: {found} rows in asset_events, expected {expected}")


def _timed_limit(session: _Session, copy_file: Path, count: int, *,
                 ids_file: Path | None = None) -> dict[str, Any]:
    label = "limit" if ids_file is None else "limit-ids"
    with db.fresh_database(session.server_url, label.replace("-", "_"),
                           keep=session.args.keep) as url:
        session.checkpoint()
        seconds = db.psql_copy(url, copy_file, ids_file=ids_file)
        _check_rows(url, count, label)
    _log(f"{label}: {count / seconds:,.0f} events/s ({seconds:.1f}s)")
    return {"seconds": seconds, "events_per_s": count / seconds}


def _timed_sink(session: _Session, topic: str, dlq: str, ends: dict[int, int], count: int,
                log_dir: Path, profile_path: Path | None,
                workers: int = 1) -> tuple[dict[str, Any], dict[str, Any] | None]:
    with db.fresh_database(session.server_url, "sink", keep=session.args.keep) as url:
        session.checkpoint()
        run = run_sink(session.kafka, topic=topic, dlq_topic=dlq, database_url=url, ends=ends,
                       log_dir=log_dir, workers=workers, timeout=session.args.timeout,
                       profile_path=profile_path, settings=dict(session.args.sink_setting))
        _check_rows(url, count, "sink")
    _log(f"sink ({workers} worker{'s' if workers > 1 else ''}): "
         f"{count / run.seconds:,.0f} events/s ({run.seconds:.1f}s, first commit at "
         f"{run.first_commit_s or 0:.1f}s), peak RSS {run.peak_rss_bytes / 2**20:.0f} MiB")
    prof = summarize(run.profile) if run.profile is not None and run.profile.exists() else None
    return {"seconds": run.seconds, "events_per_s": count / run.seconds,
            "first_commit_s": run.first_commit_s, "peak_rss_bytes": run.peak_rss_bytes,
            "cpu_s": round(run.cpu_s, 2), "workers": workers}, prof


def _timed_peer(session: _Session, topic: str, ends: dict[int, int], count: int,
                variant: PeerSettings, lib: Path) -> dict[str, Any]:
    with db.fresh_database(session.server_url, "peer", keep=session.args.keep) as url:
        session.checkpoint()
        work = session.work / f"peer-{uuid.uuid4().hex[:6]}"
        run = run_peer(session.kafka, topic=topic, database_url=url, ends=ends, work=work,
                       settings=variant, lib=lib, timeout=session.args.timeout)
        _check_rows(url, count, variant.name)
    _log(f"{variant.name}: {count / run.seconds:,.0f} events/s ({run.seconds:.1f}s, first "
         f"commit at {run.first_commit_s or 0:.1f}s), peak RSS "
         f"{run.peak_rss_bytes / 2**20:.0f} MiB")
    return {"seconds": run.seconds, "events_per_s": count / run.seconds,
            "first_commit_s": run.first_commit_s, "peak_rss_bytes": run.peak_rss_bytes,
            "cpu_s": round(run.cpu_s, 2)}


def _scaling(session: _Session, dataset: events.Dataset, topic: str, dlq: str,
             ends: dict[int, int], log_dir: Path) -> list[dict[str, Any]]:
    args, kafka = session.args, session.kafka
    points: list[dict[str, Any]] = []
    for partitions in args.scaling_partitions:
        if partitions == args.partitions:
            scaled_topic, scaled_ends = topic, ends
        else:
            scaled_topic = session.new_topic(partitions, f"scale{partitions}")
            kafka.produce_all(scaled_topic, dataset.messages(), dataset.events)
            scaled_ends = kafka.end_offsets(scaled_topic)
        for workers in args.scaling_workers:
            run, _ = _timed_sink(session, scaled_topic, dlq, scaled_ends, dataset.events,
                                 log_dir, None, workers=workers)
            points.append({"partitions": partitions, "workers": workers, "preloaded_rows": 0,
                           **run})
    if args.preload_rows > 0:
        preload = events.generate(session.work / "preload", args.preload_rows,
                                  seed=args.seed + 7)
        n = preload.events
        copy_file = events.write_copy_file(
            preload, session.work / "preload.tsv", topic="preload",
            partitions=_fill("i", 0, n), offsets=_fill("q", None, n))
        with db.fresh_database(session.server_url, "preload", keep=args.keep) as url:
            db.psql_copy(url, copy_file)
            db.register_ids(url)
            db.analyze(url)
            session.checkpoint()
            loaded = run_sink(kafka, topic=topic, dlq_topic=dlq, database_url=url, ends=ends,
                           log_dir=log_dir, timeout=args.timeout, label="preload",
                           settings=dict(args.sink_setting))
            _check_rows(url, n + dataset.events, "sink on a pre-loaded table")
        eps = dataset.events / loaded.seconds
        _log(f"sink on {n:,} pre-loaded rows: {eps:,.0f} events/s")
        points.append({"partitions": args.partitions, "workers": 1, "preloaded_rows": n,
                       "seconds": loaded.seconds, "events_per_s": eps,
                       "first_commit_s": loaded.first_commit_s,
                       "peak_rss_bytes": loaded.peak_rss_bytes, "cpu_s": round(loaded.cpu_s, 2)})
    return points


def _fill(code: str, value: int | None, n: int) -> Any:
    """An array of ``n`` items: ``value`` each, or 0..n-1 when ``value`` is None."""
    return array(code, range(n)) if value is None else array(code, [value]) * n


def _median(runs: list[dict[str, Any]], key: str = "events_per_s") -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _versions(session: _Session) -> dict[str, str]:
    with psycopg.connect(session.server_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    meta = session.kafka.admin.list_topics(timeout=10)
    from sink import __version__

    return {"postgresql": str(row[0]) if row else "?", "python": platform.python_version(),
            "asset_event_sink": __version__, "kafka_brokers": str(len(meta.brokers)),
            "git": _git_state()}


def _git_state() -> str:
    """Commit of the working tree, with ``+dirty`` when sink/ has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sink"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _compose(session: _Session, dataset: events.Dataset, runs: dict[str, Any], delay: Any,
             scaling: list[dict[str, Any]] | None, profile: dict[str, Any] | None,
             started_at: dt.datetime, load_before: tuple[float, float, float],
             contenders: list[str]) -> dict[str, Any]:
    args = session.args
    limit = _median(runs["limit"])
    limit_ids = _median(runs["limit_ids"])
    sink = _median(runs["sink"])
    peers = {name: _median(r) for name, r in runs["peers"].items() if r}
    best_peer = max((v for v in peers.values() if v), default=None)
    rss_values = [r["peak_rss_bytes"] for r in runs["sink"]]
    if delay is not None:
        rss_values.append(delay.peak_rss_bytes)
    sink_rss = max(rss_values) if rss_values else None
    result: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "events": dataset.events,
        "partitions": args.partitions,
        "repeat": args.repeat,
        "seed": dataset.seed,
        "mean_message_bytes": round(dataset.value_bytes / dataset.events, 1),
        "contenders": contenders,
        "sink_settings": dict(args.sink_setting),
        "limit_events_per_s": _round(limit),
        "limit_with_ids_events_per_s": _round(limit_ids),
        "sink_events_per_s": _round(sink),
        "peers": {name: _round(v) for name, v in peers.items()},
        "sink_over_limit": _ratio(sink, limit),
        "sink_over_limit_with_ids": _ratio(sink, limit_ids),
        "sink_over_best_peer": _ratio(sink, best_peer),
        "p50_delay_s": round(delay.visible_p50_s, 4) if delay else None,
        "p99_delay_s": round(delay.visible_p99_s, 4) if delay else None,
        "sink_peak_rss_bytes": sink_rss,
        "delay": _delay_dict(delay),
        "runs": runs,
        "scaling": scaling,
        "profile": profile,
        "versions": _versions(session),
    }
    result["targets"] = report.targets(result)
    return result


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def _delay_dict(delay: Any) -> dict[str, Any] | None:
    if delay is None:
        return None
    return {
        "rate": delay.rate, "achieved_rate": round(delay.achieved_rate, 1),
        "seconds": delay.seconds, "events": delay.events,
        "measured": "recorded_at (send time) -> committed offset of the worker's group passed "
                    "the event (after the row's transaction committed; upper bound, "
                    "20 ms polling)",
        "visible_p50_s": round(delay.visible_p50_s, 4),
        "visible_p99_s": round(delay.visible_p99_s, 4),
        "visible_max_s": round(delay.visible_max_s, 4),
        "ingested_p50_s": round(delay.ingested_p50_s, 4),
        "ingested_p99_s": round(delay.ingested_p99_s, 4),
        "peak_rss_bytes": delay.peak_rss_bytes,
    }

