"""The one exception type for user mistakes.

A `UserError` is something the user can fix (a bad config key, a malformed JSONL
line, a missing file). The CLI prints its message on one line and exits with
code 2, without a traceback unless `--debug` is given.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A mistake in the user's input, with a message that says what to do."""

    exit_code = 2


def where(path: str | Path, line: int | None = None) -> str:
    """Format a location as `file:line` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)
