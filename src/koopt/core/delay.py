"""Delay (Hankel) embedding of a snapshot sequence.

Stacking d consecutive snapshots gives the linear model memory, so oscillations and other
dynamics that no linear map of the current state can represent become linear in the embedded
state (Takens 1981; Arbabi & Mezic 2017, "Ergodic theory, dynamic mode decomposition, and
computation of spectral properties of the Koopman operator"; QuACK, NeurIPS 2023).
"""

from __future__ import annotations

import torch


def min_snapshots(delays: int) -> int:
    """Snapshots needed for at least one pair of embedded states."""
    return delays + 1


def hankel(Z: torch.Tensor, delays: int) -> torch.Tensor:
    """(s, T) -> (s * delays, T - delays + 1); block j of column i is Z[:, i + j].

    The last block holds the most recent snapshot, so predictions of the original
    coordinates are the last s rows of a predicted embedded state.
    """
    if delays == 1:
        return Z
    L = Z.shape[1] - delays + 1
    return torch.cat([Z[:, j : j + L] for j in range(delays)], dim=0)
