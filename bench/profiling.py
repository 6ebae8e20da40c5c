"""Summaries of py-spy's collapsed stacks (``py-spy record --format raw``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` → ``func (module.py)``: lines merged per function."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})" if file else name


def summarize(path: Path, top: int = 15) -> dict[str, object]:
    """Share of samples per function: ``self`` (on top of the stack) and ``total`` (anywhere
    on it), the ``top`` largest of each, in percent of all samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count

    def share(counter: Counter[str]) -> list[list[object]]:
        return [[name, round(100.0 * n / samples, 1)] for name, n in counter.most_common(top)]

    return {"path": str(path), "samples": samples, "self": share(own) if samples else [],
            "total": share(total) if samples else []}
