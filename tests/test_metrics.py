"""The yardsticks on hand-computed values (definitions in docs/method.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from koopt import metrics


def test_error2growth_by_hand() -> None:
    w_start = np.array([0.0, 0.0, 0.0, 0.0])
    w_true = np.array([1.0, 2.0, -3.0, 4.0])  # movement 1, 2, 3, 4: median 2.5
    w_pred = np.array([1.5, 2.0, -2.0, 4.1])  # errors 0.5, 0, 1, 0.1: median 0.3
    assert metrics.error2growth(w_pred, w_true, w_start) == pytest.approx(0.3 / 2.5)
    # staying put scores exactly 1; a perfect jump 0; torch tensors work too
    assert metrics.error2growth(w_start, w_true, w_start) == pytest.approx(1.0)
    assert metrics.error2growth(torch.tensor(w_true), torch.tensor(w_true), w_start) == 0.0
    assert math.isnan(metrics.error2growth([np.inf, 0, 0, 0], w_true, w_start))
    assert metrics.error2growth([1.0], [0.0], [0.0]) == math.inf
    with pytest.raises(ValueError):
        metrics.error2growth([1.0, 2.0], [1.0], [1.0])


def test_error2growth_of_weights_that_did_not_move_is_undefined() -> None:
    # 0/0: the weights did not move and the prediction did not err; never "perfect" 0
    still = np.array([0.5, -1.0, 2.0])
    assert math.isnan(metrics.error2growth(still, still, still))
    assert math.isnan(metrics.error2growth(torch.tensor(still), still, still))
    # a median movement of 0 with some parameters moving is still 0/0 when the errors are too
    assert math.isnan(metrics.error2growth([0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]))
    s = metrics.summarize([metrics.error2growth(still, still, still)])
    assert s["median"] is None and s["n_nonfinite"] == 1


def test_loss_ratio_and_window_speedup_by_hand() -> None:
    assert metrics.loss_ratio(0.02, 0.04) == pytest.approx(0.5)
    assert metrics.loss_ratio(math.inf, 0.04) == math.inf
    assert math.isnan(metrics.loss_ratio(None, 0.04))
    assert math.isnan(metrics.loss_ratio(0.1, math.nan))
    # 2500 steps in 4 s against a 0.3 s fit and a 0.1 s jump
    assert metrics.window_speedup(4.0, 0.3, 0.1) == pytest.approx(10.0)
    assert metrics.window_speedup(1.0, 0.0, 0.0) == math.inf
    with pytest.raises(ValueError):
        metrics.window_speedup(-1.0, 0.1, 0.1)


def test_valid_horizon() -> None:
    assert metrics.valid_horizon([10, 20, 30, 40], [0.9, 1.04, 1.2, 1.05]) == 40
    assert metrics.valid_horizon([10, 20], [1.1, math.nan]) == 0


def test_summary_median_and_spread() -> None:
    s = metrics.summarize([3.0, 1.0, 2.0, None, math.inf, 4.0])
    assert s["median"] == pytest.approx(2.5)
    assert (s["min"], s["max"], s["n"], s["n_nonfinite"]) == (1.0, 4.0, 4, 1)
    assert s["q25"] == pytest.approx(1.75) and s["q75"] == pytest.approx(3.25)
    empty = metrics.summarize([None, math.nan])
    assert empty["median"] is None and empty["n"] == 0
    recs = [{"seed": 0, "rho": 1.0, "ok": True, "name": "a"},
            {"seed": 1, "rho": 3.0, "ok": False, "name": "b"}]
    out = metrics.summarize_records(recs)
    assert set(out) == {"rho"} and out["rho"]["median"] == pytest.approx(2.0)
