"""Node Koopman operators: one operator per unit, over its incoming weights and its bias.

The family Dogra & Redman (NeurIPS 2020) used for their results (Algorithm 1, "Koopman
training via Node Koopman operators"): for a unit with fan-in n the operator is
(n + 1) x (n + 1); for a convolution, one output channel.
"""

from __future__ import annotations

import torch

from koopt.families._batched_family import fit_groups
from koopt.families._fitted import FittedFamily
from koopt.layout import ParameterLayout


def fit(layout: ParameterLayout, snapshots: torch.Tensor, **options) -> FittedFamily:
    """Fit node operators to (T, N) snapshots (options: affine, stabilize)."""
    return fit_groups("node", layout, snapshots, layout.node_index(), **options)
