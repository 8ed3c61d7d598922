"""What the process says about a pass, for its meta: the grad mode and the
distributed rank."""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch


def grad_mode() -> str:
    if torch.is_inference_mode_enabled():
        return "inference"
    return "train" if torch.is_grad_enabled() else "no_grad"


def process_rank() -> Tuple[Optional[int], Optional[int]]:
    """(rank, world size): from torch.distributed once initialized, else from
    the launcher's environment (torchrun sets RANK and WORLD_SIZE)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # pragma: no cover
        pass
    env_rank, env_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if env_rank is not None and env_rank.isdigit():
        return int(env_rank), int(env_world) if env_world and env_world.isdigit() else None
    return None, None
