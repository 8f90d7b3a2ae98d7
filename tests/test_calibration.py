"""Temperature scaling (issue 24, item 1): the fit, ``resnetlab calibrate``, and T used by predict, serve,
the ONNX export and the report.

The over-confident model is made, not trained: a random ``cnn_baseline`` whose logits z are centred and
spread out, labels drawn from softmax(z) (so z is calibrated by construction), then the classifier
multiplied by 5. Its true temperature is therefore 5, and the fit must find about that.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from helpers import running_server
from PIL import Image
from sklearn.metrics import log_loss

import resnetlab
from resnetlab.cli import main
from resnetlab.errors import CheckpointError, ConfigError
from resnetlab.inference import Predictor
from resnetlab.evaluation.calibration import fit_temperature
from resnetlab.evaluation.metrics import calibration_errors
from resnetlab.models import create_model
from resnetlab.models.files import save_model_file

CLASSES = ["a", "b", "c"]
TRUE_T = 5.0


def _sample_logits(n: int, classes: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated logits z (labels drawn from softmax(z)), returned multiplied by ``scale``."""
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, classes, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return scale * z, labels


def _grid_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The independent reference: sklearn's log loss on a geometric grid of T, coarse (6% steps) then fine (0.2%)."""
    def best(grid):
        losses = [log_loss(labels.numpy(), torch.softmax(logits / t, 1).numpy(), labels=list(range(logits.shape[1]))) for t in grid]
        return float(grid[int(np.argmin(losses))])

    coarse = best(np.geomspace(0.05, 40, 120))
    return best(np.geomspace(coarse / 1.06, coarse * 1.06, 61))


def test_fit_recovers_the_temperature_of_overconfident_logits():
    logits, labels = _sample_logits(3000, 10, TRUE_T, seed=0)
    t = fit_temperature(logits, labels)
    assert 4.5 < t < 5.5
    before, after = torch.softmax(logits, 1), torch.softmax(logits / t, 1)
    assert torch.equal(before.argmax(1), after.argmax(1))  # accuracy unchanged
    nll = torch.nn.functional.cross_entropy
    assert nll(logits / t, labels) < nll(logits, labels) - 0.2
    ece_before, ece_after = calibration_errors(before, labels)[0], calibration_errors(after, labels)[0]
    assert ece_after < 0.03 < 0.15 < ece_before
    # Negative control: logits that are already calibrated are left (nearly) alone.
    assert 0.9 < fit_temperature(*_sample_logits(3000, 10, 1.0, seed=1)) < 1.1


@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_fit_agrees_with_a_grid_search_of_sklearn_log_loss(scale):
    logits, labels = _sample_logits(800, 4, scale, seed=2)
    t, reference = fit_temperature(logits, labels), _grid_temperature(logits, labels)
    assert abs(t / reference - 1) < 0.01, (t, reference)
    assert (t < 1) == (scale < 1)  # under-confident logits are sharpened, over-confident ones softened


# ----------------------------------------------------------------------------- a model and its data
def _write_folder(root: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.numpy()).save(folder / f"{i:04d}.png")  # lossless: the CLI sees these very pixels
    return root


@pytest.fixture(scope="module")
def overconfident(tmp_path_factory) -> dict:
    """A model file over-confident by exactly 5, a folder to fit T on and another to measure it on."""
    torch.manual_seed(0)
    model = create_model("cnn_baseline", num_classes=len(CLASSES))
    model.meta.classes = list(CLASSES)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (600, 32, 32, 3), dtype=torch.uint8, generator=g)
    z = Predictor.from_model(model).logits(images).double()
    spread = 1.5 / float(z.std(0).mean())
    with torch.no_grad():  # z -> spread * (z - mean): centred logits with a useful range
        model.fc.bias.copy_(spread * (model.fc.bias - z.mean(0).float()))
        model.fc.weight.mul_(spread)
    z = spread * (z - z.mean(0))
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    with torch.no_grad():
        model.fc.weight.mul_(TRUE_T)
        model.fc.bias.mul_(TRUE_T)
    root = tmp_path_factory.mktemp("calibration")
    return {"model": save_model_file(model, root / "model" / "model.safetensors"), "images": images, "labels": labels,
            "fit": _write_folder(root / "fit", images[:300], labels[:300]),
            "measure": _write_folder(root / "measure", images[300:], labels[300:])}


