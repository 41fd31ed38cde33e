"""The paper's first experiment: a neural-network solver of a nonlinear oscillator.

Hamiltonian network after Mattheakis et al. (``mariosmat/hamiltonian_networks``,
``HamiltonianNet_nonlinearOscillator.py``) in the modified form of Dogra & Redman
(NeurIPS 2020, Sec. 4.1): x' = p, p' = -x - lam x^3, x(0) = 1.3, p(0) = 1.0, lam = 1,
t in [0, 4 pi]; a 1-10-10-2 network with sin activations (152 parameters); the
parametric solution x_hat = x0 + (1 - e^(-t)) N(t)_1, p_hat = p0 + (1 - e^(-t)) N(t)_2;
loss = mean squared residual of Hamilton's equations on 200 collocation points that
are perturbed every step, full batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from koopt.experiments.training import make_optimizer

__all__ = [
    "HNNConfig", "HNNet", "hamiltonian_loss", "hamiltonian_loss_fast", "parametric_solution",
    "perturb_points", "exact_linear_solution", "HNNTask",
]

Solution = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class HNNConfig:
    """The oscillator problem and the network size (paper defaults)."""

    x0: float = 1.3
    p0: float = 1.0
    lam: float = 1.0
    t0: float = 0.0
    tf: float = 4 * math.pi
    n_points: int = 200  # collocation points, redrawn every step
    hidden: int = 10
    sigma: float = 0.5  # perturbation std in units of the grid spacing (original code)
    n_eval: int = 1000  # fixed uniform grid for the deterministic evaluation loss


class HNNet(nn.Module):
    """1 -> hidden -> hidden -> 2 network with sin activations (152 parameters at 10)."""

    def __init__(self, hidden: int = 10) -> None:
        super().__init__()
        self.lin1 = nn.Linear(1, hidden)
        self.lin2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2)

    def forward(self, t: Tensor) -> Tensor:
        """N(t): (B, 1) -> (B, 2)."""
        return self.out(torch.sin(self.lin2(torch.sin(self.lin1(t)))))

    def forward_with_tangent(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(N(t), dN/dt) for t of shape (B, 1), by exact forward-mode differentiation.

        Same values as ``torch.autograd.grad`` of ``forward`` with respect to t, but a
        much smaller graph, so a training step costs less (and evaluation needs no graph).
        """
        z1 = self.lin1(t)
        d1 = torch.cos(z1) * self.lin1.weight.T  # (B, H): dz1/dt = W1 (input size 1)
        z2 = self.lin2(torch.sin(z1))
        d2 = torch.cos(z2) * (d1 @ self.lin2.weight.T)
        return self.out(torch.sin(z2)), d2 @ self.out.weight.T


def parametric_solution(net: nn.Module, t: Tensor, x0: float, p0: float,
                        t0: float = 0.0) -> tuple[Tensor, Tensor]:
    """x_hat = x0 + (1 - e^-(t - t0)) N_1(t), p_hat = p0 + (1 - e^-(t - t0)) N_2(t)."""
    n = net(t)
    f = 1.0 - torch.exp(-(t - t0))
    return x0 + f * n[:, :1], p0 + f * n[:, 1:2]


def hamiltonian_loss(t: Tensor, solution: Solution, lam: float) -> Tensor:
    """Mean squared residual of Hamilton's equations for H = p^2/2 + x^2/2 + lam x^4/4:
    mean (x' - p)^2 + mean (p' + x + lam x^3)^2, derivatives by ``torch.autograd.grad``
    with ``create_graph=True`` (as in the original code). ``solution`` maps t (B, 1)
    to (x, p); any callable works, e.g. an exact solution for testing."""
    t = t.detach().requires_grad_(True)
    x, p = solution(t)
    ones = torch.ones_like(x)
    xd = torch.autograd.grad(x, t, ones, create_graph=True)[0]
    pd = torch.autograd.grad(p, t, ones, create_graph=True)[0]
    return (xd - p).square().mean() + (pd + x + lam * x.pow(3)).square().mean()


