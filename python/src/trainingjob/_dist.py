"""torch.distributed, only where the trainer already uses it.

Never imports torch on its own: a process that has not imported
torch.distributed cannot have a process group, and the package must stay
importable (and cheap to import) without PyTorch.
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional


def initialized() -> Optional[Any]:
    """The torch.distributed module when a default process group exists."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def rank(dist: Optional[Any], group: Any = None) -> int:
    return dist.get_rank(group) if dist is not None else 0


def barrier(dist: Optional[Any], group: Any = None) -> None:
    if dist is not None:
        dist.barrier(group=group)


def _device(dist: Any, group: Any) -> Any:
    import torch

    # NCCL reduces only CUDA tensors; gloo and the mixed "cpu:gloo,cuda:nccl"
    # groups take CPU ones, which also spares a device sync.
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_min(dist: Any, values: List[int], group: Any = None) -> List[int]:
    """Element-wise minimum of ``values`` over the group's ranks."""
    import torch

    t = torch.tensor(values, dtype=torch.int64, device=_device(dist, group))
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return [int(v) for v in t.tolist()]
