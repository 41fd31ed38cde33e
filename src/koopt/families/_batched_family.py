"""Shared fitting for the families of many small operators (single weight, quasi-node, node)."""

from __future__ import annotations

import torch

from koopt.core import fit_operators
from koopt.families._fitted import BatchedPart, FittedFamily, check_snapshots
from koopt.layout import ParameterLayout


def fit_groups(
    family: str,
    layout: ParameterLayout,
    snapshots: torch.Tensor,
    groups: list[torch.Tensor],
    *,
    affine: bool = False,
    stabilize: str = "none",
    **unsupported,
) -> FittedFamily:
    """One operator per row of each (G, n) index tensor, fitted in one batched call per size."""
    unsupported = {k: v for k, v in unsupported.items() if v not in (None, 1)}
    if unsupported:
        raise ValueError(
            f"the {family} family fits the seed's full least-squares operators; "
            f"{sorted(unsupported)} apply to the 'layer' and 'network' families"
        )
    check_snapshots(layout, snapshots)
    parts = []
    for index in groups:
        F = snapshots[:, index].permute(1, 2, 0)  # (G, n, T)
        parts.append(BatchedPart(index, fit_operators(F, affine=affine, stabilize=stabilize)))
    return FittedFamily(family, layout.numel, snapshots.dtype, parts)
