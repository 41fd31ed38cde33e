"""The paper's second experiment: an MLP classifier trained with stochastic Adadelta.

784-20-20-20-10 ReLU network, log-softmax, Adadelta lr 1.0, batch 64 (938 steps per
epoch on MNIST), as in the independent reimplementation the research notes cite
(Dogra & Redman 2020, Sec. 4.2 and S4). Real MNIST comes from the four IDX files;
without them, scikit-learn's 8x8 handwritten digits (real scans) with a 64-20-20-20-10
network and a held-out validation split stand in.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from koopt.experiments.idx import DataError, find_idx, read_idx
from koopt.experiments.training import make_optimizer

__all__ = ["Dataset", "MNIST_FILES", "load_mnist_idx", "load_digits_split", "MLP", "MNISTTask"]

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class Dataset:
    """Inputs scaled to [0, 1] and flattened, integer labels; a train and a validation set."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    source: str

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.x_train.shape[0] / batch_size)


def load_mnist_idx(data_dir: str | os.PathLike[str]) -> Dataset:
    """Read real MNIST from ``data_dir`` (the four standard IDX files, raw or .gz); the
    10 000 test images serve as the validation set. Raises DataError naming a missing or
    bad file."""
    paths = {k: find_idx(data_dir, v) for k, v in MNIST_FILES.items()}
    arrays = {}
    for k, p in paths.items():
        images = k.endswith("images")
        arrays[k] = read_idx(p, ndim=3 if images else 1, dtype_code=0x08)
    for split in ("train", "val"):
        xi, yi = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if xi.size == 0:
            raise DataError(f"{paths[f'{split}_images']}: no image data (shape "
                            f"{xi.shape}); expected at least one image of at least one pixel")
        if xi.shape[0] != yi.shape[0]:
            raise DataError(f"{paths[f'{split}_labels']}: {yi.shape[0]} labels, expected "
                            f"{xi.shape[0]} (one per image in {paths[f'{split}_images'].name})")
        if yi.size and int(yi.max()) > 9:
            raise DataError(f"{paths[f'{split}_labels']}: label {int(yi.max())} out of range; "
                            "expected digits 0-9")
    if arrays["train_images"].shape[1:] != arrays["val_images"].shape[1:]:
        raise DataError(f"{paths['val_images']}: image shape {arrays['val_images'].shape[1:]} "
                        f"differs from the training images' {arrays['train_images'].shape[1:]}")

    def x(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.reshape(a.shape[0], -1).astype(np.float32) / 255.0)

    def y(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return Dataset("mnist", x(arrays["train_images"]), y(arrays["train_labels"]),
                   x(arrays["val_images"]), y(arrays["val_labels"]),
                   source=f"MNIST IDX files in {Path(data_dir)}")


def load_digits_split(val_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 real scans), a fixed stratified train/validation split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    xtr, xva, ytr, yva = train_test_split(
        d.data.astype(np.float32) / 16.0, d.target.astype(np.int64), test_size=val_fraction,
        random_state=split_seed, stratify=d.target)
    return Dataset("digits", torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xva),
                   torch.from_numpy(yva),
                   source=f"scikit-learn load_digits (8x8), {len(ytr)} train / {len(yva)} "
                          f"validation, split seed {split_seed}")


class MLP(nn.Module):
    """n_in-20-20-20-10 ReLU network; outputs logits (log-softmax is in the loss)."""

    def __init__(self, n_in: int = 784, hidden: tuple[int, ...] = (20, 20, 20),
                 n_out: int = 10) -> None:
        super().__init__()
        sizes = (n_in, *hidden)
        pairs = zip(sizes[:-1], sizes[1:], strict=True)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)
        self.out = nn.Linear(sizes[-1], n_out)

    def forward(self, x: Tensor) -> Tensor:
        for lin in self.hidden:
            x = torch.relu(lin(x))
        return self.out(x)


class MNISTTask:
    """One classifier training run: stochastic optimizer steps on shuffled mini-batches
    (reshuffled every epoch, seeded); ``evaluate()`` = full-dataset train and validation
    cross-entropy and accuracy."""

    name = "mnist"

    def __init__(self, seed: int, data: Dataset, *, optimizer: str = "adadelta",
                 lr: float | None = None, batch_size: int = 64,
                 eval_batch: int = 20_000) -> None:
        self.data = data
        self.batch_size = batch_size
        self.eval_batch = eval_batch
        torch.manual_seed(seed)
        self.model = MLP(data.n_features)
        self.optimizer = make_optimizer(optimizer, self.model.parameters(), lr, task="mnist")
        self.gen = torch.Generator().manual_seed(20_000 + seed)
        self._batches: list[Tensor] = []

    def _next_batch(self) -> Tensor:
        if not self._batches:
            perm = torch.randperm(self.data.x_train.shape[0], generator=self.gen)
            self._batches = list(reversed(perm.split(self.batch_size)))
        return self._batches.pop()

    def step(self) -> Tensor:
        idx = self._next_batch()
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.data.x_train[idx]), self.data.y_train[idx])
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def _loss_acc(self, x: Tensor, y: Tensor) -> tuple[float, float]:
        total, correct = 0.0, 0
        for xs, ys in zip(x.split(self.eval_batch), y.split(self.eval_batch), strict=True):
            logits = self.model(xs)
            total += float(F.cross_entropy(logits, ys, reduction="sum"))
            correct += int((logits.argmax(1) == ys).sum())
        n = max(int(y.shape[0]), 1)
        return total / n, correct / n

    def evaluate(self) -> dict[str, float]:
        tr, tr_acc = self._loss_acc(self.data.x_train, self.data.y_train)
        va, acc = self._loss_acc(self.data.x_val, self.data.y_val)
        return {"train": tr, "val": va, "val_acc": acc, "train_acc": tr_acc}
