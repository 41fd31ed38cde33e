"""A model's parameters as one flat vector, and the groups the operator families need.

Dogra & Redman (NeurIPS 2020) partition the network's weights and biases into groups (single
weights, quasi-nodes, nodes, layers) and fit one Koopman operator per group. This module knows
nn.Module parameters; it turns them into flat snapshots and flat indices for each group, and
writes predicted vectors back into the parameters in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Slot:
    """Where one parameter lives in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int

    @property
    def module(self) -> str:
        """The owning module's prefix ("" for a top-level parameter)."""
        return self.name.rsplit(".", 1)[0] if "." in self.name else ""

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]


class ParameterLayout:
    """Named parameters laid end to end in one flat vector (each tensor once, even if tied)."""

    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]]):
        self.params: list[torch.Tensor] = []
        self.slots: list[Slot] = []
        seen: set[int] = set()
        offset = 0
        for name, p in named_params:
            if id(p) in seen:
                continue
            if not p.dtype.is_floating_point:
                raise ValueError(f"parameter {name!r} has non-floating dtype {p.dtype}")
            seen.add(id(p))
            self.params.append(p)
            self.slots.append(Slot(name, tuple(p.shape), offset, p.numel()))
            offset += p.numel()
        self.numel = offset

    @classmethod
    def from_module(cls, model: nn.Module, *, trainable_only: bool = True) -> ParameterLayout:
        """The model's parameters (tied weights once; frozen ones left out by default)."""
        named = model.named_parameters(remove_duplicate=True)
        return cls((n, p) for n, p in named if p.requires_grad or not trainable_only)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def flatten(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The current values as one (N,) tensor (a copy)."""
        if not self.params:
            return torch.zeros(0, dtype=dtype or torch.float32)
        dtype = dtype or self.params[0].dtype
        return torch.cat([p.detach().reshape(-1).to(dtype) for p in self.params])

    def snapshot_into(self, row: torch.Tensor) -> None:
        """Copy the current values into ``row`` (N,) without allocating."""
        for slot, p in zip(self.slots, self.params, strict=True):
            row[slot.offset : slot.offset + slot.numel].copy_(p.detach().reshape(-1))

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameter-shaped views of a flat (N,) vector, by name."""
        self._check_length(vec)
        return {s.name: vec[s.offset : s.offset + s.numel].view(s.shape) for s in self.slots}

    def write_(self, vec: torch.Tensor, *, check_finite: bool = True) -> None:
        """Copy a flat vector into the parameters in place; refuses non-finite values
        (``check_finite=False``: the caller has just checked them)."""
        self._check_length(vec)
        if check_finite and not bool(torch.isfinite(vec).all()):
            raise ValueError("refusing to write non-finite values into the model's parameters")
        with torch.no_grad():
            for slot, p in zip(self.slots, self.params, strict=True):
                p.copy_(vec[slot.offset : slot.offset + slot.numel].view(slot.shape))

    def _check_length(self, vec: torch.Tensor) -> None:
        if vec.ndim != 1 or vec.numel() != self.numel:
            raise ValueError(
                f"expected a flat vector of {self.numel} values, got {tuple(vec.shape)}"
            )

    # -- groups for the operator families ---------------------------------------------------
    def node_index(self) -> list[torch.Tensor]:
        """Flat indices of every node, grouped by node size: a list of (G_k, n_k) tensors.

        A node is one unit's incoming weights plus its bias (Dogra & Redman's node operator):
        row j of a weight of shape (out, ...) together with bias[j]; for convolutions that is
        one output channel. A 1-D weight with a bias of the same shape (normalisation layers)
        pairs element-wise. Parameters that fit no pattern give one node per element.
        """
        by_module: dict[str, dict[str, Slot]] = {}
        for s in self.slots:
            by_module.setdefault(s.module, {})[s.leaf] = s
        nodes: list[torch.Tensor] = []
        used: set[str] = set()
        for leaves in by_module.values():
            weight, bias = leaves.get("weight"), leaves.get("bias")
            if weight is None or not weight.shape:
                continue
            rows = weight.shape[0]
            w_idx = torch.arange(weight.offset, weight.offset + weight.numel).view(rows, -1)
            used.add(weight.name)
            if bias is not None and bias.shape == (rows,):
                b_idx = torch.arange(bias.offset, bias.offset + bias.numel).view(rows, 1)
                w_idx = torch.cat([w_idx, b_idx], dim=1)
                used.add(bias.name)
            nodes.append(w_idx)
        for s in self.slots:
            if s.name in used:
                continue
            idx = torch.arange(s.offset, s.offset + s.numel)
            nodes.append(idx.view(s.shape[0], -1) if len(s.shape) >= 2 else idx.view(-1, 1))
        return _group_by_width(nodes)

    def module_index(self) -> list[tuple[str, torch.Tensor]]:
        """Flat indices of every layer (all parameters of one module), in order."""
        groups: dict[str, list[torch.Tensor]] = {}
        for s in self.slots:
            groups.setdefault(s.module, []).append(torch.arange(s.offset, s.offset + s.numel))
        return [(name, torch.cat(parts)) for name, parts in groups.items()]


def _group_by_width(blocks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Stack (rows, width) index blocks of equal width together."""
    by_width: dict[int, list[torch.Tensor]] = {}
    for b in blocks:
        if b.numel():
            by_width.setdefault(b.shape[1], []).append(b)
    return [torch.cat(v) for _, v in sorted(by_width.items())]


def chunk_index(nodes: list[torch.Tensor], q: int) -> list[torch.Tensor]:
    """Quasi-nodes: each node's indices cut into consecutive chunks of at most q, by size."""
    if q < 1:
        raise ValueError(f"quasi-node size q must be at least 1, got {q}")
    blocks: list[torch.Tensor] = []
    for group in nodes:
        width = group.shape[1]
        for start in range(0, width, q):
            blocks.append(group[:, start : start + q])
    return _group_by_width(blocks)
