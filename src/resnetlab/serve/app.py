"""The web app over a :class:`~resnetlab.inference.Predictor`.

Routes: ``GET /`` (the drop-an-image page, static files in ``serve/static``), ``POST /predict``
(multipart, one or several files -> top-k JSON; ``?heatmap=1`` adds each image's CAM/Grad-CAM overlay as a
PNG data URI), ``GET /health``, ``GET /report`` (the model's
evaluation report, when one exists, and only the files that report links to).

Bad input never becomes a 500: the body is read with a byte cap (413), non-multipart bodies are
415, files that are not images 415, decompression bombs 413, every error is JSON ``{"detail": ...}``.
Decoding and the forward pass run in Starlette's threadpool; the model is shared read-only, so
concurrent requests need no lock. Each decode first reserves its size (read from the image header)
from the process's decode budget; a request that finds no room within ``decode_wait_s`` gets 503
with ``Retry-After`` instead of pushing the server out of memory.

Every response carries ``X-Content-Type-Options: nosniff`` and a Content-Security-Policy that allows
only this server's own scripts and styles (the report: its inline styles and images, no script).
With ``allowed_hosts`` set (``resnetlab serve`` on a non-loopback address) requests whose ``Host``
is not an IP address or one of those names are refused (400), which defeats DNS rebinding.
"""

from __future__ import annotations

import asyncio
import html.parser
import ipaddress
import logging
import math
import posixpath
import time
from importlib import resources
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote, urlsplit

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from resnetlab import __version__
from resnetlab.errors import ConfigError
from resnetlab.inference.preprocess import (
    DECODE_BUDGET,
    DecoderBusyError,
    ImageDecodeError,
    ImageTooLargeError,
    decode_cost,
    decode_to_array,
    open_image,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("resnetlab.serve") / "static"))
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_FILES = 16
DEFAULT_DECODE_WAIT_S = 10.0  # how long an upload may wait for room in the decode budget before a 503
RETRY_AFTER_S = 2

# Pages and JSON: scripts, styles and fetches from this server only; images also from data: and the
# blob: URLs the page makes for previews. No plugins, no framing, no <base>, forms post here only.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# The evaluation report is one self-contained page: inline CSS, data: figures, no script at all.
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
              "form-action 'none'; base-uri 'none'; frame-ancestors 'none'")


class _TooLarge(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


async def _reserve(nbytes: int, wait_s: float) -> int:
    """Room in the decode budget without blocking the event loop (polls, backing off to 0.1 s)."""
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while (amount := DECODE_BUDGET.try_reserve(nbytes)) is None:
        if time.monotonic() >= deadline:
            raise DecoderBusyError("no room in the decode budget")
        await asyncio.sleep(delay)
        delay = min(2 * delay, 0.1)
    return amount


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing (``_TooLarge``) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)


def _replay(request: Request, body: bytes) -> Request:
    # A fresh Request over the already-read body, so Starlette's multipart parser can run on it.
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


def check_limits(*, max_upload_mb: float, max_files: int = DEFAULT_MAX_FILES, top_k: int = 5,
                 decode_wait_s: float = DEFAULT_DECODE_WAIT_S, decode_budget_mb: float | None = None) -> None:
    """Refuse (ConfigError naming the option) limits the server cannot work with: NaN, inf, zero, negative."""
    for option, value in (("--max-upload-mb", max_upload_mb), ("--decode-budget-mb", decode_budget_mb)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{option} {value}: must be a positive, finite number of megabytes (e.g. 10)")
    if max_files < 1:
        raise ConfigError(f"max_files {max_files}: must be at least 1")
    if top_k < 1:
        raise ConfigError(f"--top-k {top_k}: must be at least 1")
    if not (math.isfinite(decode_wait_s) and decode_wait_s >= 0):
        raise ConfigError(f"decode_wait_s {decode_wait_s}: must be a finite number of seconds >= 0")


class _App(FastAPI):
    """FastAPI whose outermost layer is :class:`_Guard`, so even a 500 gets the security headers."""

    guard_hosts: frozenset[str] | None = None

    def build_middleware_stack(self):
        return _Guard(super().build_middleware_stack(), self.guard_hosts)


class _Guard:
    """ASGI layer: the Host check (when configured) and the security headers on every response."""

    def __init__(self, app, allowed_hosts: frozenset[str] | None):
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = REPORT_CSP if scope["path"].startswith("/report/") else PAGE_CSP

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Content-Security-Policy"] = csp
                headers["Referrer-Policy"] = "no-referrer"
            await send(message)

        if self.allowed_hosts is not None:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
            if not host_allowed(host, self.allowed_hosts):
                shown = "none" if host is None else repr(host[:100])
                response = _error(400, f"Host header {shown} is not a name this server answers to "
                                       "(the operator can accept it with resnetlab serve --allowed-host NAME)")
                return await response(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)


def host_allowed(host: str | None, allowed: Iterable[str]) -> bool:
    """Whether a ``Host`` header value passes the check used on non-loopback binds.

    Accepted: any IP address literal (DNS rebinding needs a name the attacker controls, so an address
    cannot carry it), and the names in ``allowed`` (compared without the port, case-insensitively).
    """
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):  # [IPv6]:port
        name = host[1:].split("]", 1)[0]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name in {a.lower().rstrip(".") for a in allowed}


