"""Evaluation: every metric against an independent computation, and the report a trained model gets."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import one_thread
from PIL import Image
from sklearn.metrics import log_loss

from resnetlab.data.imageset import ImageSet
from resnetlab.errors import DataError
from resnetlab.evaluation import bootstrap_mean_ci, classification_metrics, evaluate_model
from resnetlab.evaluation.metrics import calibration_errors, reliability_bins, top_k_accuracy
from resnetlab.evaluation.predictions import _shift, collect_outputs, tta_views
from resnetlab.models.registry import ModelMeta

CLASSES = ["red", "green", "blue", "gray"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- helpers
def colour_set(n: int, seed: int, noise: float = 90.0, size: int = 8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)) -> ImageSet:
    """Four classes told apart by a faint colour cast under heavy pixel noise: learnable, not trivial."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    base = torch.tensor([[150, 118, 118], [118, 150, 118], [118, 118, 150], [128, 128, 128]], dtype=torch.float32)
    images = base[labels].view(n, 1, 1, 3) + torch.randn(n, size, size, 3, generator=g) * noise
    return ImageSet(images.clamp(0, 255).round().to(torch.uint8), labels, list(CLASSES), mean=mean, std=std, source="synthetic colours")


class Tiny(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.net(x)


def tiny_model(classes=CLASSES) -> Tiny:
    model = Tiny(len(classes))
    model.meta = ModelMeta(name="tiny", num_classes=len(classes), input_size=(3, 8, 8), mean=(0.5, 0.5, 0.5),
                           std=(0.25, 0.25, 0.25), classes=list(classes))
    return model


def normalized(images: torch.Tensor, meta: ModelMeta) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)