def hamiltonian_loss_fast(net: HNNet, t: Tensor, cfg: HNNConfig) -> Tensor:
    """The same loss as ``hamiltonian_loss`` on ``parametric_solution``, with the time
    derivative by forward mode (``HNNet.forward_with_tangent``); used in training."""
    n, dn = net.forward_with_tangent(t)
    e = torch.exp(-(t - cfg.t0))
    f = 1.0 - e
    xp = f * n  # (B, 2): x_hat - x0, p_hat - p0
    dxp = e * n + f * dn
    x = xp[:, 0] + cfg.x0
    p = xp[:, 1] + cfg.p0
    return (dxp[:, 0] - p).square().mean() + (dxp[:, 1] + x + cfg.lam * x.pow(3)).square().mean()


def perturb_points(grid: Tensor, noise: Tensor, cfg: HNNConfig) -> Tensor:
    """Collocation points: the uniform grid plus ``sigma`` x spacing x ``noise``, reflected
    into [t0, tf], first point pinned at t0 (as ``perturbPoints`` in the original code).
    ``noise`` may carry leading batch dimensions (many steps at once)."""
    dt = (cfg.tf - cfg.t0) / (cfg.n_points - 1)
    t = grid + cfg.sigma * dt * noise
    t = torch.where(t < cfg.t0, 2 * cfg.t0 - t, t)
    t = torch.where(t > cfg.tf, 2 * cfg.tf - t, t)
    t[..., 0, :] = cfg.t0
    return t


def exact_linear_solution(x0: float, p0: float) -> Solution:
    """The exact solution of the linear case lam = 0: x = x0 cos t + p0 sin t, p = x'."""

    def sol(t: Tensor) -> tuple[Tensor, Tensor]:
        return x0 * torch.cos(t) + p0 * torch.sin(t), -x0 * torch.sin(t) + p0 * torch.cos(t)

    return sol


class HNNTask:
    """One HNN training run for the runner: ``step()`` takes one optimizer step on freshly
    perturbed collocation points; ``evaluate()`` is the loss on a fixed uniform grid."""

    name = "hnn"
    chunk = 1000  # collocation points are drawn for this many steps at once

    def __init__(self, seed: int, *, optimizer: str = "adadelta", lr: float | None = None,
                 cfg: HNNConfig | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.cfg = cfg or HNNConfig()
        self.dtype = dtype
        torch.manual_seed(seed)
        self.model = HNNet(self.cfg.hidden).to(dtype)
        self.optimizer = make_optimizer(optimizer, self.model.parameters(), lr, task="hnn")
        self.gen = torch.Generator().manual_seed(10_000 + seed)
        c = self.cfg
        self.grid = torch.linspace(c.t0, c.tf, c.n_points, dtype=dtype).unsqueeze(1)
        self.eval_grid = torch.linspace(c.t0, c.tf, c.n_eval, dtype=dtype).unsqueeze(1)
        self._points = torch.empty(0)
        self._i = self.chunk

    def _next_points(self) -> Tensor:
        if self._i >= self._points.shape[0]:
            noise = torch.randn((self.chunk, self.cfg.n_points, 1), generator=self.gen,
                                dtype=self.dtype)
            self._points = perturb_points(self.grid, noise, self.cfg)
            self._i = 0
        t = self._points[self._i]
        self._i += 1
        return t

    def step(self) -> Tensor:
        """One optimizer step; returns the (detached) training loss before the step."""
        t = self._next_points()
        self.optimizer.zero_grad(set_to_none=True)
        loss = hamiltonian_loss_fast(self.model, t, self.cfg)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """{"train": loss on the fixed evaluation grid} (no validation set here)."""
        loss = hamiltonian_loss_fast(self.model, self.eval_grid, self.cfg)
        return {"train": float(loss)}
