"""Files diag writes: paths checked before any work, atomic writes, locks, temporary files,
content hashes. Every command writes through this module, and every failure is one line.

* :func:`check_folder` / :func:`check_file` refuse, before any work starts, an output folder
  where a file is (or a file where a folder is expected), a path through a file, a name too
  long for the file system, and a folder (or its nearest existing parent) that is not
  writable, with a :class:`~diag.errors.DiagError` naming the path and the fix.
* :func:`write_bytes`, :func:`write_text`, :func:`write_json` and :func:`save_torch` write
  beside the target under a temporary name (``.<name>.<random>.tmp``, as
  :mod:`diag.imageio`), sync, and rename into place: a killed process leaves at most a
  temporary file (removed by the next run, :func:`remove_temp_files`) and never a
  half-written output. A failed write (disk full, permission denied, read-only file system)
  removes its temporary file, keeps the previous version of the file and becomes one
  ``DiagError`` line saying what to do. When the folder cannot be written but the file
  already holds the same content (``volatile`` keys such as timings aside), nothing needs
  writing and the write succeeds: a rerun on a finished, read-only output works.
* :func:`copy_file` copies (or hard-links) a file into place the same way.
* :func:`lock_folder` keeps two processes from writing one run folder at the same time (an
  advisory lock on the folder itself: no lock file is left behind, and a lock dies with its
  process, even by kill -9); :func:`lock_file` does the same with a named lock file, for
  folders several processes share (the shards of ``diag generate``).
* :func:`sha256_file` and :func:`hash_files` identify inputs by content.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_json(d / "a.json", {"x": 1, "seconds": 2.0})
True
>>> write_json(d / "a.json", {"x": 1, "seconds": 3.0}, volatile=("seconds",), keep_same=True)
False
>>> check_file(d / "a.json", "--out")
True
>>> check_file(d, "--out", name="result.json")  # doctest: +ELLIPSIS
Traceback (most recent call last):
diag.errors.DiagError: --out ... is a folder, but a file is expected here: give a file path (e.g. ...)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from diag.errors import DiagError, where

TMP_SUFFIX = ".tmp"
# .<name>.<random>.tmp (diag.imageio, this module), .<name>.tmp and .pr_curve.png.tmp.png
# (diag train before these were unified)
TEMP_RE = re.compile(r"^\..+\.tmp(\.png)?$")
RERUN = "run the same command again (finished outputs are kept)"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file (mkstemp gives 0600)
DIR_MODE = 0o777 & ~_umask()  # what mkdir() gives a new folder (mkdtemp gives 0700)

_FIXES = {
    errno.ENOSPC: "free some disk space, then {rerun}",
    errno.EDQUOT: "free some of your disk quota, then {rerun}",
    errno.EACCES: "make {folder} writable (or choose another output path), then {rerun}",
    errno.EPERM: "make {folder} writable (or choose another output path), then {rerun}",
    errno.EROFS: "{folder} is on a read-only file system: choose another output path",
    errno.ENAMETOOLONG: "use a shorter output path",
    errno.EISDIR: "a folder is in the way: remove it or choose another output path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another output path",
    errno.EEXIST: "something is in the way: remove it or choose another output path",
}
READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_error(path: str | Path, exc: OSError, rerun: str = RERUN) -> DiagError:
    """One line for a failed write of ``path``: what failed and the fix."""
    path = Path(path)
    what = exc.strerror or str(exc) or type(exc).__name__
    fix = _FIXES.get(exc.errno or 0, "check the output path and the disk, then {rerun}")
    return DiagError(f"cannot write {where(path)} ({what}): "
                     + fix.format(rerun=rerun, folder=where(path.parent)))


def _stat(path: Path, flag: str) -> os.stat_result | None:
    """``path.stat()``, None when nothing is there; odd paths become one-line errors."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise DiagError(f"{flag} {where(path)}: a name in the path is longer than the file "
                            "system allows: choose a shorter path") from None
        raise DiagError(f"{flag} {where(path)} cannot be checked ({exc.strerror or exc}): check "
                        "the path and its permissions") from None
    except ValueError as exc:
        raise DiagError(f"{flag} {where(path)} is not a valid path ({exc})") from None


