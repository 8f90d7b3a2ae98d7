"""Safe loading (issue 8, item 4): no pickle code ever runs, and mismatched weights say what clashed.

A checkpoint carrying a ``__reduce__`` payload that would create a marker file is handed to every
command that reads checkpoints (train --resume, evaluate, predict, finetune --from, serve); each must
refuse it with a one-line error, and the marker must never appear.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import resnetlab
from helpers import debug_hooks, random_class_folder
from resnetlab.cli import main
from resnetlab.errors import CheckpointError, ConfigError
from resnetlab.models import create_model
from resnetlab.models.files import CHECKPOINT_KIND, load_checkpoint_dict, load_model_file, load_trained_model, save_model_file

SRC = Path(__file__).resolve().parents[1] / "src" / "resnetlab"


# --------------------------------------------------------------------------- the source itself


def test_every_torch_load_in_src_passes_weights_only_true():
    found, aliases, jit_loads = [], [], []
    for path in sorted(SRC.rglob("*.py")):
        where = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                keywords = {k.arg: k.value for k in node.keywords}
                value = keywords.get("weights_only")
                found.append((f"{where}:{node.lineno}", isinstance(value, ast.Constant) and value.value is True))
            elif isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.jit.load":
                jit_loads.append((where, ast.unparse(node.args[0]) if node.args else ""))
            # Aliases would hide a call from the check above: ``from torch import load``, ``f = torch.load``.
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch") and any(a.name == "load" for a in node.names):
                aliases.append(f"{where}:{node.lineno}")
            elif isinstance(node, (ast.Assign, ast.keyword)) and ast.unparse(node.value) in ("torch.load", "torch.jit.load"):
                aliases.append(f"{where}:{node.lineno if hasattr(node, 'lineno') else '?'}")
    assert found, "expected at least the checkpoint loader's torch.load call"
    assert [where for where, ok in found if not ok] == []
    assert aliases == []
    # TorchScript archives can run code; the one torch.jit.load is export's parity check of the bytes it just wrote.
    assert jit_loads == [("inference/export.py", "io.BytesIO(data)")]


def test_no_pickle_load_outside_the_restricted_cifar_unpickler():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "dill.load", "joblib.load",
                            "numpy.load", "np.load"):
                    kw = {k.arg: k.value for k in node.keywords}
                    if name in ("numpy.load", "np.load"):
                        if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False:
                            continue  # np.load(..., allow_pickle=False) reads only plain arrays
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {name}")
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                if (path.name, node.name) != ("cifar.py", "_RestrictedUnpickler"):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno} class {node.name}")
                else:  # the one allowed unpickler must override find_class
                    assert any(isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body)
    assert offenders == []


def test_exported_model_files_are_safetensors_without_pickle(tmp_path):
    model = create_model("cnn_baseline", num_classes=3)
    path = save_model_file(model, tmp_path)
    assert path.suffix == ".safetensors"
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and raw[8 + header_len - 1 : 8 + header_len].strip() in (b"}", b"")  # a JSON header, then tensors
    assert b"\x80\x02" not in raw[:16] and not raw.startswith(b"PK")  # not a pickle, not a torch zip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]


# --------------------------------------------------------------------------- the crafted checkpoint


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff pickle code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_checkpoint(path: Path, marker: Path, model=None) -> Path:
    model = model or create_model("cnn_baseline", num_classes=2)
    model.meta.classes = ["a", "b"]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "kind": CHECKPOINT_KIND, "format_version": 1, "complete": True,
        "model": model.state_dict(), "meta": model.meta.to_dict(),
        "optimizer": {}, "schedule": {"step": 4}, "scaler": None, "ema": None, "rng": {"evil": _Payload(marker)},
        "epoch": 1, "step_in_epoch": 0, "step": 4, "best": {}, "config": {},
    }, path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    return random_class_folder(tmp_path / "ds", per_class=4)


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "PWNED_MARKER"
    yield path
    assert not path.exists(), "the pickle payload ran"


def test_the_payload_is_live_without_the_protection(tmp_path):
    """Negative control: the same file *does* run code when loaded unsafely, so the tests below can fail."""
    marker = tmp_path / "control_marker"
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_library_loaders_refuse_it(tmp_path, marker):
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    for load in (load_checkpoint_dict, load_trained_model, resnetlab.load):
        with pytest.raises(CheckpointError, match=r"evil\.pt.*(refused|weights_only|Unpickling)"):
            load(evil)


def _cli_refuses(argv: list[str], capsys, *words: str) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnetlab: error:") and err.count("\n") == 0, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


def test_train_resume_refuses_it(tmp_path, folder, marker, capsys):
    from resnetlab.config import build_config, write_config

    run = tmp_path / "run"
    config = build_config({"model": {"name": "cnn_baseline"}, "data": {"spec": str(folder), "val_size": 2}, "epochs": 1,
                           "batch_size": 2, "device": "cpu", "run_dir": str(run)})
    run.mkdir()
    write_config(config, run / "config.yaml")
    _evil_checkpoint(run / "checkpoints" / "last-00000004.pt", marker)
    _cli_refuses(["train", "--resume", str(run)], capsys, "last-00000004.pt", "no intact checkpoint")
    assert not (run / "model.safetensors").exists()


@pytest.mark.slow  # the first import of resnetlab.evaluation (sklearn, matplotlib) costs seconds
def test_evaluate_refuses_it(tmp_path, folder, marker, capsys):
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    _cli_refuses(["evaluate", str(evil), "--data", str(folder), "--device", "cpu", "--out", str(tmp_path / "eval")], capsys, "evil.pt")
    assert not (tmp_path / "eval").exists()


def test_predict_refuses_it(tmp_path, folder, marker, capsys):
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    _cli_refuses(["predict", str(evil), str(folder / "a" / "0.png")], capsys, "evil.pt")


def test_finetune_refuses_it_as_a_file_and_inside_a_run_dir(tmp_path, folder, marker, capsys):
    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    base = ["finetune", "--model", "cnn_baseline", "--data", str(folder), "--epochs", "1", "--device", "cpu"]
    _cli_refuses([*base, "--from", str(evil), "--run-dir", str(tmp_path / "ft1")], capsys, "evil.pt", "weights_only")
    # A stopped run (no model file yet) is a source through its checkpoints/best.pt.
    stopped = tmp_path / "stopped"
    _evil_checkpoint(stopped / "checkpoints" / "best.pt", marker)
    _cli_refuses([*base, "--from", str(stopped), "--run-dir", str(tmp_path / "ft2")], capsys, "best.pt")
    assert not (tmp_path / "ft1" / "model.safetensors").exists() and not (tmp_path / "ft2" / "model.safetensors").exists()


def test_serve_refuses_it_at_startup(tmp_path, marker, capsys):
    from resnetlab.serve.server import build_app_for

    evil = _evil_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError, match="evil.pt"):
        build_app_for(evil)
    # The command fails before it binds a port (port 0: nothing to clean up if it did).
    _cli_refuses(["serve", str(evil), "--port", "0"], capsys, "evil.pt")


def test_a_torch_zip_renamed_to_safetensors_is_refused(tmp_path, marker):
    """Model files are read with safetensors only, so a pickle under that name is just corrupt."""
    model = create_model("cnn_baseline", num_classes=2)
    save_model_file(model, tmp_path / "m")
    _evil_checkpoint(tmp_path / "m" / "model.safetensors", marker)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model_file(tmp_path / "m")
    with pytest.raises(CheckpointError):
        resnetlab.load(tmp_path / "m")


# --------------------------------------------------------------------------- wrong architecture / classes


def _checkpoint_with(path: Path, weights_of, meta_of) -> Path:
    torch.save({"kind": CHECKPOINT_KIND, "format_version": 1, "model": weights_of.state_dict(), "meta": meta_of.meta.to_dict()}, path)
    return path


@pytest.mark.parametrize("weights, claimed, words", [
    (("resnet32", 10), ("resnet20", 10), ["resnet20", "resnet32", "layer"]),
    (("resnet20", 100), ("resnet20", 10), ["resnet20", "10 classes", "100"]),
])
def test_wrong_architecture_or_class_count_names_both(tmp_path, weights, claimed, words):
    """Weights from one model under metadata of another (a file copied between runs)."""
    source = create_model(weights[0], num_classes=weights[1])
    target = create_model(claimed[0], num_classes=claimed[1])
    checkpoint = _checkpoint_with(tmp_path / "mixed.pt", source, target)
    with pytest.raises(CheckpointError) as info:
        load_trained_model(checkpoint)
    message = str(info.value)
    assert "mixed.pt" in message
    for word in words:
        assert word in message, message
    # The same mix as a model file: safetensors from one, model.json from the other.
    save_model_file(source, tmp_path / "w")
    save_model_file(target, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes((tmp_path / "w" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError) as info:
        load_model_file(tmp_path / "m")
    for word in ["model.safetensors", *words]:
        assert word in str(info.value), str(info.value)


def test_finetune_source_of_another_architecture_names_both(tmp_path):
    from resnetlab.finetune.adapt import build_model
    from resnetlab.finetune.sources import load_source

    save_model_file(create_model("resnet20", num_classes=10), tmp_path / "r20")
    with pytest.raises(CheckpointError) as info:
        build_model(load_source(tmp_path / "r20"), 10, model_name="resnet32")
    assert "resnet20" in str(info.value) and "resnet32" in str(info.value)


def test_resume_with_another_model_is_refused_naming_both(tmp_path, folder, capsys):
    """`train --resume RUN --model OTHER`: the run's checkpoint cannot be loaded into OTHER."""
    from resnetlab.config import build_config
    from resnetlab.engine import train

    run = tmp_path / "run"
    config = build_config({"model": {"name": "cnn_baseline"}, "data": {"spec": str(folder), "val_size": 2}, "epochs": 1,
                           "batch_size": 2, "device": "cpu", "run_dir": str(run),
                           "checkpoint_every": 1, "tensorboard": False})
    train(config, hooks=debug_hooks(stop_after_steps=1))
    assert list((run / "checkpoints").glob("last-*.pt"))
    code = main(["train", "--resume", str(run), "--model", "resnet20"])
    err = capsys.readouterr().err
    assert code == 1
    assert "resnet20" in err and "cnn_baseline" in err


@pytest.mark.parametrize("change, malformed", [
    ({"num_classes": "ten"}, True), ({"name": None}, True), ({"input_size": [3, -1, 32]}, True), ({"options": "cifar_stem"}, True),
    ({"num_classes": 10**12}, False), ({"name": "no_such_model"}, False),  # well-typed, but no model file can hold them
])
def test_malformed_metadata_is_a_checkpoint_error_naming_the_file(tmp_path, change, malformed):
    import json

    from resnetlab.models.files import read_model_meta

    save_model_file(create_model("cnn_baseline", num_classes=3), tmp_path)
    info = json.loads((tmp_path / "model.json").read_text())
    info["meta"].update(change)
    (tmp_path / "model.json").write_text(json.dumps(info))
    if malformed:
        with pytest.raises(CheckpointError, match=r"model\.json: malformed model metadata"):
            read_model_meta(tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.(json|safetensors)"):
        load_model_file(tmp_path)  # a 10**12-class head is refused before anything is allocated