@pytest.fixture(scope="module")
def calibrated(overconfident, tmp_path_factory) -> dict:
    """``resnetlab calibrate`` run on the fit folder, writing a calibrated copy (the original stays untouched)."""
    out = tmp_path_factory.mktemp("calibrated") / "model.safetensors"
    code = main(["calibrate", str(overconfident["model"]), "--data", str(overconfident["fit"]), "--split", "all",
                 "--output", str(out), "--device", "cpu"])
    assert code == 0
    return {**overconfident, "calibrated": out}


def test_calibrate_stores_the_fitted_temperature(calibrated, capsys):
    info = json.loads(calibrated["calibrated"].with_suffix(".json").read_text())
    t = info["meta"]["temperature"]
    # Independent of the command: our logits of the fit images, and the sklearn grid search.
    logits = resnetlab.load(calibrated["model"]).logits(calibrated["images"][:300])
    assert abs(t / _grid_temperature(logits.double(), calibrated["labels"][:300]) - 1) < 0.01
    assert 3.5 < t < 7.0  # the true 5, within the sampling noise of 300 images
    record = info["extra"]["calibration"]
    assert record["split"] == "all" and record["num_samples"] == 300 and record["data"] == str(calibrated["fit"])
    assert record["nll_after"] < record["nll_before"] and record["ece_after"] < record["ece_before"]
    assert "temperature" not in json.loads(calibrated["model"].with_suffix(".json").read_text())["meta"] or \
        json.loads(calibrated["model"].with_suffix(".json").read_text())["meta"]["temperature"] == 1.0


def test_predict_uses_the_temperature(calibrated):
    raw, cal = resnetlab.load(calibrated["model"]), resnetlab.load(calibrated["calibrated"])
    t = cal.temperature
    images = calibrated["images"][300:310]
    logits = raw.logits(images)
    assert torch.allclose(cal.logits(images), logits)  # same weights
    probs = cal.probabilities(images)
    assert torch.allclose(probs, torch.softmax(logits / t, 1), atol=1e-6)
    assert not torch.allclose(probs, torch.softmax(logits, 1), atol=1e-2)
    assert torch.equal(probs.argmax(1), logits.argmax(1))


@pytest.mark.slow  # two full evaluation reports (~7 s)
def test_report_shows_before_and_after_on_another_split(calibrated):
    from resnetlab.evaluation.runner import evaluate_path

    out = calibrated["calibrated"].parent / "eval-measure"
    metrics, _ = evaluate_path(calibrated["calibrated"], str(calibrated["measure"]), split="all", out_dir=out, device="cpu")
    section = metrics["temperature_scaling"]
    assert section["warning"] is None  # measured on images T was not fitted on
    assert section["after"]["ece"] < section["before"]["ece"] and section["after"]["nll"] < section["before"]["nll"]
    assert section["after"]["accuracy"] == section["before"]["accuracy"] == pytest.approx(metrics["accuracy"])
    page = (out / "report.html").read_text()
    assert 'id="temperature-scaling"' in page and "fitted on the all split of" in page
    assert (out / "reliability_calibrated.png").stat().st_size > 1000
    assert "## Temperature scaling" in (out / "report.md").read_text()

    # Measured on the split T was fitted on, the report says so.
    same, _ = evaluate_path(calibrated["calibrated"], str(calibrated["fit"]), split="all", out_dir=out.parent / "eval-fit", device="cpu")
    assert "fitted on this same split" in same["temperature_scaling"]["warning"]
    assert "Warning" in (out.parent / "eval-fit" / "report.html").read_text()


