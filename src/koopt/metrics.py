"""The yardsticks every koopt report uses (definitions in ``docs/method.md``).

- error2growth: the paper's per-parameter comparison of jump error against true
  movement (Dogra & Redman 2020, Fig. 2 style), reduced to one number.
- loss ratio rho = L(w_hat(t2+T)) / L(w(t2+T)).
- window speedup = time of T optimizer steps / (time to fit + time to jump).
- valid horizon = the largest T with rho <= 1.05.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

ArrayLike = Any  # numpy array, torch tensor or sequence of floats


def _np(a: ArrayLike) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64).ravel()


def jump_errors(w_pred: ArrayLike, w_true: ArrayLike) -> np.ndarray:
    """Per-parameter jump error |w_hat(t2+T) - w(t2+T)|."""
    return np.abs(_np(w_pred) - _np(w_true))


def true_movement(w_true: ArrayLike, w_start: ArrayLike) -> np.ndarray:
    """Per-parameter true movement |w(t2+T) - w(t2)|."""
    return np.abs(_np(w_true) - _np(w_start))


def error2growth(w_pred: ArrayLike, w_true: ArrayLike, w_start: ArrayLike) -> float:
    """median |w_hat(t2+T) - w(t2+T)| / median |w(t2+T) - w(t2)| over parameters.

    Below 1 the jump predicts where the weights move better than staying put; ``inf``
    when the weights did not move at all (median movement 0) but the jump erred; ``nan``
    (undefined, never 0) when neither moved nor erred (0/0) or the prediction is not finite.
    """
    err = jump_errors(w_pred, w_true)
    move = true_movement(w_true, w_start)
    if err.shape != move.shape:
        raise ValueError(f"shape mismatch: {err.shape} vs {move.shape}")
    if err.size == 0:
        raise ValueError("error2growth of an empty parameter vector")
    if not np.all(np.isfinite(err)):
        return math.nan
    num, den = float(np.median(err)), float(np.median(move))
    if den == 0.0:
        return math.nan if num == 0.0 else math.inf  # 0/0 is undefined
    return num / den


def loss_ratio(loss_method: float | None, loss_reference: float | None) -> float:
    """rho = L(method) / L(reference); ``nan`` if either is missing or not finite."""
    if loss_method is None or loss_reference is None:
        return math.nan
    a, b = float(loss_method), float(loss_reference)
    if math.isnan(a) or not math.isfinite(b):
        return math.nan
    if b == 0.0:
        return math.nan if a == 0.0 else math.inf
    return a / b  # a = inf (a diverged jump) gives inf


def window_speedup(time_optimizer: float, time_fit: float, time_jump: float) -> float:
    """time of the T optimizer steps / (time to fit + time to jump)."""
    cost = float(time_fit) + float(time_jump)
    if cost < 0 or time_optimizer < 0:
        raise ValueError("times must be non-negative")
    if cost == 0.0:
        return math.inf
    return float(time_optimizer) / cost


def valid_horizon(horizons: Sequence[int], rhos: Sequence[float], tol: float = 1.05) -> int:
    """The largest horizon T with rho(T) <= tol (0 if none)."""
    ok = [int(h) for h, r in zip(horizons, rhos, strict=True) if math.isfinite(r) and r <= tol]
    return max(ok, default=0)


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Median and spread (min, q25, q75, max) of the finite values; ``n`` counts them and
    ``n_nonfinite`` counts the rest (diverged jumps are reported, not hidden)."""
    vals = [float(v) for v in values if v is not None]
    finite = np.array([v for v in vals if math.isfinite(v)], dtype=np.float64)
    n_bad = len(vals) - finite.size
    if finite.size == 0:
        return {"median": None, "min": None, "q25": None, "q75": None, "max": None,
                "n": 0, "n_nonfinite": n_bad}
    q25, med, q75 = np.percentile(finite, [25, 50, 75])
    return {"median": float(med), "min": float(finite.min()), "q25": float(q25),
            "q75": float(q75), "max": float(finite.max()), "n": int(finite.size),
            "n_nonfinite": n_bad}


def summarize_records(records: Sequence[Mapping[str, Any]],
                      keys: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Summarize every numeric field (or ``keys``) over the records (one per seed)."""
    if keys is None:
        seen: dict[str, None] = {}
        for rec in records:
            for k, v in rec.items():
                if k == "seed" or isinstance(v, bool):
                    continue
                if isinstance(v, (int, float)) or v is None:
                    seen.setdefault(k, None)
        keys = list(seen)
    out: dict[str, dict[str, Any]] = {}
    for k in keys:
        vals = [rec.get(k) for rec in records]
        if all(v is None or isinstance(v, (int, float)) for v in vals):
            if any(v is not None for v in vals):
                out[k] = summarize(vals)
    return out
