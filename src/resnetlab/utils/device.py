"""The one place a ``--device`` name becomes a ``torch.device`` (training, evaluation, predict, serve)."""

from __future__ import annotations

import torch

from resnetlab.errors import ConfigError


def resolve_device(name: str | torch.device | None, local_rank: int | None = None) -> torch.device:
    """``auto``/None -> cuda when available, else cpu; anything else as given, checked.

    With ``local_rank`` (training), a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` and is made the
    current device, so each torchrun process drives its own GPU.
    """
    if name is None or str(name) in ("", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {str(name)!r}: not a device (use cpu, cuda, cuda:N or auto)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
        if local_rank is not None:
            if device.index is None:
                device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
    return device
