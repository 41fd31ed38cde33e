"""The early time scale (``fast_start``) and its held-out gate (``koopt.core.holdout_error``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from koopt.core import fit_dmd, holdout_error, local_gram
from koopt.optim import FAST_START_WARMUP, PREDICTABLE_ERROR, KoopmanOptimizer


# ----------------------------------------------------------------------------- the core check
def test_holdout_error_is_zero_on_an_exact_linear_system():
    A = torch.tensor([[0.9, -0.3, 0.0], [0.3, 0.9, 0.0], [0.0, 0.0, 0.5]], dtype=torch.float64)
    cols = [torch.tensor([1.0, 0.5, -2.0], dtype=torch.float64)]
    for _ in range(6):
        cols.append(A @ cols[-1])
    X = torch.stack(cols, 1)  # (3, 7)
    err, ref = holdout_error(X, rank=None, affine=False, stabilize="none")
    assert err < 1e-24 * ref
    assert ref == pytest.approx(float((X[:, -1] - X[:, -2]).square().sum()))


def test_holdout_error_matches_exact_dmd_by_pseudo_inverse():
    """Reference: exact DMD on all but the last column, A = Y X^+, predicts A x_{T-2}."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 6)).cumsum(axis=1)
    fit = X[:, :-1]
    A = fit[:, 1:] @ np.linalg.pinv(fit[:, :-1])
    prediction = A @ fit[:, -1]
    err, ref = holdout_error(X, rank=None, affine=False, stabilize="none")  # numpy in
    assert err == pytest.approx(float(np.sum((prediction - X[:, -1]) ** 2)), rel=1e-9)
    assert ref == pytest.approx(float(np.sum((X[:, -1] - X[:, -2]) ** 2)), rel=1e-12)


def test_holdout_error_of_a_random_walk_is_about_one_step():
    g = torch.Generator().manual_seed(0)
    walk = torch.randn(5000, 6, generator=g, dtype=torch.float64).cumsum(1)
    err, ref = holdout_error(walk, rank=4)
    assert 0.8 < math.sqrt(err / ref) < 1.5


