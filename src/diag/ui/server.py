"""The web tool's HTTP server: the page, its JSON API and the files it shows.

Standard library only (``http.server``), one thread per request; generation runs on the
session's worker thread, so the page never waits on the model. It serves files from two
folders only, the data folder (read) and the out folder (read and write), refuses any other
path, bounds uploads, accepts requests only for its own host name (no DNS rebinding) and JSON
posts only (no cross-site forms), and sends a content policy that loads nothing from
elsewhere: no CDN, no telemetry.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import mimetypes
import re
import traceback
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from diag.errors import DiagError
from diag.ui.session import Session, read_region

STATIC = Path(__file__).parent / "static"
ASSETS = {"/": "index.html", "/static/app.js": "app.js", "/static/app.css": "app.css"}
THUMB = 160
PAGE = 48  # thumbnails per page
DRAIN = 4  # oversized bodies up to this many times the limit are read and dropped
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class Refused(Exception):
    """A request answered with an HTTP error status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def confined(root: Path, rel: str) -> Path:
    """``root / rel`` when it stays inside ``root`` after resolving links and ``..``; a 403
    otherwise.

    >>> confined(Path("/srv/out"), "images/a.png").as_posix()
    '/srv/out/images/a.png'
    >>> confined(Path("/srv/out"), "../etc/passwd")
    Traceback (most recent call last):
    ...
    diag.ui.server.Refused: ../etc/passwd is outside the folders diag ui serves
    """
    root = root.resolve()
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise Refused(HTTPStatus.FORBIDDEN, f"{rel} is outside the folders diag ui serves")
    return path


