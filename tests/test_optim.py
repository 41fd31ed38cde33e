"""KoopmanOptimizer: the torch.optim contract, real-training edge cases, checkpoints."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

import koopt.optim as koptim
from koopt.optim import JumpPrecisionWarning, KoopmanOptimizer
from koopt.snapshots import SnapshotBuffer, SnapshotSchedule

FAST = {"warmup": 2, "stride": 2, "window": 4, "horizons": (4, 8, 16), "fast_start": False}


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(64, 4, generator=g)
    y = torch.sin(X @ torch.tensor([[1.0], [-0.5], [0.3], [0.8]]))
    return X, y


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, X, y, start: int = 0):
    for i in range(start, start + steps):
        idx = torch.arange(i % 4 * 16, i % 4 * 16 + 16)
        opt.zero_grad()
        F.mse_loss(model(X[idx]), y[idx]).backward()
        opt.step()


def wrapped(model: nn.Module, lr: float = 1e-2, **options) -> KoopmanOptimizer:
    X, y = data()
    opts = {**FAST, "loss_fn": lambda: F.mse_loss(model(X), y), "module": model}
    opts.update(options)
    return KoopmanOptimizer(torch.optim.Adam(model.parameters(), lr=lr), **opts)


class FakeFit:
    """Stands in for fit_family: candidates computed from the last snapshot."""

    def __init__(self, make):
        self.make = make
        self.calls: list[list[torch.Tensor]] = []

    def __call__(self, name, layout, snapshots, **options):
        self.calls.append([p.detach().clone() for p in layout.params])
        make, last = self.make, snapshots[-1]

        class Fitted:
            spectral_radius = 0.5

            def predict(self, h):
                if isinstance(h, int):
                    return make(last, h)
                return torch.stack([make(last, k) for k in h])

        return Fitted()


# ---------------------------------------------------------------------------- the contract
def test_optimizer_contract_and_scheduler():
    model = mlp()
    opt = wrapped(model)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.optimizer.param_groups
    assert opt.state is opt.optimizer.state
    assert "step" not in vars(opt.optimizer)  # the inner step is not replaced
    X, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        for _ in range(10):
            loss = opt.step(lambda: (opt.zero_grad(), F.mse_loss(model(X), y).backward())[0])
            sched.step()
    assert loss is None  # the closure's return value (here None) is passed through

    def closure():
        opt.zero_grad()
        out = F.mse_loss(model(X), y)
        out.backward()
        return out

    assert isinstance(opt.step(closure), torch.Tensor)
    assert opt.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    hooked = []
    opt.register_step_post_hook(lambda o, a, k: hooked.append(o))
    opt.step(closure)
    assert hooked == [opt]


def test_jumps_are_logged_to_python_json_and_tensorboard(tmp_path):
    class Writer:
        def __init__(self):
            self.scalars: list[tuple[str, float, int]] = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    model, writer, path = mlp(), Writer(), tmp_path / "jumps.jsonl"
    opt = wrapped(model, writer=writer, log_path=str(path))
    X, y = data()
    train(model, opt, 40, X, y)
    assert len(opt.log) == opt.num_accepted + opt.num_refused >= 3
    rec = opt.log[0]
    assert rec["step"] == 8 and rec["horizons"] == [4, 8, 16]
    for key in ("losses", "loss_before", "chosen", "accepted", "spectral_radius", "time_s"):
        assert key in rec
    assert len(rec["losses"]) == 3 and math.isfinite(rec["loss_before"])
    assert opt.num_accepted >= 1
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == json.loads(json.dumps(opt.log))
    tags = {t for t, _, _ in writer.scalars}
    assert {"koopt/accepted", "koopt/time_s", "koopt/loss_before"} <= tags


def test_refused_candidates_restore_weights_bit_for_bit(monkeypatch):
    # one non-finite candidate, the others far worse: refused, weights exactly as before
    fake = FakeFit(lambda last, h: last + 5.0 * h if h != 2 else last * math.nan)
    monkeypatch.setattr(koptim, "fit_family", fake)
    model = mlp()
    opt = wrapped(model, horizons=(4, 8))
    X, y = data()
    train(model, opt, 8, X, y)  # the first fit happens inside step 8
    assert len(fake.calls) == 1 and opt.num_refused == 1 and opt.num_accepted == 0
    for before, p in zip(fake.calls[0], model.parameters(), strict=True):
        assert torch.equal(before, p)
    rec = opt.log[0]
    assert rec["losses"][0] is None and rec["losses"][1] > rec["loss_before"]
    assert not rec["accepted"]
    train(model, opt, 4, X, y, start=8)  # training goes on


def test_all_nonfinite_and_failed_fits_are_refused(monkeypatch):
    monkeypatch.setattr(koptim, "fit_family", FakeFit(lambda last, h: last * math.inf))
    model = mlp()
    opt = wrapped(model)
    X, y = data()
    train(model, opt, 8, X, y)
    assert opt.log[0]["reason"] == "all candidates non-finite"

    def broken(*a, **k):
        raise ValueError("singular")

    monkeypatch.setattr(koptim, "fit_family", broken)
    train(model, opt, 6, X, y, start=8)
    assert opt.log[-1]["reason"].startswith("fit failed") and opt.num_accepted == 0


def test_loss_fn_error_restores_and_propagates(monkeypatch):
    monkeypatch.setattr(koptim, "fit_family", FakeFit(lambda last, h: last + 0.01))
    model = mlp()
    calls = []

    def loss_fn():
        calls.append(1)
        if len(calls) == 2:  # fails on the first candidate, after it was written
            raise RuntimeError("boom")
        return 1.0

    opt = wrapped(model, loss_fn=loss_fn)
    X, y = data()
    train(model, opt, 7, X, y)
    opt.zero_grad()
    F.mse_loss(model(X), y).backward()
    opt.optimizer.step()  # step 8 by hand, so the weights before the jump can be kept
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        opt.record_step()
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert opt.num_refused == 1


# ---------------------------------------------------------------------------- real training
def test_frozen_lr0_and_gradless_params_are_not_recorded_and_untouched():
    torch.manual_seed(0)
    frozen, zero_lr, used, unused = (nn.Linear(4, 4) for _ in range(4))
    frozen.requires_grad_(False)
    params = {
        "frozen": list(frozen.parameters()),
        "zero_lr": list(zero_lr.parameters()),
        "unused": list(unused.parameters()),
    }
    originals = {k: [p.detach().clone() for p in v] for k, v in params.items()}
    inner = torch.optim.Adam(
        [
            {"params": list(used.parameters()) + params["unused"] + params["frozen"]},
            {"params": params["zero_lr"], "lr": 0.0},
        ],
        lr=1e-2,
    )
    X, y = data()
    y4 = y.repeat(1, 4)

    def forward():
        return used(zero_lr(frozen(X)))

    opt = KoopmanOptimizer(inner, **FAST, loss_fn=lambda: F.mse_loss(forward(), y4))
    for _ in range(40):
        opt.zero_grad()
        F.mse_loss(forward(), y4).backward()
        opt.step()
    assert opt.num_accepted >= 1
    windows = opt.koopman_state_dict()["windows"]
    assert set(windows) == {0} and windows[0]["params"] == [0, 1]  # used.weight, used.bias
    for k, v in params.items():
        for before, p in zip(originals[k], v, strict=True):
            assert torch.equal(before, p), k


def test_unfrozen_parameters_join_at_the_next_window():
    model = mlp()
    model[2].requires_grad_(False)  # the head starts frozen (fine-tuning style)
    opt = wrapped(model)
    X, y = data()
    train(model, opt, 8, X, y)
    model[2].requires_grad_(True)
    train(model, opt, 12, X, y, start=8)
    assert [(r["step"], r["n_params"]) for r in opt.log] == [(8, 40), (14, 40), (20, 49)]


def test_tied_weights_recorded_once_moved_once_stay_tied():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(4, 4, bias=False)
            self.dec = nn.Linear(4, 4)
            self.dec.weight = self.enc.weight

        def forward(self, x):
            return self.dec(torch.tanh(self.enc(x)))

    torch.manual_seed(0)
    model = Tied()
    X, y = data()
    y4 = y.repeat(1, 4)
    opt = KoopmanOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2),
        **FAST,
        loss_fn=lambda: F.mse_loss(model(X), y4),
        module=model,
    )
    for _ in range(40):
        opt.zero_grad()
        F.mse_loss(model(X), y4).backward()
        opt.step()
    assert opt.num_accepted >= 1
    assert model.dec.weight is model.enc.weight
    assert opt.log[0]["n_params"] == 16 + 4  # shared weight counted once, plus dec.bias


def test_writes_are_in_place_and_optimizer_state_still_applies(monkeypatch):
    monkeypatch.setattr(koptim, "fit_family", FakeFit(lambda last, h: last + 1e-3 * h))
    model = mlp()
    ids = [(id(p), p.data_ptr()) for p in model.parameters()]
    opt = wrapped(model, loss_fn=iter([1.0, 0.5, 0.7, 0.9]).__next__, state_policy="keep")
    X, y = data()
    train(model, opt, 8, X, y)
    assert opt.num_accepted == 1 and opt.log[0]["chosen"] == 4
    assert [(id(p), p.data_ptr()) for p in model.parameters()] == ids
    assert set(opt.optimizer.state) == set(model.parameters())
    after_jump = [p.detach().clone() for p in model.parameters()]
    train(model, opt, 1, X, y, start=8)
    assert all(not torch.equal(a, p) for a, p in zip(after_jump, model.parameters(), strict=True))


def test_state_policy_reset_scheduler_advance_and_bn_hook(monkeypatch):
    monkeypatch.setattr(koptim, "fit_family", FakeFit(lambda last, h: last + 1e-3 * h))
    model = mlp()
    recal = []
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(inner, lambda s: 1.0)
    losses = iter([1.0, 0.9, 0.5, 0.8])
    opt = KoopmanOptimizer(
        inner,
        **FAST,
        loss_fn=losses.__next__,
        state_policy="reset",
        scheduler=sched,
        bn_recalibrate=lambda: recal.append(1),
    )
    X, y = data()
    for _ in range(8):
        opt.zero_grad()
        F.mse_loss(model(X), y).backward()
        opt.step()
        sched.step()
        if opt.num_accepted:
            break
    assert opt.log[0]["chosen"] == 8
    assert len(inner.state) == 0  # moments cleared right after the jump
    assert sched.last_epoch == 8 + 8  # 8 gradient steps + the 8-step jump
    assert recal == [1]
    train(model, opt, 1, X, y, start=8)
    assert len(inner.state) == len(list(model.parameters()))


def test_bf16_snapshots_in_float32_and_precision_warning(monkeypatch):
    model = mlp().to(torch.bfloat16)
    X, y = data()
    Xb, yb = X.bfloat16(), y.bfloat16()
    opt = KoopmanOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        **FAST,
        loss_fn=lambda: F.mse_loss(model(Xb).float(), y),
    )
    for _ in range(7):
        opt.zero_grad()
        F.mse_loss(model(Xb).float(), yb.float()).backward()
        opt.step()
    assert opt._windows[0].buffer.dtype == torch.float32
    monkeypatch.setattr(koptim, "fit_family", FakeFit(lambda last, h: last + 1e-6 * h))
    with pytest.warns(JumpPrecisionWarning):
        opt.zero_grad()
        F.mse_loss(model(Xb).float(), yb.float()).backward()
        opt.step()
    assert opt.log[-1]["unrepresented_fraction"] > 0.5
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_integer_buffers_never_touched():
    class WithBuffers(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)
            self.register_buffer("count", torch.tensor([3, 5], dtype=torch.int64))
            self.register_buffer("scale", torch.ones(1))

        def forward(self, x):
            return self.lin(x) * self.scale

    torch.manual_seed(0)
    model = WithBuffers()
    X, y = data()
    opt = KoopmanOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        **FAST,
        loss_fn=lambda: F.mse_loss(model(X), y),
    )
    for _ in range(30):
        opt.zero_grad()
        F.mse_loss(model(X), y).backward()
        opt.step()
    assert opt.num_accepted >= 1
    assert torch.equal(model.count, torch.tensor([3, 5])) and model.count.dtype == torch.int64
    assert torch.equal(model.scale, torch.ones(1))


def test_added_group_starts_its_own_window_and_empty_groups_are_fine():
    model, extra = mlp(), nn.Linear(1, 1)
    opt = wrapped(model)
    X, y = data()

    def run(steps):
        for _ in range(steps):
            opt.zero_grad()
            F.mse_loss(extra(model(X)), y).backward()
            opt.step()

    run(5)  # snapshots at 2 and 4
    opt.add_param_group({"params": []})
    opt.add_param_group({"params": list(extra.parameters()), "lr": 1e-2})
    assert len(opt.optimizer.param_groups) == 3
    run(1)  # step 6: group 0 has 3 snapshots, group 2 its first
    rows = {gi: len(w.buffer) for gi, w in opt._windows.items()}
    assert rows == {0: 3, 2: 1}
    run(2)  # step 8: group 0 jumps alone
    assert opt.log[0]["groups"] == [0]
    run(6)  # step 14: group 2's window is full
    assert [r["groups"] for r in opt.log] == [[0], [2], [0]]
    sd = opt.state_dict()
    assert sd["param_groups"][1]["params"] == []


def test_unchanged_weights_add_no_duplicate_snapshot():
    model = nn.Linear(4, 1)
    X, y = data()
    opt = KoopmanOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), warmup=1, stride=1, window=4
    )
    scaler = torch.amp.GradScaler("cpu")

    def scaled_step(overflow: bool):
        opt.zero_grad()
        scaler.scale(F.mse_loss(model(X), y)).backward()
        if overflow:
            model.weight.grad.fill_(math.inf)
        scaler.step(opt)
        scaler.update()

    scaled_step(False)
    scaled_step(False)
    assert len(opt._windows[0].buffer) == 2
    scaled_step(True)  # GradScaler skips the inner step: no step, no snapshot
    assert opt.steps == 2 and len(opt._windows[0].buffer) == 2
    # a step that leaves the weights as they were (zero gradient) adds no duplicate row
    opt.zero_grad()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert opt.steps == 3 and len(opt._windows[0].buffer) == 2


# ---------------------------------------------------------------------------- checkpoints
def _fresh(seed: int = 0):
    model = mlp(seed)
    X, y = data(seed)
    opt = KoopmanOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2),
        **FAST,
        loss_fn=lambda: F.mse_loss(model(X), y),
        module=model,
    )
    return model, opt, X, y


def test_resume_after_7_steps_is_bit_identical():
    model, opt, X, y = _fresh()
    train(model, opt, 30, X, y)
    assert opt.num_accepted >= 1
    reference = [p.detach().clone() for p in model.parameters()]

    model, opt, X, y = _fresh()
    train(model, opt, 7, X, y)
    assert 0 < len(opt._windows[0].buffer) < 4  # a partial window is in the checkpoint
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model, opt, X, y = _fresh()
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    train(model, opt, 23, X, y, start=7)
    for a, b in zip(reference, model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt.steps == 30 and opt.log[0]["step"] == 8


_RESUME = """
import sys, importlib.util, torch
spec = importlib.util.spec_from_file_location("t", sys.argv[1])
t = importlib.util.module_from_spec(spec)
spec.loader.exec_module(t)
model, opt, X, y = t._fresh()
ckpt = torch.load(sys.argv[2], weights_only=True)
model.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["opt"])
t.train(model, opt, 23, X, y, start=7)
torch.save([p.detach() for p in model.parameters()], sys.argv[3])
"""


def test_resume_in_a_new_process_is_bit_identical(tmp_path):
    model, opt, X, y = _fresh()
    train(model, opt, 30, X, y)
    reference = [p.detach().clone() for p in model.parameters()]
    model, opt, X, y = _fresh()
    train(model, opt, 7, X, y)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    out = tmp_path / "final.pt"
    subprocess.run(
        [sys.executable, "-c", _RESUME, __file__, str(tmp_path / "ckpt.pt"), str(out)],
        check=True,
        timeout=120,
    )
    for a, b in zip(reference, torch.load(out, weights_only=True), strict=True):
        assert torch.equal(a, b)


def test_state_dict_is_keyed_like_torch():
    model, opt, X, y = _fresh()
    train(model, opt, 7, X, y)
    sd = opt.state_dict()
    plain = opt.optimizer.state_dict()
    assert sd["param_groups"] == plain["param_groups"] and set(sd["state"]) == {0, 1, 2, 3}
    assert sd["koopman"]["windows"][0]["params"] == [0, 1, 2, 3]
    # the inner optimizer alone can load it (the extra key is ignored)
    torch.optim.Adam(mlp().parameters(), lr=1e-2).load_state_dict(sd)


def test_loading_into_a_changed_model_is_a_clear_error():
    model, opt, X, y = _fresh()
    train(model, opt, 7, X, y)
    sd = opt.state_dict()
    bigger = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    other = KoopmanOptimizer(torch.optim.Adam(bigger.parameters(), lr=1e-2), **FAST)
    with pytest.raises(ValueError, match="changed between save and load"):
        other.load_state_dict(sd)
    reshaped = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1))
    other = KoopmanOptimizer(torch.optim.Adam(reshaped.parameters(), lr=1e-2), **FAST)
    with pytest.raises(ValueError, match=r"parameter 0 has shape \[8, 4\]"):
        other.load_state_dict(sd)


def test_docs_example_runs_as_written():
    text = (Path(__file__).parents[1] / "docs" / "optimizer.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert re.match(r"jumps: [1-9]\d* accepted, \d+ refused, \d+ steps skipped", out.stdout)


# ---------------------------------------------------------------------------- small pieces
def test_snapshot_schedule_and_buffer():
    s = SnapshotSchedule(warmup=5, stride=3)
    assert [t for t in range(1, 15) if s.due(t)] == [5, 8, 11, 14]
    assert [t for t in range(1, 4) if SnapshotSchedule().due(t)] == [1, 2, 3]
    b = SnapshotBuffer(3, 2)
    assert b.append(torch.tensor([1.0, 2.0])) and not b.append(torch.tensor([1.0, 2.0]))
    b.append(torch.tensor([2.0, 2.0]))
    b.append(torch.tensor([3.0, 2.0]))
    assert b.full
    b.append(torch.tensor([4.0, 2.0]))  # slides
    assert b.rows()[:, 0].tolist() == [2.0, 3.0, 4.0]
    b.clear(keep_last=True)
    assert b.rows().tolist() == [[4.0, 2.0]]
    c = SnapshotBuffer(3, 2, dtype=torch.float64)
    c.load_state_dict(b.state_dict())
    assert c.rows().dtype == torch.float64 and len(c) == 1
    with pytest.raises(ValueError):
        SnapshotBuffer(3, 2, dtype=torch.bfloat16)


def test_bad_options_are_rejected():
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    for bad in ({"family": "nodes"}, {"state_policy": "rescale"}, {"window": 1}, {"horizons": ()}):
        with pytest.raises(ValueError):
            KoopmanOptimizer(opt, **bad)
    # fit options fail at construction, not as a refusal at every window of training
    for bad, says in (({"stabilize": "foo"}, "stabilize"), ({"rank": 0}, "rank"),
                      ({"family": "quasi_node", "family_options": {"q": 0}}, "q must be"),
                      ({"family_options": {"bogus": 1}}, "bogus")):
        with pytest.raises(ValueError, match=says):
            KoopmanOptimizer(opt, **bad)
    state = torch.get_rng_state()
    KoopmanOptimizer(opt, family="node")  # the option check leaves the global RNG alone
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(TypeError):
        KoopmanOptimizer(KoopmanOptimizer(opt))
    for bad, says in (({"stride": 2.5}, "stride must be a whole number"),
                      ({"warmup": 1.5}, "warmup must be a whole number"),
                      ({"loss_fn": 3.0}, "loss_fn must be a callable")):
        with pytest.raises(TypeError, match=says):
            KoopmanOptimizer(opt, **bad)
    for path in ("/", "/nonexistent-koopt-dir/log.jsonl"):
        with pytest.raises(ValueError, match="log_path"):
            KoopmanOptimizer(opt, log_path=path)


def test_loss_fn_returning_no_single_number_is_named_and_logged():
    model = mlp()
    opt = wrapped(model, loss_fn=lambda: torch.ones(3))
    X, y = data()
    with pytest.raises(TypeError, match="loss_fn must return one number"):
        train(model, opt, 20, X, y)
    assert opt.log[-1]["reason"].startswith("check raised TypeError")
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_step_hooks_global_hooks_and_closure_without_torch_profiler_wrapper():
    model = mlp()
    opt = wrapped(model)
    X, y = data()
    calls: list[str] = []
    h1 = opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    h2 = register_optimizer_step_post_hook(
        lambda o, a, k: calls.append("global-post") if o is opt else None
    )
    try:

        def closure():
            opt.zero_grad()
            loss = F.mse_loss(model(X), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        assert isinstance(loss, torch.Tensor) and loss.item() > 0
        assert calls[0] == "pre" and "global-post" in calls
        assert getattr(KoopmanOptimizer.step, "hooked", False) and opt.steps == 1
    finally:
        h1.remove()
        h2.remove()


def test_unchecked_jump_refuses_implausibly_far_candidates_and_weights_stay_finite():
    # single-weight operators without a constant term or clipping on a noisy Adam run
    # fit growing 1x1 "operators" (|lambda| up to 1.5): a 400-step unchecked jump used to
    # write 1e34 into the model, NaN from the next step on
    torch.manual_seed(0)
    X, y = torch.randn(128, 6), torch.randn(128, 1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = KoopmanOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), warmup=5, stride=2,
                           window=5, family="single_weight", affine=False, stabilize="none",
                           horizons=(400,))
    for i in range(60):
        idx = torch.arange(i % 4 * 32, i % 4 * 32 + 32)
        opt.zero_grad()
        F.mse_loss(model(X[idx]), y[idx]).backward()
        opt.step()
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert opt.log and not any(r["accepted"] for r in opt.log)
    assert any(r.get("implausible") for r in opt.log)
    assert all("implausibly far" in r["reason"] or "non-finite" in r["reason"]
               for r in opt.log)
    # the bound: 10 x horizon x the window's mean step
    biggest = max(float(p.detach().abs().max()) for p in model.parameters())
    assert biggest < 10.0


def test_a_failing_post_jump_hook_propagates_and_leaves_the_wrapper_consistent(monkeypatch):
    monkeypatch.setattr(koptim, "fit_family", FakeFit(lambda last, h: last - 0.01))
    model = mlp()

    def broken_bn() -> None:
        raise RuntimeError("loader exhausted")

    X, y = data()
    check = lambda: F.mse_loss(model(X), y)  # noqa: E731
    opt = wrapped(model, loss_fn=check, bn_recalibrate=broken_bn)
    with pytest.raises(RuntimeError, match="loader exhausted"):
        train(model, opt, 40, X, y)
    rec = opt.log[-1]
    assert rec["accepted"] and rec["reason"].startswith("accepted, then a post-jump hook")
    assert opt.num_accepted == 1 and opt.virtual_steps == rec["chosen"] > 0
    assert all(len(w.buffer) == 1 for w in opt._windows.values())  # the next window is open


def test_bad_hooks_and_horizons_are_refused_at_construction():
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(TypeError, match="bn_recalibrate"):
        KoopmanOptimizer(opt, bn_recalibrate=5)
    with pytest.raises(TypeError, match="writer"):
        KoopmanOptimizer(opt, writer=5)
    with pytest.raises(TypeError, match="horizons"):
        KoopmanOptimizer(opt, horizons="20")
    for bad in ([float("nan")], [1.5, 2.7], [True]):
        with pytest.raises(ValueError, match="whole step counts"):
            KoopmanOptimizer(opt, horizons=bad)
    assert KoopmanOptimizer(opt, horizons=np.array([20, 40])).horizons == [20, 40]


def test_a_nan_check_loss_is_refused_and_named_in_the_log(monkeypatch):
    monkeypatch.setattr(koptim, "fit_family", FakeFit(lambda last, h: last + 0.01))
    model = mlp()
    calls = []

    def loss_fn():  # the current weights score 1.0, every candidate NaN
        calls.append(1)
        return 1.0 if len(calls) % 3 == 1 else float("nan")

    opt = wrapped(model, loss_fn=loss_fn, horizons=(4, 8), adaptive=False)
    X, y = data()
    train(model, opt, 8, X, y)  # snapshots at steps 2, 4, 6, 8: one check
    rec = opt.log[0]
    assert not rec["accepted"] and rec["nonfinite_losses"] == [0, 1]
    assert rec["reason"] == "no candidate beats the current loss"
    assert json.loads(json.dumps(opt.log[0]))["losses"] == [None, None]
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_flags_schedulers_and_controller_options_are_checked_at_construction():
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for flag in ("fast_start", "refine", "adaptive", "stop_on_rise", "affine"):
        with pytest.raises(TypeError, match=flag):
            KoopmanOptimizer(opt, **{flag: "no"})
    with pytest.raises(ValueError, match=r"unknown \['grwo'\].*grow"):
        KoopmanOptimizer(opt, controller_options={"grwo": 2.0})
    with pytest.raises(ValueError, match="grow"):  # a known option with a bad value
        KoopmanOptimizer(opt, controller_options={"grow": 0.5})
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=300)
    with pytest.raises(TypeError, match="OneCycleLR.*total_steps.*scheduler= out"):
        KoopmanOptimizer(opt, scheduler=one_cycle)


def test_the_wrapper_step_can_be_compiled_and_jumps_as_in_eager():
    def run(compiled: bool):
        model = mlp()
        X, y = data()
        opt = wrapped(model, fast_start=True, warmup=10)
        step = torch.compile(opt.step, backend="eager") if compiled else opt.step
        for i in range(40):
            idx = torch.arange(i % 4 * 16, i % 4 * 16 + 16)
            opt.zero_grad()
            F.mse_loss(model(X[idx]), y[idx]).backward()
            step()
        return model, opt

    (m_eager, o_eager), (m_comp, o_comp) = run(False), run(True)
    assert o_comp.num_accepted == o_eager.num_accepted >= 1
    assert [r["step"] for r in o_comp.log] == [r["step"] for r in o_eager.log]
    for a, b in zip(m_eager.parameters(), m_comp.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_log_limit_keeps_the_latest_records_and_log_path_keeps_all(tmp_path, monkeypatch):
    monkeypatch.setattr(koptim, "fit_family", FakeFit(lambda last, h: last + 1e-3 * h))
    model = mlp()
    path = tmp_path / "fits.jsonl"
    falling = iter(range(10_000, 0, -1))  # every candidate beats the loss before it
    opt = wrapped(model, log_limit=2, log_path=str(path), loss_fn=lambda: float(next(falling)))
    X, y = data()
    train(model, opt, 2 + 6 * 5, X, y)  # 5 windows of 4 snapshots at stride 2
    assert len(opt.log) == 2 and opt.num_accepted + opt.num_refused == 5
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 5 and [r["step"] for r in opt.log] == [r["step"] for r in lines[-2:]]
    assert len(opt.state_dict()["koopman"]["log"]) == 2
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="log_limit"):
            wrapped(mlp(), log_limit=bad)
