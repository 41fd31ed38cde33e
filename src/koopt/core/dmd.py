"""Exact dynamic mode decomposition of a snapshot matrix: ``fit_dmd``.

The Koopman operator of training dynamics, restricted to the identity observables, is
approximated by the least-squares operator A = Y X^+ (Dogra & Redman, NeurIPS 2020, use
U = F' pinv(F) on small groups of weights); exact DMD (Tu et al. 2014) gives its spectrum and
predictions through an r x r reduced operator. Beyond the seed paper this module offers
rank truncation (energy share, Gavish-Donoho SVHT), delay embedding, an affine term
(w_{k+1} = A w_k + c), stabilised spectra and the eigenvalue-1 fixed point (Redman et al.'s
"fixed-point jump"). Tall matrices (D >> T) are compressed exactly with the method of
snapshots first (``snapshots_space``), so millions of parameters cost O(D T^2) time and
O(D) extra memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from koopt.core._arrays import ArrayKind, as_horizons, as_tensor
from koopt.core.delay import hankel, min_snapshots
from koopt.core.errors import DivergentPredictionError
from koopt.core.rank import RankSpec, choose_rank, validate_rank
from koopt.core.snapshots_space import GramReducer, SnapshotSpace, build_space
from koopt.core.spectrum import spectral_radius, stabilized, validate_stabilize


class DMDModel:
    """A fitted DMD model; ``predict(h)`` gives the state h steps after the last snapshot."""

    def __init__(
        self,
        *,
        kind: ArrayKind,
        space: SnapshotSpace,
        delays: int,
        affine: bool,
        stabilize: str,
        B: torch.Tensor,
        Ur: torch.Tensor,
        Atilde: torch.Tensor,
        raw_eigenvalues: torch.Tensor,
        v0: torch.Tensor,
        c: torch.Tensor,
        residual: float,
        sigma: torch.Tensor,
    ) -> None:
        self._kind = kind
        self._space = space
        self.delays = delays
        self.affine = affine
        self.stabilize = stabilize
        self._B = B
        self._Ur = Ur
        self._Atilde = Atilde
        self._raw_eigenvalues = raw_eigenvalues
        self._v0 = v0
        self._c = c
        self.residual = residual
        self.singular_values = sigma
        self._eigenvalues = (
            torch.linalg.eigvals(Atilde)
            if Atilde.numel()
            else torch.zeros(0, dtype=torch.complex128)
        )
        self._a0 = Ur.T @ v0
        self._ac = Ur.T @ c

    @property
    def eigenvalues(self) -> Any:
        """Eigenvalues (complex, shape (r,)) of the operator used for prediction; numpy for
        numpy input, torch otherwise."""
        return self._kind.complex_output(self._eigenvalues)

    @property
    def raw_eigenvalues(self) -> Any:
        """Eigenvalues of the fitted operator before stabilisation."""
        return self._kind.complex_output(self._raw_eigenvalues)

    @property
    def rank(self) -> int:
        """The effective rank r of the fitted operator."""
        return int(self._Atilde.shape[0])

    @property
    def spectral_radius(self) -> float:
        """Largest |eigenvalue| of the operator used for prediction."""
        return spectral_radius(self._eigenvalues)

    @property
    def operator(self) -> torch.Tensor:
        """The r x r reduced operator (float64) used for prediction."""
        return self._Atilde

    # -- prediction -----------------------------------------------------------------------
    def _embedded_coords(self, h: int) -> torch.Tensor:
        """Coordinates (embedded, s * delays) of the state h >= 0 steps after the last one."""
        if h == 0:
            return self._v0
        r = self.rank
        M = torch.zeros(r + 1, r + 1, dtype=torch.float64, device=self._v0.device)
        M[:r, :r] = self._Atilde
        M[:r, r] = self._ac
        M[r, r] = 1.0
        start = torch.cat([self._a0, M.new_ones(1)])
        z = torch.linalg.matrix_power(M, h - 1) @ start
        return self._B @ z[:r] + self._c

    def _coords(self, horizons: list[int]) -> torch.Tensor:
        s = self._v0.shape[0] // self.delays
        cols = [self._embedded_coords(h)[-s:] for h in horizons]
        return torch.stack(cols, dim=1)

    def _lift_checked(self, coords: torch.Tensor, horizons: list[int]) -> torch.Tensor:
        final = self._space.X.dtype if self._space.X.dtype.is_floating_point else torch.float64
        limit = torch.finfo(final).max
        norms = coords.norm(dim=0)
        lo, hi = torch.aminmax(self._space.X[:, 0])  # one pass, no copy of the column
        ref_bound = max(abs(float(lo)), abs(float(hi)))
        bad = [
            h for h, n in zip(horizons, norms.tolist(), strict=True) if not (n + ref_bound < limit)
        ]
        if bad:
            raise DivergentPredictionError(
                f"predicting {bad[0]} steps ahead would overflow {final}: the fitted operator "
                f"has growing modes (spectral radius {self.spectral_radius:.6g}). Fit with "
                "stabilize='clip' or 'drop', or predict a shorter horizon."
            )
        work = torch.float32 if final in (torch.float16, torch.bfloat16) else final
        return self._space.lift(coords, work)

    def predict(self, h: int | Sequence[int]) -> Any:
        """State h steps after the last snapshot: shape (D,) for an int, (len(h), D) for a
        sequence of ints; the caller's array kind and dtype. Non-negative powers only."""
        horizons, single = as_horizons(h)
        coords = self._coords(horizons)
        states = self._lift_checked(coords, horizons)  # (H, D)
        result = states[0] if single else states
        return self._kind.output(result)

    def fixed_point(self, tol: float = 1e-6) -> Any:
        """The limit of the prediction as h -> infinity.

        Modes with |lambda - 1| <= tol are treated as eigenvalue 1 and kept, scaled by their
        amplitude; decaying modes vanish. With ``affine=True`` the constant term adds its
        converged geometric sum (I - A)^-1 c over decaying modes. Modes that neither decay nor
        sit at 1 have no limit: they are left out with a warning.
        """
        r = self.rank
        s = self._v0.shape[0] // self.delays
        v = self._c.clone()
        if r:
            lam, W = torch.linalg.eig(self._Atilde.to(torch.complex128))
            Winv = torch.linalg.inv(W)
            at_one = (lam - 1).abs() <= tol
            decaying = (lam.abs() < 1 - tol) & ~at_one
            other = ~(at_one | decaying)
            b0 = Winv @ self._a0.to(torch.complex128)
            bc = Winv @ self._ac.to(torch.complex128)
            if bool(other.any()) and bool((b0[other].abs() > 0).any()):
                warnings.warn(
                    f"{int(other.sum())} mode(s) neither decay nor sit at eigenvalue 1; "
                    "they have no limit and are left out of the fixed point",
                    stacklevel=2,
                )
            scale = float(b0.abs().max()) + float(bc.abs().max())
            if self.affine and bool((bc[at_one].abs() > 1e-10 * scale).any()):
                warnings.warn(
                    "the constant term drives eigenvalue-1 mode(s): the prediction drifts "
                    "linearly and has no limit; the fixed point leaves that drift out",
                    stacklevel=2,
                )
            z = torch.where(at_one, b0, torch.zeros_like(b0))
            if self.affine:
                z = z + torch.where(decaying, bc / (1 - lam), torch.zeros_like(bc))
            v = v + self._B @ (W @ z).real
        coords = v[-s:].unsqueeze(1)
        return self._kind.output(self._lift_checked(coords, [-1])[0])

    def __repr__(self) -> str:
        return (
            f"DMDModel(rank={self.rank}, delays={self.delays}, affine={self.affine}, "
            f"stabilize={self.stabilize!r}, spectral_radius={self.spectral_radius:.6g}, "
            f"residual={self.residual:.3g})"
        )


