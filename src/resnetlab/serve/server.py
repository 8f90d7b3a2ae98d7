"""Run the web app with uvicorn (``resnetlab serve``)."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path

from resnetlab.errors import ConfigError
from resnetlab.runs import RunDir

log = logging.getLogger(__name__)


LOOPBACK_NAMES = ("localhost",)


def find_report_dir(model_path: str | os.PathLike) -> Path | None:
    """The evaluation report folder of the run ``model_path`` belongs to, or None.

    The run is ``model_path`` itself when it is a directory, the folder of a file in it (its model
    file, an ONNX export beside it) or, for a checkpoint, the folder above its ``checkpoints/``; it
    counts only if it holds the run's ``config.yaml``. No other folder is ever looked at (a model file
    in ``~/Downloads`` must not publish ``~/eval``). The report is the run's ``eval/report.html``,
    and must really lie inside the run (no symlink out of it).
    """
    path = Path(model_path)
    if path.is_dir():
        run = RunDir(path)
    elif path.parent.name == "checkpoints":
        run = RunDir(path.parent.parent)
        if run.checkpoints.resolve() != path.parent.resolve():
            return None
    else:
        run = RunDir(path.parent)
    if not run.config_path.is_file():
        return None
    root, eval_dir = run.path.resolve(), run.eval_dir.resolve()
    report = (run.eval_dir / "report.html").resolve()
    if eval_dir.parent != root or report.parent != eval_dir or not report.is_file():
        return None
    return run.eval_dir


def is_loopback(host: str) -> bool:
    """Whether ``--host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_host_names(host: str, extra: list[str] | None = None) -> list[str] | None:
    """Names accepted in the ``Host`` header when bound to ``host`` (None: no check).

    Loopback binds are not checked. Other binds accept IP addresses (always, see ``host_allowed``),
    ``localhost``, this machine's name, the bound name itself and every ``--allowed-host``; ``*``
    turns the check off.
    """
    extra = [name.strip() for name in (extra or []) if name.strip()]
    if is_loopback(host) or "*" in extra:
        return None
    names = {"localhost", socket.gethostname(), socket.getfqdn(), *extra}
    if host not in ("0.0.0.0", "::", ""):
        names.add(host)
    return sorted(n for n in names if n)


def build_app_for(model_path: str | os.PathLike, *, device: str = "cpu", max_upload_mb: float = 10.0, top_k: int = 5,
                  allowed_hosts: list[str] | None = None, tta: bool = False):
    """Load the model at ``model_path`` and build the app around it (what ``serve`` runs)."""
    from resnetlab.inference.predictor import Predictor
    from resnetlab.serve.app import create_app

    predictor = Predictor.load(model_path, device=device)
    return create_app(predictor, max_upload_mb=max_upload_mb, top_k=top_k, report_dir=find_report_dir(model_path),
                      allowed_hosts=allowed_hosts, tta=tta)


def _return_decode_memory() -> None:
    """Make PIL allocate large pictures in 64 MB blocks, above glibc's largest mmap threshold (32 MB).

    With PIL's default 16 MB blocks, decodes on the threadpool's many threads leave freed blocks in
    per-thread malloc arenas: after 4 decodes on each of 8 threads, one whole 49-megapixel picture
    (190 MB) stayed resident, and the server's peak rose by that much. Blocks over the threshold are
    mapped and unmapped on their own, so freed pixels go back to the system (2 MB stayed).
    """
    from PIL import Image

    set_block_size = getattr(Image.core, "set_block_size", None)
    if set_block_size is not None and "PILLOW_BLOCK_SIZE" not in os.environ:  # an explicit setting wins
        set_block_size(64 << 20)


def serve(model_path: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          max_upload_mb: float = 10.0, top_k: int = 5, allowed_hosts: list[str] | None = None,
          decode_budget_mb: float | None = None, tta: bool = False) -> None:
    """Serve ``model_path`` until interrupted. ``allowed_hosts``: extra ``Host`` names for non-loopback binds;
    ``decode_budget_mb``: decoded pixels held at once (default ``preprocess.DECODE_BUDGET_MB``)."""
    import uvicorn

    from resnetlab.inference.preprocess import DECODE_BUDGET
    from resnetlab.serve.app import check_limits

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: must be between 0 and 65535")
    # Before the model loads, so a typo fails at once.
    check_limits(max_upload_mb=max_upload_mb, top_k=top_k, decode_budget_mb=decode_budget_mb)
    host_names = allowed_host_names(host, allowed_hosts)
    if decode_budget_mb is not None:
        DECODE_BUDGET.set_capacity(int(decode_budget_mb * 2**20))
    _return_decode_memory()
    app = build_app_for(model_path, device=device, max_upload_mb=max_upload_mb, top_k=top_k, allowed_hosts=host_names, tta=tta)
    if not is_loopback(host):
        log.warning("serving on %s: anyone who can reach this address can use the model", host)
        if host_names is not None:
            log.warning("requests must name this server by IP address or as one of: %s (add names with --allowed-host)",
                        ", ".join(host_names))
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from exc
    bound_port = sock.getsockname()[1]
    print(f"resnetlab: serving {model_path} on http://{host}:{bound_port}/  (Ctrl+C to stop)", flush=True)
    # Keep-alive 30 s, not uvicorn's 5: a client that reuses a connection just as the server closes it
    # gets a reset, and a POST is not retried. With 200 clients on a loaded 2-core box, 0-3 requests
    # per 20 s run (8 in 12 runs) hit that race at 5 s, none in 6 runs at 30 s
    # (benchmarks/bench_serve_load.py); clients' own expiry (httpx: 5 s) now ends idle connections first.
    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5, timeout_keep_alive=30)
    uvicorn.Server(config).run(sockets=[sock])
