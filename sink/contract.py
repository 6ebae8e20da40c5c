"""The AssetEvent wire contract: decode one Kafka message value and validate it.

The schemas are versioned data: ``schemas/v<major>.<minor>/AssetEvent.json`` (JSON Schema
draft 2020-12), discovered from :func:`sink._paths.schemas_dir` and compiled once with
fastjsonschema. A message selects its schema by its ``version`` field.

:meth:`Contract.decode` is the per-event hot path. It applies, in this order::

    size <= max_bytes            -> too_large
    UTF-8 JSON                   -> invalid_json
    a JSON object                -> not_an_object
    a supported ``version``      -> unsupported_version
    the schema of that version   -> schema
    no U+0000 in any string      -> nul_character
    payload <= 64 KiB serialized -> too_large

and returns either a :class:`Rejection` (the message can never be stored: dead-letter it)
or a :data:`Row`, the message's values in :data:`COLUMNS` order, ready for ``COPY``.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeAlias

import fastjsonschema
import orjson

from sink import _paths
from sink.errors import FatalError

SCHEMA_FILE = "AssetEvent.json"
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576  # bytes; the broker's default message.max.bytes
PAYLOAD_MAX_BYTES = 65_536  # bytes of payload as compact UTF-8 JSON (64 KiB, contract)

#: The message's columns of ``asset_events``, in table order. The Kafka coordinates and
#: ``ingested_at`` follow them in the table; they are not part of the message.
COLUMNS: tuple[str, ...] = (
    "event_id",
    "tenant_id",
    "asset_id",
    "event_type",
    "occurred_at",
    "recorded_at",
    "version",
    "correlation_id",
    "causation_id",
    "task_id",
    "lease_id",
    "task_type",
    "provider_id",
    "sku_category",
    "env",
    "severity",
    "outcome",
    "error_code",
    "error_message",
    "http_status",
    "latency_ms",
    "old_status",
    "new_status",
    "source",
    "payload",
)

#: One valid event as the values of :data:`COLUMNS`, in that order. Every value is a
#: ``str``, an ``int`` or ``None`` (SQL NULL) and is written as-is in a text-format ``COPY``:
#: UUIDs are lower-cased strings, timestamps are the producer's RFC 3339 strings (PostgreSQL
#: parses them, offset included), ``http_status`` and ``latency_ms`` are ``int``, and
#: ``payload`` is the payload as compact JSON text (orjson), for the ``jsonb`` column.
Row: TypeAlias = tuple[str | int | None, ...]

_VERSION_DIR = re.compile(r"v([0-9]+\.[0-9]+)")


class Reason(StrEnum):
    """Why a message was rejected; the machine-readable label of every dead letter."""

    INVALID_JSON = "invalid_json"  # no value, not UTF-8, or not JSON
    NOT_AN_OBJECT = "not_an_object"  # JSON, but not one object
    SCHEMA = "schema"  # breaks a rule of its version's schema
    UNSUPPORTED_VERSION = "unsupported_version"  # a version this sink has no schema for
    TOO_LARGE = "too_large"  # the message, or its payload, is above its size limit
    NUL_CHARACTER = "nul_character"  # a string holds U+0000, which PostgreSQL cannot store
    CONFLICTING_DUPLICATE = "conflicting_duplicate"  # event_id stored with other content
    MISSING_REFERENCE = "missing_reference"  # task_id / lease_id references nothing
    DB_REJECTED = "db_rejected"  # PostgreSQL refused the row itself (a data error)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that can never be stored, and why.

    ``detail`` is one sentence for a person: which field, which rule, what it must be.
    ``field`` is the path of the offending value (``"http_status"``, ``"payload.tags[2]"``)
    or ``"$"`` for the message as a whole; ``rule`` names the rule broken (the JSON Schema
    keyword for schema errors).
    """

    reason: Reason
    detail: str
    field: str = "$"
    rule: str | None = None

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


