"""The prediction server under abuse (issue 8, item 6).

Every hostile request gets the right 4xx as JSON, quickly, and the server answers a normal request
right after it. Complements tests/test_serve.py (which covers the basic 413/415/400 cases one by one).
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.inference.predictor import Predictor
from resnetlab.models import create_model
from resnetlab.serve.app import create_app
from test_serve import running_server  # one way to start the app under uvicorn in tests

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
