"""Conversions between the caller's array kind (numpy or torch) and float64 torch tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class ArrayKind:
    """What the caller gave: numpy or torch, its dtype and device; outputs are returned alike."""

    is_numpy: bool
    dtype: Any
    device: torch.device

    @classmethod
    def of(cls, x: Any) -> ArrayKind:
        if isinstance(x, torch.Tensor):
            return cls(False, x.dtype, x.device)
        arr = np.asarray(x)
        return cls(True, arr.dtype, torch.device("cpu"))

    def output(self, t: torch.Tensor) -> Any:
        """Cast a float64 result back to the caller's kind and (floating) dtype."""
        if self.is_numpy:
            out = t.detach().cpu().numpy()
            target = self.dtype if np.issubdtype(self.dtype, np.floating) else np.float64
            return out.astype(target, copy=False)
        target = self.dtype if self.dtype.is_floating_point else torch.float64
        return t.to(device=self.device, dtype=target)

    def complex_output(self, t: torch.Tensor) -> Any:
        """Complex results (eigenvalues) as numpy for numpy callers, else torch."""
        return t.detach().cpu().numpy() if self.is_numpy else t.to(self.device)


def as_tensor(x: Any) -> torch.Tensor:
    """A torch view of ``x`` without copying where possible (numpy arrays are shared)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    arr = np.asarray(x)
    if (
        arr.dtype == np.float16
        or np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
    ):
        return torch.from_numpy(np.ascontiguousarray(arr) if not arr.flags.writeable else arr)
    raise ValueError(f"expected a real numeric array, got dtype {arr.dtype}")
