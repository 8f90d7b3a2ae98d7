"""`resnetlab serve`: the real app under uvicorn on a free local port, hit with a real HTTP client."""

from __future__ import annotations

import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from helpers import running_server
from PIL import Image

import resnetlab
from resnetlab.models import create_model
from resnetlab.models.files import save_model_file
from resnetlab.serve.app import create_app
from resnetlab.serve.server import find_report_dir

CLASSES = ["apple", "banana", "cherry"]


def _image_bytes(fmt="JPEG", size=(48, 40), seed=0, mode="RGB") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=3)
    model.meta.classes = list(CLASSES)
    path = tmp_path_factory.mktemp("run")
    save_model_file(model, path)
    (path / "config.yaml").write_text("model: {name: cnn_baseline}\n")  # what makes the folder a run directory
    (path / "eval").mkdir()
    (path / "eval" / "report.html").write_text('<html><body><h1>Test report</h1><img src="confusion.png"></body></html>')
    (path / "eval" / "confusion.png").write_bytes(_image_bytes("PNG"))
    return path


@pytest.fixture(scope="module")
def predictor(run_dir):
    return resnetlab.load(run_dir)


@pytest.fixture(scope="module")
def server(predictor, run_dir):
    app = create_app(predictor, max_upload_mb=0.25, max_files=4, report_dir=find_report_dir(run_dir))
    with running_server(app) as url:
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        yield c


def _assert_json_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert "Traceback" not in response.text
    for word in words:
        assert word in detail, detail


def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model"] == "cnn_baseline"
    assert body["classes"] == CLASSES and body["report"] is True


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file-input"' in page.text
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert client.get(asset).status_code == 200, asset
    assert "cdn" not in page.text.lower() and "https://" not in page.text  # works offline
    assert client.get("/openapi.json").json()["paths"]["/predict"]


