"""``resnetlab data info``: the library summary, the PNG grid and the CLI table."""

from __future__ import annotations

import json

from helpers import class_folder
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import load_splits
from resnetlab.data.info import data_info, sample_grid


def test_data_info_writes_json_and_grid(tmp_path):
    class_folder(tmp_path / "ds", ("ant", "bee"), per_class=6, size=5, fill="solid")
    splits = load_splits(tmp_path / "ds", val_size=2)
    info = data_info(splits, tmp_path / "out", per_class=3)
    assert info["counts"] == {"train": [5, 5], "val": [1, 1]}
    assert info["image_size"] == [5, 5] and info["classes"] == ["ant", "bee"]
    assert json.loads((tmp_path / "out" / "info.json").read_text())["mean"] == list(splits.train.mean)
    png = Image.open(tmp_path / "out" / "samples.png")
    assert png.format == "PNG" and png.size[0] > 100


def test_sample_grid_rows_are_classes():
    from resnetlab.data import ImageSet
    import torch

    images = torch.stack([torch.full((4, 4, 3), v, dtype=torch.uint8) for v in (10, 11, 200, 201)])
    grid = sample_grid(ImageSet(images, torch.tensor([0, 0, 1, 1]), ["dark", "light"]), per_class=2)
    assert grid.shape == (2 * 6, 2 * 6, 3)
    assert grid[1:5, 1:5].max() <= 11 and grid[7:11, 1:5].min() >= 200


def test_cli_prints_table(tmp_path, capsys):
    class_folder(tmp_path / "ds", ("ant", "bee"), per_class=6, size=5, fill="solid")
    code = main(["data", "info", str(tmp_path / "ds"), "--out", str(tmp_path / "out"), "--val-size", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "ant" in out and "bee" in out and "train" in out and "val" in out
    assert "mean (R, G, B)" in out and (tmp_path / "out" / "samples.png").exists()


def test_cli_help_and_missing_data(capsys, tmp_path):
    assert main(["data"]) == 2
    assert main(["data", "info", str(tmp_path / "missing")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
