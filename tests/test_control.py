"""HorizonController and its use by KoopmanOptimizer: grids move with the checks' outcomes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import koopt.optim as koptim
from koopt.control import HorizonController
from koopt.optim import KoopmanOptimizer


def test_grid_grows_after_longest_shrinks_after_shortest_and_refusals():
    c = HorizonController([2, 5, 10])
    assert c.candidates() == [2, 5, 10]
    c.update(True, 2, 3)  # the longest won: double
    assert c.scale == 2.0 and c.candidates() == [4, 10, 20]
    c.update(True, 1, 3)  # a middle one won: stay
    assert c.candidates() == [4, 10, 20]
    c.update(True, 2, 3)
    assert c.scale == 4.0 and c.candidates() == [8, 20, 40]
    c.update(True, 0, 3)  # the shortest won: halve
    assert c.scale == 2.0 and c.candidates() == [4, 10, 20]
    c.update(False, None, 3)  # refused: halve
    assert c.scale == 1.0 and c.candidates() == [2, 5, 10]
    c.update(False, None, 3)  # never below the base grid (min_scale 1)
    assert c.scale == c.min_scale == 1.0 and c.candidates() == [2, 5, 10]
    low = HorizonController([2, 5, 10], min_scale=0.25)
    for _ in range(5):
        low.update(False, None, 3)
    assert low.scale == 0.25 and low.candidates() == [1, 2]  # 0.5, 1.25, 2.5 rounded
    for _ in range(20):
        c.update(True, 2, 3)
    assert c.scale == c.max_scale == 64.0


def test_refusals_in_a_row_skip_fits_doubling_up_to_max_skip():
    c = HorizonController([1, 2], refusals_to_skip=2, max_skip=4)
    pattern = []
    for _ in range(6):  # six fits, all refused
        while not c.should_fit():
            pattern.append("skip")
        pattern.append("fit")
        c.update(False, None, 2)
    # refusal 2 -> skip 1, refusal 3 -> skip 2, refusal 4 -> skip 4, then capped at 4
    assert pattern == ["fit", "fit", "skip", "fit", "skip", "skip", "fit"] + ["skip"] * 4 + [
        "fit"
    ] + ["skip"] * 4 + ["fit"]
    assert c.skipped == 1 + 2 + 4 + 4
    c.update(True, 0, 2)  # an accept ends the skipping
    assert c.refusals_in_a_row == 0 and c.should_fit()


def test_default_skips_only_after_four_refusals_in_a_row():
    c = HorizonController([1, 2])
    for _ in range(3):
        c.update(False, None, 2)
        assert c.should_fit()
    c.update(False, None, 2)
    assert not c.should_fit() and c.should_fit()


def test_fixed_grid_and_state_round_trip():
    fixed = HorizonController([3, 6], adaptive=False)
    for _ in range(4):
        fixed.update(False, None, 2)
        assert fixed.should_fit()
    assert fixed.candidates() == [3, 6]
    c = HorizonController([3, 6])
    c.update(True, 1, 2)
    c.update(False, None, 2)
    d = HorizonController([3, 6])
    d.load_state_dict(c.state_dict())
    assert d.state_dict() == c.state_dict() and d.candidates() == c.candidates()
    with pytest.raises(ValueError):
        d.load_state_dict({**c.state_dict(), "scale": -1.0})


@pytest.mark.parametrize(
    "bad",
    [{"base": []}, {"base": [0, 2]}, {"grow": 1.0}, {"shrink": 1.5}, {"min_scale": 2.0},
     {"max_skip": -1}],
)
def test_bad_controller_options_are_rejected(bad):
    kwargs = {"base": [1, 2], **bad}
    base = kwargs.pop("base")
    with pytest.raises(ValueError):
        HorizonController(base, **kwargs)


# ---------------------------------------------------------------- inside KoopmanOptimizer
class LinearFit:
    """Stands in for fit_family: candidate h = last snapshot + h * (a fixed direction)."""

    def __init__(self, direction: torch.Tensor):
        self.direction = direction
        self.calls = 0

    def __call__(self, name, layout, snapshots, **options):
        self.calls += 1
        last, d = snapshots[-1].clone(), self.direction

        class Fitted:
            spectral_radius = 1.0

            def predict(self, h):
                if isinstance(h, list):
                    return torch.stack([last + k * d for k in h])
                return last + h * d

        return Fitted()


def toy(target: float):
    """One weight w, check loss (w - target)^2; training moves it by -1e-3 per step."""
    w = nn.Parameter(torch.zeros(1, dtype=torch.float64))
    loss = lambda: (w - target).square().sum()  # noqa: E731
    return w, loss


def train(opt, w, steps):
    for _ in range(steps):
        opt.zero_grad()
        w.sum().backward()  # gradient 1: SGD at lr 1e-3 moves w by -1e-3 per step
        opt.step()


def test_horizons_grow_while_the_longest_candidate_keeps_winning(monkeypatch):
    fake = LinearFit(torch.tensor([-1e-3], dtype=torch.float64))
    monkeypatch.setattr(koptim, "fit_family", fake)
    w, loss = toy(target=-100.0)  # far away: every jump wants to be as long as possible
    opt = KoopmanOptimizer(torch.optim.SGD([w], lr=1e-3), warmup=1, stride=1, window=3,
                           fast_start=False,
                           horizons=(1, 2, 4), loss_fn=loss, extend=3)
    train(opt, w, 1 + 2 * 4)  # 4 windows of 3 snapshots (the last of one starts the next)
    assert [r["horizons"] for r in opt.log] == [[1, 2, 4], [2, 4, 8], [4, 8, 16], [8, 16, 32]]
    # the longest kept improving: three doublings within each check (extend=3)
    assert [r["extended_horizons"] for r in opt.log] == [
        [8, 16, 32], [16, 32, 64], [32, 64, 128], [64, 128, 256]
    ]
    assert all(r["accepted"] and r["chosen"] == r["extended_horizons"][-1] for r in opt.log)
    assert opt.virtual_steps == 32 + 64 + 128 + 256
    assert w.item() == pytest.approx(-1e-3 * (9 + 480))  # 9 gradient steps + 480 jumped


def test_extension_stops_when_the_loss_rises_and_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(koptim, "fit_family", LinearFit(torch.tensor([-1e-3], dtype=torch.float64)))
    # after the first window (3 steps) w = -0.003; target -0.0135: best horizon 10.5 steps
    w, loss = toy(target=-0.0135)
    opt = KoopmanOptimizer(torch.optim.SGD([w], lr=1e-3), warmup=1, stride=1, window=3,
                           fast_start=False,
                           horizons=(1, 2, 4), loss_fn=loss, adaptive=False, extend=3)
    train(opt, w, 3)
    rec = opt.log[0]
    assert rec["losses"][-1] < rec["losses"][0]  # the longest grid candidate was the best
    assert rec["extended_horizons"] == [8, 16] and rec["chosen"] == 8  # 16 overshoots
    w2, loss2 = toy(target=-100.0)
    off = KoopmanOptimizer(torch.optim.SGD([w2], lr=1e-3), warmup=1, stride=1, window=3,
                           fast_start=False,
                           horizons=(1, 2, 4), loss_fn=loss2)  # the default: no extension
    train(off, w2, 3)
    assert "extended_horizons" not in off.log[0] and off.log[0]["chosen"] == 4
    with pytest.raises(ValueError):
        KoopmanOptimizer(torch.optim.SGD([w2], lr=1e-3), extend=-1)


def test_stop_on_rise_scores_shortest_first_and_stops_past_the_minimum(monkeypatch):
    direction = torch.tensor([-1e-3], dtype=torch.float64)
    monkeypatch.setattr(koptim, "fit_family", LinearFit(direction))
    # after the first window w = -0.003; target -0.006: loss 0 at 3 steps ahead, so of
    # candidates 1, 2, 4, 8 the losses fall, fall, rise: 8 is never scored
    calls = []
    w, loss = toy(target=-0.006)
    counted = lambda: calls.append(1) or loss()  # noqa: E731
    opt = KoopmanOptimizer(torch.optim.SGD([w], lr=1e-3), warmup=1, stride=1, window=3,
                           fast_start=False,
                           horizons=(1, 2, 4, 8), loss_fn=counted, adaptive=False,
                           stop_on_rise=True)
    train(opt, w, 3)
    rec = opt.log[0]
    assert rec["stopped_at"] == 2 and rec["losses"][3] is None and len(calls) == 4
    assert rec["accepted"] and rec["chosen"] == 2
    assert w.item() == pytest.approx(-0.005)
    # a refusal costs two evaluations: the current loss and the shortest candidate
    calls.clear()
    w2, loss2 = toy(target=1.0)  # every step ahead moves away from the target
    counted2 = lambda: calls.append(1) or loss2()  # noqa: E731
    refuse = KoopmanOptimizer(torch.optim.SGD([w2], lr=1e-3), warmup=1, stride=1, window=3,
                           fast_start=False,
                              horizons=(1, 2, 4, 8), loss_fn=counted2, stop_on_rise=True,
                              extend=3)
    train(refuse, w2, 3)
    rec = refuse.log[0]
    assert len(calls) == 2 and rec["stopped_at"] == 0 and not rec["accepted"]
    assert "extended_horizons" not in rec and w2.item() == pytest.approx(-0.003)


def test_refusals_shrink_then_skip_fits_and_state_dict_keeps_the_controller(monkeypatch):
    fake = LinearFit(torch.tensor([1.0], dtype=torch.float64))
    monkeypatch.setattr(koptim, "fit_family", fake)
    w, loss = toy(target=-1.0)  # every candidate moves away from the target: refused
    opt = KoopmanOptimizer(torch.optim.SGD([w], lr=1e-3), warmup=1, stride=1, window=3,
                           fast_start=False,
                           horizons=(4, 8), loss_fn=loss,
                           controller_options={"refusals_to_skip": 2})
    train(opt, w, 1 + 2 * 6)  # six full windows
    # fits at windows 1, 2 (refusals 1, 2), window 3 skipped (2 in a row), fit 4, skip 5 and 6
    assert fake.calls == 3 and opt.num_refused == 3 and opt.controller.skipped == 3
    assert [r["horizons"] for r in opt.log] == [[4, 8]] * 3  # refusals: back to the base grid
    assert w.item() == pytest.approx(-13e-3)  # restored every time: only the 13 steps
    state = opt.state_dict()["koopman"]["controllers"][0]
    assert state["scale"] == 1.0 and state["refusals_in_a_row"] == 3
    other = KoopmanOptimizer(torch.optim.SGD([w], lr=1e-3), warmup=1, stride=1, window=3,
                           fast_start=False,
                             horizons=(4, 8), loss_fn=loss,
                             controller_options={"refusals_to_skip": 2})
    other.load_state_dict(opt.state_dict())
    assert other.controller.state_dict() == opt.controller.state_dict()


def test_adaptive_false_and_unchecked_jumps_keep_the_grid(monkeypatch):
    monkeypatch.setattr(koptim, "fit_family", LinearFit(torch.tensor([-1e-3], dtype=torch.float64)))
    for check in (True, False):
        w, loss = toy(target=-100.0)
        kwargs = {"adaptive": False, "loss_fn": loss} if check else {"loss_fn": None}
        opt = KoopmanOptimizer(torch.optim.SGD([w], lr=1e-3), warmup=1, stride=1, window=3,
                           fast_start=False,
                               horizons=(1, 2), **kwargs)
        train(opt, w, 7)
        assert [r["horizons"] for r in opt.log] == [[1, 2]] * 3


def test_real_training_with_the_controller_still_restores_or_improves():
    torch.manual_seed(0)
    X = torch.randn(256, 4)
    y = torch.sin(X @ torch.tensor([[1.0], [-0.5], [0.3], [0.8]]))
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    check = lambda: F.mse_loss(model(X[:128]), y[:128])  # noqa: E731
    opt = KoopmanOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), warmup=10, stride=2,
                           window=5, horizons=(4, 8, 16), loss_fn=check)
    for i in range(200):
        idx = torch.arange(i % 4 * 64, i % 4 * 64 + 64)
        opt.zero_grad()
        F.mse_loss(model(X[idx]), y[idx]).backward()
        opt.step()
    assert opt.log and all(
        (r["loss_after"] < r["loss_before"]) if r["accepted"] else r.get("loss_after") is None
        for r in opt.log
    )
    # every fit's grid is the base grid scaled by a power of two, in snapshots
    for r in opt.log:
        assert len(r["horizons"]) >= 1 and all(h % 2 == 0 for h in r["horizons"])


def test_refusals_ask_for_the_next_timescale_while_moves_are_left_then_skip():
    c = HorizonController([1, 2], refusals_to_skip=2, moves=1)
    c.update(False, None, 2)
    c.update(False, None, 2)  # 2 in a row: ask for the next scale instead of skipping
    assert c.move_requested and c.moves_left == 0 and c.refusals_in_a_row == 0
    assert c.should_fit()
    c.move_requested = False  # the wrapper took it
    c.update(False, None, 2)
    c.update(False, None, 2)  # 2 in a row with no move left: now skip one window
    assert not c.move_requested and not c.should_fit() and c.should_fit()
    d = HorizonController([1, 2], refusals_to_skip=2, moves=1)
    d.load_state_dict(c.state_dict())
    assert d.moves_left == 0 and d.state_dict() == c.state_dict()
    old = dict(c.state_dict(), fine=True)  # a checkpoint from before the ladder, refined
    del old["moves_left"]
    e = HorizonController([1, 2], refusals_to_skip=2, moves=1)
    e.load_state_dict(old)
    assert e.moves_left == 0
    with pytest.raises(ValueError, match="moves"):
        HorizonController([1, 2], moves=-1)


def _refusing_wrapper(w, loss, **kwargs):
    return KoopmanOptimizer(torch.optim.SGD([w], lr=1e-3), warmup=1, stride=4, window=5,
                            horizons=(8, 16), loss_fn=loss, fast_start=False,
                            controller_options={"refusals_to_skip": 2}, **kwargs)


def test_wrapper_records_on_the_fine_timescale_after_refusals_and_resumes_there(monkeypatch):
    fake = LinearFit(torch.tensor([1e-3], dtype=torch.float64))
    monkeypatch.setattr(koptim, "fit_family", fake)
    w, loss = toy(target=-1.0)  # every candidate moves away from the target: refused
    opt = _refusing_wrapper(w, loss)
    train(opt, w, 41)
    # coarse windows (stride 4, 5 snapshots) end at 17 and 33; the second refusal in a row
    # switches to stride 2, window 3 (the grid keeps its snapshots: 2, 4 -> 4, 8 steps)
    assert [r["step"] for r in opt.log] == [17, 33, 37, 41]
    assert "timescale" not in opt.log[0]
    assert opt.log[1]["timescale"] == {"name": "fine", "stride": 2, "window": 3,
                                       "at_step": 33, "from_step": 33, "reason": "refusals"}
    assert [r["horizons"] for r in opt.log] == [[8, 16], [8, 16], [4, 8], [4, 8]]
    assert [r["snapshots"] for r in opt.log] == [5, 5, 3, 3]
    assert not any(r["accepted"] for r in opt.log) and w.item() == pytest.approx(-41e-3)
    assert not opt.controller.should_fit()  # 2 refusals on the fine scale: skip one window

    # saved in the middle of a fine window, resumed in a fresh wrapper: the same path
    w1, loss1 = toy(target=-1.0)
    first = _refusing_wrapper(w1, loss1)
    train(first, w1, 35)
    state = first.state_dict()
    moves = [{"name": "fine", "stride": 2, "window": 3, "at_step": 33, "from_step": 33,
              "reason": "refusals"}]
    assert state["koopman"]["timescale"] == {"name": "fine", "warmup": 33, "stride": 2,
                                             "window": 3, "heldout": [], "pending": {},
                                             "early_windows": 0, "deterministic": False,
                                             "recheck": False, "moves": moves}
    w2, loss2 = toy(target=-1.0)
    w2.data.copy_(w1.data)
    second = _refusing_wrapper(w2, loss2)
    second.load_state_dict(state)
    train(second, w2, 6)
    assert [r["step"] for r in second.log] == [17, 33, 37, 41]
    assert second.schedule.stride == 2 and second.window == 3
    assert torch.equal(w2, w)
    second.load_state_dict(_refusing_wrapper(w2, loss2).state_dict())  # a coarse checkpoint
    assert second.schedule.stride == 4 and second.window == 5
    # a checkpoint from before the time-scale ladder ("fine": True) resumes refined too
    legacy = first.state_dict()
    legacy["koopman"]["timescale"] = {"fine": True, "warmup": 33, "stride": 2, "window": 3}
    third = _refusing_wrapper(*toy(target=-1.0))
    third.load_state_dict(legacy)
    assert third.timescale.name == "fine" and third.schedule.stride == 2

    # refine=False: skipping starts right after the second coarse refusal
    w3, loss3 = toy(target=-1.0)
    plain = _refusing_wrapper(w3, loss3, refine=False)
    train(plain, w3, 41)
    assert [r["step"] for r in plain.log] == [17, 33] and plain.schedule.stride == 4
    for key in ("refine", "moves"):
        with pytest.raises(ValueError, match=key):
            KoopmanOptimizer(torch.optim.SGD([w3], lr=1e-3), controller_options={key: 1})
