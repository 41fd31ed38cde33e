"""Horizon and window tuning for Koopman jumps, online, from the outcome of loss checks.

Dogra & Redman (NeurIPS 2020) jump a fixed horizon T; QuACK (Luo, Shen, Dangovski,
Soljacic, NeurIPS 2023) checks the loss at many candidate points and restarts from the
best. How far a linear model of the weights predicts well changes during training: early,
fast, nonlinear training supports only short jumps; late training (the paper's late
window) supports jumps of thousands of steps. A fixed candidate grid is therefore either
too short late or wasteful early. :class:`HorizonController` moves the grid with the
evidence (measured in ``benchmarks/time_to_target.py``, see ``docs/optimizer.md``):

- an accepted jump whose best candidate was the *longest* one doubles the grid (the model
  still predicts well at the edge of what was tried);
- an accepted jump whose best candidate was the *shortest* one halves it, and so does a
  refusal, but never below the base grid (``min_scale`` 1): on the noisy digits MLP
  refusals and shortest wins come from noise, and letting the grid shrink below the base
  halved the steps the jumps skipped;
- after ``refusals_to_skip`` refusals in a row, while time-scale ``moves`` are left, the
  wrapper is asked to record on its next time scale (:attr:`move_requested`; e.g. from
  the early every-step scale to the base scale, then to a finer one, as QuACK's short
  windows) and the count starts again: where one scale never predicts well (the HNN with
  Adam, heavy momentum, on the base scale), another often does;
- after ``refusals_to_skip`` refusals in a row (on the last time scale) the next
  fits are skipped (1, 2, 4 ... windows, at most ``max_skip``): fits and loss checks that keep
  failing cost time and give nothing. An accepted jump ends the skipping. An accepted
  jump is worth tens of gradient steps, a refused check a few, so skipping starts late
  (4 refusals; on the digits MLP refusals come in pairs between accepted jumps).

The grid keeps its shape (the base horizons' ratios); only its scale changes, between
``min_scale`` and ``max_scale``. Horizons are in snapshots (multiples of the stride).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["HorizonController"]


class HorizonController:
    """Scale of the candidate horizons and fit skipping, updated after every jump check.

    Args:
        base: candidate horizons at scale 1, in snapshots (positive ints).
        adaptive: False keeps the base grid and never skips (the fixed-horizon behaviour).
        grow, shrink: factors applied to the scale (> 1 and in (0, 1)).
        min_scale, max_scale: bounds of the scale.
        refusals_to_skip: refusals in a row before fits start being skipped (0: never skip).
        max_skip: the most windows skipped in a row.
        moves: how many times refusals in a row may ask for the next time scale
            (:attr:`move_requested`, cleared by the caller) before fits are skipped.
    """

    def __init__(
        self,
        base: Sequence[int],
        *,
        adaptive: bool = True,
        grow: float = 2.0,
        shrink: float = 0.5,
        min_scale: float = 1.0,
        max_scale: float = 64.0,
        refusals_to_skip: int = 4,
        max_skip: int = 8,
        moves: int = 0,
    ) -> None:
        base = sorted({int(b) for b in base})
        if not base or base[0] < 1:
            raise ValueError(f"base horizons must be positive snapshot counts, got {base}")
        if not (grow > 1 and 0 < shrink < 1):
            raise ValueError(f"need grow > 1 and 0 < shrink < 1, got {grow}, {shrink}")
        if not (0 < min_scale <= 1 <= max_scale):
            raise ValueError(f"need 0 < min_scale <= 1 <= max_scale, got {min_scale}, {max_scale}")
        if refusals_to_skip < 0 or max_skip < 0 or moves < 0:
            raise ValueError("refusals_to_skip, max_skip and moves must be >= 0")
        self.base = base
        self.adaptive = bool(adaptive)
        self.grow = float(grow)
        self.shrink = float(shrink)
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.refusals_to_skip = int(refusals_to_skip)
        self.max_skip = int(max_skip)
        self.moves_left = int(moves)
        self.move_requested = False
        self.scale = 1.0
        self.refusals_in_a_row = 0
        self.skip_left = 0
        self.skipped = 0

    def candidates(self) -> list[int]:
        """The current candidate horizons in snapshots (sorted, distinct, >= 1)."""
        return sorted({max(1, round(b * self.scale)) for b in self.base})

    def should_fit(self) -> bool:
        """Whether to fit at this full window; False consumes one skipped window."""
        if self.skip_left > 0:
            self.skip_left -= 1
            self.skipped += 1
            return False
        return True

    def update(self, accepted: bool, chosen: int | None, n_candidates: int) -> None:
        """Record one check: ``chosen`` is the index of the kept candidate (accepted only)."""
        if not self.adaptive:
            return
        if accepted:
            self.refusals_in_a_row = 0
            self.skip_left = 0
            if chosen == n_candidates - 1:
                self.scale = min(self.scale * self.grow, self.max_scale)
            elif chosen == 0 and n_candidates > 1:
                self.scale = max(self.scale * self.shrink, self.min_scale)
            return
        self.refusals_in_a_row += 1
        self.scale = max(self.scale * self.shrink, self.min_scale)
        if self.refusals_to_skip and self.refusals_in_a_row >= self.refusals_to_skip:
            if self.moves_left > 0:  # try the next time scale before skipping
                self.moves_left -= 1
                self.move_requested = True
                self.refusals_in_a_row = 0
                return
            k = self.refusals_in_a_row - self.refusals_to_skip
            self.skip_left = min(2**k, self.max_skip)

    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "refusals_in_a_row": self.refusals_in_a_row,
            "skip_left": self.skip_left,
            "skipped": self.skipped,
            "moves_left": self.moves_left,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        scale = float(state["scale"])
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"bad controller scale {scale!r}")
        self.scale = scale
        self.refusals_in_a_row = int(state["refusals_in_a_row"])
        self.skip_left = int(state["skip_left"])
        self.skipped = int(state.get("skipped", 0))
        if "moves_left" in state:
            self.moves_left = int(state["moves_left"])
        elif state.get("fine"):  # a checkpoint from before the time-scale ladder: refined
            self.moves_left = 0
        self.move_requested = False
