"""Fine-tuning pretrained ResNets: weight sources, head/stem adaptation, strategies, then ``engine.train``.

    from resnetlab.finetune import build_config, finetune
    config, options = build_config("recipes/finetune-cifar10-resnet18.yaml", {"finetune.source": "resnet18.pth"})
    result = finetune(config, options)
"""

from resnetlab.finetune.adapt import KeyReport, build_model, resize_stem_kernel
from resnetlab.finetune.run import FinetuneOptions, build_config, finetune, resume
from resnetlab.finetune.sources import SourceWeights, infer_resnet_architecture, load_source
from resnetlab.finetune.strategy import FineTuneSchedule, StrategyConfig, model_stages

__all__ = [
    "FineTuneSchedule",
    "FinetuneOptions",
    "KeyReport",
    "SourceWeights",
    "StrategyConfig",
    "build_config",
    "build_model",
    "finetune",
    "infer_resnet_architecture",
    "load_source",
    "model_stages",
    "resize_stem_kernel",
    "resume",
]
