"""The fitted operators of one family, mapped back to the flat parameter vector."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from koopt.core import BatchedOperators, DMDModel
from koopt.core._arrays import as_horizons
from koopt.core.spectrum import spectral_radius
from koopt.layout import ParameterLayout


@dataclass
class BatchedPart:
    """Many equal-size operators; ``index`` (G, n) holds their flat parameter indices."""

    index: torch.Tensor
    operators: BatchedOperators

    def predict(self, horizons: list[int]) -> torch.Tensor:  # (H, G * n)
        return self.operators.predict(horizons).reshape(len(horizons), -1)

    @property
    def eigenvalues(self) -> torch.Tensor:
        return self.operators.eigenvalues.flatten()

    @property
    def count(self) -> int:
        return int(self.index.shape[0])


@dataclass
class DMDPart:
    """One operator over a block of parameters: a slice (contiguous) or an index vector."""

    index: slice | torch.Tensor
    model: DMDModel

    def predict(self, horizons: list[int]) -> torch.Tensor:  # (H, k)
        return self.model.predict(horizons)

    @property
    def eigenvalues(self) -> torch.Tensor:
        return self.model.eigenvalues

    @property
    def count(self) -> int:
        return 1


class FittedFamily:
    """Koopman operators of one family over a whole parameter vector.

    ``predict(h)`` returns the flat parameter vector h steps after the last snapshot:
    (N,) for an int, (len(h), N) for a sequence, in the snapshots' dtype.
    """

    def __init__(self, family: str, numel: int, dtype: torch.dtype, parts: list):
        self.family = family
        self.numel = numel
        self.dtype = dtype
        self.parts = parts

    @property
    def n_operators(self) -> int:
        return sum(p.count for p in self.parts)

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Every operator's eigenvalues, concatenated (complex)."""
        eigs = [p.eigenvalues.to(torch.complex128) for p in self.parts]
        return torch.cat(eigs) if eigs else torch.zeros(0, dtype=torch.complex128)

    @property
    def spectral_radius(self) -> float:
        return spectral_radius(self.eigenvalues)

    def predict(self, h: int | Sequence[int]) -> torch.Tensor:
        horizons, single = as_horizons(h)
        out = torch.empty(len(horizons), self.numel, dtype=self.dtype)
        for part in self.parts:
            pred = part.predict(horizons)
            index = part.index if isinstance(part.index, slice) else part.index.reshape(-1)
            out[:, index] = pred.to(self.dtype)
        return out[0] if single else out

    def __repr__(self) -> str:
        return (
            f"FittedFamily({self.family!r}, operators={self.n_operators}, "
            f"spectral_radius={self.spectral_radius:.6g})"
        )


def check_snapshots(layout: ParameterLayout, snapshots: torch.Tensor) -> None:
    """Snapshots must be (T, N) with N the layout's parameter count and T >= 2."""
    if snapshots.ndim != 2 or snapshots.shape[1] != layout.numel:
        raise ValueError(
            f"snapshots must have shape (T, {layout.numel}) (one flat parameter vector per row); "
            f"got {tuple(snapshots.shape)}"
        )
    if snapshots.shape[0] < 2:
        raise ValueError(f"at least 2 snapshots are needed; got {snapshots.shape[0]}")


def as_block(index: torch.Tensor) -> slice | torch.Tensor:
    """A slice when the indices are one contiguous ascending range (no copy), else the index."""
    if index.numel() and int(index[-1]) - int(index[0]) + 1 == index.numel():
        if bool((index.diff() == 1).all()):
            return slice(int(index[0]), int(index[-1]) + 1)
    return index