class Handler(BaseHTTPRequestHandler):
    server: UIServer
    protocol_version = "HTTP/1.1"

    # ---------------------------------------------------------------- plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        self.server.session.log(f"{self.address_string()} {format % args}")

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
              ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj, default=str).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        if self.command == "POST":
            self.close_connection = True  # its body may be unread
        self._json({"error": message}, status)

    def _query(self) -> dict[str, str]:
        q = urllib.parse.urlsplit(self.path).query
        return {k: v[-1] for k, v in urllib.parse.parse_qs(q).items()}

    def _body(self) -> dict[str, Any]:
        return self.payload

    def _read_body(self) -> dict[str, Any]:
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise Refused(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if n > self.server.max_upload:
            # read (and drop) a body up to a few times the limit, so the client sees the 413
            # instead of a reset connection; a larger one is cut off unread
            left = n if n <= DRAIN * self.server.max_upload else 0
            while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                left -= len(chunk)
            raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                          f"upload of {n / 1e6:.1f} MB is over the limit of "
                          f"{self.server.max_upload / 1e6:.0f} MB (diag ui --max-upload-mb)")
        try:
            data = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            raise Refused(HTTPStatus.BAD_REQUEST, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise Refused(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
        return data

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        return "*" in self.server.allowed_hosts or host in self.server.allowed_hosts

    def _dispatch(self, method: str) -> None:
        route = urllib.parse.urlsplit(self.path).path
        try:
            if not self._host_ok():
                raise Refused(HTTPStatus.FORBIDDEN, "unknown Host header: open the address "
                                                    "diag ui printed")
            if method == "post":
                if self.headers.get_content_type() != "application/json":
                    raise Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                                  "send JSON (application/json)")
                self.payload = self._read_body()  # always read: keep-alive needs it consumed
            handler = getattr(self, f"{method}_{_name(route)}", None)
            if handler is None:
                if method == "get" and route.startswith(("/files/out/", "/files/data/")):
                    return self._file(route)
                if method == "get" and route in ASSETS:
                    return self._asset(ASSETS[route])
                raise Refused(HTTPStatus.NOT_FOUND, f"no page {route}")
            handler()
        except Refused as exc:
            self._error(exc.status, str(exc))
        except DiagError as exc:
            self._error(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - the server keeps serving whatever happens
            self.server.session.log(f"{method.upper()} {route} failed:\n{traceback.format_exc()}")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR,
                        f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                        f" (details in {self.server.session.out / 'ui.log'})")

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._dispatch("get")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("get")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("post")

    # ------------------------------------------------------------------ files
    def _asset(self, name: str) -> None:
        body = (STATIC / name).read_bytes()
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self._send(200, body, f"{ctype}; charset=utf-8" if ctype.startswith("text") or
                   ctype.endswith("javascript") else ctype)

    def _file(self, route: str) -> None:
        s = self.server.session
        which, _, rel = route[len("/files/"):].partition("/")
        root = s.out if which == "out" else s.data
        path = confined(root, urllib.parse.unquote(rel))
        if not path.is_file():
            raise Refused(HTTPStatus.NOT_FOUND, f"no file {rel}")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if not ctype.startswith("image/") and path.suffix not in (".yaml", ".jsonl", ".json",
                                                                  ".log", ".txt"):
            raise Refused(HTTPStatus.FORBIDDEN, f"{rel}: diag ui serves images and its own "
                                                "records only")
        self._send(200, path.read_bytes(), ctype if ctype.startswith("image/")
                   else "text/plain; charset=utf-8")

    # -------------------------------------------------------------------- API
    def get_api_state(self) -> None:
        s = self.server.session
        from diag.generators import GENERATORS  # the package registers the built-in ones
        self._json({"spec": s.view_spec(), "out": str(s.out), "data": str(s.data),
                    "generators": sorted(GENERATORS), "regions": s.region_sets(),
                    "accepted": s.accepted(), "counts": {k: len(v) for k, v in
                                                          s.samples().items()}})

    def get_api_images(self) -> None:
        q = self._query()
        which = q.get("which", "negatives")
        if which not in ("negatives", "positives"):
            raise Refused(HTTPStatus.BAD_REQUEST, "which must be negatives or positives")
        items = self.server.session.samples()[which]
        text = q.get("q", "").lower()
        if text:
            items = [x for x in items if text in x.id.lower()]
        offset, limit = max(0, _int(q.get("offset"), 0)), min(200, max(1, _int(q.get("limit"), PAGE)))
        self._json({"total": len(items), "offset": offset, "items": [
            {"id": x.id, "stem": x.path.stem, "defect": x.defect, "mask": x.mask_path is not None}
            for x in items[offset:offset + limit]]})

    def get_api_image(self) -> None:
        """An image of the dataset by id: full size (PNG) or a thumbnail (JPEG)."""
        q = self._query()
        sample = self.server.session.sample(q.get("id", ""))
        thumb = q.get("thumb") == "1"
        body, ctype = _picture(str(sample.path), sample.path.stat().st_mtime_ns, thumb)
        self._send(200, body, ctype, {"X-Image-Size": "x".join(map(str, sample.size[::-1]))})

    def get_api_mask(self) -> None:
        sample = self.server.session.sample(self._query().get("id", ""))
        if sample.mask_path is None:
            raise Refused(HTTPStatus.NOT_FOUND, f"{sample.id} has no mask")
        self._send(200, read_region(sample.mask_path), "image/png")

    def get_api_region(self) -> None:
        q = self._query()
        path = self.server.session.region_file(q.get("set", ""), q.get("image", ""))
        if not path.is_file():
            raise Refused(HTTPStatus.NOT_FOUND, "no region painted here yet")
        self._send(200, read_region(path), "image/png")

    def post_api_region(self) -> None:
        b = self._body()
        png = _data_url(str(b.get("png", "")))
        pixels = self.server.session.save_region(str(b.get("set", "")), str(b.get("image", "")),
                                                 png)
        self._json({"pixels": pixels, "regions": self.server.session.region_sets()})

    def post_api_spec(self) -> None:
        s = self.server.session
        body = self._body()
        try:
            spec = s.update_spec(body)
        except DiagError as exc:  # keep the page's typing, show why it is not valid yet
            return self._json({"error": str(exc), "spec": s.view_spec()},
                              HTTPStatus.UNPROCESSABLE_ENTITY)
        self._json({"spec": spec, "yaml": s.spec_yaml()})

    def post_api_save(self) -> None:
        path = self.server.session.save_spec()
        self._json({"path": str(path), "yaml": path.read_text(encoding="utf-8")})

    def post_api_load(self) -> None:
        text = str(self._body().get("yaml", ""))
        self._json({"spec": self.server.session.load_spec_text(text)})

    def get_api_spec_yaml(self) -> None:
        self._send(200, self.server.session.spec_yaml().encode(), "text/yaml; charset=utf-8",
                   {"Content-Disposition": 'attachment; filename="spec.yaml"'})

    def post_api_preview(self) -> None:
        s = self.server.session
        b = self._body()
        defect, image = str(b.get("defect", "")), str(b.get("image", ""))
        if not image:
            raise DiagError("choose a defect-free image first")
        seeds = [_int(x, -1) for x in b.get("seeds") or []]
        if any(x < 0 for x in seeds):
            raise DiagError("seeds must be whole numbers >= 0")
        n = _int(b.get("n"), 4)
        s.parsed()  # a bad spec is answered now, not in the job
        job = s.submit("preview", lambda j: s.preview(j, defect, image, n, seeds or None))
        self._json(job.view())

    def post_api_accept(self) -> None:
        s = self.server.session
        cid = str(self._body().get("candidate", ""))
        s._candidate(cid)
        self._json(s.submit("accept", lambda j: s.accept(j, cid)).view())

    def post_api_reject(self) -> None:
        self._json(self.server.session.reject(str(self._body().get("candidate", ""))))

    def post_api_run(self) -> None:
        s = self.server.session
        s.parsed()
        self._json(s.submit("batch", s.run_batch).view())

    def get_api_job(self) -> None:
        self._json(self.server.session.job(self._query().get("id", "")).view())


class UIServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, session: Session, host: str = "127.0.0.1", port: int = 7860,
                 max_upload_mb: float = 64) -> None:
        super().__init__((host, port), Handler)
        self.session = session
        self.max_upload = int(max_upload_mb * 1e6)
        self.allowed_hosts = {"127.0.0.1", "localhost", "::1", host.lower()}
        if host in ("0.0.0.0", "::"):
            import socket

            self.allowed_hosts |= {socket.gethostname().lower(), socket.getfqdn().lower()}
            self.allowed_hosts.add("*")

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"


def _name(route: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", route.strip("/").lower())


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _data_url(text: str) -> bytes:
    head, _, data = text.partition(",")
    if not head.startswith("data:image/png;base64"):
        raise DiagError("the painted region must come as a PNG data URL: reload the page")
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise DiagError("the painted region is not valid base64: reload the page") from None


@functools.lru_cache(maxsize=512)
def _picture(path: str, mtime: int, thumb: bool) -> tuple[bytes, str]:
    """The encoded image (a JPEG thumbnail, or the full image as PNG); cached by mtime."""
    from PIL import Image

    from diag.imageio import encode_png, read_image

    arr = read_image(path)
    if not thumb:
        return encode_png(arr), "image/png"
    img = Image.fromarray(arr)
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue(), "image/jpeg"
