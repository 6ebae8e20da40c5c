"""Child processes of the benchmark: start, watch (progress, peak RSS), stop, reap."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.kafka import Kafka


class ContenderFailed(RuntimeError):
    """A contender's process exited early or did not finish in time (message has its log)."""


@dataclass(slots=True)
class Child:
    """A started process, its log file and the peak RSS seen so far."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    peak_rss_bytes: int = 0
    cpu_s: float = 0.0  # user + system CPU seconds over its life (known once reaped)
    exit_code: int | None = None
    _log: object = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def sample_rss(self) -> None:
        """Fold the kernel's high-water mark (VmHWM) of the process into ``peak_rss_bytes``."""
        try:
            with open(f"/proc/{self.pid}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"VmHWM:"):
                        kib = int(line.split()[1])
                        self.peak_rss_bytes = max(self.peak_rss_bytes, kib * 1024)
                        return
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass

    def alive(self) -> bool:
        """Whether the process still runs (reaps it, keeping its rusage, when it ended)."""
        return self.exit_code is None and not self._reap()

    def _reap(self) -> bool:
        """``os.wait4`` without blocking: record exit code and lifetime peak RSS if it ended.

        Used instead of ``Popen.poll``/``wait``, which would throw the rusage away.
        """
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid != self.pid:
            return False
        self.peak_rss_bytes = max(self.peak_rss_bytes, usage.ru_maxrss * 1024)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.exit_code
        return True

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, *, timeout: float = 40.0, sig: int = signal.SIGTERM) -> int:
        """Signal the process, reap it, fold its lifetime peak RSS (``ru_maxrss``) in.

        Kills it after ``timeout`` seconds. Returns the exit code (negative: killed by signal).
        """
        if self.exit_code is None:
            self.sample_rss()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + timeout
            while not self._reap():
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    deadline = time.monotonic() + 10
                time.sleep(0.05)
        if hasattr(self._log, "close"):
            self._log.close()
        assert self.exit_code is not None
        return self.exit_code


def start(argv: Sequence[str], *, env: Mapping[str, str], log_path: Path,
          cwd: Path | None = None) -> Child:
    """Start ``argv`` with ``env`` added to this environment; stdout and stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    proc = subprocess.Popen(
        list(argv), env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, cwd=cwd,
    )
    return Child(proc=proc, log_path=log_path, _log=log)


@dataclass(frozen=True, slots=True)
class Progress:
    """When a consumer group caught up with a topic, in seconds after its processes started."""

    done_s: float  # every message committed
    first_commit_s: float | None  # first committed offset seen


def wait_until_committed(kafka: Kafka, *, group: str, topic: str, ends: dict[int, int],
                         children: Sequence[Child], started: float, timeout: float,
                         poll_s: float = 0.2) -> Progress:
    """Poll ``group``'s committed offsets until they reach ``ends`` on every partition.

    ``started`` is the ``time.monotonic()`` the processes were started at. Samples the
    children's peak RSS on every poll. Raises :class:`ContenderFailed` when a child exits or
    ``timeout`` seconds pass first.
    """
    first: float | None = None
    deadline = started + timeout
    while True:
        for child in children:
            child.sample_rss()
            if not child.alive():
                raise ContenderFailed(
                    f"process {child.pid} exited with {child.exit_code} before the group "
                    f"{group} caught up; last lines of {child.log_path}:\n{child.log_tail()}")
        try:
            done = kafka.committed(group, topic, ends)
        except Exception:  # the group coordinator may not know the group yet
            done = {}
        now = time.monotonic()
        if first is None and any(offset > 0 for offset in done.values()):
            first = now - started
        if all(max(done.get(p, 0), 0) >= end for p, end in ends.items()):
            return Progress(done_s=now - started, first_commit_s=first)
        if now > deadline:
            lag = sum(end - max(done.get(p, 0), 0) for p, end in ends.items())
            tails = "\n".join(f"--- {c.log_path}:\n{c.log_tail()}" for c in children)
            raise ContenderFailed(f"group {group} still {lag} messages behind after "
                                  f"{timeout:.0f}s\n{tails}")
        time.sleep(poll_s)
