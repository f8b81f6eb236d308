"""``diag <command>``: the command line.

Each command lives in its own module under :mod:`diag.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning an exit code. Adding a command means adding a module there.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import NoReturn

from diag import __version__, commands
from diag.errors import DiagError, os_error_message


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``error:`` line (exit 2), like every other
    error; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)",
              file=sys.stderr)
        raise SystemExit(DiagError.exit_code)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="diag",
        description="Training-free defect image generation for visual inspection, "
                    "with baselines, a defect classifier and fidelity metrics.",
    )
    parser.add_argument("--version", action="version", version=f"diag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"diag.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad command line (one error line)
        return int(exc.code or 0) if not isinstance(exc.code, str) else DiagError.exit_code
    try:
        return int(args.func(args) or 0)
    except DiagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return DiagError.exit_code
    except BrokenPipeError:  # `diag ... | head`: the reader has gone, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # disk full, permissions, read-only disks: the user's to fix
        if os.environ.get("DIAG_DEBUG"):
            raise
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return DiagError.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; run the same command again to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
