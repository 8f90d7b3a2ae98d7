"""Run the web app with uvicorn (``resnetlab serve``)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from resnetlab.errors import ConfigError

log = logging.getLogger(__name__)


def find_report_dir(model_path: str | os.PathLike) -> Path | None:
    """``RUN/eval`` for a run directory or a file inside one (model file, checkpoint, export), if it has a report."""
    path = Path(model_path)
    candidates = [path / "eval"] if path.is_dir() else [path.parent / "eval", path.parent.parent / "eval"]
    for candidate in candidates:
        if (candidate / "report.html").is_file():
            return candidate
    return None


def build_app_for(model_path: str | os.PathLike, *, device: str = "cpu", max_upload_mb: float = 10.0, top_k: int = 5):
    """Load the model at ``model_path`` and build the app around it (what ``serve`` runs)."""
    from resnetlab.inference.predictor import Predictor
    from resnetlab.serve.app import create_app

    predictor = Predictor.load(model_path, device=device)
    return create_app(predictor, max_upload_mb=max_upload_mb, top_k=top_k, report_dir=find_report_dir(model_path))


def serve(model_path: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          max_upload_mb: float = 10.0, top_k: int = 5) -> None:
    """Serve ``model_path`` until interrupted."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: must be between 0 and 65535")
    if max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb {max_upload_mb}: must be positive")
    app = build_app_for(model_path, device=device, max_upload_mb=max_upload_mb, top_k=top_k)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the model", host)
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from exc
    bound_port = sock.getsockname()[1]
    print(f"resnetlab: serving {model_path} on http://{host}:{bound_port}/  (Ctrl+C to stop)", flush=True)
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
