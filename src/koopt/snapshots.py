"""Snapshot recording for Koopman jumps: when to record, and a window buffer of flat weights.

Dogra & Redman (NeurIPS 2020) fit their operators to the weights saved after every
optimizer step; the prototype in ``docs/method.md`` found sparser snapshots (a stride of
about 10 steps) and short windows (about 10 snapshots) predict better and cost less.
This module holds the two small pieces the optimizer wrapper needs:

- :class:`SnapshotSchedule`: which gradient steps are snapshot times (warm-up, stride);
- :class:`SnapshotBuffer`: a fixed-capacity window of flat parameter vectors (row t = the
  weights at the t-th snapshot), stored in a chosen dtype (float32 or wider, also for
  bf16/fp16 parameters), which refuses exact duplicates so that steps that did not change
  the weights (a GradScaler skipping an overflowing step) do not distort the fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["SnapshotBuffer", "SnapshotSchedule", "default_storage_dtype", "flatten_params"]


def default_storage_dtype(params: Sequence[torch.Tensor]) -> torch.dtype:
    """float64 when any parameter is float64, else float32 (also for bf16/fp16 weights)."""
    if any(p.dtype == torch.float64 for p in params):
        return torch.float64
    return torch.float32


def flatten_params(params: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Concatenate ``params`` (detached, flattened, cast to ``dtype``) into one vector."""
    if not params:
        return torch.zeros(0, dtype=dtype)
    return torch.cat([p.detach().reshape(-1).to(dtype) for p in params])


@dataclass(frozen=True)
class SnapshotSchedule:
    """Snapshot times in gradient steps: ``warmup``, ``warmup + stride``, ...

    Step numbers count optimizer steps from 1 (the state after the first step is step 1).
    """

    warmup: int = 0
    stride: int = 1

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")

    def due(self, step: int) -> bool:
        """True when the weights after gradient step ``step`` are to be recorded."""
        return step >= max(self.warmup, 1) and (step - max(self.warmup, 1)) % self.stride == 0


class SnapshotBuffer:
    """A window of at most ``capacity`` flat weight vectors, oldest first.

    Rows are stored in ``dtype`` on ``device`` in one preallocated (capacity, numel)
    tensor. :meth:`append` refuses a row equal to the last one (returns False), so
    weights that did not move add no duplicate snapshot.
    """

    def __init__(
        self,
        capacity: int,
        numel: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if capacity < 2:
            raise ValueError(f"a window needs at least 2 snapshots, got capacity={capacity}")
        if not (dtype.is_floating_point and torch.finfo(dtype).bits >= 32):
            raise ValueError(f"snapshot dtype must be float32 or float64, got {dtype}")
        self.capacity = int(capacity)
        self.numel = int(numel)
        self.dtype = dtype
        self._data = torch.empty(self.capacity, self.numel, dtype=dtype, device=device)
        self._len = 0

    def __len__(self) -> int:
        return self._len

    @property
    def full(self) -> bool:
        """True when the window holds ``capacity`` snapshots."""
        return self._len >= self.capacity

    @property
    def device(self) -> torch.device:
        return self._data.device

    def rows(self) -> torch.Tensor:
        """The recorded snapshots, (len, numel), oldest first (a view; do not modify)."""
        return self._data[: self._len]

    def last(self) -> torch.Tensor | None:
        """The most recent snapshot, or None when empty."""
        return self._data[self._len - 1] if self._len else None

    def append(self, row: torch.Tensor, force: bool | None = None) -> bool:
        """Add ``row`` (numel,) unless it equals the last snapshot; False when skipped.

        ``force`` overrides that test (True: add, False: skip), e.g. with the decision of
        all ranks of a sharded model, whose local shards may not all have changed.

        When the buffer is full the oldest row is dropped (a sliding window).
        """
        if row.shape != (self.numel,):
            raise ValueError(f"snapshot has shape {tuple(row.shape)}, expected ({self.numel},)")
        row = row.to(device=self._data.device, dtype=self.dtype)
        if force is False or (
            force is None and self._len and torch.equal(row, self._data[self._len - 1])
        ):
            return False
        if self._len >= self.capacity:
            self._data[:-1] = self._data[1:].clone()
            self._len = self.capacity - 1
        self._data[self._len] = row
        self._len += 1
        return True

    def clear(self, *, keep_last: bool = False) -> None:
        """Empty the window; with ``keep_last`` the newest row becomes the first one."""
        if keep_last and self._len:
            self._data[0] = self._data[self._len - 1]
            self._len = 1
        else:
            self._len = 0

    def state_dict(self) -> dict[str, Any]:
        """The recorded rows (a copy) and the capacity."""
        return {"capacity": self.capacity, "rows": self.rows().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore rows saved by :meth:`state_dict` (keeps the newest ``capacity`` rows)."""
        rows = torch.as_tensor(state["rows"])
        if rows.ndim != 2 or rows.shape[1] != self.numel:
            raise ValueError(
                f"saved snapshots have shape {tuple(rows.shape)}, expected (k, {self.numel})"
            )
        rows = rows[-self.capacity :]
        self._len = rows.shape[0]
        self._data[: self._len] = rows.to(device=self._data.device, dtype=self.dtype)
