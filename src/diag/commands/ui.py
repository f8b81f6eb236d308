"""``diag ui [--data ROOT --layout L] [--spec SPEC] [--out DIR]``: the expert's web tool."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui", help="web tool: describe, place, preview and curate defects",
        description="Serve the expert's web page on 127.0.0.1: browse the dataset, paint where "
                    "defects may appear, describe defect types, preview candidates, accept or "
                    "reject them, save the spec and run the batch. Works offline.")
    p.add_argument("--data", default=None, help="dataset folder (read only)")
    p.add_argument("--layout", default="auto", help="dataset layout (default: auto)")
    p.add_argument("--spec", default=None, help="start from this generate spec (YAML)")
    p.add_argument("--out", default="out/ui", help="output folder: a diag generate folder plus "
                                                   "regions/ and curation.jsonl (default: out/ui)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; anything else is reachable "
                        "from other machines and has no login)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--max-upload-mb", type=float, default=64,
                   help="largest request the page may send (default 64 MB)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diag.errors import DiagError, warn
    from diag.files import lock_folder
    from diag.ui.server import UIServer
    from diag.ui.session import Session

    if not 0 <= args.port <= 65535:
        raise DiagError(f"--port {args.port}: use 0..65535 (0: any free port)")
    if args.max_upload_mb <= 0:
        raise DiagError("--max-upload-mb must be > 0")
    out = Path(args.out)
    from diag.generate.runner import check_out_path

    check_out_path(out)
    out.mkdir(parents=True, exist_ok=True)
    with lock_folder(out, "the diag ui folder"):
        log_path = out.resolve() / "ui.log"

        def log(message: str) -> None:
            import datetime as dt

            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(f"{dt.datetime.now().astimezone().isoformat(timespec='seconds')} "
                         f"{message}\n")

        session = Session(out, Path(args.data) if args.data else None, args.layout,
                          Path(args.spec) if args.spec else None, args.device, log)
        session.samples()  # a bad dataset is a one-line error now, not in the page
        try:
            server = UIServer(session, args.host, args.port, args.max_upload_mb)
        except OSError as exc:
            raise DiagError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}): choose "
                            "another --port (0: any free one)") from None
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            warn(f"diag ui listens on {args.host}: anyone who can reach this machine can see "
                 "the data and write to --out (no login); use 127.0.0.1 and an SSH tunnel instead")
        print(f"diag ui: {server.url}  (data {session.data}, out {session.out}; Ctrl-C stops)",
              flush=True)
        log(f"serving {server.url}")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
        finally:
            server.server_close()
    return 0
