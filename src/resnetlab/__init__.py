"""resnetlab: train, fine-tune and honestly evaluate residual networks for image classification."""

__version__ = "0.1.0"

__all__ = ["__version__", "load", "create_model", "list_models"]


def load(path, device="cpu"):
    """Load a trained model (run directory, model file or ONNX file) for prediction.

    Returns a :class:`resnetlab.inference.Predictor` with ``.predict(images)`` and ``.classes``.
    """
    from resnetlab.inference.predictor import Predictor

    return Predictor.load(path, device=device)


def create_model(name, num_classes=10, **options):
    from resnetlab.models.registry import create_model as _create

    return _create(name, num_classes=num_classes, **options)


def list_models(pattern="*"):
    from resnetlab.models.registry import list_models as _list

    return _list(pattern)
