"""Layer Koopman operators: one DMD operator over all parameters of each layer.

The paper's layer family; here each layer is fitted with the core's exact DMD, so rank
truncation, delays, the affine term and stabilisation apply per layer.
"""

from __future__ import annotations

import torch

from koopt.core import fit_dmd
from koopt.families._fitted import DMDPart, FittedFamily, as_block, check_snapshots
from koopt.layout import ParameterLayout


def fit(layout: ParameterLayout, snapshots: torch.Tensor, **options) -> FittedFamily:
    """Fit one operator per layer (module) to (T, N) snapshots; options go to ``fit_dmd``."""
    check_snapshots(layout, snapshots)
    parts = []
    for _, index in layout.module_index():
        block = as_block(index)
        parts.append(DMDPart(block, fit_dmd(snapshots[:, block].T, **options)))
    return FittedFamily("layer", layout.numel, snapshots.dtype, parts)
