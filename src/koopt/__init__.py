"""koopt: Koopman operator theory for cheaper neural-network training.

Implements Dogra & Redman, "Optimizing Neural Networks via Koopman Operator Theory"
(NeurIPS 2020), and what later work showed is needed around it.
"""

from koopt.core import DivergentPredictionError, DMDModel, fit_dmd, fit_operators
from koopt.families import FAMILIES, FittedFamily, fit_family
from koopt.layout import ParameterLayout
from koopt.optim import JumpPrecisionWarning, KoopmanOptimizer

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "DMDModel",
    "DivergentPredictionError",
    "FittedFamily",
    "JumpPrecisionWarning",
    "KoopmanOptimizer",
    "ParameterLayout",
    "__version__",
    "fit_dmd",
    "fit_family",
    "fit_operators",
]
