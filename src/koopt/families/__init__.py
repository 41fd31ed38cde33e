"""Operator families of Dogra & Redman (2020): which parameters share a Koopman operator.

One module per family: ``single_weight``, ``quasi_node``, ``node``, ``layer``, ``network``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

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
    return FAMILIES[name](layout, snapshots, **options)


__all__ = ["FAMILIES", "FittedFamily", "fit_family"]
