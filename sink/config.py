"""Settings of the worker: one frozen, typed object built once from flags and ``SINK_*`` variables.

Precedence: command-line flag, then environment variable, then default. Every value is checked
at construction; a bad value raises :class:`~sink.errors.FatalError` naming the variable, the
value's problem and what to set instead. Secrets (the database password, librdkafka
``*password*``/``*secret*`` properties) never appear in ``repr`` or logs.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sink.errors import FatalError

_KAFKA_PREFIX = "SINK_KAFKA_"
_SECRET_WORDS = ("password", "secret", "token", "key")
# librdkafka properties the worker owns: overriding them would break its offset guarantees.
_RESERVED_KAFKA = frozenset(
    {"group.id", "bootstrap.servers", "enable.auto.commit", "enable.auto.offset.store"}
)


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str  # attribute name; env var is SINK_<NAME.upper()>, flag is --<name with dashes>
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False


_SPECS: tuple[_Spec, ...] = (
    _Spec("bootstrap_servers", str, None, "Kafka bootstrap servers, host:port[,host:port]"),
    _Spec("database_url", str, None, "PostgreSQL URL (libpq conninfo or URI)", secret=True),
    _Spec("topic", str, "asset-events", "topic to consume"),
    _Spec("group_id", str, "asset-event-sink", "consumer group id"),
    _Spec("dlq_topic", str, "asset-events.dlq", "dead-letter topic for rejected messages"),
    _Spec("metrics_port", int, 9108, "port of /metrics, /healthz, /readyz (0 disables)", 0, 65535),
    _Spec("batch_max_events", int, 5000, "close a batch at this many messages", 1, 1_000_000),
    _Spec("batch_max_bytes", int, 8 * 1024 * 1024, "close a batch at this many value bytes",
          1024, 1024 * 1024 * 1024),
    _Spec("batch_max_wait_ms", int, 200, "close a batch this long after its first message",
          1, 600_000),
    _Spec("db_connections", int, 2, "PostgreSQL sessions writing batches concurrently "
          "(committed in order)", 1, 8),
    _Spec("max_message_bytes", int, 1024 * 1024, "larger message values are rejected as "
          "too_large", 1024, 100 * 1024 * 1024),
    _Spec("drain_timeout_s", float, 20.0, "bound on flushing and committing at shutdown or "
          "revocation, seconds (keep below the pod's grace period)", 1.0, 3600.0),
    _Spec("partitions_ahead", int, 3, "months of partitions ensured ahead at start-up", 0, 120),
    _Spec("backoff_max_s", float, 30.0, "cap of the exponential backoff when PostgreSQL or the "
          "dead-letter topic fails, seconds", 0.1, 3600.0),
    _Spec("log_level", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
)


def _mask_url(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", re.sub(r"password=\S+", "password=***", url))


def _is_secret_property(prop: str) -> bool:
    return any(word in prop for word in _SECRET_WORDS)


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated worker settings. Build with :meth:`from_sources`."""

    bootstrap_servers: str
    database_url: str = field(repr=False)
    topic: str = "asset-events"
    group_id: str = "asset-event-sink"
    dlq_topic: str = "asset-events.dlq"
    metrics_port: int = 9108
    batch_max_events: int = 5000
    batch_max_bytes: int = 8 * 1024 * 1024
    batch_max_wait_ms: int = 200
    db_connections: int = 2
    max_message_bytes: int = 1024 * 1024
    drain_timeout_s: float = 20.0
    partitions_ahead: int = 3
    backoff_max_s: float = 30.0
    log_level: str = "INFO"
    kafka_properties: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr
        )
        kafka = {k: ("***" if _is_secret_property(k) else v)
                 for k, v in self.kafka_properties.items()}
        return (f"Settings({shown}, database_url={_mask_url(self.database_url)!r}, "
                f"kafka_properties={kafka!r})")

    def log_fields(self) -> dict[str, Any]:
        """The settings as a dict safe to log (secrets masked)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        out["database_url"] = _mask_url(self.database_url)
        out["kafka_properties"] = {k: ("***" if _is_secret_property(k) else v)
                                   for k, v in self.kafka_properties.items()}
        return out

    @classmethod
    def from_sources(
        cls,
        args: argparse.Namespace | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Build from parsed flags (attributes named like the fields) and ``SINK_*`` variables.

        Raises :class:`FatalError` with one line per problem found.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for spec in _SPECS:
            var = "SINK_" + spec.name.upper()
            raw = getattr(args, spec.name, None) if args is not None else None
            origin = "--" + spec.name.replace("_", "-")
            if raw is None:
                raw, origin = env.get(var), var
            if raw is None or raw == "":
                if spec.default is None:
                    problems.append(f"{var} is required ({spec.help}); set it or pass {origin}")
                    continue
                raw = spec.default
            try:
                values[spec.name] = _convert(spec, raw)
            except ValueError as exc:
                shown = "***" if spec.secret else repr(raw)
                problems.append(f"{origin}={shown}: {exc}")
        if "log_level" in values:
            level = str(values["log_level"]).upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                problems.append(f"SINK_LOG_LEVEL={values['log_level']!r}: must be one of "
                                "DEBUG, INFO, WARNING, ERROR")
            values["log_level"] = level
        kafka = _kafka_properties(env, getattr(args, "kafka_property", None) or [], problems)
        if problems:
            raise FatalError("invalid settings:\n  " + "\n  ".join(problems))
        return cls(kafka_properties=kafka, **values)


def _convert(spec: _Spec, raw: Any) -> Any:
    if spec.kind is int:
        try:
            value: Any = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"not a whole number ({spec.help})") from None
    elif spec.kind is float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"not a number ({spec.help})") from None
    else:
        value = str(raw).strip()
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(f"below the minimum {spec.minimum:g} ({spec.help})")
    if spec.maximum is not None and value > spec.maximum:
        raise ValueError(f"above the maximum {spec.maximum:g} ({spec.help})")
    return value


def _kafka_properties(
    env: Mapping[str, str], pairs: list[str], problems: list[str]
) -> dict[str, str]:
    """librdkafka properties from ``SINK_KAFKA_SASL_USERNAME=…`` variables and ``-X k=v`` flags."""
    props: dict[str, str] = {}
    for var, value in env.items():
        if var.startswith(_KAFKA_PREFIX) and len(var) > len(_KAFKA_PREFIX):
            props[var[len(_KAFKA_PREFIX):].lower().replace("_", ".")] = value
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            problems.append(f"--kafka-property {pair!r}: expected property=value")
            continue
        props[key.strip()] = value
    for key in sorted(props.keys() & _RESERVED_KAFKA):
        problems.append(f"Kafka property {key!r} is managed by the worker; use the SINK_ "
                        "setting instead or remove it")
    return props


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting (default None so the environment can fill it)."""
    for spec in _SPECS:
        var = "SINK_" + spec.name.upper()
        default = "required" if spec.default is None else f"default {spec.default}"
        parser.add_argument(
            "--" + spec.name.replace("_", "-"),
            dest=spec.name,
            default=None,
            help=f"{spec.help} [${var}; {default}]",
        )
    parser.add_argument(
        "-X", "--kafka-property", action="append", metavar="PROP=VALUE",
        help="librdkafka property passed through (also $SINK_KAFKA_<PROP_WITH_UNDERSCORES>)",
    )


