"""The ``asset-sink`` command line.

Each subcommand lives with the module that implements it: the module exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed namespace and returning the process exit code. This module only wires them together
and sets up JSON logging.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from sink import __version__
from sink.errors import FatalError

# Modules that contribute subcommands, in the order ``--help`` lists them.
_COMMAND_MODULES = (
    "sink.consumer",  # run
    "sink.contract",  # validate
    "sink.migrate",  # migrate
    "sink.partitions",  # partitions ensure
    "sink.references",  # validate-references
    "sink.replay",  # replay
    "sink.redrive",  # dlq inspect, dlq redrive
    "sink.forensics",  # trace, forensics
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asset-sink",
        description="Store AssetEvents from Kafka in PostgreSQL, append-only, exactly once.",
    )
    parser.add_argument("--version", action="version", version=f"asset-sink {__version__}")
    parser.add_argument(
        "--log-level",
        dest="cli_log_level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level of the JSON-lines log on stderr [$SINK_LOG_LEVEL; default INFO]",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from sink.logs import configure_logging

    level = (args.cli_log_level or os.environ.get("SINK_LOG_LEVEL") or "INFO").upper()
    configure_logging(level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO")
    try:
        code: int = args.func(args)
    except FatalError as exc:
        logging.getLogger("sink").error("%s", exc, extra={"action": "fatal"})
        print(f"asset-sink: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
