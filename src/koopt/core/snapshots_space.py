"""The method of snapshots: an exact, isometric compression of a tall snapshot matrix.

For a (D, T) snapshot matrix with D >> T, every DMD quantity (SVD, least squares, powers of
the fitted operator) lives in the span of the snapshots. We pick an orthonormal basis E of that
span from the T x T Gram matrix alone (Sirovich 1987; Tu et al. 2014, "On dynamic mode
decomposition: theory and applications"), so the D-dimensional problem becomes an s x T one
(s <= T) with identical singular values, eigenvalues and predictions. Memory beyond the
snapshots is O(T^2) plus one chunk; no D x D matrix and no SVD of the D x T matrix is formed.

Numerics: snapshots are centred on a reference (the first snapshot) in float64 chunk by chunk,
so the tiny per-step movement of float32 weights is not drowned by their size.

The Gram matrix is a sum over coordinates, so shards of the coordinates can be reduced across
processes with one all-reduce of a T x T matrix (``reduce_gram``), and it can be kept up to
date while recording (``gram_row``), one row per new snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Rows of the snapshot matrix processed at once (temporaries of T x CHUNK). Measured on a
#: 2-core machine over 2^11 ... 2^17: 2^14 - 2^15 is fastest for both the Gram pass and the
#: lift; smaller chunks pay Python overhead per chunk, larger ones fall out of the cache.
CHUNK = 1 << 15

GramReducer = Callable[[torch.Tensor], torch.Tensor]


def _chunks(d: int, chunk: int = CHUNK):
    for start in range(0, d, chunk):
        yield start, min(start + chunk, d)


def _rows64(X: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Float64 copy of rows start:stop of X, laid out (T, rows): one row per snapshot."""
    block = X[start:stop].T
    out = torch.empty(block.shape, dtype=torch.float64, device=X.device)
    out.copy_(block)
    return out


