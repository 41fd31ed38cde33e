"""Picklable recipes for one seed's task, so that seeds can run in other processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from koopt.experiments.runner import CycleConfig, SeedTrace, run_seed

__all__ = ["TaskSpec", "SeedWorker"]

_DATA: dict[str, Any] = {}  # per process: the loaded data set, by data_dir ("" = digits)


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to build a seed's task: experiment, optimizer, lr, precision, data."""

    experiment: str  # "hnn" or "mnist"
    optimizer: str = "adadelta"
    lr: float | None = None
    dtype: str = "float32"  # HNN training precision
    data_dir: str | None = None  # MNIST IDX folder; None = scikit-learn digits

    def data(self) -> Any:
        from koopt.experiments.mnist import load_digits_split, load_mnist_idx

        key = self.data_dir or ""
        if key not in _DATA:
            _DATA[key] = load_mnist_idx(Path(key)) if key else load_digits_split()
        return _DATA[key]

    def make(self, seed: int) -> Any:
        if self.experiment == "hnn":
            from koopt.experiments.hnn import HNNConfig, HNNTask

            dtype = torch.float64 if self.dtype == "float64" else torch.float32
            return HNNTask(seed, optimizer=self.optimizer, lr=self.lr, cfg=HNNConfig(),
                           dtype=dtype)
        from koopt.experiments.mnist import MNISTTask

        return MNISTTask(seed, self.data(), optimizer=self.optimizer, lr=self.lr)

    def __call__(self, seed: int) -> Any:
        return self.make(seed)


@dataclass(frozen=True)
class SeedWorker:
    """seed -> (record, trace): one cycle; the trace only for ``trace_seed``."""

    spec: TaskSpec
    cfg: CycleConfig
    trace_seed: int | None = None

    def __call__(self, seed: int) -> tuple[dict[str, Any], SeedTrace | None]:
        return run_seed(self.spec.make(seed), self.cfg, seed,
                        keep_trace=(seed == self.trace_seed))