def random_probs(n: int, c: int, seed: int, skill: float = 2.0):
    """Probabilities that favour the true class somewhat, plus integer labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += skill
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return torch.tensor(probs), torch.tensor(labels)


def rank_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUC as the Mann-Whitney probability P(score_pos > score_neg) + P(tie)/2."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


# ----------------------------------------------------------------------------- metrics
def test_metrics_match_independent_computation_on_random_predictions():
    probs, labels = random_probs(400, 7, seed=1)
    names = [f"c{i}" for i in range(7)]
    m = classification_metrics(probs, labels, names)
    p, y = probs.numpy(), labels.numpy()
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    top5 = np.argsort(-p, axis=1)[:, :5]
    assert m["top5_accuracy"] == pytest.approx((top5 == y[:, None]).any(1).mean())
    assert m["loss"] == pytest.approx(log_loss(y, p, labels=list(range(7))), rel=1e-6)

    cm = np.zeros((7, 7), dtype=int)
    np.add.at(cm, (y, pred), 1)
    assert m["confusion_matrix"] == cm.tolist()
    assert np.allclose(m["confusion_matrix_normalized"], cm / cm.sum(1, keepdims=True), atol=1e-6)
    f1s = []
    for c, row in enumerate(m["per_class"]):
        tp, fp, fn = cm[c, c], cm[:, c].sum() - cm[c, c], cm[c, :].sum() - cm[c, c]
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        f1s.append(2 * precision * recall / (precision + recall))
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1s[-1])
        assert row["support"] == cm[c].sum()
        assert row["auc"] == pytest.approx(rank_auc(p[:, c], y == c))
    assert m["macro"]["f1"] == pytest.approx(np.mean(f1s))
    assert m["weighted"]["f1"] == pytest.approx(np.average(f1s, weights=cm.sum(1)))
    assert m["macro"]["auc"] == pytest.approx(np.mean([rank_auc(p[:, c], y == c) for c in range(7)]))
    onehot = np.eye(7, dtype=bool)[y]
    assert m["micro"]["auc"] == pytest.approx(rank_auc(p.ravel(), onehot.ravel()))
    # Most confused pairs are the largest off-diagonal counts, in order.
    off = cm.copy()
    np.fill_diagonal(off, 0)
    assert m["most_confused"][0]["count"] == off.max()
    assert [q["count"] for q in m["most_confused"]] == sorted((q["count"] for q in m["most_confused"]), reverse=True)


def test_perfect_predictions():
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    probs = F.one_hot(labels, 3).double() * 0.9 + 0.05
    m = classification_metrics(probs, labels, ["a", "b", "c"])
    assert m["accuracy"] == 1.0 and m["macro"]["f1"] == 1.0 and m["weighted"]["f1"] == 1.0
    assert m["macro"]["auc"] == 1.0 and m["micro"]["auc"] == 1.0 and m["macro"]["average_precision"] == 1.0
    assert m["most_confused"] == []
    assert np.array_equal(np.array(m["confusion_matrix"]), np.diag([2, 2, 2]))
    assert m["accuracy_ci"]["low"] == m["accuracy_ci"]["high"] == 1.0


def test_all_one_class_predicted():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    probs = torch.tensor([[0.7, 0.2, 0.1]] * 6, dtype=torch.float64)
    m = classification_metrics(probs, labels, ["a", "b", "c"])
    a, b, c = m["per_class"]
    assert a["recall"] == 1.0 and a["precision"] == pytest.approx(2 / 6) and a["predicted"] == 6
    assert b["precision"] == 0.0 and b["recall"] == 0.0 and b["f1"] == 0.0 and b["predicted"] == 0
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert b["auc"] == pytest.approx(0.5)  # constant scores: no ranking ability
    assert m["most_confused"][0] == {"true": "b", "predicted": "a", "true_index": 1, "predicted_index": 0, "count": 3, "fraction_of_true": 1.0}


def test_class_never_predicted_and_class_absent():
    labels = torch.tensor([0, 1, 0, 1, 2, 2])  # class "d" has no images
    probs = torch.tensor([[0.6, 0.2, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1], [0.2, 0.6, 0.1, 0.1],
                          [0.5, 0.3, 0.15, 0.05], [0.2, 0.5, 0.2, 0.1]], dtype=torch.float64)
    m = classification_metrics(probs, labels, ["a", "b", "c", "d"])
    c, d = m["per_class"][2], m["per_class"][3]
    assert c["predicted"] == 0 and c["recall"] == 0.0 and c["precision"] == 0.0 and c["support"] == 2
    assert d["support"] == 0 and d["auc"] is None and d["average_precision"] is None
    assert m["classes_without_samples"] == ["d"]
    assert m["macro"]["auc"] == pytest.approx(np.mean([r["auc"] for r in m["per_class"][:3]]))
    json.dumps(m, allow_nan=False)  # strict JSON even with undefined values


def test_ece_hand_checked():
    # Confidences 0.9, 0.78, 0.7, 0.62 fall in four different 1/15-wide bins; correct, wrong, correct, correct.
    probs = torch.tensor([[0.9, 0.1], [0.78, 0.22], [0.3, 0.7], [0.62, 0.38]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    m = classification_metrics(probs, labels, ["a", "b"])
    expected = (abs(1 - 0.9) + abs(0 - 0.78) + abs(1 - 0.7) + abs(1 - 0.62)) / 4  # = 0.39
    assert m["calibration"]["ece"] == pytest.approx(expected, abs=1e-6)
    assert m["calibration"]["mce"] == pytest.approx(0.78, abs=1e-6)
    filled = [b for b in m["calibration"]["bins"] if b["count"]]
    assert [b["count"] for b in filled] == [1, 1, 1, 1]
    assert sum(m["calibration"]["confidence_histogram"]["correct"]) == 3


def test_top_k_and_ece_by_hand_without_torchmetrics():
    probs, labels = random_probs(500, 5, seed=3, skill=1.0)
    m = classification_metrics(probs, labels, list("abcde"))
    ranks = (probs > probs.gather(1, labels[:, None])).sum(1)  # how many classes beat the true one
    assert m["accuracy"] == (ranks == 0).double().mean().item()
    assert m["top5_accuracy"] == 1.0 and top_k_accuracy(probs, labels, 2) == (ranks < 2).double().mean().item()
    # ECE by a plain loop over 15 equal-width bins, an edge value going to the bin above.
    conf, pred = probs.double().max(1)
    total = 0.0
    for i in range(15):
        inside = (conf >= i / 15) & ((conf < (i + 1) / 15) if i < 14 else (conf <= 1))
        if inside.any():
            total += inside.sum().item() * abs((pred[inside] == labels[inside]).double().mean() - conf[inside].mean()).item()
    assert m["calibration"]["ece"] == pytest.approx(total / 500, abs=1e-12)
    # A confidence exactly on an edge (0.6 = 9/15) counts in the bin above it.
    edge = calibration_errors(torch.tensor([[0.6, 0.4]], dtype=torch.float64), torch.tensor([0]))
    assert edge == pytest.approx((0.4, 0.4))
    assert sum(b["count"] for b in reliability_bins(np.array([0.6]), np.array([1.0]))[9:10]) == 1


def test_bootstrap_interval():
    rng = np.random.default_rng(0)
    small = (rng.random(200) < 0.8).astype(float)
    big = (rng.random(20000) < 0.8).astype(float)
    ci_small, ci_big = bootstrap_mean_ci(small, seed=1), bootstrap_mean_ci(big, seed=1)
    for ci, values in ((ci_small, small), (ci_big, big)):
        assert ci["estimate"] == pytest.approx(values.mean())
        assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert (ci_big["high"] - ci_big["low"]) < (ci_small["high"] - ci_small["low"]) / 5
    assert bootstrap_mean_ci(small, seed=1) == ci_small  # seeded
    # Same distribution as the textbook index bootstrap (resample rows with replacement).
    idx = np.random.default_rng(5).integers(0, 200, size=(4000, 200))
    naive = np.quantile(small[idx].mean(1), [0.025, 0.975])
    assert ci_small["low"] == pytest.approx(naive[0], abs=0.015) and ci_small["high"] == pytest.approx(naive[1], abs=0.015)
    # Binomial check: the standard error of a proportion.
    assert ci_small["std_error"] == pytest.approx(np.sqrt(0.8 * 0.2 / 200), rel=0.15)


def test_tta_views_flip_and_shift():
    images = torch.arange(2 * 6 * 6 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).view(2, 6, 6, 3)
    shifted = _shift(images, 1, 1)
    assert torch.equal(shifted[:, 1:, 1:], images[:, :-1, :-1])  # content moved down-right by one pixel
    shifted = _shift(images, -1, -1)
    assert torch.equal(shifted[:, :-1, :-1], images[:, 1:, 1:])
    views = dict(tta_views((32, 32)))
    assert len(views) == 6 and "identity" in views and "flip" in views
    assert torch.equal(views["flip"](images), images.flip(2))


# ----------------------------------------------------------------------------- a trained model
@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    model = tiny_model()
    train = colour_set(512, seed=0)
    x = normalized(train.images, model.meta)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    with one_thread():  # module scope: conftest's per-test fixture is not active yet
        for _ in range(80):  # full-batch steps, about a second
            loss = F.cross_entropy(model(x), train.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def report(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    # Dataset statistics deliberately wrong: the model's own (meta) normalization must be used.
    test = colour_set(400, seed=1, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    metrics = evaluate_model(trained, test, out, tta=True, batch_size=128, context={"data": "synthetic", "split": "test", "command": "pytest"})
    return metrics, out, test


def test_trained_model_metrics_are_sensible(report, trained):
    metrics, out, test = report
    assert metrics["accuracy"] > 0.75  # chance is 0.25
    assert metrics["macro"]["auc"] > 0.9 and metrics["micro"]["auc"] > 0.9
    cm = np.array(metrics["confusion_matrix"])
    assert (cm.argmax(axis=1) == np.arange(4)).all()  # diagonal dominant rows
    assert cm.sum() == 400
    assert metrics["accuracy_ci"]["low"] < metrics["accuracy"] < metrics["accuracy_ci"]["high"]
    assert 0 <= metrics["calibration"]["ece"] < 0.5
    # The plain accuracy equals the model run by hand with its meta normalization.
    with torch.no_grad():
        plain = trained(normalized(test.images, trained.meta)).argmax(1)
    assert metrics["tta"]["accuracy_without"] == pytest.approx((plain == test.labels).float().mean().item())
    assert metrics["tta"]["enabled"] and len(metrics["tta"]["views"]) == 6
    assert metrics["accuracy"] == pytest.approx(metrics["tta"]["accuracy_with"])
    gain = metrics["tta"]["gain_ci"]
    assert gain["estimate"] == pytest.approx(metrics["tta"]["accuracy_with"] - metrics["tta"]["accuracy_without"])
    assert metrics["tta"]["fixed"] - metrics["tta"]["broken"] == round(gain["estimate"] * 400)


def test_report_files(report):
    metrics, out, _ = report
    for name in ("confusion_matrix.png", "roc.png", "pr.png", "reliability.png", "confidence.png", "per_class.png", "wrong_images.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        width, height = Image.open(io.BytesIO(data)).size
        assert 400 <= width <= 4000 and 150 <= height <= 4000, (name, width, height)
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "top5_accuracy", "loss", "per_class", "macro", "weighted", "micro", "confusion_matrix",
                "confusion_matrix_normalized", "most_confused", "calibration", "curves", "accuracy_ci", "tta", "context",
                "most_confident_wrong"):
        assert key in saved, key
    assert saved["context"]["data"] == {**saved["context"]["data"], "spec": "synthetic", "split": "test"}
    assert saved["context"]["model"]["name"] == "tiny" and saved["context"]["model"]["params"] > 0
    assert saved["context"]["command"] == "pytest"
    assert len(saved["curves"]["roc_tpr_at_fpr"]["micro"]) == len(saved["curves"]["grid"])
    # predictions.csv agrees with metrics.json.
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 400
    assert np.mean([int(r["correct"]) for r in rows]) == pytest.approx(saved["accuracy"])
    wrong = saved["most_confident_wrong"]
    assert wrong and all(w["true"] != w["predicted"] for w in wrong)
    assert [w["confidence"] for w in wrong] == sorted((w["confidence"] for w in wrong), reverse=True)
    md = (out / "report.md").read_text()
    assert f"{100 * saved['accuracy']:.2f}%" in md and "![roc.png](roc.png)" in md


def test_html_report_is_self_contained(report):
    metrics, out, _ = report
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<link" not in page.lower() and "<script" not in page.lower() and "@import" not in page
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == 7
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert page.count('<tr><td>') >= 4 and all(name in page for name in CLASSES)
    assert f"{100 * metrics['accuracy']:.2f}%" in page


def test_failed_evaluation_leaves_no_metrics_json(trained, tmp_path, monkeypatch):
    (tmp_path / "metrics.json").write_text('{"accuracy": 1.0}')  # a stale, successful-looking report
    import resnetlab.evaluation.plots as plots

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "roc_png", boom)
    with pytest.raises(RuntimeError):
        evaluate_model(trained, colour_set(40, seed=2), tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_class_mismatch_is_a_clear_error(trained, tmp_path):
    data = colour_set(8, seed=2)
    data.classes = ["red", "green", "blue", "purple"]
    with pytest.raises(DataError, match="purple"):
        evaluate_model(trained, data, tmp_path)
    other = tiny_model(classes=["a", "b", "c"])
    with pytest.raises(DataError, match="3 classes"):
        evaluate_model(other, colour_set(8, seed=2), tmp_path)


def test_logits_object_gives_same_result_as_module(trained, tmp_path):
    """An object with .logits(uint8 NHWC) (the ONNX Predictor's interface) is evaluated the same way."""

    class LogitsOnly:
        meta = trained.meta

        def logits(self, images):
            with torch.no_grad():
                return trained(normalized(images, trained.meta))

    test = colour_set(64, seed=4)
    direct = collect_outputs(trained, test.images)
    duck = collect_outputs(LogitsOnly(), test.images, tta=True)
    assert torch.allclose(direct.logits, duck.logits, atol=1e-5)
    metrics = evaluate_model(LogitsOnly(), test, tmp_path, batch_size=16)
    assert metrics["accuracy"] == pytest.approx((direct.logits.argmax(1) == test.labels).float().mean().item())
    assert (tmp_path / "metrics.json").exists()


def test_images_of_another_size_are_resized_to_the_model_input(tmp_path):
    """issue 22: evaluate honours meta.input_size (it used to fail with a shape error here)."""
    from resnetlab.models import create_model

    model = create_model("cnn_baseline", num_classes=4)  # a fixed 32x32 architecture
    model.meta.classes = list(CLASSES)
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    metrics = evaluate_model(model, colour_set(8, seed=0, size=16), tmp_path)
    assert metrics["num_samples"] == 8 and set(seen) == {(32, 32)}
    assert (tmp_path / "metrics.json").exists()