_Validator: TypeAlias = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Contract:
    """The compiled schemas of every supported version.

    Build it once at start-up with :meth:`load` (or :func:`load_contract`); it is immutable
    and safe to share between threads.
    """

    validators: Mapping[str, _Validator]
    latest: str

    @classmethod
    def load(cls, directory: Path | None = None) -> Contract:
        """Compile ``<directory>/v<version>/AssetEvent.json`` for every version found.

        ``directory`` defaults to :func:`sink._paths.schemas_dir`. Raises
        :class:`~sink.errors.FatalError` if no schema is found, a schema is not valid JSON
        or not a valid JSON Schema, or its ``version`` const differs from its directory.
        """
        root = _paths.schemas_dir() if directory is None else directory
        validators: dict[str, _Validator] = {}
        for version, path in _discover(root):
            try:
                definition = orjson.loads(path.read_bytes())
                const = definition["properties"]["version"]["const"]
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise FatalError(f"cannot read schema {path}: {exc}") from exc
            if const != version:
                raise FatalError(f"schema {path} declares version {const!r}, not {version!r}")
            try:
                # Formats stay annotations: each pattern states the exact accepted form.
                validators[version] = fastjsonschema.compile(
                    definition, use_default=False, use_formats=False
                )
            except fastjsonschema.JsonSchemaDefinitionException as exc:
                raise FatalError(f"schema {path} is not a valid JSON Schema: {exc}") from exc
        if not validators:
            raise FatalError(f"no schema found: expected {root}/v<major>.<minor>/{SCHEMA_FILE}")
        return cls(validators=validators, latest=next(reversed(validators)))

    @property
    def supported(self) -> tuple[str, ...]:
        """The supported versions, oldest first."""
        return tuple(self.validators)

    def decode(
        self, value: bytes | None, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> Row | Rejection:
        """Decode and validate one message value; never raises for bad input.

        ``value`` is the raw Kafka message value (``None`` for a tombstone); ``max_bytes``
        bounds its size and is checked before parsing. Returns a :data:`Row` when the
        message satisfies the whole contract of its version, else a :class:`Rejection`.
        Pure and CPU-only: no I/O, no logging.
        """
        if value is None:
            return Rejection(
                Reason.INVALID_JSON, "the message has no value; expected one JSON object"
            )
        if len(value) > max_bytes:
            return Rejection(
                Reason.TOO_LARGE,
                f"the message is {len(value)} bytes, above the limit of {max_bytes} bytes",
                rule="max_bytes",
            )
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Rejection(Reason.INVALID_JSON, f"not valid UTF-8 JSON: {exc}")
        if type(event) is not dict:
            return Rejection(
                Reason.NOT_AN_OBJECT,
                f"expected one JSON object, got {_json_type(event)} {_show(event)}",
            )

        version = event.get("version")
        if type(version) is str:
            validate = self.validators.get(version)
            if validate is None:
                return Rejection(
                    Reason.UNSUPPORTED_VERSION,
                    f"version '{_name(version)}' is not supported; supported: "
                    f"{', '.join(self.validators)}; send one of those or upgrade the sink",
                    field="version",
                    rule="version",
                )
        else:
            # A missing or mistyped version breaks the schema: report it in those terms.
            version = self.latest
            validate = self.validators[version]
        try:
            validate(event)
        except fastjsonschema.JsonSchemaValueException as exc:
            return _schema_rejection(exc, version)

        # orjson refuses a raw NUL byte, so U+0000 can only arrive as the escape \u0000;
        # looking for a backslash first is a memchr, far cheaper than the 6-byte search.
        if b"\\" in value and b"\\u0000" in value:
            where = _find_nul(event)
            if where is not None:
                return Rejection(
                    Reason.NUL_CHARACTER,
                    f"field '{where}' contains the NUL character U+0000, which PostgreSQL "
                    "text and jsonb cannot store; remove it",
                    field=where,
                    rule="no_nul",
                )

        payload = event.get("payload")
        payload_json: str | None = None
        if payload is not None:
            serialized = _dumps(payload)
            if serialized is None:
                return Rejection(
                    Reason.TOO_LARGE,
                    "field 'payload' nests too deeply to be serialized for storage; flatten it",
                    field="payload",
                    rule="depth",
                )
            if len(serialized) > PAYLOAD_MAX_BYTES:
                return Rejection(
                    Reason.TOO_LARGE,
                    f"field 'payload' is {len(serialized)} bytes as compact JSON, above the "
                    f"limit of {PAYLOAD_MAX_BYTES} bytes (64 KiB)",
                    field="payload",
                    rule="max_payload_bytes",
                )
            payload_json = serialized.decode()
        return _row(event, payload_json)


def _discover(root: Path) -> list[tuple[str, Path]]:
    """``(version, schema path)`` of every ``v<major>.<minor>/AssetEvent.json``, oldest first."""
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            match = _VERSION_DIR.fullmatch(entry.name)
            if match and (entry / SCHEMA_FILE).is_file():
                found.append((match.group(1), entry / SCHEMA_FILE))
    return sorted(found, key=lambda item: tuple(int(part) for part in item[0].split(".")))


def _row(event: dict[str, Any], payload_json: str | None) -> Row:
    get = event.get
    task_id = get("task_id")
    lease_id = get("lease_id")
    http_status = get("http_status")
    latency_ms = get("latency_ms")
    # JSON Schema counts 200.0 as an integer; PostgreSQL's smallint and integer do not.
    if type(http_status) is float:
        http_status = int(http_status)
    if type(latency_ms) is float:
        latency_ms = int(latency_ms)
    return (
        event["event_id"].lower(),
        event["tenant_id"],
        event["asset_id"],
        event["event_type"],
        event["occurred_at"],
        event["recorded_at"],
        event["version"],
        get("correlation_id"),
        get("causation_id"),
        None if task_id is None else task_id.lower(),
        None if lease_id is None else lease_id.lower(),
        get("task_type"),
        get("provider_id"),
        get("sku_category"),
        get("env"),
        get("severity"),
        get("outcome"),
        get("error_code"),
        get("error_message"),
        http_status,
        latency_ms,
        get("old_status"),
        get("new_status"),
        get("source"),
        payload_json,
    )


def _dumps(payload: dict[str, Any]) -> bytes | None:
    """The payload as compact UTF-8 JSON; ``None`` if it nests too deeply to serialize."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        pass  # orjson stops at 255 levels; the standard library goes as deep as the stack
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        return None
    return text.encode()


def _find_nul(event: dict[str, Any]) -> str | None:
    """The path of the first string (value or object key) holding U+0000, if any."""
    stack: list[tuple[str, Any]] = [(key, value) for key, value in event.items()]
    while stack:
        path, value = stack.pop()
        if type(value) is str:
            if "\x00" in value:
                return path
        elif type(value) is dict:
            for key, item in value.items():
                if "\x00" in key:
                    return f"{path}.{_name(key)}"
                stack.append((f"{path}.{key}", item))
        elif type(value) is list:
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
    return None


# --- schema error sentences -------------------------------------------------------------


def _schema_rejection(exc: fastjsonschema.JsonSchemaValueException, version: str) -> Rejection:
    """Turn fastjsonschema's error into a sentence naming the field, the rule and the fix."""
    rule = exc.rule or "schema"
    limit = exc.rule_definition
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    field = _field_path(exc.path[1:])
    value = exc.value

    if rule == "required" and isinstance(value, dict):
        missing = [name for name in limit if name not in value]
        names = ", ".join(f"'{_name(name)}'" for name in missing)
        noun = "field" if len(missing) == 1 else "fields"
        return Rejection(
            Reason.SCHEMA,
            f"missing required {noun} {names} (AssetEvent v{version})",
            field=missing[0] if missing else field,
            rule=rule,
        )
    if rule == "additionalProperties" and isinstance(value, dict):
        known = definition.get("properties", {})
        unknown = sorted(name for name in value if name not in known)
        names = ", ".join(f"'{_name(name)}'" for name in unknown)
        noun = "field" if len(unknown) == 1 else "fields"
        return Rejection(
            Reason.SCHEMA,
            f"unknown {noun} {names}: AssetEvent v{version} has no such field; free-form "
            "data belongs in 'payload'",
            field=unknown[0] if unknown else field,
            rule=rule,
        )

    problem = _problem(rule, value, limit)
    expected = definition.get("description")
    detail = f"field '{field}': {problem}"
    if expected:
        detail += f" (must be {expected})"
    return Rejection(Reason.SCHEMA, detail, field=field, rule=rule)


def _problem(rule: str, value: Any, limit: Any) -> str:
    if rule == "type":
        return f"got {_json_type(value)} {_show(value)}"
    if rule == "minimum":
        return f"{_show(value)} is below the minimum {limit}"
    if rule == "maximum":
        return f"{_show(value)} is above the maximum {limit}"
    if rule == "minLength":
        if value == "":
            return "the empty string is too short"
        return f"{len(value)} characters is shorter than the minimum {limit}"
    if rule == "maxLength":
        return f"{len(value)} characters is longer than the maximum {limit}"
    if rule == "pattern":
        return f"{_show(value)} is not in the required form"
    if rule == "enum":
        return f"{_show(value)} is not an allowed value"
    if rule == "const":
        return f"{_show(value)} is not {_show(limit)}"
    return f"{_show(value)} breaks the rule '{rule}'"


def _field_path(parts: Iterable[str]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
    return path or "$"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _name(text: str) -> str:
    """A field name or short string for a sentence: JSON-escaped, without the quotes."""
    return _show(text)[1:-1]


def _show(value: Any, limit: int = 80) -> str:
    """A value as short JSON, control characters escaped, safe to log."""
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- module-level API ---------------------------------------------------------------------


@functools.cache
def load_contract() -> Contract:
    """The contract of the shipped schemas, compiled on first use and then reused."""
    return Contract.load()


def decode_and_validate(
    value: bytes | None, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Row | Rejection:
    """:meth:`Contract.decode` with the shipped schemas (see :func:`load_contract`)."""
    return load_contract().decode(value, max_bytes=max_bytes)


# --- ``asset-sink validate`` --------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``validate``: check a JSON-lines file of message values against the contract."""
    parser = subparsers.add_parser(
        "validate",
        help="validate JSON-lines AssetEvents against the contract",
        description=(
            "Validate one message value per line, exactly as the sink would. Prints "
            "'line N: ok' or 'line N: <reason>: <detail>' per line; a blank line is an "
            "empty message and so invalid_json. Exits 1 if any line is rejected."
        ),
    )
    parser.add_argument(
        "file", nargs="?", default="-", help="JSON-lines file to read, '-' for stdin (default)"
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help=f"largest accepted message, in bytes (default {DEFAULT_MAX_MESSAGE_BYTES})",
    )
    parser.set_defaults(func=_validate_command)


def _validate_command(args: argparse.Namespace) -> int:
    contract = load_contract()
    rejected = 0
    total = 0
    for number, line in enumerate(_read_lines(args.file), start=1):
        total = number
        result = contract.decode(line, max_bytes=args.max_bytes)
        if isinstance(result, Rejection):
            rejected += 1
            print(f"line {number}: {result}")
        else:
            print(f"line {number}: ok")
    print(f"{total} lines, {total - rejected} ok, {rejected} rejected", file=sys.stderr)
    return 1 if rejected else 0


def _read_lines(name: str) -> Iterator[bytes]:
    """Each line of ``name`` (``-``: stdin) as bytes, without its line ending."""
    try:
        if name == "-":
            yield from (_strip_eol(line) for line in sys.stdin.buffer)
            return
        with open(name, "rb") as stream:
            yield from (_strip_eol(line) for line in stream)
    except OSError as exc:
        raise FatalError(f"cannot read {name}: {exc.strerror or exc}") from exc


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line
