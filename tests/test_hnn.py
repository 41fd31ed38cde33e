"""The HNN experiment's physics and training loop (Dogra & Redman 2020, Sec. 4.1)."""

from __future__ import annotations

import math

import pytest
import torch

from koopt.experiments.hnn import (
    HNNConfig,
    HNNet,
    HNNTask,
    exact_linear_solution,
    hamiltonian_loss,
    hamiltonian_loss_fast,
    parametric_solution,
    perturb_points,
)
from koopt.layout import ParameterLayout

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one thread is faster, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _grid(n: int = 200) -> torch.Tensor:
    return torch.linspace(0.0, 4 * math.pi, n, dtype=F64).unsqueeze(1)


def test_loss_vanishes_on_exact_linear_solution() -> None:
    # lambda = 0: x = x0 cos t + p0 sin t, p = -x0 sin t + p0 cos t solves x' = p, p' = -x
    sol = exact_linear_solution(1.3, 1.0)
    assert hamiltonian_loss(_grid(), sol, lam=0.0).item() < 1e-10
    cfg = HNNConfig(lam=0.0)
    noise = torch.randn((200, 1), generator=torch.Generator().manual_seed(0), dtype=F64)
    t = perturb_points(_grid(), noise, cfg)
    assert hamiltonian_loss(t, sol, lam=0.0).item() < 1e-10


def test_loss_detects_wrong_solutions() -> None:
    sol = exact_linear_solution(1.3, 1.0)
    # the linear solution does not solve the nonlinear oscillator: residual lam x^3
    t = _grid()
    x, _ = sol(t)
    expected = (x.pow(3)).square().mean().item()
    assert hamiltonian_loss(t, sol, lam=1.0).item() == pytest.approx(expected, rel=1e-12)

    def slow(tt: torch.Tensor):  # wrong frequency
        return sol(1.1 * tt)

    assert hamiltonian_loss(t, slow, lam=0.0).item() > 1e-3


def test_fast_loss_equals_autograd_loss() -> None:
    torch.manual_seed(1)
    net = HNNet().to(F64)
    cfg = HNNConfig()
    t = _grid(97) + 0.01
    ref = hamiltonian_loss(t, lambda tt: parametric_solution(net, tt, cfg.x0, cfg.p0), cfg.lam)
    fast = hamiltonian_loss_fast(net, t, cfg)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-12)
    # and the gradients with respect to the weights agree too
    g_ref = torch.autograd.grad(ref, list(net.parameters()))
    g_fast = torch.autograd.grad(fast, list(net.parameters()))
    for a, b in zip(g_ref, g_fast, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_network_shape_and_initial_condition() -> None:
    net = HNNet().to(F64)
    layout = ParameterLayout.from_module(net)
    assert layout.numel == 152  # 20 + 110 + 22
    sizes = sorted((int(g.shape[0]), int(g.shape[1])) for g in layout.node_index())
    assert sizes == [(10, 2), (12, 11)]  # 10 first-layer nodes 2x2, 10 + 2 nodes 11x11
    x, p = parametric_solution(net, torch.zeros(1, 1, dtype=F64), 1.3, 1.0)
    assert x.item() == 1.3 and p.item() == 1.0


def test_perturbed_points_stay_in_the_interval() -> None:
    cfg = HNNConfig()
    grid = _grid()
    noise = 5 * torch.randn((50, 200, 1), generator=torch.Generator().manual_seed(3), dtype=F64)
    t = perturb_points(grid, noise, cfg)
    assert t.shape == (50, 200, 1)
    assert float(t.min()) >= cfg.t0 and float(t.max()) <= cfg.tf
    assert torch.all(t[:, 0, 0] == cfg.t0)
    assert not torch.equal(t[0], t[1])  # redrawn every step


def test_task_is_deterministic_and_learns() -> None:
    a, b = HNNTask(4), HNNTask(4)
    start = a.evaluate()["train"]
    for _ in range(150):
        a.step()
        b.step()
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.evaluate()["train"] < 0.5 * start
    c = HNNTask(5)
    assert not torch.equal(next(c.model.parameters()), next(HNNTask(4).model.parameters()))
