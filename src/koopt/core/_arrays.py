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


def as_horizons(h: Any) -> tuple[list[int], bool]:
    """``predict``'s argument as a list of non-negative ints and whether it was one number.

    An int (also a numpy integer or a 0-d array / tensor) is one horizon; any other
    iterable of whole numbers is many. Strings, fractions, negatives and empty sequences
    are refused with a clear error.
    """
    if isinstance(h, str | bytes):
        raise TypeError(f"a horizon is an int or a sequence of ints, got {h!r}")
    if isinstance(h, np.ndarray | torch.Tensor) and h.ndim == 0:
        h = h.item()
    single = not hasattr(h, "__iter__")
    try:
        values = [h] if single else list(h)
    except TypeError:
        raise TypeError(f"a horizon is an int or a sequence of ints, got {h!r}") from None
    if not values:
        raise ValueError("predict needs at least one horizon, got an empty sequence")
    out = []
    for x in values:
        if isinstance(x, np.ndarray | torch.Tensor) and x.ndim == 0:
            x = x.item()
        ok = isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)
        if not ok or not np.isfinite(x) or x < 0 or int(x) != x:
            raise ValueError(f"horizons must be non-negative integers, got {x!r}")
        out.append(int(x))
    return out, single
