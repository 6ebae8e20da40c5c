#!/usr/bin/env python3
"""Produce AssetEvent messages to Kafka: lines of a JSON-lines file, or generated events.

    scripts/produce.py examples/valid.jsonl              # one message per line
    scripts/produce.py --invalid examples/invalid.jsonl  # the "message" field of each line
    scripts/produce.py --generate 10000 --rate 500       # synthetic events, 500/s

The key is the event's asset_id when it has one. Reads SINK_BOOTSTRAP_SERVERS and SINK_TOPIC.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import uuid

import orjson
from confluent_kafka import Producer


def _generated(n: int) -> list[bytes]:
    now = dt.datetime.now(dt.UTC)
    out = []
    for i in range(n):
        ts = (now - dt.timedelta(seconds=n - i)).isoformat(timespec="milliseconds")
        failed = i % 9 == 0
        out.append(orjson.dumps({
            "event_id": str(uuid.uuid4()), "tenant_id": f"tenant-{i % 5}",
            "asset_id": f"acct-{i % 1000:06d}",
            "event_type": "task.failed" if failed else "task.succeeded",
            "occurred_at": ts, "recorded_at": ts, "version": "1.0",
            "correlation_id": f"corr-{i // 3}", "task_type": "login",
            "provider_id": f"provider-{i % 4}", "sku_category": "proxy", "env": "prod",
            "outcome": "failure" if failed else "success",
            "error_code": "IP_BANNED" if failed else None,
            "http_status": 403 if failed else 200, "latency_ms": 50 + i % 900,
            "payload": {"attempt": 1 + i % 3},
        }))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", help="JSON-lines file of message values")
    parser.add_argument("--invalid", action="store_true",
                        help="lines are {\"why\":…, \"message\":…}: produce each message text")
    parser.add_argument("--generate", type=int, default=0, help="produce N synthetic events")
    parser.add_argument("--rate", type=float, default=0.0, help="messages per second (0: max)")
    parser.add_argument("--topic", default=os.environ.get("SINK_TOPIC", "asset-events"))
    parser.add_argument("--bootstrap-servers",
                        default=os.environ.get("SINK_BOOTSTRAP_SERVERS", "127.0.0.1:19092"))
    args = parser.parse_args()
    if args.generate:
        values = _generated(args.generate)
    elif args.file:
        with open(args.file, "rb") as fh:
            lines = [line.rstrip(b"\r\n") for line in fh if line.strip()]
        values = [json.loads(line)["message"].encode() for line in lines] if args.invalid \
            else lines
    else:
        parser.error("give a FILE or --generate N")
    producer = Producer({"bootstrap.servers": args.bootstrap_servers, "linger.ms": 5,
                         "acks": "all", "enable.idempotence": True})
    start = time.monotonic()
    for i, value in enumerate(values):
        try:
            key = orjson.loads(value).get("asset_id", "").encode() or None
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        while True:
            try:
                producer.produce(args.topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        if args.rate:
            ahead = (i + 1) / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        producer.poll(0)
    left = producer.flush(30)
    print(f"produced {len(values) - left} message(s) to {args.topic}", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