def test_holdout_error_sums_over_shards_like_one_matrix():
    """Sharded rows with a summed Gram give the whole matrix's sums when added up."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 6, generator=g, dtype=torch.float64).cumsum(1)
    whole = holdout_error(X, rank=3)
    parts = [X[:12], X[12:]]
    total = sum(local_gram(p[:, :-1]) for p in parts)  # the all-reduce of the fitted columns
    sums = [holdout_error(p, rank=3, reduce_gram=lambda G: total.clone()) for p in parts]
    assert sum(s[0] for s in sums) == pytest.approx(whole[0], rel=1e-8)
    assert sum(s[1] for s in sums) == pytest.approx(whole[1], rel=1e-12)


def test_holdout_error_refuses_bad_input():
    with pytest.raises(ValueError, match="at least"):
        holdout_error(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="matrix"):
        holdout_error(torch.zeros(5))
    # an int rank is cut to what the shorter window supports, not refused
    X = torch.randn(8, 5, dtype=torch.float64).cumsum(1)
    assert math.isfinite(holdout_error(X, rank=50)[0])
    assert fit_dmd(X[:, :-1], rank=2, affine=True).rank <= 2


# ----------------------------------------------------------------------------- the wrapper
def regression(noise: float, seed: int = 0):
    """A 4-16-1 regression; gradient noise of the given size makes the path a random walk."""
    torch.manual_seed(seed)
    X = torch.randn(128, 4)
    y = torch.sin(X @ torch.tensor([[1.0], [-0.5], [0.3], [0.8]]))
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    calls = {"loss": 0}

    def check():
        calls["loss"] += 1
        return F.mse_loss(model(X), y)

    g = torch.Generator().manual_seed(seed + 1)

    def train(opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            F.mse_loss(model(X), y).backward()
            for p in model.parameters():
                p.grad.add_(noise * torch.randn(p.shape, generator=g))
            opt.step()

    return model, check, calls, train


def test_deterministic_training_stays_on_the_every_step_scale_and_jumps():
    model, check, calls, train = regression(noise=0.0)
    opt = KoopmanOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=check,
                           module=model)
    assert opt.timescale.name == "early" and opt.schedule.stride == 1 and opt.window == 5
    start = check().item()
    train(opt, 60)
    steps = [r["step"] for r in opt.log]
    # windows of 5 every-step snapshots from step 10 (each starts at the last one's end)
    assert steps[:3] == [FAST_START_WARMUP + 4, FAST_START_WARMUP + 8, FAST_START_WARMUP + 12]
    assert opt.timescale.name == "early"
    assert opt.log[0]["heldout_error"] < PREDICTABLE_ERROR
    assert opt.num_accepted >= 1 and opt.log[0]["horizons"][0] == 2  # the grid in snapshots
    assert all(r["loss_after"] < r["loss_before"] for r in opt.log if r["accepted"])
    assert check().item() < start


def test_noisy_training_leaves_the_early_scale_without_a_loss_check():
    model, check, calls, train = regression(noise=3.0)
    opt = KoopmanOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), loss_fn=check,
                           warmup=40, stride=5, window=4)
    train(opt, 30)
    # two unpredictable windows (steps 10-14, 14-18): the base scale from its own warmup
    assert opt.timescale.name == "base" and opt.schedule.warmup == 40
    assert opt.schedule.stride == 5 and opt.window == 4
    assert calls["loss"] == 0 and opt.log == [] and not opt._windows
    train(opt, 30)  # the first base window: snapshots at 40, 45, 50, 55
    assert [r["step"] for r in opt.log] == [55]
    first = opt.log[0]
    assert first["timescale"]["name"] == "base" and first["timescale"]["from_step"] == 40
    assert "unpredictable" in first["timescale"]["reason"]
    assert first["timescale"]["at_step"] == 18 and opt.timescale_moves == [first["timescale"]]
    # the two unfitted windows, each with the step it ended at; no error of its own
    assert [step for step, _ in first["unfitted_windows"]] == [14, 18]
    assert all(e > PREDICTABLE_ERROR for _, e in first["unfitted_windows"])
    assert "heldout_error" not in first  # a base-scale window is not gated


def test_fast_start_needs_a_loss_check_and_can_be_switched_off():
    model, check, _, _ = regression(noise=0.0)
    unchecked = KoopmanOptimizer(torch.optim.SGD(model.parameters(), lr=0.05))
    assert unchecked.timescale.name == "base" and unchecked.schedule.stride == 10
    off = KoopmanOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=check,
                           fast_start=False)
    assert off.timescale.name == "base" and off.schedule.warmup == 100
    same = KoopmanOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=check,
                            stride=1, window=5, warmup=3)  # the base scale is the early one
    assert [t.name for t in same._ladder] == ["base", "fine"] and same.schedule.warmup == 3


@pytest.mark.parametrize("stop", [7, 12, 17])
def test_resume_on_the_early_scale_is_bit_identical(stop):
    def run(split: int | None):
        model, check, _, train = regression(noise=0.2, seed=4)
        make = lambda: KoopmanOptimizer(  # noqa: E731
            torch.optim.Adam(model.parameters(), lr=1e-2), loss_fn=check, warmup=30)
        opt = make()
        if split is None:
            train(opt, 40)
            return model, opt
        train(opt, split)
        state = opt.state_dict()
        opt = make()
        opt.load_state_dict(state)
        train(opt, 40 - split)
        return model, opt

    ref_model, ref = run(None)
    model, opt = run(stop)
    assert all(torch.equal(a, b) for a, b in zip(ref_model.parameters(), model.parameters(),
                                                 strict=True))
    assert [r["step"] for r in opt.log] == [r["step"] for r in ref.log]
    assert opt.timescale == ref.timescale and opt.schedule == ref.schedule
    assert opt.timescale_moves == ref.timescale_moves


def test_refusals_on_the_early_scale_skip_before_warmup_then_hand_over(monkeypatch):
    """A predictable path whose jumps are all refused: skip fits on the early scale until
    the base warmup, then move to the base scale (stride 4, window 3), then refine."""
    import koopt.optim as koptim

    class AwayFit:  # every candidate moves w away from the target
        def __call__(self, name, layout, snapshots, **options):
            last = snapshots[-1].clone()

            class Fitted:
                spectral_radius = 1.0

                def predict(self, h):
                    if isinstance(h, list):
                        return torch.stack([last + 1e-3 * k for k in h])
                    return last + 1e-3 * h

            return Fitted()

    monkeypatch.setattr(koptim, "fit_family", AwayFit())
    w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = KoopmanOptimizer(torch.optim.SGD([w], lr=1e-3), warmup=30, stride=4, window=3,
                           horizons=(4, 8), loss_fn=lambda: (w + 1.0).square().sum(),
                           controller_options={"refusals_to_skip": 2})
    for _ in range(80):
        opt.zero_grad()
        w.sum().backward()  # w moves by -1e-3 per step: a straight, predictable line
        opt.step()
    early = [r for r in opt.log if r["snapshots"] == 5]
    assert [r["step"] for r in early] == [14, 18, 26, 38]  # 22, 30, 34 skipped
    assert opt.log[len(early) - 1]["timescale"] == {
        "name": "base", "stride": 4, "window": 3, "at_step": 38, "from_step": 38,
        "reason": "refusals"}
    assert [r["step"] for r in opt.log[len(early):]][:2] == [46, 54]
    assert opt.log[len(early) + 1]["timescale"]["name"] == "fine"
    assert not any(r["accepted"] for r in opt.log)
    assert w.item() == pytest.approx(-80e-3)


def _scripted_gate(monkeypatch, errors):
    """Replace the held-out error with a script (relative errors, one per gated window)."""
    import koopt.optim as koptim

    script = iter(errors)
    calls = []

    def fake(X, **options):
        e = next(script)
        calls.append(e)
        return e * e, 1.0

    monkeypatch.setattr(koptim, "holdout_error", fake)
    return calls


def test_gate_checks_every_window_until_two_pass_then_every_16th(monkeypatch):
    calls = _scripted_gate(monkeypatch, [0.3, 0.05, 0.05] + [0.01] * 100)
    model, check, _, train = regression(noise=0.0)
    opt = KoopmanOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=check)
    train(opt, 10 + 4 * 40)  # 40 early windows
    # windows 1-3 gated (fail, pass, pass: deterministic), then windows 16 and 32 only
    assert len(calls) == 5 and opt._deterministic and opt.timescale.name == "early"
    assert opt.log[0]["unfitted_windows"][0][0] == 14 and opt.log[0]["heldout_error"] == 0.05


def test_gate_without_a_verdict_ends_the_early_scale(monkeypatch):
    from koopt.optim import GATE_LIMIT

    calls = _scripted_gate(monkeypatch, [0.05, 0.3] * 20)  # pass, fail, pass, fail ...
    model, check, _, train = regression(noise=0.0)
    opt = KoopmanOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=check)
    train(opt, 10 + 4 * 12)
    assert len(calls) == GATE_LIMIT and opt.timescale.name == "base"
    assert "no two predictable windows" in opt.timescale_moves[0]["reason"]
    assert opt.timescale_moves[0]["at_step"] == 10 + 4 * GATE_LIMIT


def test_after_a_failed_periodic_check_the_next_window_is_checked(monkeypatch):
    # pass, pass (deterministic); window 16 fails, 17 is checked and passes; 32 fails,
    # 33 passes: isolated failures 16 windows apart are not "two in a row"
    calls = _scripted_gate(monkeypatch, [0.05, 0.05, 0.3, 0.05, 0.3, 0.05] + [0.05] * 20)
    model, check, _, train = regression(noise=0.0)
    opt = KoopmanOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=check)
    train(opt, 10 + 4 * 40)
    assert len(calls) == 6 and opt.timescale.name == "early" and not opt.timescale_moves


def test_the_verdict_comes_at_the_eighth_window(monkeypatch):
    from koopt.optim import GATE_LIMIT

    # fail, pass alternating: window 8 passes but no two passes in a row came before it
    calls = _scripted_gate(monkeypatch, [0.3, 0.05] * 10)
    model, check, _, train = regression(noise=0.0)
    opt = KoopmanOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=check)
    train(opt, 10 + 4 * 12)
    assert len(calls) == GATE_LIMIT and opt.timescale.name == "base"
    assert opt.timescale_moves[0]["at_step"] == 10 + 4 * GATE_LIMIT


def test_loading_a_checkpoint_applies_log_limit():
    model, check, _, train = regression(noise=0.0)
    opt = KoopmanOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=check)
    train(opt, 60)
    assert len(opt.log) > 3
    other = KoopmanOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), loss_fn=check,
                             log_limit=3)
    other.load_state_dict(opt.state_dict())
    assert other.log == opt.log[-3:] and len(other.state_dict()["koopman"]["log"]) == 3
