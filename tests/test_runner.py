"""The shared cycle: exact bookkeeping on a toy task, and a diverging jump is reported."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from koopt.core.errors import DivergentPredictionError
from koopt.experiments import runner
from koopt.experiments.runner import CycleConfig, run_experiment, run_seed
from koopt.report import render_markdown, summary_table, write_report


class LinearTask:
    """w <- 0.9 w + 0.1 (a node-wise linear map): node operators predict it exactly."""

    name = "toy"

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = nn.Linear(3, 2).double()

    def step(self) -> torch.Tensor:
        with torch.no_grad():
            for p in self.model.parameters():
                p.mul_(0.9).add_(0.1)
        return torch.tensor(self.evaluate()["train"])

    def evaluate(self) -> dict[str, float]:
        w = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
        return {"train": float((w - 1.0).square().sum()) + 1e-3}


def test_linear_dynamics_are_jumped_exactly() -> None:
    cfg = CycleConfig(experiment="toy", t1=3, window=12, horizon=7, seeds=[0],
                      family_options={"affine": True})
    rec, trace = run_seed(LinearTask(0), cfg, 0, keep_trace=True)
    assert rec["t2"] == 15 and rec["n_params"] == 8 and rec["n_operators"] == 2
    assert rec["rho_train"] == pytest.approx(1.0, rel=1e-6)
    assert rec["error2growth"] < 1e-6
    assert rec["loss_koopman"] == pytest.approx(rec["loss_optimizer"], rel=1e-6)
    assert rec["valid_horizon"] == 7 and not rec["diverged"]
    # linear extrapolation and the window mean are worse than the exact jump here
    assert rec["error2growth_linear"] > 0.01 and rec["error2growth_window_mean"] > 1
    assert trace is not None and trace.step_losses.shape == (22,)
    assert trace.koop_steps[-1] == 22 and trace.opt_steps[-1] == 22


class _Exploding:
    n_operators = 1
    spectral_radius = 2.0
    eigenvalues = torch.tensor([2.0 + 0j])

    def predict(self, h):
        raise DivergentPredictionError("growing modes")


def test_diverging_jump_is_recorded_not_hidden(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(runner, "fit_family", lambda *a, **k: _Exploding())
    cfg = CycleConfig(experiment="toy", t1=2, window=5, horizon=3, seeds=[0, 1])
    results, trace = run_experiment(LinearTask, cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())  # strict JSON
    rec = saved["runs"][0]
    assert rec["diverged"] is True and rec["loss_koopman"] is None and rec["rho_train"] is None
    assert rec["error2growth"] is None and rec["loss_no_jump"] is not None
    assert saved["summary"]["rho_train"]["n_nonfinite"] == 2
    assert math.isinf(results["runs"][0]["rho_train"])
    write_report(results, trace, tmp_path)
    md = render_markdown(saved)
    assert "non-finite" in md and "| 0 |" in md
    summary_table(saved, width=80)
    assert (tmp_path / "loss.png").exists() and (tmp_path / "jump_scatter.png").exists()


class _DivergingTask(LinearTask):
    """LinearTask whose loss (``how="nan"``), weights (``"weights"``) or optimizer step
    (``"raise"``) blows up from step ``at`` on."""

    def __init__(self, seed: int, how: str = "nan", at: int = 4) -> None:
        super().__init__(seed)
        self.how, self.at, self.n = how, at, 0

    def step(self) -> torch.Tensor:
        self.n += 1
        if self.n < self.at:
            return super().step()
        if self.how == "raise":
            raise RuntimeError("value cannot be converted to type float without overflow")
        if self.how == "weights":
            with torch.no_grad():
                self.model.weight.fill_(math.nan)
            return torch.tensor(1.0)
        return torch.tensor(math.inf)


@pytest.mark.parametrize("how, at, needle", [
    ("nan", 4, "the training loss became inf at step 4"),
    ("nan", 20, "the training loss became inf at step 20"),  # in the continuation
    ("raise", 1, "optimizer step 1 failed (value cannot be converted"),
    ("weights", 9, "the weights became non-finite"),
])
def test_diverging_optimizer_is_one_clear_error(how, at, needle) -> None:
    cfg = CycleConfig(experiment="toy", t1=3, window=12, horizon=7, seeds=[0], lr=1e12)
    with pytest.raises(runner.TrainingDiverged) as exc:
        run_seed(_DivergingTask(2, how, at), cfg, 2)
    msg = str(exc.value)
    assert msg.startswith("seed 2 (adadelta, lr 1e+12): ") and needle in msg
    assert "use a smaller --lr" in msg and "\n" not in msg


def test_failed_run_is_marked_failed_keeping_finished_seeds(tmp_path) -> None:
    cfg = CycleConfig(experiment="toy", t1=2, window=5, horizon=3, seeds=[0, 1, 2])

    def make(seed: int) -> LinearTask:
        return _DivergingTask(seed, "nan", 3) if seed == 1 else LinearTask(seed)

    with pytest.raises(runner.TrainingDiverged, match="seed 1 "):
        run_experiment(make, cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "failed" and "seed 1 " in saved["error"]
    assert [r["seed"] for r in saved["runs"]] == [0]


def test_a_window_too_large_for_memory_is_a_clear_error() -> None:
    cfg = CycleConfig(experiment="toy", t1=0, window=10**15, horizon=1, seeds=[0])
    with pytest.raises(ValueError, match=r"cannot allocate .* GiB for the losses"):
        run_seed(LinearTask(0), cfg, 0)


class _FrozenTask(LinearTask):
    """Weights that never move: movement 0, so error2growth is 0/0 for exact predictions."""

    def step(self) -> torch.Tensor:
        return torch.tensor(self.evaluate()["train"])


def test_error2growth_of_unmoved_weights_is_undefined_not_zero(tmp_path) -> None:
    cfg = CycleConfig(experiment="toy", t1=2, window=6, horizon=3, seeds=[0, 1])
    results, _ = run_experiment(_FrozenTask, cfg, tmp_path)
    for rec in results["runs"]:  # window mean and linear extrapolation stay exactly put
        assert math.isnan(rec["error2growth_window_mean"])
        assert math.isnan(rec["methods"]["linear"]["at"]["3"]["error2growth"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"][0]["error2growth_window_mean"] is None
    assert saved["summary"]["error2growth_window_mean"]["median"] is None
    md = render_markdown(saved)
    row = next(line for line in md.splitlines() if line.startswith("| window mean"))
    assert row.split("|")[-2].strip() == "– (2 non-finite)"  # the error2growth column
    grid_row = next(line for line in md.splitlines() if line.startswith("| linear |"))
    assert grid_row.split("|")[3].strip().startswith("– (")  # error2growth at T = 3
