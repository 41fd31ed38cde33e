"""The method of snapshots: an exact, isometric compression of a tall snapshot matrix.

For a (D, T) snapshot matrix with D >> T, every DMD quantity (SVD, least squares, powers of
the fitted operator) lives in the span of the snapshots. We pick an orthonormal basis E of that
span from the T x T Gram matrix alone (Sirovich 1987; Tu et al. 2014, "On dynamic mode
decomposition: theory and applications"), so the D-dimensional problem becomes an s x T one
(s <= T) with identical singular values, eigenvalues and predictions. Memory beyond the
snapshots is O(T^2) plus one chunk; no D x D matrix and no SVD of the D x T matrix is formed.

Numerics: snapshots are centred on a reference (the first snapshot) in float64 chunk by chunk,
so the tiny per-step movement of float32 weights is not drowned by their size.

The Gram accumulation is a sum over coordinates, so shards of the coordinates can be reduced
across processes with one all-reduce of a T x T matrix (``reduce_gram``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Rows of the snapshot matrix processed at once: float64 temporaries of T x CHUNK stay in
#: the CPU cache (measured fastest of 2^11 ... 2^17 on a 2-core machine).
CHUNK = 1 << 13

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

    def _snapshot_weights(self, beta: torch.Tensor) -> torch.Tensor:
        """Basis coefficients (b, H) -> weights on the raw snapshots (T, H), so that
        basis @ beta (+ the reference when centred) == X @ gamma."""
        T = self.X.shape[1]
        gamma = beta.new_zeros(T, beta.shape[1])
        if self.with_reference:  # basis = [ref, w_1 - ref, ...]
            gamma[1:] = beta[1:]
            gamma[0] = beta[0] - beta[1:].sum(0)
        else:  # basis = [w_1 - ref, ...], plus the reference itself
            gamma[1:] = beta
            gamma[0] = 1.0 - beta.sum(0)
        return gamma

    def lift(self, c: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """Map coordinates ``c`` (s,) or (s, H) to states (D,) or (D, H), adding the reference
        when the coordinates are centred."""
        squeeze = c.ndim == 1
        c2 = c.unsqueeze(1) if squeeze else c
        D = self.X.shape[0]
        out = torch.empty(D, c2.shape[1], dtype=out_dtype, device=self.X.device)
        if self.direct:
            ref = self.X[:, :1].to(torch.float64)
            full = c2 if self.with_reference else c2 + ref
            out.copy_(full)
        else:
            gamma = self._snapshot_weights(self.to_basis @ c2)  # (T, H)
            for start, stop in _chunks(D):
                out[start:stop] = _rows64(self.X, start, stop).T @ gamma
        return out[:, 0] if squeeze else out


def _check_finite_columns(sq_norms: torch.Tensor) -> None:
    bad = (~torch.isfinite(sq_norms)).nonzero().flatten().tolist()
    if bad and bad[0] == 0:
        bad = [0]  # a non-finite reference spoils every centred snapshot; name it alone
    if bad:
        shown = ", ".join(str(b) for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(
            f"snapshot(s) {shown} contain non-finite values (NaN or Inf); "
            "a Koopman operator cannot be fitted to them"
        )


def local_gram(X: torch.Tensor, *, with_reference: bool) -> torch.Tensor:
    """This process's share of the Gram matrix, packed as one float64 vector.

    The first b*b entries are the Gram matrix of the basis columns (b = T with the reference,
    T - 1 without), the last T the squared norm of the reference and of each centred snapshot
    (to detect non-finite ones). Summing the vectors of all coordinate shards gives the full fit's.
    """
    D, T = X.shape
    b = T if with_reference else T - 1
    gram = torch.zeros(b, b, dtype=torch.float64, device=X.device)
    raw_sq = torch.zeros(T, dtype=torch.float64, device=X.device)
    for start, stop in _chunks(D):
        rows = _rows64(X, start, stop)  # (T, c)
        ref = rows[0]
        ref_sq = ref @ ref
        rows[1:] -= ref
        basis = rows if with_reference else rows[1:]
        gram += basis @ basis.T
        raw_sq[0] += ref_sq
    # squared norms of the centred snapshots flag non-finite ones (the reference separately)
    diag = gram.diagonal()
    raw_sq[1:] = diag[1:] if with_reference else diag
    return torch.cat([gram.flatten(), raw_sq])


def build_space(
    X: torch.Tensor,
    *,
    with_reference: bool,
    reduce_gram: GramReducer | None = None,
) -> SnapshotSpace:
    """Compress the (D, T) snapshot matrix ``X`` to coordinates in its span.

    with_reference: keep the reference snapshot in the span (a purely linear model needs it);
    otherwise the coordinates are of the snapshots minus the reference (affine models).
    reduce_gram: sums the packed vector of ``local_gram`` over shards (e.g. a torch.distributed
    all-reduce); forces the snapshot (Gram) path.
    """
    D, T = X.shape
    direct = reduce_gram is None and D <= T
    if direct:
        data = X.to(torch.float64)
        _check_finite_columns((data * data).sum(0))
        coords = data.clone() if with_reference else data - data[:, :1]
        eye = torch.eye(D, dtype=torch.float64, device=X.device)
        return SnapshotSpace(X, with_reference, coords, eye, True)

    packed = local_gram(X, with_reference=with_reference)
    if reduce_gram is not None:
        packed = reduce_gram(packed)
    b = T if with_reference else T - 1
    gram = packed[: b * b].reshape(b, b)
    raw_sq = packed[b * b :]
    _check_finite_columns(raw_sq)

    # Coefficients of each snapshot in the basis columns.
    if with_reference:
        coeff = torch.eye(T, dtype=torch.float64, device=X.device)
        coeff[0, :] = 1.0  # w_k = ref + (w_k - ref)
    else:
        coeff = torch.zeros(b, T, dtype=torch.float64, device=X.device)
        coeff[:, 1:] = torch.eye(b, dtype=torch.float64, device=X.device)

    evals, evecs = torch.linalg.eigh(gram) if b > 0 else (gram.new_zeros(0), gram)
    top = float(evals.max()) if evals.numel() else 0.0
    keep = evals > top * max(T, 10) * 1e-14 if top > 0 else torch.zeros_like(evals, dtype=bool)
    lam, Q = evals[keep], evecs[:, keep]
    sqrt_lam = lam.sqrt()
    to_basis = Q / sqrt_lam  # E = basis @ Q diag(1/sqrt(lam)) is orthonormal
    coords = (Q.T @ gram @ coeff) / sqrt_lam[:, None]  # E^T basis coeff
    return SnapshotSpace(X, with_reference, coords, to_basis, False)
