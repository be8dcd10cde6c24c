"""The page's HTTP server: the standard library's threading server and a few routes.

No route reads a file by a name it is given: photos arrive as uploaded bytes (or by the name
of a bundled sample, from a fixed list), and everything sent back is made in memory from
what this tab uploaded. Requests from other sites are refused (a custom header and, on a
loopback address, the ``Host`` header are checked), and every body has a size limit.
"""

from __future__ import annotations

import errno
import http.server
import json
import re
import socket
import sys
import threading
import traceback
import urllib.parse
from collections.abc import Callable
from typing import Any

from ..viz import ImageError
from . import _work
from ._page import CSS, HTML, JS
from ._state import Job, Limits, NotFound, Session, Sessions, Worker

LOOPBACK = ("127.0.0.1", "localhost", "::1")
JSON_LIMIT = 64 * 1024
DEFAULT_METHODS = ("gradcam", "gradcam++", "layercam")
PENDING_PER_TAB = 8  # jobs one tab may have waiting in the model's queue
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:;"
        " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class HttpError(Exception):
    """A request the server refuses, with the status and the message the page shows."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class App:
    """The camlens page for one model: ``start()`` serves it from a background thread
    (tests, notebooks), ``serve()`` in the foreground until Ctrl-C; ``close()`` stops it.

    Use :func:`camlens.app.build` to make one from a model spec.
    """

    def __init__(self, model: _work.Model, host: str = "127.0.0.1", port: int = 7860,
                 limits: Limits | None = None, log: Callable[[str], None] | None = None,
                 curve_steps: int = _work.CURVE_STEPS) -> None:
        if isinstance(curve_steps, bool) or not isinstance(curve_steps, int) or curve_steps < 2:
            raise ValueError(f"curve_steps must be a whole number >= 2, got {curve_steps!r}")
        self.model = model
        self.curve_steps = curve_steps
        self.limits = limits or Limits()
        self.sessions = Sessions(self.limits)
        self.worker = Worker(self.limits.jobs)
        self.log = log
        self.decoding = threading.BoundedSemaphore(2)  # uploads decoded at once
        self.host = host
        server = _Server6 if ":" in host else _Server
        try:
            self.httpd = server((host, port), _Handler)
        except OSError as err:
            self.worker.close()
            if err.errno == errno.EADDRINUSE:
                raise OSError(
                    f"port {port} on {host} is already in use; pass another port (--port N), "
                    "or --port 0 for a free one"
                ) from None
            raise
        self.httpd.app = self  # type: ignore[attr-defined]
        self.port = int(self.httpd.server_address[1])
        self.loopback = host in LOOPBACK
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where a browser on this machine reaches the page."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    def start(self) -> App:
        """Serve from a background thread; returns at once."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="camlens-app",
                                        daemon=True)
        self._thread.start()
        return self

    def serve(self) -> None:
        """Serve in the foreground until interrupted (Ctrl-C), then close."""
        try:
            self.httpd.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        """Stop serving, stop the model's queue (a running job is asked to stop)."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(10)
            self._thread = None
        self.httpd.server_close()
        self.worker.close()

    def __enter__(self) -> App:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- what pages ask
    def new_session(self) -> dict[str, Any]:
        session = self.sessions.create()
        methods = _work.method_choices(self.model)
        names = {m["name"] for m in methods if not m["cannot"]}
        return {
            "session": session.id,
            "model": self.model.info(),
            "labels": self.model.labels,
            "layers": self.model.layers,
            "methods": methods,
            "default_methods": [m for m in DEFAULT_METHODS if m in names],
            "colormaps": _work.colormaps(),
            "samples": _work.samples(),
            "limits": {"upload_bytes": self.limits.upload_bytes, "pixels": self.limits.pixels},
        }

    def submit(self, session: Session, kind: str, work: Callable[[Job], Any]) -> dict[str, str]:
        waiting = sum(1 for j in self.worker.queued() if j.session == session.id)
        if waiting >= PENDING_PER_TAB:
            raise HttpError(429, f"{waiting} requests of this page are already waiting for the "
                                 "model; wait for them to finish")
        job = self.worker.submit(Job(session.id, kind, work))
        return {"job": job.id}

    def add_photo(self, session: Session, rgb: Any, name: str) -> dict[str, str]:
        model = self.model

        def work(job: Job) -> dict[str, Any]:
            job.report("predicting the classes")
            photo = _work.make_photo(model, rgb, name)
            session.add_photo(photo)
            return {"id": photo.id, "name": photo.name, "size": list(photo.size),
                    "predictions": photo.predictions, "note": photo.note}

        return self.submit(session, "photo", work)

    def request(self, session: Session, body: dict[str, Any]) -> tuple[Any, ...]:
        """The photo and choices of an estimate or explain request, checked."""
        photo = session.photo(_text(body.get("photo"), "photo"))
        methods = _work.resolve_methods(body.get("methods"))
        target = _work.resolve_target(self.model, photo, body.get("target"))
        layer = body.get("layer", "auto")
        flags = []
        for key in ("counterfactual", "faithfulness"):
            value = body.get(key, False)
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, got {value!r}")
            flags.append(value)
        return photo, methods, layer, target, flags[0], flags[1]

    def estimate(self, session: Session, body: dict[str, Any]) -> dict[str, str]:
        photo, methods, layer, target, counterfactual, faithfulness = self.request(session, body)
        model = self.model

        def work(job: Job) -> dict[str, Any]:
            job.report("estimating the cost")
            chosen = _work.resolve_layer(model, layer)
            return _work.estimate(model, photo, methods, chosen, target, counterfactual,
                                  faithfulness, self.curve_steps)

        return self.submit(session, "estimate", work)

    def explain(self, session: Session, body: dict[str, Any]) -> dict[str, str]:
        photo, methods, layer, target, counterfactual, faithfulness = self.request(session, body)
        model = self.model

        def work(job: Job) -> dict[str, Any]:
            chosen = _work.resolve_layer(model, layer)
            result = _work.explain(model, photo, methods, chosen, target, counterfactual,
                                   faithfulness, job, self.curve_steps)
            session.add_result(result)
            return _work.summary(result)

        return self.submit(session, "explain", work)

    def job_state(self, session: Session, jid: str) -> dict[str, Any]:
        job = self.worker.job(jid, session.id)
        out: dict[str, Any] = {"state": job.state, "stage": job.stage, "done": job.done,
                               "total": job.total, "position": self.worker.position(job)}
        if job.state == "done":
            out["result"] = job.result
        elif job.error is not None:
            out["error"] = job.error
        return out


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 32


class _Server6(_Server):
    address_family = socket.AF_INET6


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 100:
        raise ValueError(f"{what} is missing from the request; reload the page")
    return value


def _look(query: dict[str, list[str]]) -> tuple[float, str, bool]:
    """Opacity, colormap and boxes of a picture request."""
    try:
        alpha = float(query.get("alpha", ["0.5"])[0])
    except ValueError:
        raise ValueError("alpha must be a number in [0, 1]") from None
    colormap = query.get("colormap", ["jet"])[0]
    return round(alpha, 3), colormap, query.get("box", ["1"])[0] == "1"


def _filename(photo: str, suffix: str) -> str:
    stem = _work.safe_name(photo.rsplit(".", 1)[0])
    return f"{stem}_{suffix}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "camlens"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a connection may stay silent

    @property
    def app(self) -> App:
        return self.server.app  # type: ignore[attr-defined, no-any-return]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        if self.app.log is not None:
            self.app.log(format % args)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        self._dispatch("POST")

    # ----------------------------------------------------------------- plumbing
    def _dispatch(self, method: str) -> None:
        self._body_read = method == "GET"
        try:
            self._check_origin(method)
            url = urllib.parse.urlsplit(self.path)
            parts = [urllib.parse.unquote(p) for p in url.path.split("/")[1:]]
            query = urllib.parse.parse_qs(url.query)
            if method == "GET":
                self._get(parts, query)
            else:
                self._post(parts)
        except HttpError as err:
            self._error(err.status, err.message)
        except NotFound as err:
            self._error(404, str(err))
        except ImageError as err:
            self._error(400, str(err))
        except (ValueError, TypeError) as err:
            self._error(400, str(err))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # the server keeps serving; the page hears of it
            traceback.print_exc(file=sys.stderr)
            self._error(500, f"internal error ({type(err).__name__}: {err}); see the server log")

    def _check_origin(self, method: str) -> None:
        """Pages of other sites may not use this server (CSRF, DNS rebinding)."""
        app = self.app
        if app.loopback:
            host = (self.headers.get("Host") or "").lower()
            allowed = {f"{h}:{app.port}" for h in ("127.0.0.1", "localhost", "[::1]")}
            if host not in allowed:
                raise HttpError(403, f"this server answers to 127.0.0.1:{app.port} only")
        if method == "POST":
            origin = self.headers.get("Origin")
            if origin and urllib.parse.urlsplit(origin).netloc.lower() != (
                    self.headers.get("Host") or "").lower():
                raise HttpError(403, "requests from other sites are refused")
            if not self.headers.get("X-Camlens-Session"):
                raise HttpError(403, "requests must come from the camlens page")

    def _session(self) -> Session:
        return self.app.sessions.get(self.headers.get("X-Camlens-Session"))

    def _body(self, limit: int, what: str) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length < 0:
            raise HttpError(400, "bad Content-Length")
        if length > limit:
            self._drain(length, limit)
            raise HttpError(413, f"{what} of {length / 2**20:.1f} MB is over this page's limit "
                                 f"of {limit / 2**20:.1f} MB")
        data = self.rfile.read(length)
        self._body_read = True
        if len(data) != length:
            self.close_connection = True
            raise HttpError(400, f"{what}: the upload was cut short; try again")
        return data

    def _drain(self, length: int, limit: int) -> None:
        """Read (and drop) an over-limit body so that the page gets the answer; a body far
        over the limit is not read: the connection is closed instead."""
        if length > 4 * limit:
            return  # not read: _error closes the connection
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
        self._body_read = left == 0

    def _json_body(self) -> dict[str, Any]:
        data = self._body(JSON_LIMIT, "the request")
        try:
            body = json.loads(data or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HttpError(400, "the request is not JSON") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the request must be a JSON object")
        return body

    def _send(self, status: int, data: bytes, content_type: str,
              disposition: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        if disposition:
            self.send_header("Content-Disposition", disposition)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        if not self._body_read:  # an unread body would be taken for the next request
            self.close_connection = True
        try:
            self._json(status, {"error": message})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _file(self, data: bytes, content_type: str, name: str, attach: bool) -> None:
        ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        quoted = urllib.parse.quote(name)
        kind = "attachment" if attach else "inline"
        self._send(200, data, content_type,
                   f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}")

    # ----------------------------------------------------------------- routes
    def _get(self, parts: list[str], query: dict[str, list[str]]) -> None:
        app = self.app
        if parts == [""]:
            self._send(200, HTML.encode(), "text/html; charset=utf-8")
        elif parts == ["app.js"]:
            self._send(200, JS.encode(), "text/javascript; charset=utf-8")
        elif parts == ["app.css"]:
            self._send(200, CSS.encode(), "text/css; charset=utf-8")
        elif parts == ["favicon.ico"]:
            self._send(204, b"", "image/x-icon")
        elif len(parts) == 3 and parts[:2] == ["api", "jobs"]:
            self._json(200, app.job_state(self._session(), parts[2]))
        elif len(parts) == 4 and parts[:2] == ["api", "photos"] and parts[3].endswith(".png"):
            session = app.sessions.get(parts[2])
            photo = session.photo(parts[3].removesuffix(".png"))
            self._file(photo.thumbnail, "image/png", _filename(photo.name, "thumbnail.png"),
                       False)
        elif len(parts) >= 5 and parts[:2] == ["api", "results"]:
            result = app.sessions.get(parts[2]).result(parts[3])
            self._result_file(result, parts[4:], query)
        else:
            raise HttpError(404, f"no such page: {self.path[:200]}")

    def _result_file(self, result: Any, rest: list[str], query: dict[str, list[str]]) -> None:
        photo = result.photo.name
        if rest == ["grid.png"]:
            alpha, colormap, box = _look(query)
            data = _work.grid_png(result, alpha, colormap, box)
            self._file(data, "image/png", _filename(photo, "grid.png"), False)
        elif rest == ["camlens.zip"]:
            alpha, colormap, box = _look(query)
            data = _work.bundle(result, alpha, colormap, box)
            self._file(data, "application/zip", _filename(photo, "camlens.zip"), True)
        elif len(rest) == 2 and rest[0] == "overlay" and rest[1].endswith(".png"):
            method = rest[1].removesuffix(".png")
            if method not in result.maps:
                raise HttpError(404, f"this result has no map of {method[:40]!r}")
            alpha, colormap, box = _look(query)
            data = _work.overlay_png(result, method, alpha, colormap, box)
            self._file(data, "image/png", _filename(photo, f"{method}.png"), False)
        elif len(rest) == 2 and rest[0] == "maps" and rest[1].endswith(".npy"):
            method = rest[1].removesuffix(".npy")
            if method not in result.maps:
                raise HttpError(404, f"this result has no map of {method[:40]!r}")
            self._file(_work.npy(result, method), "application/octet-stream",
                       _filename(photo, f"{method}.npy"), True)
        else:
            raise HttpError(404, f"no such page: {self.path[:200]}")

    def _post(self, parts: list[str]) -> None:
        app = self.app
        if parts == ["api", "session"]:
            self._body(JSON_LIMIT, "the request")
            self._json(200, app.new_session())
            return
        if parts == ["api", "photos"]:
            session = self._session()
            data = self._body(app.limits.upload_bytes, "the photo")
            raw = urllib.parse.unquote(self.headers.get("X-Camlens-Name") or "photo")
            name = _work.safe_name(raw)
            with app.decoding:
                rgb = _work.read_upload(data, app.limits.pixels)
            del data
            self._json(202, app.add_photo(session, rgb, name))
            return
        if len(parts) == 3 and parts[:2] == ["api", "samples"]:
            session = self._session()
            self._body(JSON_LIMIT, "the request")
            name = parts[2]
            if name not in _work.samples():
                raise HttpError(404, f"no sample photo {name[:60]!r}")
            self._json(202, app.add_photo(session, _work.sample(name), name))
            return
        if parts == ["api", "estimate"]:
            session = self._session()
            self._json(202, app.estimate(session, self._json_body()))
            return
        if parts == ["api", "explain"]:
            session = self._session()
            self._json(202, app.explain(session, self._json_body()))
            return
        if len(parts) == 4 and parts[:2] == ["api", "jobs"] and parts[3] == "cancel":
            session = self._session()
            self._body(JSON_LIMIT, "the request")
            job = app.worker.job(parts[2], session.id)
            job.cancel.set()
            self._json(200, {"state": job.state})
            return
        self._body(JSON_LIMIT, "the request")
        raise HttpError(404, f"no such action: {self.path[:200]}")
