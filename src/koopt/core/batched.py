"""Many small Koopman operators fitted in one batched call: the seed paper's formula.

Dogra & Redman (NeurIPS 2020) fit one operator per group of weights (a single weight, a
quasi-node, a node) by least squares, U = F' pinv(F), with F = [w_t1 ... w_(t2-1)] and
F' = [w_(t1+1) ... w_t2], and jump with the matrix power: w(t2 + T) = U^T w(t2). Here all
groups of one size are solved at once as a batch of small float64 problems.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from koopt.core._arrays import as_horizons, as_tensor
from koopt.core.errors import DivergentPredictionError
from koopt.core.spectrum import spectral_radius, stabilized, validate_stabilize

#: Above this many multiply-adds the pseudo-inverse goes through the smaller Gram matrix
#: instead of a batched SVD of the (n, T-1) snapshot blocks.
SVD_BUDGET = 2e8


def _batched_pinv(F: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """pinv of each (n, m) block: SVD when cheap, else through the smaller Gram matrix.

    ``rtol``: singular values below ``rtol * sigma_max`` count as zero (None: torch's
    float64 default)."""
    G, n, m = F.shape
    if G * n * m * min(n, m) <= SVD_BUDGET:
        return torch.linalg.pinv(F, rtol=rtol)
    gram_rtol = None if rtol is None else rtol**2  # the Gram matrix holds sigma^2
    if n <= m:
        gram = F @ F.transpose(1, 2)
        return F.transpose(1, 2) @ torch.linalg.pinv(gram, hermitian=True, rtol=gram_rtol)
    gram = F.transpose(1, 2) @ F
    return torch.linalg.pinv(gram, hermitian=True, rtol=gram_rtol) @ F.transpose(1, 2)


def storage_rtol(dtype: torch.dtype, shape: Sequence[int]) -> float | None:
    """Relative singular-value cut-off at the precision the snapshots were stored in.

    Snapshots stored in float32 (or half precision) carry rounding noise of about eps of
    that dtype; judged at float64 precision that noise looks like signal, and the seed's
    pinv then fits it (spurious eigenvalues far outside the unit circle). numpy's
    ``matrix_rank`` rule, max(n, m) * eps, with the storage dtype's eps. None for float64.
    """
    if not dtype.is_floating_point or dtype == torch.float64:
        return None
    return torch.finfo(dtype).eps * max(shape)


class BatchedOperators:
    """G fitted operators of size n (n + 1 with the affine term), float64."""

    def __init__(self, operators: torch.Tensor, last: torch.Tensor, affine: bool, dtype):
        self.operators = operators
        self.affine = affine
        self._last = last
        self._dtype = dtype
        self.eigenvalues = torch.linalg.eigvals(operators)
        if affine:  # the constant coordinate's eigenvalue 1 is bookkeeping, not dynamics
            self.eigenvalues = torch.linalg.eigvals(operators[:, :-1, :-1])

    @property
    def spectral_radius(self) -> float:
        return spectral_radius(self.eigenvalues)

    def predict(self, h: int | Sequence[int]) -> torch.Tensor:
        """(G, n) states h steps after the last snapshot, or (len(h), G, n) for a sequence.

        Horizons are visited in increasing order, each reached from the previous one with a
        cached matrix power of the gap, so evenly spaced horizons cost one power in all.
        """
        horizons, single = as_horizons(h)
        limit = torch.finfo(self._dtype).max if self._dtype.is_floating_point else 1.8e308
        powers: dict[int, torch.Tensor] = {}
        states: dict[int, torch.Tensor] = {}
        state, current = self._last.unsqueeze(-1), 0
        for x in sorted(set(horizons)):
            gap = x - current
            if gap:
                if gap not in powers:
                    powers[gap] = torch.linalg.matrix_power(self.operators, gap)
                state = powers[gap] @ state
                current = x
            out = state.squeeze(-1)[:, :-1] if self.affine else state.squeeze(-1)
            if not bool(torch.isfinite(out).all()) or float(out.abs().max()) >= limit:
                raise DivergentPredictionError(
                    f"predicting {x} steps ahead would overflow: operators have growing modes "
                    f"(spectral radius {self.spectral_radius:.6g}); fit with stabilize='clip' "
                    "or predict a shorter horizon"
                )
            states[x] = out.to(self._dtype)
        return states[horizons[0]] if single else torch.stack([states[x] for x in horizons])


def fit_operators(
    F: torch.Tensor, *, affine: bool = False, stabilize: str = "none"
) -> BatchedOperators:
    """Fit U = F' pinv(F) for each of G systems; F has shape (G, n, T), T >= 2 snapshots
    (a torch tensor or a numpy array; integers are fitted in float64)."""
    F = as_tensor(F)
    if F.is_complex():
        raise ValueError("F must be real")
    if F.ndim != 3:
        raise ValueError(f"F must have shape (groups, n, T); got {tuple(F.shape)}")
    if F.shape[-1] < 2:
        raise ValueError(f"at least 2 snapshots are needed; got {F.shape[-1]}")
    validate_stabilize(stabilize)
    data = F.detach().to(torch.float64)
    finite = torch.isfinite(data).all(dim=(0, 1))
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()[:5]
        raise ValueError(f"snapshot(s) {bad} contain non-finite values (NaN or Inf)")
    if affine:
        ones = data.new_ones(data.shape[0], 1, data.shape[2])
        data = torch.cat([data, ones], dim=1)
    X, Y = data[..., :-1], data[..., 1:]
    U = Y @ _batched_pinv(X, storage_rtol(F.dtype, X.shape[1:]))
    if affine:  # the constant coordinate stays exactly 1
        U[:, -1, :] = 0.0
        U[:, -1, -1] = 1.0
        U[:, :-1, :-1] = stabilized(U[:, :-1, :-1].contiguous(), stabilize)
    else:
        U = stabilized(U, stabilize)
    out_dtype = F.dtype if F.dtype.is_floating_point else torch.float64
    return BatchedOperators(U, data[..., -1], affine, out_dtype)