def is_file(path: str | Path) -> bool:
    """``Path.is_file`` that says False, not raises, for paths the system cannot take (names
    too long, NUL bytes, permission denied on a parent)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _is_dir(st: os.stat_result) -> bool:
    import stat

    return stat.S_ISDIR(st.st_mode)


def _writable(folder: Path) -> bool:
    """Whether new files can be made in ``folder`` (permissions and read-only mounts; root's
    ``access`` honours read-only mounts but not permissions, as writing itself)."""
    return os.access(folder, os.W_OK | os.X_OK)


def _nearest(path: Path, flag: str, target: Path) -> Path:
    """The nearest existing ancestor of ``path`` (a folder), or an error naming the file in
    the way."""
    for p in path.absolute().parents:
        st = _stat(p, flag)
        if st is None:
            continue
        if not _is_dir(st):
            raise DiagError(f"{flag} {where(target)}: {where(p)} is a file, not a folder, so "
                            f"nothing can be made inside it: choose another {flag}")
        return p
    return Path("/")


def _not_writable(flag: str, target: Path, folder: Path) -> DiagError:
    ro = _read_only_fs(folder)
    why = "is on a read-only file system" if ro else "is not writable"
    fix = (f"choose another {flag}" if ro else
           f"make it writable (chmod u+w) or choose another {flag}")
    subject = f"{flag} {where(target)}" if folder.absolute() == target.absolute() else (
        f"{flag} {where(target)}: {where(folder)}")
    return DiagError(f"{subject} {why}: {fix}")


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_folder(path: str | Path, flag: str = "--out", *, files: Iterable[str] = (),
                 subdirs: Iterable[str] = (), need_write: bool = True) -> bool:
    """Check an output folder before any work.

    Args:
        path: The folder (it need not exist).
        flag: How the user gave it, for messages (``--out``).
        files: Names of files the command writes inside it: a folder there is an error.
        subdirs: Names of sub-folders it writes into: a file there is an error, and an
            existing one must be writable.
        need_write: Raise when the folder cannot be written; False: only report it (for a
            rerun that may have nothing to write).

    Returns:
        Whether the command can write there.

    Raises:
        DiagError: a file where the folder (or a sub-folder) should be, a path through a
            file, a folder where an output file should be, a name too long, or (with
            ``need_write``) a folder that cannot be written.
    """
    path = Path(path)
    st = _stat(path, flag)
    if st is not None and not _is_dir(st):
        raise DiagError(f"{flag} {where(path)} is a file, but a folder is expected here: remove "
                        f"the file or choose another {flag}")
    folders = [path]
    if st is None:
        folders = [_nearest(path, flag, path)]
    else:
        for name in files:
            s = _stat(path / name, flag)
            if s is not None and _is_dir(s):
                raise DiagError(f"{flag} {where(path)}: {where(path / name)} is a folder, but diag "
                                "writes a file there: remove it or choose another "
                                f"{flag}")
        for name in subdirs:
            s = _stat(path / name, flag)
            if s is not None and not _is_dir(s):
                raise DiagError(f"{flag} {where(path)}: {where(path / name)} is a file, but "
                                f"diag writes a folder there: remove it or choose another {flag}")
            if s is not None:
                folders.append(path / name)
    for folder in folders:
        if not _writable(folder):
            if need_write:
                raise _not_writable(flag, path, folder)
            return False
    return True


def check_file(path: str | Path, flag: str = "--out", *, need_write: bool = True,
               name: str | None = None) -> bool:
    """Check an output file before any work: not a folder, its folder can be made and written.

    With ``need_write=False`` an unwritable location is reported (False), not raised: for a
    rerun whose output may already be there, unchanged. ``name`` is the file name to suggest
    when a folder is given.

    Raises:
        DiagError: a folder where the file should be, a path through a file, a name too long,
            or (with ``need_write``) a folder that cannot be written.
    """
    path = Path(path)
    st = _stat(path, flag)
    if st is not None and _is_dir(st):
        raise DiagError(f"{flag} {where(path)} is a folder, but a file is expected here: give a "
                        "file path" + (f" (e.g. {path / name})" if name else ""))
    parent = path.parent
    pst = _stat(parent, flag)
    if pst is not None and not _is_dir(pst):
        raise DiagError(f"{flag} {where(path)}: {where(parent)} is a file, not a folder: choose "
                        f"another {flag}")
    folder = parent if pst is not None else _nearest(parent, flag, path)
    if not _writable(folder):
        if need_write:
            raise _not_writable(flag, path, folder)
        return False
    return True


def remove_temp_files(folder: str | Path, names: Iterable[str] | None = None, *,
                      older_than: float | None = None) -> list[Path]:
    """Delete temporary files left in ``folder`` by killed writers; returns what went.

    Args:
        folder: Where to look (not recursive).
        names: Only the temporary files of these outputs (``fidelity.json``); None: all.
        older_than: Only files last modified before this time (when the command started, so
            the temporary file of a concurrent writer is not touched); None: all (only while
            holding the folder's lock).
    """
    folder = Path(folder)
    prefixes = None if names is None else tuple(f".{Path(n).name}." for n in names)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        if not TEMP_RE.match(p.name) or (prefixes and not p.name.startswith(prefixes)):
            continue
        try:
            if older_than is not None and p.stat().st_mtime >= older_than:
                continue
            if p.is_file():
                p.unlink()
                removed.append(p)
        except OSError:
            continue  # read-only or already gone: nothing this run can (or needs to) do
    return removed


def _atomic(path: Path, fill: Callable[[IO[bytes]], None]) -> None:
    """Write through ``fill`` to a temporary file beside ``path``, sync, rename into place.
    On any failure the temporary file is removed and the exception propagates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def write_bytes(path: str | Path, data: bytes, *, rerun: str = RERUN, keep_same: bool = False,
                same: Callable[[Path], bool] | None = None) -> bool:
    """Write ``data`` to ``path`` atomically; returns whether it was written.

    Args:
        path: The file.
        data: Its new content.
        rerun: What the user should do after fixing a failed write (for the message).
        keep_same: Do not rewrite a file that already holds this content.
        same: Whether the existing file counts as unchanged (default: same bytes); consulted
            when the folder cannot be written, and with ``keep_same``.

    Raises:
        DiagError: the write failed (disk full, permission denied, read-only, ...) and the
            file does not already hold the same content; the previous file is kept.
    """
    path = Path(path)
    same = same or (lambda p: _same_bytes(p, data))
    if keep_same and same(path):
        return False
    try:
        _atomic(path, lambda fh: fh.write(data))
    except OSError as exc:
        if exc.errno in READ_ONLY and same(path):
            return False  # nothing to write: the finished output is already there
        raise write_error(path, exc, rerun) from None
    return True


def write_text(path: str | Path, text: str, **kw: Any) -> bool:
    """:func:`write_bytes` of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"), **kw)


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"


def _json_same(path: Path, obj: Any, volatile: Iterable[str]) -> bool:
    """Whether ``path`` holds ``obj`` as JSON, top-level ``volatile`` keys aside."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    new = json.loads(_json_text(obj))
    if isinstance(old, dict) and isinstance(new, dict):
        for k in volatile:
            old.pop(k, None)
            new.pop(k, None)
    return old == new


def write_json(path: str | Path, obj: Any, *, volatile: Iterable[str] = (), rerun: str = RERUN,
               keep_same: bool = False) -> bool:
    """Write JSON (indented, keys in the order given) atomically; returns whether it
    was written. A file that holds the same JSON (top-level ``volatile`` keys, e.g. timings,
    aside) counts as unchanged: kept with ``keep_same``, and kept instead of failing when the
    folder cannot be written."""
    path = Path(path)
    volatile = tuple(volatile)
    return write_bytes(path, _json_text(obj).encode("utf-8"), rerun=rerun, keep_same=keep_same,
                       same=lambda p: _json_same(p, obj, volatile))


class _ReadFailed(Exception):
    """A source file failed while being copied (told apart from a failed write)."""


def copy_file(src: str | Path, dst: str | Path, *, link: bool = False, rerun: str = RERUN
              ) -> None:
    """Copy ``src`` to ``dst`` atomically (streamed through a temporary file beside ``dst``).

    With ``link`` the copy is a hard link when the file system allows one (same device,
    links permitted), else a plain copy: linked files share their content, so editing one in
    place changes both.

    Raises:
        DiagError: ``src`` cannot be read, or ``dst`` cannot be written (one line each).
    """
    src, dst = Path(src), Path(dst)

    def unreadable(exc: OSError) -> DiagError:
        return DiagError(f"cannot read {where(src)} ({exc.strerror or exc}): check that it "
                         "exists and is readable")

    try:
        fh_src = open(src, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise unreadable(exc) from None
    with fh_src:
        if link:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.parent / f".{dst.name}.{os.getpid()}.link{TMP_SUFFIX}"
            try:
                with suppress(FileNotFoundError):
                    tmp.unlink()
                os.link(src, tmp)
                os.replace(tmp, dst)
                return
            except OSError:  # another device, links not allowed: copy instead
                with suppress(OSError):
                    tmp.unlink()

        def fill(fh: IO[bytes]) -> None:
            while True:
                try:
                    chunk = fh_src.read(1 << 20)
                except OSError as exc:
                    raise _ReadFailed(exc) from None
                if not chunk:
                    return
                fh.write(chunk)

        try:
            _atomic(dst, fill)
        except _ReadFailed as exc:
            raise unreadable(exc.args[0]) from None
        except OSError as exc:
            raise write_error(dst, exc, rerun) from None


def save_torch(path: str | Path, obj: Any, *, rerun: str = RERUN) -> None:
    """``torch.save`` atomically (streamed to the temporary file, not held in memory)."""
    import torch

    try:
        _atomic(Path(path), lambda fh: torch.save(obj, fh))
    except OSError as exc:
        raise write_error(path, exc, rerun) from None


@contextmanager
def lock_folder(folder: str | Path, what: str, flag: str = "--out") -> Iterator[None]:
    """Hold an exclusive advisory lock on ``folder`` (which must exist) for the duration.

    Raises:
        DiagError: another process holds it (is writing there).
    """
    import fcntl

    folder = Path(folder)
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield  # cannot open the folder for locking: go on without a lock
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DiagError(f"another process is writing {what} {where(folder)}: wait for it to "
                            f"end, or choose another {flag}") from None
        except OSError:
            pass  # a file system without locks: go on without one
        yield
    finally:
        os.close(fd)


@contextmanager
def lock_file(path: str | Path, wait: bool = False) -> Iterator[bool]:
    """Hold the lock file ``path`` (created if needed; released when the process ends, even by
    kill -9). Yields True when held; with ``wait=False`` a lock held by another process yields
    False instead of blocking."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_locked(path: str | Path) -> bool:
    """Whether another process holds the lock file ``path``."""
    import fcntl

    try:
        with open(path, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fh, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (to record exactly which file was used)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_files(paths: Iterable[str | Path], known: dict[str, dict[str, Any]] | None = None
               ) -> dict[str, dict[str, Any]]:
    """``{path: {size, mtime_ns, sha256}}`` of the existing, readable files among ``paths``.

    Entries of ``known`` whose size and modification time are unchanged are reused; new or
    changed files are hashed on a few threads (hashlib releases the GIL).
    """
    known = known or {}
    out: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, int, int]] = []
    for key in dict.fromkeys(str(p) for p in paths):
        try:
            st = os.stat(key)
        except (OSError, ValueError):
            continue
        old = known.get(key)
        if old and (old.get("size"), old.get("mtime_ns")) == (st.st_size, st.st_mtime_ns) \
                and old.get("sha256"):
            out[key] = old
        else:
            todo.append((key, st.st_size, st.st_mtime_ns))

    def digest(item: tuple[str, int, int]) -> str | None:
        try:
            return sha256_file(item[0])
        except OSError:
            return None

    workers = min(8, os.cpu_count() or 1) if len(todo) > 16 else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (key, size, mtime), h in zip(todo, pool.map(digest, todo), strict=True):
            if h is not None:
                out[key] = {"size": size, "mtime_ns": mtime, "sha256": h}
    return out
