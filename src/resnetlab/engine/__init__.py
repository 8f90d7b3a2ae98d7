"""The training engine: ``train(config, ...) -> TrainResult`` and the pieces it is built from.

See :mod:`resnetlab.engine.train` for the stable signature that ``resnetlab finetune`` reuses.
Imports are lazy so that ``resnetlab.engine.schedule`` & co. load without the whole engine.
"""

__all__ = ["train", "fit", "TrainResult", "TrainingDiverged"]


def __getattr__(name):
    if name in ("train", "fit", "TrainResult", "TrainingDiverged"):
        from resnetlab.engine import train as _module

        return getattr(_module, "train" if name == "fit" else name)
    raise AttributeError(name)
