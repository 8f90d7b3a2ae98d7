"""Using a trained model: preprocessing, the Predictor (PyTorch or ONNX Runtime), batch prediction, export."""

from resnetlab.inference.predictor import Predictor

__all__ = ["Predictor"]
