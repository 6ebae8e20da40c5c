"""Errors grouped by what the caller must do about them.

* :class:`RejectError` — the message can never be stored: dead-letter it, never retry.
* :class:`RetryableError` — a transient failure underneath (connection lost, serialization
  failure, broker unavailable): back off and try the same work again.
* :class:`FatalError` — misconfiguration or a broken invariant: exit non-zero with the message.

The class docstring is the default message.
"""

from __future__ import annotations


class SinkError(Exception):
    """asset-event-sink failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])


class RejectError(SinkError):
    """The message was rejected and belongs in the dead-letter topic."""


class RetryableError(SinkError):
    """A transient failure: retry the same work after a backoff."""


class FatalError(SinkError):
    """A fatal error: fix the configuration and restart."""
