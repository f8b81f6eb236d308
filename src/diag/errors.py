"""One exception type for every input problem a user can fix.

A :class:`DiagError` carries a single line that names the offending file or field and says
how to fix it. The command line prints it as ``error: ...`` and exits with status 2, without a
traceback; library callers can catch it like any other exception.
"""

from __future__ import annotations

import errno
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


_OS_FIXES = {
    errno.ENOSPC: "free some space (or choose another output folder), then run the same command "
                  "again: finished outputs are kept",
    errno.EDQUOT: "free some of your disk quota, then run the same command again: finished "
                  "outputs are kept",
    errno.EACCES: "check the permissions, or choose another output folder",
    errno.EPERM: "check the permissions, or choose another output folder",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.ENAMETOOLONG: "use shorter names (a defect name, a folder)",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "a folder is where a file should be: check the path",
    errno.EEXIST: "something is already there: choose another path",
}


def os_error_message(exc: OSError) -> str:
    """One line for a failed file operation: what failed, on which path, and the fix."""
    path = exc.filename if exc.filename is not None else "a file"
    what = exc.strerror or type(exc).__name__
    fix = _OS_FIXES.get(exc.errno or 0, "check the path and the disk")
    return " ".join(f"cannot use {where(path) if exc.filename else path} ({what}): {fix}".split())
