"""Results of a benchmark run: JSON files under bench/results/ and a markdown table."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
#: Targets on a 2-core machine (docs/benchmark.md).
TARGETS = {
    "sink_over_limit_min": 0.8,
    "sink_over_best_peer_min": 2.0,
    "sink_peak_rss_bytes_max": 256 * MIB,
    "p99_delay_s_max": 1.0,
}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target with the measured value and whether it is met (None: not measured)."""
    def check(value: float | None, limit: float, *, at_least: bool) -> dict[str, Any]:
        met = None if value is None else (value >= limit if at_least else value <= limit)
        return {"value": value, "target": limit, "met": met}

    return {
        "sink_over_limit": check(result["sink_over_limit"], TARGETS["sink_over_limit_min"],
                                 at_least=True),
        "sink_over_best_peer": check(result["sink_over_best_peer"],
                                     TARGETS["sink_over_best_peer_min"], at_least=True),
        "sink_peak_rss_bytes": check(result["sink_peak_rss_bytes"],
                                     TARGETS["sink_peak_rss_bytes_max"], at_least=False),
        "p99_delay_s": check(result["p99_delay_s"], TARGETS["p99_delay_s_max"],
                             at_least=False),
    }


def write(result: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """Write ``<UTC timestamp>.json`` and ``latest.json`` (atomically) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.fromisoformat(result["started_at"]).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(result, indent=2, sort_keys=False) + "\n"
    paths = directory / f"{stamp}.json", directory / "latest.json"
    for path in paths:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths


def _eps(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _mark(target: dict[str, Any]) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[target["met"]]


def markdown(result: dict[str, Any]) -> str:
    """The figures as markdown tables, for the README."""
    n, k = result["events"], result["repeat"]
    sink = result["sink_events_per_s"]
    lines = [
        f"Throughput: {n:,} events, {result['partitions']} partitions, "
        f"median of {k} run{'s' if k > 1 else ''}, {result['cores']} cores.",
        "",
        "| contender | events/s | sink / contender |",
        "|---|---:|---:|",
        f"| limit: `psql \\copy` into asset_events | {_eps(result['limit_events_per_s'])} | "
        f"{_ratio(result['sink_over_limit'])} |",
    ]
    if result.get("limit_with_ids_events_per_s") is not None:
        lines.append(
            f"| limit with the identity registry: `\\copy` rows + `asset_event_ids` | "
            f"{_eps(result['limit_with_ids_events_per_s'])} | "
            f"{_ratio(result.get('sink_over_limit_with_ids'))} |")
    lines += [
        f"| **sink: `asset-sink run`** | **{_eps(sink)}** | 1.00x |",
    ]
    for name, eps in result["peers"].items():
        ratio = sink / eps if sink and eps else None
        lines.append(f"| peer: {name} | {_eps(eps)} | {_ratio(ratio)} |")
    t = result["targets"]
    rss = result["sink_peak_rss_bytes"]
    lines += [
        "",
        "| target | measured | goal | |",
        "|---|---:|---:|---|",
        f"| sink / limit | {_ratio(result['sink_over_limit'])} | ≥ 0.80x | "
        f"{_mark(t['sink_over_limit'])} |",
        f"| sink / best peer | {_ratio(result['sink_over_best_peer'])} | ≥ 2.00x | "
        f"{_mark(t['sink_over_best_peer'])} |",
        f"| worker peak RSS | {'—' if rss is None else f'{rss / MIB:.0f} MiB'} | ≤ 256 MiB | "
        f"{_mark(t['sink_peak_rss_bytes'])} |",
    ]
    delay = result.get("delay")
    if delay:
        lines.append(
            f"| p99 delay at {delay['rate']:,.0f} events/s | {delay['visible_p99_s']:.3f} s "
            f"(p50 {delay['visible_p50_s']:.3f} s) | ≤ 1 s | {_mark(t['p99_delay_s'])} |")
    else:
        lines.append("| p99 delay | — | ≤ 1 s | not measured |")
    scaling = result.get("scaling")
    if scaling:
        lines += ["", "| partitions | workers | pre-loaded rows | events/s | peak RSS/worker |",
                  "|---:|---:|---:|---:|---:|"]
        for p in scaling:
            lines.append(f"| {p['partitions']} | {p['workers']} | {p['preloaded_rows']:,} | "
                         f"{_eps(p['events_per_s'])} | {p['peak_rss_bytes'] / MIB:.0f} MiB |")
    return "\n".join(lines) + "\n"
