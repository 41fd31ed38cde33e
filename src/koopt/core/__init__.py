"""The pure linear-algebra core of koopt: arrays in, numbers out (no nn.Module inside)."""

from koopt.core.batched import BatchedOperators, fit_operators
from koopt.core.dmd import DMDModel, fit_dmd
from koopt.core.errors import DivergentPredictionError

__all__ = ["BatchedOperators", "DMDModel", "DivergentPredictionError", "fit_dmd", "fit_operators"]
