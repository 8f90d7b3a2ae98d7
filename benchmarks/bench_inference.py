"""Inference images/s, PyTorch eager vs ONNX Runtime, side by side (issue 7).

Thin entry point over ``resnetlab.inference.benchmark`` (the measuring code lives in the package so
``python -m resnetlab.inference.benchmark`` works from an installed copy too).

    .venv/bin/python benchmarks/bench_inference.py --threads 1 --repeats 3
"""

from resnetlab.inference.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main())