@dataclass
class SnapshotSpace:
    """Coordinates of the snapshots in an orthonormal basis of their (centred) span.

    ``coords[:, k]`` are the coordinates of snapshot k (minus the reference when
    ``with_reference`` is False). ``lift(c)`` maps coordinates back to D-space.
    """

    X: torch.Tensor
    with_reference: bool
    coords: torch.Tensor  # (s, T) float64
    to_basis: torch.Tensor  # (b, s): basis columns -> orthonormal directions
    direct: bool  # True: coordinates are the (centred) data themselves, no compression

    def lift(self, c: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """Map coordinates ``c`` (s, H) to states (H, D), adding the reference when the
        coordinates are centred.

        Computed as ref * beta_ref + beta^T (W - ref) chunk by chunk in the storage precision
        (at least float32): centring first keeps the small movements exact.
        """
        D, T = self.X.shape
        H = c.shape[1]
        out = torch.empty(H, D, dtype=out_dtype, device=self.X.device)
        if self.direct:
            ref = self.X[:, :1].to(torch.float64)
            out.copy_((c if self.with_reference else c + ref).T)
            return out
        beta = self.to_basis @ c  # (b, H) coefficients of the basis columns
        if self.with_reference:  # basis = [ref, w_1 - ref, ...]
            ref_coef, beta = beta[0], beta[1:]
        else:  # basis = [w_1 - ref, ...]; the reference is added back
            ref_coef = beta.new_ones(H)
        work = torch.promote_types(self.X.dtype, torch.float32)
        beta_t, ref_coef = beta.T.to(work).contiguous(), ref_coef.to(work)[:, None]
        for start, stop in _chunks(D):
            rows = self.X[start:stop].T  # (T, c), a view of the buffer
            if rows.dtype != work:
                rows = rows.to(work)
            ref = rows[0]
            block = torch.mm(beta_t, rows[1:] - ref)  # (H, c)
            out[:, start:stop] = block.addcmul_(ref_coef, ref)
        return out


def _check_finite_columns(sq_norms: torch.Tensor, X: torch.Tensor) -> None:
    """Raise a ValueError naming the snapshots (columns of X) that cannot be fitted.

    ``sq_norms`` (from the Gram diagonal) flags trouble in one cheap step; only then is X
    read again, column by column, to tell non-finite snapshots from finite values so large
    that their squares overflow float64.
    """
    if bool(torch.isfinite(sq_norms).all()):
        return
    D, T = X.shape
    bad_cols = torch.zeros(T, dtype=torch.bool, device=X.device)
    largest = 0.0
    for start, stop in _chunks(D):
        block = X[start:stop]
        bad_cols |= ~torch.isfinite(block).all(dim=0)
        finite = block[torch.isfinite(block)]
        if finite.numel():
            largest = max(largest, float(finite.abs().max()))
    bad = bad_cols.nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(str(b) for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(
            f"snapshot(s) {shown} contain non-finite values (NaN or Inf); "
            "a Koopman operator cannot be fitted to them"
        )
    if largest > 0 and 2 * math.log10(largest) + math.log10(D) > 300:
        raise ValueError(
            f"snapshot values up to {largest:.3g} are too large: their squares overflow "
            "float64; rescale the data"
        )
    raise ValueError(  # finite here: another shard's snapshots are non-finite
        "the snapshots of another shard contain non-finite values (NaN or Inf); "
        "a Koopman operator cannot be fitted to them"
    )


def local_gram(X: torch.Tensor) -> torch.Tensor:
    """This process's share of the (T, T) float64 Gram matrix of [ref, w_1 - ref, ...].

    ref is the first snapshot. Summing the matrices of all coordinate shards gives the full
    Gram matrix; its diagonal (squared norms) flags non-finite snapshots.
    """
    D, T = X.shape
    gram = torch.zeros(T, T, dtype=torch.float64, device=X.device)
    for start, stop in _chunks(D):
        rows = _rows64(X, start, stop)  # (T, c)
        rows[1:] -= rows[0]
        gram += rows @ rows.T
    return gram


def gram_row(X: torch.Tensor) -> torch.Tensor:
    """The last row of ``local_gram(X)`` for (D, k+1) snapshots, in one pass over them.

    Lets a recorder keep the Gram matrix up to date as each snapshot arrives, so that a
    later fit needs no pass over the buffer for it (pass ``gram=`` to ``fit_dmd``).
    """
    D, k1 = X.shape
    row = torch.zeros(k1, dtype=torch.float64, device=X.device)
    for start, stop in _chunks(D):
        rows = _rows64(X, start, stop)
        if k1 > 1:
            rows[1:] -= rows[0]
        row += rows @ rows[-1]
    return row


def build_space(
    X: torch.Tensor,
    *,
    with_reference: bool,
    gram: torch.Tensor | None = None,
    reduce_gram: GramReducer | None = None,
) -> SnapshotSpace:
    """Compress the (D, T) snapshot matrix ``X`` to coordinates in its span.

    with_reference: keep the reference snapshot in the span (a purely linear model needs it);
    otherwise the coordinates are of the snapshots minus the reference (affine models).
    gram: this process's ``local_gram(X)`` if already known (kept up to date while recording).
    reduce_gram: sums the (T, T) local Gram matrix over shards (e.g. a torch.distributed
    all-reduce); forces the snapshot (Gram) path.
    """
    D, T = X.shape
    if gram is None and reduce_gram is None and D <= T:
        data = X.to(torch.float64)
        _check_finite_columns((data * data).sum(0), X)
        coords = data.clone() if with_reference else data - data[:, :1]
        eye = torch.eye(D, dtype=torch.float64, device=X.device)
        return SnapshotSpace(X, with_reference, coords, eye, True)

    full = local_gram(X) if gram is None else gram.to(torch.float64)
    if full.shape != (T, T):
        raise ValueError(f"gram must have shape ({T}, {T}); got {tuple(full.shape)}")
    if reduce_gram is not None:
        full = reduce_gram(full.clone())
    _check_finite_columns(full.diagonal(), X)
    b = T if with_reference else T - 1
    K = full if with_reference else full[1:, 1:]

    # Coefficients of each snapshot in the basis columns.
    if with_reference:
        coeff = torch.eye(T, dtype=torch.float64, device=X.device)
        coeff[0, :] = 1.0  # w_k = ref + (w_k - ref)
    else:
        coeff = torch.zeros(b, T, dtype=torch.float64, device=X.device)
        coeff[:, 1:] = torch.eye(b, dtype=torch.float64, device=X.device)

    evals, evecs = torch.linalg.eigh(K) if b > 0 else (K.new_zeros(0), K)
    top = float(evals.max()) if evals.numel() else 0.0
    keep = evals > top * max(T, 10) * 1e-14 if top > 0 else torch.zeros_like(evals, dtype=bool)
    lam, Q = evals[keep], evecs[:, keep]
    sqrt_lam = lam.sqrt()
    to_basis = Q / sqrt_lam  # E = basis @ Q diag(1/sqrt(lam)) is orthonormal
    coords = (Q.T @ K @ coeff) / sqrt_lam[:, None]  # E^T basis coeff
    return SnapshotSpace(X, with_reference, coords, to_basis, False)