def _validate(X: torch.Tensor, rank: RankSpec, delays: int, stabilize: str) -> None:
    if X.ndim != 2:
        raise ValueError(
            f"X must be 2-D with shape (D, T): column k is the state after step k; got shape "
            f"{tuple(X.shape)}"
        )
    if X.is_complex():
        raise ValueError("X must be real")
    D, T = X.shape
    if D == 0:
        raise ValueError("X has no coordinates (D = 0)")
    if T < 2:
        raise ValueError(f"at least 2 snapshots (columns) are needed to fit an operator; got {T}")
    if isinstance(delays, bool) or not isinstance(delays, int) or delays < 1:
        raise ValueError(f"delays must be a positive integer, got {delays!r}")
    need = min_snapshots(delays)
    if T < need:
        raise ValueError(f"delays={delays} needs at least {need} snapshots; got {T}")
    validate_rank(rank)
    validate_stabilize(stabilize)


def fit_dmd(
    X: Any,
    *,
    rank: RankSpec = None,
    delays: int = 1,
    affine: bool = False,
    stabilize: str = "none",
    gram: Any = None,
    reduce_gram: GramReducer | None = None,
) -> DMDModel:
    """Fit exact DMD to snapshots ``X`` of shape (D, T) (column k: state after step k).

    Args:
        X: numpy array or torch tensor; predictions come back in the same kind and dtype.
        rank: None (full numerical rank, the seed's pinv), an int (at most that many), a float
            in (0, 1) (energy share of sum sigma^2) or "svht" (Gavish-Donoho threshold).
        delays: number of consecutive snapshots stacked into one state (Hankel embedding).
        affine: fit w_{k+1} = A w_k + c (a constant term), else w_{k+1} = A w_k.
        stabilize: "none", "clip" (growing modes onto the unit circle) or "drop".
        gram: this process's (T, T) Gram matrix of [w_0, w_1 - w_0, ...] if already known
            (``koopt.core.local_gram``, or kept up to date with ``gram_row`` while recording).
        reduce_gram: sums the T x T Gram matrix over shards (distributed fits), e.g. an
            all-reduce; each shard then predicts its own coordinates.
    """
    kind = ArrayKind.of(X)
    Xt = as_tensor(X)
    _validate(Xt, rank, delays, stabilize)
    gram_t = None if gram is None else as_tensor(gram)
    space = build_space(Xt, with_reference=not affine, gram=gram_t, reduce_gram=reduce_gram)

    H = hankel(space.coords, delays)
    Xs, Ys = H[:, :-1], H[:, 1:]
    if affine:
        x_mean, y_mean = Xs.mean(dim=1), Ys.mean(dim=1)
        Xc, Yc = Xs - x_mean[:, None], Ys - y_mean[:, None]
    else:
        Xc, Yc = Xs, Ys
    U, sigma, Vh = torch.linalg.svd(Xc, full_matrices=False)
    stored = Xt.dtype if Xt.dtype.is_floating_point else torch.float64
    full_shape = (Xt.shape[0] * delays, Xc.shape[1])  # before the method of snapshots
    r = choose_rank(sigma, tuple(Xc.shape), rank, eps=torch.finfo(stored).eps,
                    full_shape=full_shape)
    Ur, Sr, Vr = U[:, :r], sigma[:r], Vh[:r].T
    B = Yc @ Vr / Sr  # exact-DMD lift: A = B Ur^T
    raw = Ur.T @ B  # Atilde = Ur^T Yc Vr Sr^-1
    Atilde = stabilized(raw, stabilize)
    B = B + Ur @ (Atilde - raw)  # the stabilised operator acts inside span(Ur) from step one
    raw_eigs = torch.linalg.eigvals(raw) if r else torch.zeros(0, dtype=torch.complex128)
    c = (y_mean - B @ (Ur.T @ x_mean)) if affine else torch.zeros_like(H[:, 0])
    fit_err = Yc - B @ (Ur.T @ Xc)
    denom = float(Yc.norm())
    residual = float(fit_err.norm()) / denom if denom > 0 else 0.0
    return DMDModel(
        kind=kind,
        space=space,
        delays=delays,
        affine=affine,
        stabilize=stabilize,
        B=B,
        Ur=Ur,
        Atilde=Atilde,
        raw_eigenvalues=raw_eigs,
        v0=H[:, -1].clone(),
        c=c,
        residual=residual,
        sigma=sigma,
    )
