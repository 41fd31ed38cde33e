"""Held-out prediction of the last snapshot: is a trajectory linear-predictable at this scale?

A time scale (stride, window) suits a Koopman jump when a model fitted to the window
predicts where the weights go next. Refitting on all but the last snapshot and predicting
that one gives the check without any loss evaluation: on deterministic training (the
paper's HNN solver, full batch) the error is a few percent of the last step at a stride of
one step, on mini-batch training (digits) it is as large as the step itself, because the
step-to-step motion there is mostly gradient noise (``docs/optimizer.md``, ``fast_start``).
"""

from __future__ import annotations

from typing import Any

import torch

from koopt.core._arrays import as_tensor
from koopt.core.dmd import fit_dmd
from koopt.core.rank import RankSpec, window_rank
from koopt.core.snapshots_space import GramReducer

__all__ = ["holdout_error"]


def holdout_error(
    X: Any,
    *,
    rank: RankSpec = None,
    delays: int = 1,
    affine: bool = True,
    stabilize: str = "clip",
    reduce_gram: GramReducer | None = None,
    chunk: int = 1 << 20,
) -> tuple[float, float]:
    """Fit DMD to snapshots ``X[:, :-1]`` of (D, T) ``X`` and predict the last column.

    Returns ``(||prediction - x_T||^2, ||x_T - x_{T-1}||^2)``, this process's sums (so that
    sharded callers can add them over shards before dividing). The square root of their
    ratio is the error relative to the last step's length (what predicting "no move"
    would miss by): 0 for an exact prediction, about 1 or more for a random-walk step.
    An int ``rank`` is cut to what the shorter window supports. Needs ``T >= delays + 3``.
    """
    Xt = as_tensor(X)
    if Xt.ndim != 2:
        raise ValueError(f"snapshots must be a (D, T) matrix, got shape {tuple(Xt.shape)}")
    T = Xt.shape[1]
    if T < delays + 3:
        raise ValueError(f"a held-out check needs at least delays + 3 = {delays + 3} snapshots, "
                         f"got {T}")
    model = fit_dmd(Xt[:, :-1], rank=window_rank(rank, T - 1, delays, affine), delays=delays,
                    affine=affine, stabilize=stabilize, reduce_gram=reduce_gram)
    prediction = model.predict(1)
    err = ref = 0.0
    for start in range(0, Xt.shape[0], chunk):
        last = Xt[start : start + chunk, -1].to(torch.float64)
        err += float((prediction[start : start + chunk].to(torch.float64) - last).square().sum())
        ref += float((last - Xt[start : start + chunk, -2]).square().sum())
    return err, ref
