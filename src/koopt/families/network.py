"""Whole-network Koopman operator: one low-rank exact DMD over every parameter.

Dogra & Redman called the full-network operator intractable as an N x N matrix; with the
method of snapshots it needs only T x T matrices (Redman et al., ICLR 2022, "An operator
theoretic view on pruning deep neural networks"; the authors' PyTorch sketch uses it too).
"""

from __future__ import annotations

import torch

from koopt.core import fit_dmd
from koopt.families._fitted import DMDPart, FittedFamily, check_snapshots
from koopt.layout import ParameterLayout


def fit(layout: ParameterLayout, snapshots: torch.Tensor, **options) -> FittedFamily:
    """Fit one operator to all (T, N) snapshots; options go to ``fit_dmd``."""
    check_snapshots(layout, snapshots)
    part = DMDPart(slice(0, layout.numel), fit_dmd(snapshots.T, **options))
    return FittedFamily("network", layout.numel, snapshots.dtype, [part])
