"""Quasi-node Koopman operators: each node cut into chunks of q parameters.

Dogra & Redman's MATLAB code interpolates between families with q: q = 1 gives single
weights, q = fan_in + 1 the node operator; intermediate q keeps operators small for wide
layers (the independent report says the paper's MNIST run used it on the first layer).
"""

from __future__ import annotations

import torch

from koopt.families._batched_family import fit_groups
from koopt.families._fitted import FittedFamily
from koopt.layout import ParameterLayout, chunk_index


def fit(layout: ParameterLayout, snapshots: torch.Tensor, *, q: int = 8, **options) -> FittedFamily:
    """Fit quasi-node operators of at most q parameters each (options: affine, stabilize)."""
    groups = chunk_index(layout.node_index(), q)
    return fit_groups("quasi_node", layout, snapshots, groups, **options)
