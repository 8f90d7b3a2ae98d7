"""The model zoo. Importing this package registers every built-in architecture."""

from resnetlab.models.registry import ModelMeta, create_model, list_models, register_model

# Architecture modules register themselves on import; keep this list in sync with the files.
from resnetlab.models import (  # noqa: E402,F401
    cnn,
    fast,
    plain,
    preact,
    resnet,
    resnet_cifar,
    wrn,
)
from resnetlab.models.summary import count_flops, count_parameters, model_table  # noqa: E402

__all__ = [
    "ModelMeta",
    "count_flops",
    "count_parameters",
    "create_model",
    "list_models",
    "model_table",
    "register_model",
]
