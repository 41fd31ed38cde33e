"""Operator families of Dogra & Redman (2020): which parameters share a Koopman operator.

One module per family: ``single_weight``, ``quasi_node``, ``node``, ``layer``, ``network``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from koopt.core._arrays import as_tensor
from koopt.families import layer, network, node, quasi_node, single_weight
from koopt.families._fitted import FittedFamily
from koopt.layout import ParameterLayout

FAMILIES: dict[str, Callable[..., FittedFamily]] = {
    "single_weight": single_weight.fit,
    "quasi_node": quasi_node.fit,
    "node": node.fit,
    "layer": layer.fit,
    "network": network.fit,
}


def fit_family(
    name: str, layout: ParameterLayout, snapshots: torch.Tensor, **options
) -> FittedFamily:
    """Fit the named family's operators to (T, N) snapshots of ``layout``'s parameters."""
    if name not in FAMILIES:
        raise ValueError(f"unknown operator family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name](layout, as_snapshots(snapshots), **options)


def as_snapshots(snapshots: Any) -> torch.Tensor:
    """(T, N) snapshots as a real floating tensor: a tensor, a numpy array or a sequence of
    flat vectors (one per step); integers become float64."""
    if isinstance(snapshots, list | tuple):
        if not snapshots:
            raise ValueError("no snapshots given")
        snapshots = torch.stack([as_tensor(s) for s in snapshots])
    out = as_tensor(snapshots)  # the core's conversion: numpy shared, non-numeric refused
    if out.is_complex() or out.dtype == torch.bool:
        raise ValueError(f"snapshots must be real numbers, got {out.dtype}")
    return out if out.is_floating_point() else out.to(torch.float64)


__all__ = ["FAMILIES", "FittedFamily", "as_snapshots", "fit_family"]
