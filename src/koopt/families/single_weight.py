"""Single-weight Koopman operators: a 1 x 1 operator per parameter (Dogra & Redman, q = 1).

Each weight evolves as w_{k+1} = u w_k on its own; the cheapest family and the weakest.
"""

from __future__ import annotations

import torch

from koopt.families._batched_family import fit_groups
from koopt.families._fitted import FittedFamily
from koopt.layout import ParameterLayout


def fit(layout: ParameterLayout, snapshots: torch.Tensor, **options) -> FittedFamily:
    """Fit one scalar operator per parameter to (T, N) snapshots (options: affine, stabilize)."""
    index = torch.arange(layout.numel).view(-1, 1)
    return fit_groups("single_weight", layout, snapshots, [index], **options)
