"""One module per ``resnetlab`` subcommand (see ``resnetlab/cli.py``)."""

# --source-format choices of evaluate, predict, serve and finetune. The same tuple as
# resnetlab.models.importers.FORMATS (tests/test_importers.py checks), kept here so building the
# parser does not import torch.
SOURCE_FORMATS = ("akamaster", "kuangliu", "torchvision", "timm", "resnetlab")
SOURCE_FORMAT_HELP = ("the format of an outside checkpoint where its keys cannot show it, e.g. a bare state dict "
                      "(default: recognised from the file; FORMAT:PATH says the same)")


def data_spec(value: str | None) -> str | None:
    """``--data`` as recorded in a config: a local path made absolute, so ``evaluate RUN`` finds the
    same data from any directory; names such as ``cifar10`` as given."""
    from pathlib import Path

    return str(Path(value).resolve()) if value and Path(value).exists() else value
