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
