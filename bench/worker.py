"""The sink contender: ``asset-sink run`` processes in one fresh consumer group."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.kafka import Kafka
from bench.procs import Child, start, wait_until_committed


def sink_command() -> list[str]:
    """The ``asset-sink`` console script, or this interpreter running ``sink.cli``."""
    exe = shutil.which("asset-sink")
    return [exe] if exe else [sys.executable, "-m", "sink.cli"]


@dataclass(frozen=True, slots=True)
class SinkRun:
    seconds: float  # process start → every event committed
    first_commit_s: float | None
    peak_rss_bytes: int  # largest of the workers' peaks
    workers: int
    cpu_s: float  # CPU seconds of all workers together, start to exit (drain included)
    profile: Path | None = None


def sink_env(*, bootstrap: str, database_url: str, topic: str, group: str,
             dlq_topic: str, settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a benchmarked worker: its defaults but for ``settings`` (SINK_*)."""
    return {
        "SINK_BOOTSTRAP_SERVERS": bootstrap,
        "SINK_DATABASE_URL": database_url,
        "SINK_TOPIC": topic,
        "SINK_GROUP_ID": group,
        "SINK_DLQ_TOPIC": dlq_topic,
        "SINK_METRICS_PORT": "0",
        "SINK_LOG_LEVEL": "WARNING",
        **(settings or {}),
    }


def start_workers(count: int, env: dict[str, str], log_dir: Path,
                  label: str) -> list[Child]:
    return [start([*sink_command(), "run", "--log-level", "WARNING"], env=env,
                  log_path=log_dir / f"{label}-worker{i}.log") for i in range(count)]


def run_sink(kafka: Kafka, *, topic: str, dlq_topic: str, database_url: str,
             ends: dict[int, int], log_dir: Path, workers: int = 1, timeout: float = 3600.0,
             profile_path: Path | None = None, label: str = "sink",
             settings: Mapping[str, str] | None = None) -> SinkRun:
    """Run ``workers`` sink processes from offset 0 of ``topic`` until all of ``ends`` is
    committed, then stop them (SIGTERM, clean drain) and return the timings.

    With ``profile_path``, py-spy samples the first worker for the whole run and writes
    collapsed stacks there (py-spy must be installed; see docs/benchmark.md).
    """
    group = f"bench-sink-{uuid.uuid4().hex[:10]}"
    env = sink_env(bootstrap=kafka.bootstrap, database_url=database_url, topic=topic,
                   group=group, dlq_topic=dlq_topic, settings=settings)
    started = time.monotonic()
    children = start_workers(workers, env, log_dir, label)
    spy: subprocess.Popen[bytes] | None = None
    if profile_path is not None:
        spy = _start_profiler(children[0].pid, profile_path)
    try:
        progress = wait_until_committed(kafka, group=group, topic=topic, ends=ends,
                                        children=children, started=started, timeout=timeout)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
        for child in children:
            child.stop()
        kafka.delete_group(group)
    return SinkRun(seconds=progress.done_s, first_commit_s=progress.first_commit_s,
                   peak_rss_bytes=max(c.peak_rss_bytes for c in children), workers=workers,
                   cpu_s=sum(c.cpu_s for c in children),
                   profile=profile_path if spy is not None else None)


def _start_profiler(pid: int, path: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy")
    if exe is None:
        print("bench: py-spy not found (pip install py-spy); running without a profile",
              file=sys.stderr)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--idle",
         "--output", str(path), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=(path.with_suffix(".log")).open("wb"),
    )
