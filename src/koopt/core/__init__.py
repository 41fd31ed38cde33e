"""The pure linear-algebra core of koopt: arrays in, numbers out (no nn.Module inside)."""

from koopt.core.batched import BatchedOperators, fit_operators
from koopt.core.dmd import DMDModel, fit_dmd
from koopt.core.errors import DivergentPredictionError
from koopt.core.holdout import holdout_error
from koopt.core.snapshots_space import gram_row, local_gram

__all__ = [
    "BatchedOperators",
    "DMDModel",
    "DivergentPredictionError",
    "fit_dmd",
    "fit_operators",
    "gram_row",
    "holdout_error",
    "local_gram",
]
