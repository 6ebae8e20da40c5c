"""Where the shipped SQL and JSON Schemas live, in a source checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    return _PKG.parent / name


def ddl_dir() -> Path:
    """The directory of ordered migration files (``ddl/`` in a checkout)."""
    return _data_dir("ddl")


def schemas_dir() -> Path:
    """The directory of versioned JSON Schemas (``schemas/`` in a checkout)."""
    return _data_dir("schemas")
