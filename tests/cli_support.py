"""Run ``asset-sink`` in-process for tests."""

from __future__ import annotations

import logging

import pytest

from sink.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``asset-sink argv`` in-process: exit code, stdout, stderr (root logger restored)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    try:
        code = main(list(argv))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err
