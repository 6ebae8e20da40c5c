"""The peer contender: Kafka Connect (standalone) with the Debezium JDBC sink connector.

Jars come from bench/connect/pom.xml through ``mvn dependency:copy-dependencies`` into a cache
directory (default ``~/.cache/asset-event-sink/bench-connect``), resolved again only when the
pom changes. Messages stay plain JSON: Kafka Connect's JsonConverter (4.2+) applies the fixed
schema of :func:`connect_schema` to every message (``value.converter.schema.content``), the
stock InsertField transform adds the Kafka coordinates, and the connector upserts into the
same ``asset_events`` table the sink writes (see docs/benchmark.md for every choice).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.db import jdbc_url
from bench.kafka import Kafka
from bench.procs import start, wait_until_committed

POM = Path(__file__).resolve().parent / "connect" / "pom.xml"
CONVERTER_SOURCE = POM.parent / "src" / "bench" / "connect" / "PlainJsonConverter.java"
CONVERTER_CLASS = "bench.connect.PlainJsonConverter"
STOCK_CONVERTER_CLASS = "org.apache.kafka.connect.json.JsonConverter"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) \
    / "asset-event-sink" / "bench-connect"
JVM_HEAP = ("-Xms512m", "-Xmx1g")

_UUID = "io.debezium.data.Uuid"
_ZONED_TS = "io.debezium.time.ZonedTimestamp"
_JSON = "io.debezium.data.Json"


def connect_schema() -> dict[str, Any]:
    """Kafka Connect JSON schema of an AssetEvent, typed for the table's columns.

    Debezium's semantic names carry the SQL types: ``io.debezium.data.Uuid`` → uuid,
    ``io.debezium.time.ZonedTimestamp`` (an ISO-8601 string with offset) → timestamptz,
    ``io.debezium.data.Json`` → jsonb. ``payload`` is a JSON object on the wire, which a
    Connect ``string`` cannot hold: JsonConverter turns it into NULL (see docs/benchmark.md).
    """
    def field(name: str, kind: str = "string", *, required: bool = False,
              semantic: str | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"field": name, "type": kind, "optional": not required}
        if semantic:
            spec["name"] = semantic
        return spec

    fields = [
        field("event_id", required=True, semantic=_UUID),
        field("tenant_id", required=True),
        field("asset_id", required=True),
        field("event_type", required=True),
        field("occurred_at", required=True, semantic=_ZONED_TS),
        field("recorded_at", required=True, semantic=_ZONED_TS),
        field("version", required=True),
        field("correlation_id"),
        field("causation_id"),
        field("task_id", semantic=_UUID),
        field("lease_id", semantic=_UUID),
        *(field(name) for name in ("task_type", "provider_id", "sku_category", "env",
                                   "severity", "outcome", "error_code", "error_message")),
        field("http_status", "int16"),
        field("latency_ms", "int32"),
        field("old_status"),
        field("new_status"),
        field("source"),
        field("payload", semantic=_JSON),
    ]
    return {"type": "struct", "name": "AssetEvent", "optional": False, "fields": fields}


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """Tuning of the peer (see docs/benchmark.md for what was tried)."""

    tasks: int = 2  # fastest on 2 cores (docs/benchmark.md: tasks 1, 2, 3, 6 tried)
    batch_size: int = 5000  # connector batch.size and the consumer's max.poll.records
    unnest: bool = True  # dialect.postgres.unnest.insert.enabled
    # "stock": Kafka's JsonConverter (payload objects become NULL); "payload": the small
    # PlainJsonConverter of bench/connect/src, which keeps them (needs a JDK to build).
    converter: str = "stock"

    @property
    def name(self) -> str:
        return f"debezium-jdbc(tasks={self.tasks},batch={self.batch_size}" \
               f"{',unnest' if self.unnest else ''}" \
               f"{',payload-converter' if self.converter == 'payload' else ''})"


@dataclass(frozen=True, slots=True)
class PeerRun:
    seconds: float  # JVM start → every event committed
    first_commit_s: float | None
    peak_rss_bytes: int
    cpu_s: float  # CPU seconds of the JVM, start to exit


def ensure_jars(cache: Path = DEFAULT_CACHE) -> Path:
    """The directory of the peer's jars, resolving them with Maven when missing or stale."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    lib, stamp = cache / "lib", cache / "lib" / ".pom.sha256"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return lib
    if shutil.which("mvn") is None:
        raise RuntimeError("mvn not found: install maven (it resolves the Kafka Connect jars)")
    tmp = cache / "lib.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mvn", "-q", "-B", "dependency:copy-dependencies", "-DincludeScope=runtime",
         f"-DoutputDirectory={tmp}"],
        cwd=POM.parent, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"maven could not resolve {POM}:\n{proc.stdout[-3000:]}")
    (tmp / ".pom.sha256").write_text(digest + "\n")
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    return lib


