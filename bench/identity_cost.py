"""What global event identity costs the writer, per batch of new events.

    python -m bench.identity_cost [--database-url URL] [--rounds 15] [--batch 5000]

Interleaves, on one freshly migrated database, batches written three ways and prints the
median events/s of each:

- ``copy_only``: COPY straight into asset_events, no registry (identity only per
  ``(event_id, occurred_at)``: a redelivery with another occurred_at would be stored twice);
- ``registry_copy``: the writer's fast path, COPY into asset_event_ids then asset_events;
- ``registry_staging``: the writer's staging path (COPY to a temp table, INSERT … ON CONFLICT
  into the registry, INSERT … SELECT of the new rows);
- ``all_duplicates``: a batch already stored, through the staging path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from pathlib import Path

import orjson
import psycopg
from psycopg import sql

from sink.contract import decode_and_validate
from sink.migrate import apply_migrations
from sink.writer import ROW_COLUMNS, PostgresWriter

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "valid.jsonl"


def _batch(lines: list[bytes], size: int) -> list[tuple[object, ...]]:
    rows = []
    for i in range(size):
        event = orjson.loads(lines[i % len(lines)])
        event["event_id"] = str(uuid.uuid4())
        row = decode_and_validate(orjson.dumps(event))
        assert isinstance(row, tuple)
        rows.append((*row, "bench", 0, i))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("SINK_DATABASE_URL"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    if not args.database_url:
        parser.error("--database-url or SINK_DATABASE_URL is required")
    name = f"identity_cost_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(args.database_url, dbname=name)
    try:
        apply_migrations(url)
        lines = SAMPLES.read_bytes().splitlines()
        writer = PostgresWriter(url)
        writer.ensure_partitions(3)
        copy_sql = sql.SQL("COPY asset_events ({}) FROM STDIN").format(
            sql.SQL(", ").join(map(sql.Identifier, ROW_COLUMNS)))
        rates: dict[str, list[float]] = {k: [] for k in (
            "copy_only", "registry_copy", "registry_staging", "all_duplicates")}
        with psycopg.connect(url) as conn:
            for _ in range(args.rounds):
                rows = _batch(lines, args.batch)
                start = time.perf_counter()
                with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.commit()
                rates["copy_only"].append(args.batch / (time.perf_counter() - start))
                for mode in ("registry_copy", "registry_staging"):
                    rows = _batch(lines, args.batch)
                    writer._fast_path = mode == "registry_copy"
                    start = time.perf_counter()
                    result = writer.write(rows)
                    rates[mode].append(args.batch / (time.perf_counter() - start))
                    assert result.inserted == args.batch
                start = time.perf_counter()
                result = writer.write(rows)
                rates["all_duplicates"].append(args.batch / (time.perf_counter() - start))
                assert result.duplicates == args.batch
        writer.close()
        base = statistics.median(rates["copy_only"])
        print(f"{'mode':<18} {'events/s (median)':>18} {'vs copy_only':>13}")
        for mode, values in rates.items():
            m = statistics.median(values)
            print(f"{mode:<18} {m:>18,.0f} {m / base:>12.2f}x")
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
