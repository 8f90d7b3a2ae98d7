"""PyTorch DDP under torchrun: NCCL on GPU, gloo on CPU; rank 0 alone writes files.

Launch: ``torchrun --nproc_per_node=K -m resnetlab train ...``. Multi-node uses torchrun's usual
rendezvous flags (``--nnodes N --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  # started by torchrun: DDP even at world size 1 (one GPU, NCCL)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistInfo:
    """Rank/world size from torchrun's environment variables (a single process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # torchrun marks its workers with TORCHELASTIC_RUN_ID; `torchrun --nproc_per_node=1` then still
    # runs DDP (a one-GPU machine can only check NCCL that way: NCCL refuses two ranks on one GPU).
    launched = "TORCHELASTIC_RUN_ID" in os.environ
    if world <= 1 and not launched:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world, launched)


def init(info: DistInfo, device: torch.device) -> None:
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        log.info("DDP: rank %d of %d (%s)", info.rank, info.world_size, backend)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool) -> nn.Module:
    """DDP-wrap ``model`` (optionally converting BatchNorm to SyncBatchNorm, GPU only)."""
    if not info.enabled:
        return model
    if sync_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning("sync_bn ignored: SyncBatchNorm needs a GPU; BatchNorm statistics stay per process")
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (metrics: loss sums, correct counts, flags)."""
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
