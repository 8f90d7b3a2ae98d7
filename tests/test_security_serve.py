"""The prediction server under abuse (issue 8, item 6).

Every hostile request gets the right 4xx as JSON, quickly, and the server answers a normal request
right after it. Complements tests/test_serve.py (which covers the basic 413/415/400 cases one by one).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.inference.predictor import Predictor
from resnetlab.models import create_model
from resnetlab.models.files import save_model_file
from resnetlab.serve.app import create_app
from helpers import running_server  # one way to start the app under uvicorn in tests

LIMIT_MB = 0.25
QUICK_S = 5.0  # generous: CI boxes are shared; a hung or decoding server takes far longer


def _image(fmt="PNG", size=(40, 32), mode="RGB", seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server():
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=3)
    model.meta.classes = ["x", "y", "z"]
    app = create_app(Predictor.from_model(model), max_upload_mb=LIMIT_MB, max_files=4)
    with running_server(app) as url:
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


def _still_serving(client) -> None:
    response = client.post("/predict", files={"file": ("ok.png", _image(), "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["filename"] == "ok.png"


def _assert_refused(client, status: int, send, *words: str) -> None:
    started = time.monotonic()
    response = send()
    elapsed = time.monotonic() - started
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    detail = response.json()["detail"]
    assert "Traceback" not in response.text and "File \"" not in detail
    for word in words:
        assert word in detail, detail
    assert elapsed < QUICK_S, f"took {elapsed:.1f} s"
    _still_serving(client)


# --------------------------------------------------------------------------- content types


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/octet-stream", "application/json", "image/png",
    "application/x-www-form-urlencoded", "multipart/mixed; boundary=x", "Multipart/Form-Data-ish",
])
def test_wrong_content_types_are_415(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    _assert_refused(client, 415, lambda: client.post("/predict", content=_image(), headers=headers), "multipart")


# --------------------------------------------------------------------------- malformed multipart

BOUNDARY = "resnetlabboundary"
PART_HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
             "Content-Type: image/png\r\n\r\n").encode()
MALFORMED = {
    "no boundary parameter": ("multipart/form-data", PART_HEAD + _image() + f"\r\n--{BOUNDARY}--\r\n".encode()),
    "empty boundary": ("multipart/form-data; boundary=", b"--\r\n\r\n--"),
    "never closed": (f"multipart/form-data; boundary={BOUNDARY}", PART_HEAD + _image()),
    "garbage body": (f"multipart/form-data; boundary={BOUNDARY}", bytes(range(256)) * 8),
    "empty body": (f"multipart/form-data; boundary={BOUNDARY}", b""),
    "part without headers end": (f"multipart/form-data; boundary={BOUNDARY}",
                                 f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"".encode()),
    "header flood in a part": (f"multipart/form-data; boundary={BOUNDARY}",
                               f"--{BOUNDARY}\r\n".encode() + b"".join(f"X-H{i}: {'v' * 60}\r\n".encode() for i in range(2000))
                               + b"\r\n" + _image() + f"\r\n--{BOUNDARY}--\r\n".encode()),
    "boundary too long": ("multipart/form-data; boundary=" + "b" * 300, b"--" + b"b" * 300 + b"--\r\n"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_multipart_is_a_4xx(client, case):
    content_type, body = MALFORMED[case]
    response_holder = {}

    def send():
        response_holder["r"] = client.post("/predict", content=body, headers={"content-type": content_type})
        return response_holder["r"]

    started = time.monotonic()
    response = send()
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    assert time.monotonic() - started < QUICK_S
    assert "Traceback" not in response.text and "detail" in response.json()
    _still_serving(client)


def test_many_tiny_fields_are_refused(client):
    fields = {f"f{i}": "x" for i in range(200)}
    _assert_refused(client, 400, lambda: client.post("/predict", data=fields, files={"file": ("a.png", _image(), "image/png")}),
                    "multipart")


def test_file_names_are_only_echoed(client, tmp_path):
    """A path-like or odd file name is a label, never a path the server touches."""
    for name in ("../../etc/passwd", "/etc/shadow", "a\x00b.png", "名前.png", "x" * 500 + ".png"):
        response = client.post("/predict", files={"file": (name, _image(), "image/png")})
        assert response.status_code == 200, (name, response.text)
        assert "top_k" in response.json()["predictions"][0]


# --------------------------------------------------------------------------- sizes and bombs


def _raw_request(url: str, head: bytes, body: bytes = b"", wait_s: float = QUICK_S) -> tuple[bytes, float]:
    """Send bytes on a raw socket (to lie about sizes); return (response head, seconds to first byte)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        started = time.monotonic()
        sock.sendall(head + body)
        data = sock.recv(4096)
        return data, time.monotonic() - started


