"""Experiments that reproduce a claim of a paper with the real engine (``resnetlab experiment ...``)."""

from resnetlab.experiments.degradation import PRESETS, DegradationConfig, preset_config, run_degradation

__all__ = ["PRESETS", "DegradationConfig", "preset_config", "run_degradation"]