def ensure_converter(lib: Path, cache: Path = DEFAULT_CACHE) -> Path:
    """The jar of ``PlainJsonConverter``, compiled against ``lib`` when missing or stale.

    Needs ``javac`` (a JDK, not just a JRE). The jar lists the class in
    ``META-INF/services`` so Kafka Connect's ``service_load`` discovery finds it.
    """
    source = CONVERTER_SOURCE.read_bytes()
    digest = hashlib.sha256(source + (lib / ".pom.sha256").read_bytes()).hexdigest()[:16]
    jar = cache / f"plain-json-converter-{digest}.jar"
    if jar.is_file():
        return jar
    javac = shutil.which("javac")
    if javac is None:
        raise RuntimeError("javac not found: the payload converter needs a JDK "
                           "(openjdk-17-jdk-headless)")
    classes = cache / "converter-classes"
    shutil.rmtree(classes, ignore_errors=True)
    proc = subprocess.run(
        [javac, "-nowarn", "--release", "17", "-cp", f"{lib}/*", "-d", str(classes),
         str(CONVERTER_SOURCE)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"javac failed on {CONVERTER_SOURCE}:\n{proc.stderr[-3000:]}")
    tmp = jar.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w") as out:
        for path in sorted(classes.rglob("*.class")):
            out.write(path, path.relative_to(classes).as_posix())
        out.writestr("META-INF/services/org.apache.kafka.connect.storage.Converter",
                     CONVERTER_CLASS + "\n")
    tmp.rename(jar)
    shutil.rmtree(classes, ignore_errors=True)
    return jar


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _properties(values: dict[str, object]) -> str:
    return "".join(f"{k}={v}\n" for k, v in values.items())


def write_config(work: Path, *, bootstrap: str, topic: str, database_url: str, name: str,
                 settings: PeerSettings) -> tuple[Path, Path, Path]:
    """Worker properties, connector properties and log4j2 config for one run."""
    work.mkdir(parents=True, exist_ok=True)
    url, user, password = jdbc_url(database_url)
    worker = {
        "bootstrap.servers": bootstrap,
        "key.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
        "value.converter": CONVERTER_CLASS if settings.converter == "payload"
        else STOCK_CONVERTER_CLASS,
        "value.converter.schemas.enable": "true",
        "value.converter.schema.content": json.dumps(connect_schema(), separators=(",", ":")),
        "offset.storage.file.filename": work / "connect.offsets",
        # Sink offsets are committed on this interval; short, so "all committed" is seen
        # at most this late after the rows are in.
        "offset.flush.interval.ms": 500,
        "listeners": f"http://127.0.0.1:{_free_port()}",
        "plugin.discovery": "service_load",  # every plugin used ships a manifest; fast start
        "consumer.max.poll.records": settings.batch_size,
        "consumer.fetch.max.bytes": 64 * 1024 * 1024,
        "consumer.max.partition.fetch.bytes": 8 * 1024 * 1024,
    }
    connector = {
        "name": name,
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "tasks.max": settings.tasks,
        "topics": topic,
        "connection.url": url,
        "connection.username": user,
        "connection.password": password,
        "insert.mode": "upsert",
        "primary.key.mode": "record_value",
        "primary.key.fields": "event_id,occurred_at",
        "schema.evolution": "none",
        "collection.name.format": "asset_events",
        "batch.size": settings.batch_size,
        "use.time.zone": "UTC",
        "dialect.postgres.unnest.insert.enabled": str(settings.unnest).lower(),
        "transforms": "coords",
        "transforms.coords.type": "org.apache.kafka.connect.transforms.InsertField$Value",
        "transforms.coords.topic.field": "kafka_topic",
        "transforms.coords.partition.field": "kafka_partition",
        "transforms.coords.offset.field": "kafka_offset",
    }
    log4j = f"""<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <File name="file" fileName="{work / 'connect.log'}">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="file"/></Root>
    <Logger name="org.hibernate" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
  </Loggers>
</Configuration>
"""
    paths = work / "worker.properties", work / "connector.properties", work / "log4j2.xml"
    paths[0].write_text(_properties(worker))
    paths[1].write_text(_properties(connector))
    paths[2].write_text(log4j)
    return paths


def run_peer(kafka: Kafka, *, topic: str, database_url: str, ends: dict[int, int],
             work: Path, settings: PeerSettings, lib: Path,
             timeout: float = 3600.0) -> PeerRun:
    """Run Kafka Connect standalone with the JDBC sink on ``topic`` until the connector's
    group committed all of ``ends``, then stop it. Blocks; raises ``ContenderFailed``."""
    name = f"bench-jdbc-{uuid.uuid4().hex[:10]}"
    worker, connector, log4j = write_config(work, bootstrap=kafka.bootstrap, topic=topic,
                                            database_url=database_url, name=name,
                                            settings=settings)
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java not found: install a JRE 17+ (openjdk-17-jre-headless)")
    classpath = f"{lib}/*"
    if settings.converter == "payload":
        classpath += os.pathsep + str(ensure_converter(lib, lib.parent))
    argv = [java, *JVM_HEAP, "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath,
            "org.apache.kafka.connect.cli.ConnectStandalone", str(worker), str(connector)]
    started = time.monotonic()
    child = start(argv, env={}, log_path=work / "stdout.log")
    group = f"connect-{name}"
    try:
        progress = wait_until_committed(kafka, group=group, topic=topic, ends=ends,
                                        children=[child], started=started, timeout=timeout)
    finally:
        child.stop(timeout=30)
        kafka.delete_group(group)
    return PeerRun(seconds=progress.done_s, first_commit_s=progress.first_commit_s,
                   peak_rss_bytes=child.peak_rss_bytes, cpu_s=child.cpu_s)
