"""One exception type for every input problem a user can fix.

A :class:`DiagError` carries a single line that names the offending file or field and says
how to fix it. The command line prints it as ``error: ...`` and exits with status 2, without a
traceback; library callers can catch it like any other exception.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


class DiagError(Exception):
    """A problem with the user's input, explained in one line (what, where, and the fix)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def where(path: str | Path) -> str:
    """Format a path for an error message."""
    return f"'{Path(path)}'"


def warn(message: str) -> None:
    """Tell the user about something diag worked around (one ``warning: ...`` line on stderr)."""
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def some(names: Sequence[str], limit: int = 5) -> str:
    """``'a', 'b' and 3 more``: a short list of names for a one-line message."""
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
