"""RunDir's read API: the one reader of run directories (compare, evaluate, experiments, finetune)."""

import json

import pytest

from resnetlab.config import build_config
from resnetlab.data import load_splits, load_splits_for
from resnetlab.errors import ConfigError, DataError
from resnetlab.runs import RunDir


def test_read_api_returns_what_the_engine_wrote(tmp_path):
    run = RunDir(tmp_path / "run")
    (run.path / "checkpoints").mkdir(parents=True)
    (run.path / "eval").mkdir()
    run.config_path.write_text("model: {name: resnet20}\ndata: {val_size: 7}\n")
    (run.path / "summary.json").write_text(json.dumps({"best_val_acc": 0.5}))
    (run.path / "eval" / "metrics.json").write_text(json.dumps({"accuracy": 0.4}))
    # The last line was cut by a crash: it and anything after it are not trusted.
    run.metrics_path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo\n{"epoch": 4}\n')
    assert run.is_run() and run.read_config()["data"]["val_size"] == 7
    assert run.read_summary() == {"best_val_acc": 0.5} and run.read_eval() == {"accuracy": 0.4}
    assert run.read_metrics() == [{"epoch": 1}, {"epoch": 2}]
    # A model file or a checkpoint inside the run leads back to it.
    assert RunDir.find(run.model_path).path == run.path
    assert RunDir.find(run.checkpoints / "last.pt").path == run.path
    assert RunDir.find(tmp_path / "elsewhere.safetensors") is None


def test_read_api_on_missing_and_broken_files(tmp_path):
    empty = RunDir(tmp_path)
    assert not empty.is_run() and empty.read_config() == {} and empty.read_summary() == {}
    assert empty.read_eval() is None and empty.read_metrics() == []
    empty.config_path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="config.yaml: unreadable run config"):
        empty.read_config()
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(DataError, match="summary.json: unreadable JSON"):
        empty.read_summary()


def test_load_splits_for_uses_every_field_of_the_data_section(small_image_folder):
    config = build_config(None, {"data.spec": str(small_image_folder), "data.val_size": 8, "data.split_seed": 3,
                                 "data.limit_train": 20})
    got = load_splits_for(config.data)
    want = load_splits(str(small_image_folder), val_size=8, seed=3, limit_train=20)
    assert len(got.val) == 8 and len(got.train) == 20
    assert got.val.labels.tolist() == want.val.labels.tolist() and got.train.labels.tolist() == want.train.labels.tolist()
    other_seed = load_splits_for(build_config(None, {"data.spec": str(small_image_folder), "data.val_size": 8}).data)
    assert other_seed.val.paths != got.val.paths  # split_seed reached the loader
