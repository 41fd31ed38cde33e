"""Choosing the rank of a DMD fit from the singular values of the snapshot matrix.

- ``None``: the full numerical rank (what ``pinv`` uses; Dogra & Redman 2020 use plain pinv).
- ``int``: at most that many (cut to the numerical rank and the number of snapshot pairs).
- ``float`` in (0, 1): the smallest rank whose share of the energy sum(sigma^2) reaches it.
- ``"svht"``: the optimal hard threshold of Gavish & Donoho (IEEE Trans. Inf. Theory 2014,
  "The optimal hard threshold for singular values is 4/sqrt(3)"), unknown noise level; never 0.
"""

from __future__ import annotations

import warnings

import torch

RankSpec = int | float | str | None


def validate_rank(rank: RankSpec) -> None:
    """Raise ValueError for a rank specification that no data could satisfy."""
    if rank is None or rank == "svht":
        return
    if isinstance(rank, bool):
        raise ValueError(
            f"rank must be None, a positive int, a float in (0, 1) or 'svht'; got {rank!r}"
        )
    if isinstance(rank, int):
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        return
    if isinstance(rank, float):
        if not 0.0 < rank < 1.0:
            raise ValueError(f"an energy rank must lie in (0, 1), got {rank}")
        return
    raise ValueError(
        f"rank must be None, a positive int, a float in (0, 1) or 'svht'; got {rank!r}"
    )


def numerical_rank(
    sigma: torch.Tensor, shape: tuple[int, int], eps: float = torch.finfo(torch.float64).eps
) -> int:
    """Count of singular values above max(shape) * eps * sigma_max (numpy's matrix_rank rule).

    ``eps``: the machine epsilon of the dtype the snapshots were *stored* in. Float32
    snapshots carry rounding noise of about 1e-7 of their size; judged with float64's eps
    that noise counts as rank (and the full-rank fit then has spurious growing modes)."""
    if sigma.numel() == 0 or float(sigma[0]) == 0.0:
        return 0
    tol = float(sigma[0]) * max(shape) * eps
    return int((sigma > tol).sum())


def svht_omega(beta: float) -> float:
    """Gavish-Donoho's approximation of omega(beta) for an unknown noise level."""
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def choose_rank(
    sigma: torch.Tensor,
    shape: tuple[int, int],
    rank: RankSpec,
    eps: float = torch.finfo(torch.float64).eps,
    full_shape: tuple[int, int] | None = None,
) -> int:
    """The effective rank for singular values ``sigma`` (descending) of a matrix of ``shape``
    whose entries were stored with machine epsilon ``eps``.

    ``full_shape``: the shape of the matrix before the method of snapshots compressed it to
    ``shape`` (D x pairs); Gavish-Donoho's threshold depends on its aspect ratio and on the
    median of all its min(full_shape) singular values, the ones the compression dropped
    being exactly 0."""
    r_num = numerical_rank(sigma, shape, eps)
    if r_num == 0:
        return 0
    if rank is None:
        return r_num
    if rank == "svht":
        full = full_shape or shape
        beta = min(full) / max(full)
        k = max(min(full), sigma.numel())
        padded = torch.cat([sigma, sigma.new_zeros(k - sigma.numel())])
        # numpy's median: the mean of the middle two (torch's is the lower one)
        tau = svht_omega(beta) * float(padded.double().quantile(0.5))
        return max(1, min(r_num, int((sigma > tau).sum())))
    if isinstance(rank, float):
        energy = sigma[:r_num] ** 2
        share = torch.cumsum(energy, 0) / energy.sum()
        # smallest r with share >= rank (tolerate rounding of the cumulative sum)
        return min(r_num, int((share < rank - 1e-12).sum()) + 1)
    limit = min(r_num, shape[1])
    if rank > limit:
        warnings.warn(
            f"rank {rank} requested but the data support at most {limit} "
            f"(numerical rank {r_num}, {shape[1]} snapshot pairs); using {limit}",
            stacklevel=4,
        )
    return min(rank, limit)


def window_rank(rank: RankSpec, snapshots: int, delays: int, affine: bool) -> RankSpec:
    """An int ``rank`` cut to what ``snapshots`` snapshots support (one per snapshot pair
    after the delay embedding, one less when centred for the affine term), at least 1;
    other rank specs unchanged. Cutting here spares the fit its "rank cut" warning."""
    if isinstance(rank, int) and not isinstance(rank, bool):
        return max(1, min(rank, snapshots - delays - int(affine)))
    return rank


def energy_share(sigma: torch.Tensor, r: int) -> float:
    """Share of sum(sigma^2) captured by the first r singular values."""
    total = float((sigma**2).sum())
    return 1.0 if total == 0 else float((sigma[:r] ** 2).sum()) / total


__all__ = [
    "RankSpec",
    "choose_rank",
    "energy_share",
    "numerical_rank",
    "svht_omega",
    "validate_rank",
]