class _LinkCollector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("src", "href", "poster", "data") and value:
                self.links.append(value)
            elif key == "srcset" and value:
                self.links += [part.strip().split(" ")[0] for part in value.split(",") if part.strip()]


def report_assets(report_dir: Path) -> dict[str, Path]:
    """URL path under ``/report/`` -> file, for ``report.html`` and the local files it links to.

    Only relative links that stay inside ``report_dir`` and name a regular file count; links with a
    scheme (``data:``, ``https:``), absolute paths and ``..`` are not files of this report.
    """
    root = report_dir.resolve()
    page = root / "report.html"
    assets = {"report.html": page}
    collector = _LinkCollector()
    try:
        collector.feed(page.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return {}
    for link in collector.links:
        parts = urlsplit(link.strip())
        if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
            continue
        relative = posixpath.normpath(unquote(parts.path))
        if relative.startswith("..") or relative.startswith("/") or "\\" in relative or "\0" in relative:
            continue
        target = (root / relative).resolve()
        if target.is_relative_to(root) and target.is_file():
            assets[relative] = target
    return assets


def create_app(predictor, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_files: int = DEFAULT_MAX_FILES,
               top_k: int = 5, report_dir: str | Path | None = None, allowed_hosts: Iterable[str] | None = None,
               decode_wait_s: float = DEFAULT_DECODE_WAIT_S, tta: bool = False) -> FastAPI:
    """Build the app. ``tta``: test-time augmentation unless a request says ``?tta=0`` (``?tta=1`` turns it on). ``report_dir`` is the folder holding ``report.html`` (e.g. ``RUN/eval``); only that
    page and the files it links to are served. ``allowed_hosts``: names accepted in the ``Host`` header
    besides IP addresses (None: no check, for loopback binds)."""
    check_limits(max_upload_mb=max_upload_mb, max_files=max_files, top_k=top_k, decode_wait_s=decode_wait_s)
    max_bytes = int(max_upload_mb * 1024 * 1024)
    report_dir = Path(report_dir) if report_dir else None
    assets = report_assets(report_dir) if report_dir and (report_dir / "report.html").is_file() else {}
    has_report = bool(assets)
    # No Swagger/ReDoc pages: they load their scripts from a CDN, and this server must work offline.
    app = _App(title="resnetlab", version=__version__, docs_url=None, redoc_url=None)
    app.guard_hosts = None if allowed_hosts is None else frozenset(allowed_hosts)
    app.state.predictor = predictor
    input_wh = (predictor.image_size[1], predictor.image_size[0])

    async def decode(data: bytes, name: str, tta: bool = False) -> np.ndarray:
        """One upload -> uint8 (H, W, 3), after reserving its decoded size (DecoderBusyError: no room in time);
        ``tta``: at the predictor's ``tta_input_size`` (a photo model's crops need the canvas around the crop)."""
        image = await run_in_threadpool(open_image, data, name=name, max_pixels=predictor.max_pixels, draft_size=input_wh)
        try:
            amount = await _reserve(decode_cost(image), decode_wait_s)
        except BaseException:
            image.close()
            raise
        try:
            return await run_in_threadpool(decode_to_array, image, predictor.image_size, name=name,
                                           crop_pct=predictor.crop_pct, keep=predictor.tta_input_size if tta else None)
        finally:
            DECODE_BUDGET.release(amount)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(400, f"invalid request: {where} {first.get('msg', '')}".strip())

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)  # the trace goes to the server log only
        return _error(500, "internal error while handling the request (see the server log)")

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": predictor.meta.name,
            "backend": predictor.backend,
            "classes": predictor.classes,
            "input_size": list(predictor.meta.input_size),
            "top_k": top_k,
            "max_upload_mb": max_upload_mb,
            "max_files": max_files,
            "report": has_report,
            "version": __version__,
        }

    @app.post("/predict")
    async def predict(request: Request, top_k: int = top_k, heatmap: bool = False, tta: bool = tta):
        if top_k < 1:
            return _error(400, "top_k must be at least 1")
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return _error(415, "send the image(s) as multipart/form-data (a form with one or more file fields, e.g. 'file')")
        try:
            body = await _read_capped(request, max_bytes)
        except _TooLarge:
            return _error(413, f"request is larger than the limit of {max_upload_mb:g} MB")
        try:
            form = await _replay(request, body).form(max_files=max_files, max_fields=max_files + 8)
        except Exception as exc:  # malformed multipart, too many parts
            return _error(400, f"cannot parse the multipart form: {exc}")
        try:
            uploads = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
            if not uploads:
                return _error(400, "no file in the form; send the image in a file field such as 'file'")
            names, arrays = [], []
            for i, (_, upload) in enumerate(uploads):
                name = upload.filename or f"file{i + 1}"
                data = await upload.read()
                try:
                    arrays.append(await decode(data, name, tta))
                except DecoderBusyError:
                    return JSONResponse(
                        {"detail": f"the server is busy decoding other images; retry in {RETRY_AFTER_S} s"},
                        status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
                except ImageTooLargeError as exc:
                    return _error(413, str(exc))
                except ImageDecodeError as exc:
                    return _error(415, f"{exc}; send a JPEG, PNG, GIF, BMP, WebP or TIFF image")
                names.append(name)
        finally:
            await form.close()
        batch = torch.from_numpy(np.stack(arrays))  # (N, H, W, 3) uint8

        def infer():
            probs = predictor.probabilities_tta(batch) if tta else predictor.probabilities_from_logits(predictor.logits(batch))
            return predictor.top_k(probs, top_k)

        rows = await run_in_threadpool(infer)
        predictions = [{"filename": name, "top_k": [{"class": c, "probability": p} for c, p in row]}
                       for name, row in zip(names, rows)]
        if heatmap:  # ?heatmap=1: the images are already decoded at the model's size, so this is one more pass
            plain = predictor.tta_views()[0][1](batch) if tta else batch  # views[0]: the plain input (identity, centre crop)
            for entry, uri in zip(predictions, await run_in_threadpool(heatmap_uris, predictor, plain)):
                entry["heatmap"] = uri
        return {"model": predictor.meta.name, "tta": bool(tta), "tta_views": predictor.tta_view_names if tta else None,
                "predictions": predictions}

    @app.get("/report", response_class=HTMLResponse)
    async def report():
        if has_report:
            return RedirectResponse("/report/report.html", status_code=307)
        return HTMLResponse(_NO_REPORT_PAGE, status_code=404)

    @app.get("/report/{asset:path}", include_in_schema=False)
    async def report_file(asset: str):
        # Only the report and the files it links to, as found at start-up; nothing else in the folder.
        path = assets.get(asset)
        if path is None or not path.is_file():
            return _error(404, "not a file of this model's evaluation report")
        return FileResponse(path)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def heatmap_uris(predictor, batch: torch.Tensor) -> list[str | None]:
    """PNG data URIs of the predicted class's heatmap over each uint8 (N, H, W, 3) image (CAM where exact,
    else Grad-CAM); ``None`` each for an ONNX model, which has no gradients or feature maps to explain."""
    import base64

    from resnetlab.evaluation.explain import DISPLAY_SIDE, explain_batch, overlay, png

    if predictor.backend != "torch":
        return [None] * len(batch)
    result = explain_batch(predictor.model, batch, device=predictor.device)
    return ["data:image/png;base64," + base64.b64encode(png(overlay(image.numpy(), heat, min_side=DISPLAY_SIDE))).decode()
            for image, heat in zip(batch, result.heatmaps)]


_NO_REPORT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>No evaluation report</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body><main class="card narrow">
<h1>No evaluation report yet</h1>
<p>This model has no <code>eval/report.html</code> beside it. Create one with</p>
<pre>resnetlab evaluate RUN_DIR --data DATA</pre>
<p>then restart <code>resnetlab serve</code>.</p>
<p><a href="/">&larr; back to predictions</a></p>
</main></body></html>
"""