def test_huge_declared_length_is_413_before_the_body_arrives(server, client):
    """A client announcing 2 GB gets its 413 at once; the server does not wait for (or buffer) the body."""
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {2 << 30}\r\n\r\n").encode()
    data, elapsed = _raw_request(server, head, PART_HEAD)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert elapsed < QUICK_S
    _still_serving(client)


def test_a_stalled_upload_does_not_block_other_clients(server, client):
    """Slow-loris style: a client sends half a body and goes quiet; everyone else is still served."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as stalled:
        stalled.sendall((f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                         f"Content-Length: 100000\r\n\r\n").encode() + PART_HEAD)
        time.sleep(0.2)
        started = time.monotonic()
        _still_serving(client)
        assert client.get("/health").status_code == 200
        assert time.monotonic() - started < QUICK_S


@pytest.mark.parametrize("extra_mb", [0.01, 2.0])
def test_bodies_over_the_limit_are_413(client, extra_mb):
    body = bytes(int((LIMIT_MB + extra_mb) * 1024 * 1024))
    _assert_refused(client, 413, lambda: client.post("/predict", files={"file": ("big.png", body, "image/png")}), "MB")


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG with its frame header's size patched: 'pixel flood' (few bytes, huge claimed size)."""
    data = bytearray(_image("JPEG", size=(16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("name, data", [
    ("png-60k-square.png", _png_claiming(60_000, 60_000)),
    ("png-wide.png", _png_claiming(2**31 - 1, 1)),
    ("jpeg-flood.jpg", _jpeg_claiming(65_000, 65_000)),
])
def test_bombs_are_413_quickly(client, name, data):
    assert len(data) < 10_000
    _assert_refused(client, 413, lambda: client.post("/predict", files={"file": (name, data, "image/png")}), name, "pixels")


def test_one_bomb_among_good_files_refuses_the_request(client):
    files = [("file", ("ok.png", _image(), "image/png")), ("file", ("bomb.png", _png_claiming(60_000, 60_000), "image/png"))]
    _assert_refused(client, 413, lambda: client.post("/predict", files=files), "bomb.png")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_odd_but_valid_images_are_served(client, mode):
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG"
    if mode == "I;16":
        buffer = io.BytesIO()
        Image.fromarray(np.arange(40 * 32, dtype=np.uint16).reshape(32, 40) * 50).save(buffer, format=fmt)
        data = buffer.getvalue()
    else:
        data = _image(fmt, mode=mode)
    response = client.post("/predict", files={"file": (f"x.{fmt.lower()}", data, "application/octet-stream")})
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- other routes


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/predict", 405), ("PUT", "/predict", 405), ("GET", "/nope", 404), ("GET", "/static/../../etc/passwd", 404),
    ("GET", "/static/%2e%2e/%2e%2e/model.json", 404), ("POST", "/health", 405),
])
def test_other_routes_are_json_4xx(client, method, path, status):
    response = client.request(method, path)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and "root:" not in response.text
    _still_serving(client)


def test_abuse_under_concurrency_keeps_normal_clients_served(server):
    """Hostile and normal requests interleaved from several threads: no 5xx, every good request answered."""
    hostile = [
        lambda c: c.post("/predict", content=b"x" * 1000, headers={"content-type": "text/plain"}),
        lambda c: c.post("/predict", files={"file": ("bomb.png", _png_claiming(60_000, 60_000), "image/png")}),
        lambda c: c.post("/predict", content=MALFORMED["garbage body"][1], headers={"content-type": MALFORMED["garbage body"][0]}),
        lambda c: c.post("/predict", files={"file": ("big.png", bytes(300_000), "image/png")}),
        lambda c: c.post("/predict", files={"file": ("t.png", _image()[:100], "image/png")}),
    ]
    statuses: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        with httpx.Client(base_url=server, timeout=60) as c:
            for i in range(6):
                if (seed + i) % 2:
                    status = hostile[(seed + i) % len(hostile)](c).status_code
                    kind = "hostile"
                else:
                    status = c.post("/predict", files={"file": ("ok.png", _image(seed=seed), "image/png")}).status_code
                    kind = "good"
                with lock:
                    statuses.append((kind, status))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(statuses) == 36
    assert all(s == 200 for k, s in statuses if k == "good"), statuses
    assert all(400 <= s < 500 for k, s in statuses if k == "hostile"), statuses


# --------------------------------------------------------------------------- memory under concurrent large images


def _flat_png(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    """A single-colour RGB PNG, compressed row by row (never holding the decoded pixels here)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" + bytes(colour) * width  # filter byte 0, then the pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_decode_cost_is_read_from_the_header_before_any_pixel():
    from resnetlab.inference.preprocess import decode_cost, open_image

    big = open_image(_flat_png(7000, 7000), name="big.png")
    assert decode_cost(big) == 7000 * 7000 * 4  # PIL holds RGB at 4 bytes a pixel
    grey = open_image(_image("PNG", size=(100, 50), mode="L"), name="grey.png")
    assert decode_cost(grey) == 100 * 50 * (1 + 4)  # the L picture and its RGB copy
    photo = open_image(_image("JPEG", size=(4000, 3000)), name="photo.jpg", draft_size=(32, 32))
    assert photo.size == (500, 375) and decode_cost(photo) == 500 * 375 * 4  # JPEG decodes at 1/8 scale


def test_decode_budget_waits_and_times_out():
    from resnetlab.inference.preprocess import DecodeBudget, DecoderBusyError

    budget = DecodeBudget(100)
    first = budget.reserve(60)
    assert budget.try_reserve(50) is None
    second = budget.try_reserve(40)
    assert second == 40
    with pytest.raises(DecoderBusyError):
        budget.reserve(10, timeout=0.05)
    threading.Timer(0.1, budget.release, args=(first,)).start()
    threading.Timer(0.2, budget.release, args=(second,)).start()
    started = time.monotonic()
    assert budget.reserve(1000, timeout=5) == 100  # more than the budget: waits until all of it is free
    assert time.monotonic() - started >= 0.15 and budget.in_use == 100


def test_a_saturated_decoder_answers_503_with_retry_after():
    from resnetlab.inference.preprocess import DECODE_BUDGET

    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=3)
    model.meta.classes = ["x", "y", "z"]
    app = create_app(Predictor.from_model(model), decode_wait_s=0.2)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        held = DECODE_BUDGET.reserve(DECODE_BUDGET.capacity, timeout=30)  # as if other uploads were decoding
        try:
            response = client.post("/predict", files={"file": ("a.png", _image(), "image/png")})
            assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1, response.text
            assert "busy" in response.json()["detail"]
            assert client.get("/health").status_code == 200  # nothing else is held up
        finally:
            DECODE_BUDGET.release(held)
        _still_serving(client)


PEAK_RSS_GOAL_MB = 1536  # issue 21: 40 concurrent 49-megapixel uploads stay below 1.5 GB
RSS_KILL_MB = 3072  # past this the server is killed, so a regression cannot OOM a shared CI box


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak RSS from /proc")
def test_concurrent_large_images_keep_the_server_up_and_small(tmp_path, serve_process):
    """40 concurrent 7000x7000 PNGs (49 MP, ~200 MB decoded each): every answer is 200 or 503 with
    Retry-After, the server still answers afterwards, and its peak RSS stays below 1.5 GB."""
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=3)
    model.meta.classes = ["x", "y", "z"]
    save_model_file(model, tmp_path / "model")
    process, url = serve_process(tmp_path / "model", env=dict(os.environ, OMP_NUM_THREADS="1"))
    data = _flat_png(7000, 7000)
    assert len(data) < 200_000  # small upload, under the 10 MB default cap

    peak_mb, killed = [0.0], threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                rss_mb = _status_kb(process.pid, "VmRSS") / 1024
            except (OSError, KeyError):
                return
            peak_mb[0] = max(peak_mb[0], rss_mb)
            if rss_mb > RSS_KILL_MB:
                killed.set()
                os.killpg(process.pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    async def send_all() -> list:
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as session:
            async def one(i: int):
                try:
                    return await session.post("/predict", files={"file": (f"big{i}.png", data, "image/png")})
                except httpx.HTTPError as exc:
                    return exc
            return await asyncio.gather(*(one(i) for i in range(40)))

    try:
        answers = asyncio.run(send_all())
        with contextlib.suppress(OSError, KeyError):
            peak_mb[0] = max(peak_mb[0], _status_kb(process.pid, "VmHWM") / 1024)
    finally:
        done.set()
        watcher.join(5)
    assert not killed.is_set(), f"server passed {RSS_KILL_MB} MB RSS and was killed"
    assert process.poll() is None, "the server died"
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
    for answer in answers:
        assert isinstance(answer, httpx.Response), statuses
        assert answer.status_code in (200, 503), (answer.status_code, answer.text)
        if answer.status_code == 503:
            assert int(answer.headers["retry-after"]) >= 1 and "busy" in answer.json()["detail"]
    assert statuses.count(200) >= 1, statuses  # the server works through them, not only refuses
    print(f"peak RSS {peak_mb[0]:.0f} MB; answers: {statuses.count(200)} x 200, {statuses.count(503)} x 503")
    assert peak_mb[0] < PEAK_RSS_GOAL_MB, f"peak RSS {peak_mb[0]:.0f} MB"


# --------------------------------------------------------------------------- limits given on the command line


@pytest.mark.parametrize("option", ["--max-upload-mb", "--decode-budget-mb"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_serve_refuses_a_non_finite_limit_in_one_line(tmp_path, capsys, option, value):
    from resnetlab.cli import main

    # The model is never loaded: the option is checked first, so the path need not exist.
    assert main(["serve", str(tmp_path / "no-model"), f"{option}={value}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err and "finite" in err, err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- which report is served (issue 21, item 8)


def _run(path: Path, *, config: bool = True) -> Path:
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=3)
    model.meta.classes = ["x", "y", "z"]
    save_model_file(model, path)
    if config:
        (path / "config.yaml").write_text("model: {name: cnn_baseline}\n")
    return path


def _report(folder: Path, body: str = '<img src="confusion.png">') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_text(f"<html><body><h1>Report</h1>{body}</body></html>")
    (folder / "confusion.png").write_bytes(_image("PNG"))
    return folder


def test_a_model_file_outside_a_run_does_not_publish_the_folder_above(tmp_path):
    """`serve ~/Downloads/model/model.safetensors` must not mount `~/Downloads/eval` (nor `model/eval`)."""
    from resnetlab.serve.server import find_report_dir

    downloads = tmp_path / "Downloads"
    model_dir = _run(downloads / "model", config=False)
    _report(downloads / "eval")
    (downloads / "eval" / "private.txt").write_text("not for the web")
    _report(model_dir / "eval")
    assert find_report_dir(model_dir / "model.safetensors") is None
    assert find_report_dir(model_dir) is None  # a bare model folder is not a run either
    app = create_app(Predictor.load(model_dir / "model.safetensors"), report_dir=find_report_dir(model_dir / "model.safetensors"))
    with running_server(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/report").status_code == 404
        assert client.get("/report/private.txt").status_code == 404
        assert client.get("/health").json()["report"] is False


def test_the_report_is_found_through_the_runs_own_files(tmp_path):
    from resnetlab.serve.server import find_report_dir

    run = _run(tmp_path / "runs" / "r1")
    _report(run / "eval")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (run / "export").mkdir()
    (run / "export" / "model.onnx").write_bytes(b"")
    assert find_report_dir(run) == run / "eval"
    assert find_report_dir(run / "model.safetensors") == run / "eval"
    assert find_report_dir(run / "checkpoints" / "last.pt") == run / "eval"
    assert find_report_dir(run / "export" / "model.onnx") is None  # not a place the run layout puts files
    # A report that is a symlink to a page elsewhere is not the run's report.
    other = _report(tmp_path / "elsewhere")
    (run / "eval" / "report.html").unlink()
    (run / "eval" / "report.html").symlink_to(other / "report.html")
    assert find_report_dir(run) is None


def test_only_the_reports_own_files_are_served(tmp_path):
    from resnetlab.serve.server import find_report_dir

    run = _run(tmp_path / "run")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret outside the run")
    links = ('<img src="confusion.png"> <a href="sub/detail%20page.html#x">detail</a> <a href="../model.json">m</a> '
             f'<a href="/etc/passwd">p</a> <a href="https://example.com/x.png">x</a> <img src="data:image/png;base64,AAAA"> '
             '<a href="escape.txt">escape</a>')
    _report(run / "eval", links)
    (run / "eval" / "sub").mkdir()
    (run / "eval" / "sub" / "detail page.html").write_text("<p>detail</p>")
    (run / "eval" / "escape.txt").symlink_to(outside)  # linked, but leads out of the report folder
    (run / "eval" / "metrics.json").write_text("{}")  # in the folder, not linked from the page
    (run / "eval" / "notes.txt").write_text("private")
    app = create_app(Predictor.load(run), report_dir=find_report_dir(run))
    with running_server(app) as url, httpx.Client(base_url=url) as client:
        page = client.get("/report", follow_redirects=True)
        assert page.status_code == 200 and "<h1>Report</h1>" in page.text
        assert client.get("/report/confusion.png").status_code == 200
        assert client.get("/report/sub/detail%20page.html").text == "<p>detail</p>"
        for path in ("/report/notes.txt", "/report/metrics.json", "/report/escape.txt", "/report/../model.json",
                     "/report/%2e%2e/model.json", "/report/sub", "/report/", "/report/model.json"):
            response = client.get(path)
            assert response.status_code == 404, (path, response.status_code)
            assert "private" not in response.text and "secret" not in response.text


# --------------------------------------------------------------------------- headers and the Host check


def _failing_predictor():
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=3)
    model.meta.classes = ["x", "y", "z"]
    predictor = Predictor.from_model(model)

    def broken(images):
        raise RuntimeError("boom")

    predictor.logits = broken
    return predictor


def test_every_response_carries_nosniff_and_a_strict_csp(tmp_path):
    from resnetlab.serve.server import find_report_dir

    run = _run(tmp_path / "run")
    _report(run / "eval")
    requests = [("GET", "/", 200), ("GET", "/health", 200), ("GET", "/static/app.js", 200), ("GET", "/nope", 404),
                ("GET", "/report/report.html", 200), ("GET", "/report/other.txt", 404), ("GET", "/openapi.json", 200)]
    with running_server(create_app(Predictor.load(run), report_dir=find_report_dir(run))) as url, httpx.Client(base_url=url) as client:
        responses = [(path, status, client.request(method, path)) for method, path, status in requests]
        responses.append(("/predict", 200, client.post("/predict", files={"file": ("a.png", _image(), "image/png")})))
        responses.append(("/predict", 415, client.post("/predict", content=b"x", headers={"content-type": "text/plain"})))
    with running_server(create_app(_failing_predictor())) as url:
        responses.append(("/predict", 500, httpx.post(f"{url}/predict", files={"file": ("a.png", _image(), "image/png")})))
    for path, status, response in responses:
        assert response.status_code == status, (path, response.status_code, response.text)
        assert response.headers.get("x-content-type-options") == "nosniff", path
        csp = response.headers.get("content-security-policy", "")
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp, (path, csp)
        assert "unsafe-eval" not in csp and "*" not in csp, (path, csp)
        if path.startswith("/report/"):
            assert "script-src" not in csp, csp  # default-src 'none': the report runs no script at all
        else:
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp, csp


@pytest.mark.parametrize("host, allowed", [
    ("model.example", True), ("MODEL.example:8000", True), ("10.1.2.3:8000", True), ("[::1]:8000", True),
    ("localhost:8000", True), ("evil.example", False), ("model.example.evil.example", False), ("", False),
    ("evil.example:80@model.example", False),
])
def test_host_header_check_on_non_loopback_binds(host, allowed):
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=3)
    model.meta.classes = ["x", "y", "z"]
    app = create_app(Predictor.from_model(model), allowed_hosts=["localhost", "model.example"])
    with running_server(app) as url:
        response = httpx.get(f"{url}/health", headers={"host": host})
    if allowed:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400 and "--allowed-host" in response.json()["detail"]
        assert response.headers["x-content-type-options"] == "nosniff"


def test_which_binds_check_the_host_header():
    import socket as socket_module

    from resnetlab.serve.server import allowed_host_names

    for loopback in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert allowed_host_names(loopback) is None
    names = allowed_host_names("0.0.0.0", ["model.example"])
    assert {"localhost", socket_module.gethostname(), "model.example"} <= set(names)
    assert "192.168.1.5" in allowed_host_names("192.168.1.5")
    assert allowed_host_names("0.0.0.0", ["*"]) is None
