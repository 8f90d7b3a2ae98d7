"""The web app over a :class:`~resnetlab.inference.Predictor`.

Routes: ``GET /`` (the drop-an-image page, static files in ``serve/static``), ``POST /predict``
(multipart, one or several files -> top-k JSON), ``GET /health``, ``GET /report`` (the model's
evaluation report, when one exists).

Bad input never becomes a 500: the body is read with a byte cap (413), non-multipart bodies are
415, files that are not images 415, decompression bombs 413, every error is JSON ``{"detail": ...}``.
Decoding and the forward pass run in Starlette's threadpool; the model is shared read-only, so
concurrent requests need no lock.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from resnetlab import __version__
from resnetlab.inference.preprocess import ImageDecodeError, ImageTooLargeError, image_to_array

log = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("resnetlab.serve") / "static"))
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_FILES = 16


class _TooLarge(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


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


def create_app(predictor, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_files: int = DEFAULT_MAX_FILES,
               top_k: int = 5, report_dir: str | Path | None = None) -> FastAPI:
    """Build the app. ``report_dir`` is the folder holding ``report.html`` (e.g. ``RUN/eval``)."""
    max_bytes = int(max_upload_mb * 1024 * 1024)
    report_dir = Path(report_dir) if report_dir else None
    has_report = bool(report_dir and (report_dir / "report.html").is_file())
    # No Swagger/ReDoc pages: they load their scripts from a CDN, and this server must work offline.
    app = FastAPI(title="resnetlab", version=__version__, docs_url=None, redoc_url=None)
    app.state.predictor = predictor

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
    async def predict(request: Request, top_k: int = top_k):
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
                    arrays.append(await run_in_threadpool(
                        image_to_array, data, predictor.image_size, name=name, max_pixels=predictor.max_pixels))
                except ImageTooLargeError as exc:
                    return _error(413, str(exc))
                except ImageDecodeError as exc:
                    return _error(415, f"{exc}; send a JPEG, PNG, GIF, BMP, WebP or TIFF image")
                names.append(name)
        finally:
            await form.close()
        batch = torch.from_numpy(np.stack(arrays))  # (N, H, W, 3) uint8

        def infer():
            return predictor.top_k(torch.softmax(predictor.logits(batch), dim=1), top_k)

        rows = await run_in_threadpool(infer)
        return {
            "model": predictor.meta.name,
            "predictions": [
                {"filename": name, "top_k": [{"class": c, "probability": p} for c, p in row]}
                for name, row in zip(names, rows)
            ],
        }

    @app.get("/report", response_class=HTMLResponse)
    async def report():
        if has_report:
            return RedirectResponse("/report/report.html", status_code=307)
        return HTMLResponse(_NO_REPORT_PAGE, status_code=404)

    if has_report:
        app.mount("/report", StaticFiles(directory=report_dir), name="report")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


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
