"""Errors raised by the Koopman core."""


class DivergentPredictionError(ValueError):
    """A prediction would overflow because the fitted operator has growing modes.

    Raised instead of returning Inf/NaN. Fit with ``stabilize="clip"`` (growing modes moved
    onto the unit circle) or ``stabilize="drop"`` (growing modes removed) to predict anyway.
    """
