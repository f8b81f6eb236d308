"""One exception type for every input problem a user can fix.

A :class:`DiagError` carries a single line that names the offending file or field and says
how to fix it. The command line prints it as ``error: ...`` and exits with status 2, without a
traceback; library callers can catch it like any other exception.
"""

from __future__ import annotations

from pathlib import Path


class DiagError(Exception):
    """A problem with the user's input, explained in one line (what, where, and the fix)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def where(path: str | Path) -> str:
    """Format a path for an error message."""
    return f"'{Path(path)}'"
