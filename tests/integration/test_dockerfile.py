"""The Dockerfile builds an image that installs the package with its SQL and JSON Schemas and runs
``asset-sink run`` as uid 10001, matching what the Helm chart expects of it.

No Docker engine is needed: the Dockerfile is read with BuildKit's own parser (the ``dockerfile``
package), the build context is filtered through ``.dockerignore`` with BuildKit's matching rules,
and the build stage's ``pip install .`` is reproduced by building the wheel from exactly the
files the Dockerfile copies. Tools come from ``scripts/install-tools.sh``; missing ones fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CHART_VALUES = REPO / "deploy" / "helm" / "asset-event-sink" / "values.yaml"
INSTALL_HINT = "run scripts/install-tools.sh"


def _tool_module(name: str) -> ModuleType:
    try:
        return __import__(name)
    except ImportError:
        pytest.fail(f"Python module {name!r} is missing: {INSTALL_HINT}", pytrace=False)


@cache
def _stages() -> tuple[tuple[Any, ...], ...]:
    """The Dockerfile's instructions, split into build stages (each starts with its FROM)."""
    parsed = _tool_module("dockerfile").parse_file(str(DOCKERFILE))
    stages: list[list[Any]] = []
    for command in parsed:
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return tuple(tuple(stage) for stage in stages)


def _only(stage: tuple[Any, ...], cmd: str) -> Any:
    found = [c for c in stage if c.cmd == cmd]
    assert len(found) == 1, f"expected one {cmd} in the stage, found {len(found)}"
    return found[0]


def _arg_defaults() -> dict[str, str]:
    parsed = _tool_module("dockerfile").parse_file(str(DOCKERFILE))
    defaults = {}
    for command in parsed:
        if command.cmd == "ARG":
            name, _, default = command.value[0].partition("=")
            defaults[name] = default
    return defaults


# --- .dockerignore, with BuildKit's semantics ----------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``*`` stays within a path segment, ``**`` spans."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@cache
def _ignore_rules() -> tuple[tuple[bool, re.Pattern[str]], ...]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        cleaned = line.lstrip("!").strip().strip("/")
        rules.append((negated, _pattern_regex(cleaned)))
    return tuple(rules)


def _ignored(relative: str) -> bool:
    """True when the build context leaves ``relative`` out: the last rule matching the path or
    one of its parent directories decides, ``!`` rules re-including."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negated, regex in _ignore_rules():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def _context_files(source: str) -> Iterator[Path]:
    """Files of the build context under ``source`` (a file or directory of the repository)."""
    root = REPO / source
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in paths:
        if not _ignored(path.relative_to(REPO).as_posix()):
            yield path


def test_dockerignore_keeps_sources_and_drops_bytecode_and_local_state() -> None:
    assert not _ignored("pyproject.toml")
    assert not _ignored("sink/cli.py")
    assert not _ignored("ddl/0001_asset_events.sql")
    assert _ignored("sink/__pycache__/cli.cpython-311.pyc")
    assert _ignored(".stack/bin/helm")
    assert _ignored(".git/HEAD")
    assert _ignored("tests/unit/test_config.py")


# --- the Dockerfile ----------------------------------------------------------------------------


def test_image_builds_in_two_stages_from_python_311_slim() -> None:
    build, runtime = _stages()
    assert _arg_defaults()["PYTHON_IMAGE"] == "python:3.11-slim"
    for stage, name in ((build, "build"), (runtime, "runtime")):
        assert _only(stage, "FROM").value == ("${PYTHON_IMAGE}", "AS", name)
    installs = [c.value[0] for c in build if c.cmd == "RUN" and "pip install ." in c.value[0]]
    assert installs, "the build stage must pip install the package"
    copies_from_build = [c for c in runtime if c.cmd == "COPY" and "--from=build" in c.flags]
    assert copies_from_build, "the runtime stage must take the installed package from build"


def test_runtime_stage_runs_asset_sink_as_the_charts_non_root_uid() -> None:
    runtime = _stages()[-1]
    entrypoint, cmd = _only(runtime, "ENTRYPOINT"), _only(runtime, "CMD")
    assert (entrypoint.json, entrypoint.value) == (True, ("asset-sink",))
    assert (cmd.json, cmd.value) == (True, ("run",))
    assert _only(runtime, "EXPOSE").value == ("9108",)
    uid = _only(runtime, "USER").value[0].split(":")[0]
    assert uid == "10001"
    values = yaml.safe_load(CHART_VALUES.read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["securityContext"]["runAsUser"] == int(uid)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "asset-sink" in scripts


def _build_copies() -> list[tuple[tuple[str, ...], str]]:
    """(sources, destination relative to WORKDIR) of every context COPY of the build stage."""
    build = _stages()[0]
    assert _only(build, "WORKDIR").value == ("/src",)
    copies = []
    for command in build:
        if command.cmd == "COPY":
            assert not command.flags, "build-stage COPY reads the build context only"
            *sources, destination = command.value
            copies.append((tuple(sources), destination))
    return copies


def test_every_copied_path_exists_in_the_build_context() -> None:
    copied = [source for sources, _ in _build_copies() for source in sources]
    forced = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    forced_sources = set(forced["targets"]["wheel"]["force-include"])
    assert forced_sources <= set(copied), "the wheel force-includes paths the image lacks"
    for source in copied:
        assert list(_context_files(source)), f"COPY {source}: nothing in the build context"


def _stage_build_context(into: Path) -> None:
    """Lays out WORKDIR /src as the build stage's COPY instructions would."""
    for sources, destination in _build_copies():
        target = into / destination
        for source in sources:
            root = REPO / source
            for path in _context_files(source):
                if root.is_file():
                    dest = target / path.name if destination.endswith("/") else target
                else:
                    dest = target / path.relative_to(root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)


def test_package_built_from_the_image_context_ships_sql_schemas_and_command(
    tmp_path: Path,
) -> None:
    _tool_module("hatchling")
    context, wheels = tmp_path / "src", tmp_path / "wheels"
    _stage_build_context(context)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--wheel-dir", str(wheels), str(context)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("asset_event_sink-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "asset-sink = sink.cli:main" in archive.read(entry_points).decode()
    for module in (REPO / "sink").glob("*.py"):
        assert f"sink/{module.name}" in names
    for source in ("ddl", "schemas"):
        expected = {
            f"sink/_data/{source}/{p.relative_to(REPO / source).as_posix()}"
            for p in _context_files(source)
        }
        assert expected, f"{source}/ is empty"
        assert expected <= names, sorted(expected - names)
