"""Smoke runs of ``python -m bench run`` on the local stack: small, no timing asserted.

The limit (``psql \\copy``) and the sink always run, with a short delay measurement. The peer
(Kafka Connect + Debezium JDBC sink) runs only when its jars are already resolved
(``python -m bench peer-jars``) and Java is present; resolving them downloads about 65 MB,
which a smoke test should not do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.peer import DEFAULT_CACHE, POM

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 2000
REQUIRED_KEYS = {
    "cores", "events", "limit_events_per_s", "sink_events_per_s", "peers", "sink_over_limit",
    "sink_over_best_peer", "p50_delay_s", "p99_delay_s", "sink_peak_rss_bytes",
}
GIB = 1024**3


def _bench(tmp_path: Path, pg_server_url: str, kafka_bootstrap: str,
           *extra: str) -> tuple[dict[str, Any], Path, str]:
    results = tmp_path / "results"
    env = {**os.environ, "SINK_DATABASE_URL": pg_server_url,
           "SINK_BOOTSTRAP_SERVERS": kafka_bootstrap}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--events", str(EVENTS), "--partitions", "3",
         "--results-dir", str(results), "--work-dir", str(tmp_path / "work"), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    latest = results / "latest.json"
    return json.loads(latest.read_text()), results, proc.stdout


def test_bench_smoke_writes_every_figure_for_limit_and_sink(
    tmp_path: Path, pg_server_url: str, kafka_bootstrap: str
) -> None:
    result, results, stdout = _bench(
        tmp_path, pg_server_url, kafka_bootstrap, "--contenders", "limit,sink",
        "--delay-rate", "500", "--delay-seconds", "2")

    assert result.keys() >= REQUIRED_KEYS
    assert result["events"] == EVENTS
    assert result["cores"] == os.cpu_count()
    assert result["limit_events_per_s"] > 0
    assert result["sink_events_per_s"] > 0
    assert result["sink_over_limit"] == pytest.approx(
        result["sink_events_per_s"] / result["limit_events_per_s"], rel=1e-2)
    assert result["peers"] == {}
    assert result["sink_over_best_peer"] is None
    assert 0 < result["sink_peak_rss_bytes"] < 4 * GIB
    assert 0 < result["p50_delay_s"] <= result["p99_delay_s"] < 60
    assert result["delay"]["events"] == 1000
    # every run stored exactly the events produced (the harness checks the row count)
    assert len(result["runs"]["limit"]) == len(result["runs"]["sink"]) == 1
    stamped = list(results.glob("2*.json"))
    assert len(stamped) == 1
    assert json.loads(stamped[0].read_text()) == result
    assert "| **sink: `asset-sink run`** |" in stdout


def _peer_jars_cached() -> bool:
    stamp = DEFAULT_CACHE / "lib" / ".pom.sha256"
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    return stamp.is_file() and stamp.read_text().strip() == digest


@pytest.mark.skipif(shutil.which("java") is None or not _peer_jars_cached(),
                    reason="peer jars not resolved (python -m bench peer-jars) or no java")
def test_bench_smoke_measures_the_peer_on_the_same_events(
    tmp_path: Path, pg_server_url: str, kafka_bootstrap: str
) -> None:
    result, _, stdout = _bench(tmp_path, pg_server_url, kafka_bootstrap,
                               "--contenders", "sink,peer", "--no-delay")

    assert len(result["peers"]) == 1
    (name, peer_eps), = result["peers"].items()
    assert name.startswith("debezium-jdbc")
    assert peer_eps > 0
    assert result["sink_over_best_peer"] == pytest.approx(
        result["sink_events_per_s"] / peer_eps, rel=1e-2)
    assert result["limit_events_per_s"] is None
    assert f"| peer: {name} |" in stdout
