"""What the experiments share: the optimizers and the task interface the runner drives."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import Tensor, nn

__all__ = ["OPTIMIZERS", "default_lr", "make_optimizer", "Task"]

OPTIMIZERS = ("adadelta", "adam", "adagrad")


def default_lr(name: str, task: str = "mnist") -> float:
    """Default learning rates.

    - adadelta: 1.0, the PyTorch default; the seed's Adadelta runs and the independent
      MNIST reimplementation (lr 1.0, batch 64) use it.
    - adam: 8e-3 for the HNN (the original Hamiltonian-network code, with betas
      (0.999, 0.9999)); 1e-3 (the PyTorch default) for the classifier.
    - adagrad: 1e-2, the PyTorch default.
    """
    name = name.lower()
    if name == "adadelta":
        return 1.0
    if name == "adam":
        return 8e-3 if task == "hnn" else 1e-3
    if name == "adagrad":
        return 1e-2
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float | None = None, *,
                   task: str = "mnist") -> torch.optim.Optimizer:
    """Build ``name`` (adadelta | adam | adagrad) with ``lr`` or the default of ``task``."""
    lr = default_lr(name, task) if lr is None else float(lr)
    name = name.lower()
    # foreach: one multi-tensor kernel per update op instead of one per parameter tensor;
    # the networks here are tiny, so per-op overhead dominates a step.
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, foreach=True)
    if name == "adam":
        betas = (0.999, 0.9999) if task == "hnn" else (0.9, 0.999)
        return torch.optim.Adam(params, lr=lr, betas=betas, foreach=True)
    return torch.optim.Adagrad(params, lr=lr, foreach=True)


class Task(Protocol):
    """One training run the runner can drive (seeded at construction)."""

    name: str
    model: nn.Module

    def step(self) -> Tensor:
        """Take one optimizer step; return the detached mini-batch loss before it."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Deterministic losses at the current weights: {"train": ..., ["val": ...]}."""
        ...
