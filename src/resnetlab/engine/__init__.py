"""The training engine: ``train(config, ...) -> TrainResult`` and the pieces it is built from.

See :mod:`resnetlab.engine.trainer` for the stable signature that ``resnetlab finetune`` reuses.
Imports are lazy so that ``resnetlab.engine.schedule`` & co. load without the whole engine.
"""

import importlib

__all__ = ["train", "TrainResult", "TrainingDiverged", "TrainHooks"]


def __getattr__(name):
    if name in __all__:
        module = importlib.import_module("resnetlab.engine.trainer")
        return getattr(module, name)
    raise AttributeError(name)
