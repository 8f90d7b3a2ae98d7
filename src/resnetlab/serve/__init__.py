"""The web app over a Predictor: ``create_app(predictor, ...)`` and ``serve(model_path, ...)``."""

from resnetlab.serve.app import create_app
from resnetlab.serve.server import serve

__all__ = ["create_app", "serve"]
