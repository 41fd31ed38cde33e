"""Trainer adapters for ``KoopmanOptimizer`` (optional extras, imported lazily).

- ``koopt.integrations.lightning.KoopmanCallback``: a PyTorch Lightning ``Callback``
  (``pip install koopt[lightning]``), modelled on Lightning's ``WeightAveraging``.
- ``koopt.integrations.transformers.KoopmanTrainerCallback``: a Hugging Face
  ``TrainerCallback`` (``pip install koopt[transformers]``).

Both record the trainer's own optimizer after each optimizer step (``trainer.global_step``
gating, so gradient accumulation is counted in optimizer steps) and save the wrapper's
window, counters and log with the trainer's checkpoints.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KoopmanCallback", "KoopmanTrainerCallback"]


def __getattr__(name: str) -> Any:
    if name == "KoopmanCallback":
        from koopt.integrations.lightning import KoopmanCallback

        return KoopmanCallback
    if name == "KoopmanTrainerCallback":
        from koopt.integrations.transformers import KoopmanTrainerCallback

        return KoopmanTrainerCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