def test_predict_one_image_matches_the_library(client, predictor):
    data = _image_bytes()
    response = client.post("/predict", files={"file": ("fruit.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "cnn_baseline" and len(body["predictions"]) == 1
    entry = body["predictions"][0]
    assert entry["filename"] == "fruit.jpg"
    expected = predictor.predict(data, top_k=3)[0]
    assert [t["class"] for t in entry["top_k"]] == [c for c, _ in expected]
    assert [t["probability"] for t in entry["top_k"]] == pytest.approx([p for _, p in expected], abs=1e-6)


def test_predict_several_images_and_top_k(client):
    files = [
        ("file", ("a.png", _image_bytes("PNG", seed=1), "image/png")),
        ("file", ("b.gif", _image_bytes("GIF", seed=2), "image/gif")),
        ("other", ("c.jpg", _image_bytes("JPEG", seed=3, mode="L"), "image/jpeg")),
    ]
    response = client.post("/predict", params={"top_k": 2}, files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["filename"] for p in predictions] == ["a.png", "b.gif", "c.jpg"]
    assert all(len(p["top_k"]) == 2 for p in predictions)


@pytest.mark.parametrize("name,content", [
    ("notes.txt", b"just some text, not a picture"),
    ("empty.jpg", b""),
    ("truncated.jpg", _image_bytes()[:200]),
    ("fake.png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
])
def test_non_images_are_415_with_the_file_name(client, name, content):
    response = client.post("/predict", files={"file": (name, content, "image/jpeg")})
    _assert_json_error(response, 415, name)


def test_not_multipart_is_415(client):
    _assert_json_error(client.post("/predict", json={"image": "abc"}), 415, "multipart")
    _assert_json_error(client.post("/predict", content=_image_bytes(), headers={"content-type": "image/jpeg"}), 415)


def test_form_without_file_is_400(client):
    _assert_json_error(client.post("/predict", data={"name": "x"}, files={}), 415)  # urlencoded form
    response = client.post("/predict", files={"field": (None, "text value")})
    _assert_json_error(response, 400, "no file")


def test_malformed_multipart_is_400(client):
    body = b"--wrong\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\nxx"
    response = client.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=right"})
    assert response.status_code in (400, 415), response.text
    assert "Traceback" not in response.text and "detail" in response.json()


def test_too_many_files_is_400(client):
    files = [("file", (f"{i}.png", _image_bytes("PNG", size=(8, 8)), "image/png")) for i in range(6)]
    _assert_json_error(client.post("/predict", files=files), 400)


def test_request_over_the_size_limit_is_413(client):
    big = os.urandom(400 * 1024)  # limit is 0.25 MB
    response = client.post("/predict", files={"file": ("big.jpg", big, "image/jpeg")})
    _assert_json_error(response, 413, "0.25 MB")


def test_chunked_request_over_the_limit_is_413(client):
    # No Content-Length: the server must count bytes as they arrive.
    boundary = "resnetlabtest"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()

    def chunks():
        yield head
        for _ in range(40):
            yield bytes(16 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/predict", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    _assert_json_error(response, 413)


def test_decompression_bomb_is_413(client):
    buffer = io.BytesIO()
    Image.new("1", (10000, 6000)).save(buffer, format="PNG", optimize=True)  # ~10 KB file, 60 MP
    assert len(buffer.getvalue()) < 200_000
    response = client.post("/predict", files={"file": ("bomb.png", buffer.getvalue(), "image/png")})
    _assert_json_error(response, 413, "bomb.png", "pixels")


def test_bad_top_k_is_400(client):
    files = {"file": ("a.jpg", _image_bytes(), "image/jpeg")}
    _assert_json_error(client.post("/predict", params={"top_k": "many"}, files=files), 400, "top_k")
    _assert_json_error(client.post("/predict", params={"top_k": 0}, files=files), 400, "top_k")


def test_concurrent_clients_get_their_own_answers(server, predictor):
    images = [_image_bytes("PNG", seed=s) for s in range(6)]
    expected = [[c for c, _ in predictor.predict(data, top_k=3)[0]] for data in images]

    def ask(i: int):
        with httpx.Client(base_url=server, timeout=60) as c:
            response = c.post("/predict", files={"file": (f"{i}.png", images[i % 6], "image/png")})
            return i, response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(24)))
    for i, status, body in answers:
        assert status == 200
        assert body["predictions"][0]["filename"] == f"{i}.png"
        assert [t["class"] for t in body["predictions"][0]["top_k"]] == expected[i % 6]


def test_report_page(client):
    response = client.get("/report", follow_redirects=True)
    assert response.status_code == 200 and "Test report" in response.text
    assert client.get("/report/confusion.png").status_code == 200
    assert (client.get("/report/report.html").status_code, client.get("/report/%2e%2e/model.json").status_code) == (200, 404)


def test_report_missing_is_a_friendly_404(predictor):
    app = create_app(predictor, report_dir=None)
    with running_server(app) as url:
        response = httpx.get(f"{url}/report")
        assert response.status_code == 404
        assert "text/html" in response.headers["content-type"]
        assert "resnetlab evaluate" in response.text
        assert httpx.get(f"{url}/health").json()["report"] is False


def test_serves_an_onnx_export(run_dir, predictor, tmp_path):
    from resnetlab.inference.export import export_onnx
    from resnetlab.models.files import load_model_file

    onnx_path = export_onnx(load_model_file(run_dir), tmp_path / "model.onnx").path
    onnx_predictor = resnetlab.load(onnx_path)
    assert onnx_predictor.backend == "onnxruntime"
    data = _image_bytes(seed=5)
    with running_server(create_app(onnx_predictor)) as url:
        response = httpx.post(f"{url}/predict", files={"file": ("x.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    got = response.json()["predictions"][0]["top_k"]
    expected = predictor.predict(data, top_k=3)[0]
    assert [t["class"] for t in got] == [c for c, _ in expected]
    assert [t["probability"] for t in got] == pytest.approx([p for _, p in expected], abs=1e-5)


@pytest.mark.slow
def test_serve_command_end_to_end(run_dir, serve_process):
    """`resnetlab serve MODEL --port 0` in a subprocess: prints its URL and answers."""
    _, url = serve_process(run_dir)
    assert url.startswith("http://127.0.0.1:")
    response = httpx.post(f"{url}/predict", files={"file": ("x.jpg", _image_bytes(), "image/jpeg")})
    assert response.status_code == 200 and response.json()["predictions"][0]["top_k"][0]["class"] in CLASSES
    assert httpx.get(f"{url}/report", follow_redirects=True).status_code == 200  # the run's own report
