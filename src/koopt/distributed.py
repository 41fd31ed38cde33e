"""Koopman fits across processes with torch.distributed, without gathering parameters.

Exact DMD needs the snapshots only through their T x T Gram matrix, a sum over coordinates
(Sirovich's method of snapshots; see ``koopt.core.snapshots_space``). Each rank adds up the
Gram matrix of its own shard, one all-reduce of that T x T matrix gives every rank the same
fit, and each rank predicts (writes) only its own shard. Communication per fit is T^2 float64
values, whatever the parameter count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

GramReducer = Callable[[torch.Tensor], torch.Tensor]


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def gram_all_reduce(group: Any = None) -> GramReducer:
    """A ``reduce_gram`` for ``fit_dmd``: sums the Gram matrix over the ranks of ``group``
    (the default process group when None)."""

    def reduce(gram: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(gram, op=dist.ReduceOp.SUM, group=group)
        return gram

    return reduce


def local_shard(p: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this rank holds: the local tensor of a DTensor (FSDP2
    ``fully_shard``, tensor parallel), else the parameter itself."""
    to_local = getattr(p, "to_local", None)
    return to_local() if callable(to_local) else p


def all_reduce_mean(value: float, group: Any = None) -> float:
    """The mean of a scalar over the ranks (the same number on every rank)."""
    if not is_distributed():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return float(t.item()) / dist.get_world_size(group)


def _agree(flag: bool, op: Any, group: Any) -> bool:
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=op, group=group)
    return bool(t.item())


def agree_any(flag: bool, group: Any = None) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    return _agree(flag, dist.ReduceOp.MAX, group)


def agree_all(flag: bool, group: Any = None) -> bool:
    """True on every rank only when ``flag`` is true on every rank."""
    return _agree(flag, dist.ReduceOp.MIN, group)


def broadcast_parameters(params: list[torch.Tensor], src: int = 0, group: Any = None) -> None:
    """Make every rank's replicated parameters bit-identical to rank ``src``'s."""
    if not is_distributed():
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=src, group=group)