def test_serve_uses_the_temperature(calibrated):
    from resnetlab.serve.app import create_app

    predictor = resnetlab.load(calibrated["calibrated"])
    buffer = io.BytesIO()
    Image.fromarray(calibrated["images"][400].numpy()).save(buffer, format="PNG")
    with running_server(create_app(predictor)) as url:
        response = httpx.post(f"{url}/predict", files={"file": ("x.png", buffer.getvalue(), "image/png")}, params={"top_k": 3}, timeout=30)
    assert response.status_code == 200, response.text
    served = {t["class"]: t["probability"] for t in response.json()["predictions"][0]["top_k"]}
    logits = predictor.logits(calibrated["images"][400:401])[0]
    expected = torch.softmax(logits / predictor.temperature, 0)
    assert [served[c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-5)
    assert [served[c] for c in CLASSES] != pytest.approx(torch.softmax(logits, 0).tolist(), abs=1e-2)


@pytest.mark.slow
def test_onnx_export_divides_by_the_temperature_in_the_graph(calibrated, tmp_path):
    from resnetlab.inference.export import export_model

    result = export_model(calibrated["calibrated"], "onnx", tmp_path / "model.onnx")
    onnx_predictor, torch_predictor = resnetlab.load(result.path), resnetlab.load(calibrated["calibrated"])
    assert onnx_predictor.temperature == 1.0  # applied inside the graph, never twice
    images = calibrated["images"][300:340]
    assert torch.allclose(onnx_predictor.probabilities(images), torch_predictor.probabilities(images), atol=1e-5)
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["extra"]["temperature_in_graph"] == pytest.approx(torch_predictor.temperature)


def test_calibrate_in_place_updates_model_json(overconfident, tmp_path):
    model = save_model_file(resnetlab.load(overconfident["model"]).model, tmp_path / "copy.safetensors")
    weights = model.read_bytes()
    assert main(["calibrate", str(model), "--data", str(overconfident["fit"]), "--split", "all", "--device", "cpu"]) == 0
    info = json.loads(model.with_suffix(".json").read_text())
    assert info["meta"]["temperature"] > 2 and info["extra"]["calibration"]["previous_temperature"] == 1.0
    assert model.read_bytes() == weights  # only the metadata changes


def test_a_checkpoint_needs_output(overconfident, tmp_path, capsys):
    model = resnetlab.load(overconfident["model"]).model
    checkpoint = tmp_path / "best.pt"
    torch.save({"kind": "resnetlab-checkpoint", "format_version": 1, "model": model.state_dict(), "meta": model.meta.to_dict()}, checkpoint)
    code = main(["calibrate", str(checkpoint), "--data", str(overconfident["fit"]), "--split", "all"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "--output" in err and str(checkpoint) in err
    # Outside a run directory nothing says which data: refused before the model is loaded.
    assert main(["calibrate", str(overconfident["model"])]) != 0
    assert "--data is required" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [0, -1.5, "2", 1e9, None])
def test_bad_temperature_in_model_json_is_a_one_line_error(overconfident, tmp_path, bad):
    model = save_model_file(resnetlab.load(overconfident["model"]).model, tmp_path / "m.safetensors")
    info = json.loads(model.with_suffix(".json").read_text())
    info["meta"]["temperature"] = bad
    model.with_suffix(".json").write_text(json.dumps(info))
    if bad is None:  # null is the same as absent: uncalibrated
        assert resnetlab.load(model).temperature == 1.0
        return
    with pytest.raises(CheckpointError, match="temperature must be a finite number"):
        resnetlab.load(model)


def test_onnx_input_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="calibrate the model file it came from"):
        from resnetlab.evaluation.calibration import calibrate_path

        calibrate_path(tmp_path / "m.onnx", "x")


@pytest.mark.slow
def test_training_fits_the_temperature_on_the_validation_split(tmp_path):
    from helpers import make_image_folder

    folder = make_image_folder(tmp_path / "images", classes=3, per_class=12, test_per_class=4)
    code = main(["train", "--model", "cnn_baseline", "--data", str(folder), "--device", "cpu", "--epochs", "1",
                 "--batch-size", "8", "--val-size", "9", "--run-dir", str(tmp_path / "run"),
                 "--set", "model.options={width: 4, hidden: 8}"])
    assert code == 0
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    record = info["extra"]["calibration"]
    assert record["split"] == "val" and record["num_samples"] == 9
    assert info["meta"]["temperature"] == pytest.approx(record["temperature"]) and record["nll_after"] <= record["nll_before"]
    assert "test_acc" in info["extra"]  # the engine's later update kept the calibration
    section = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["temperature_scaling"]
    assert section["temperature"] == pytest.approx(record["temperature"]) and section["warning"] is None
    assert section["num_samples"] == 12  # measured on the test split, not on the 9 images T was fitted on
