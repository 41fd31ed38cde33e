"""Hugging Face ``transformers`` adapter: loss-checked Koopman jumps as a ``TrainerCallback``.

The ``Trainer`` keeps stepping its own optimizer; in ``on_optimizer_step`` (after the
step, before gradients are zeroed) the callback lets a :class:`koopt.KoopmanOptimizer`
around that optimizer record a snapshot and jump (Dogra & Redman, NeurIPS 2020; QuACK,
NeurIPS 2023). Snapshot tensors do not fit the JSON ``TrainerState``, so ``on_save`` writes
the wrapper's state as ``koopt_state.pt`` into the checkpoint folder, and
``on_train_begin`` reads it back when the trainer resumes from that checkpoint.
Needs transformers >= 4.42 (``on_optimizer_step``) and accelerate (the Trainer's own need).

    trainer = Trainer(..., callbacks=[KoopmanTrainerCallback(loss_fn=check_loss)])
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as err:
    raise ImportError(
        "koopt.integrations.transformers needs transformers: pip install 'koopt[transformers]'"
    ) from err

from koopt.optim import KoopmanOptimizer

__all__ = ["STATE_FILE", "KoopmanTrainerCallback"]

STATE_FILE = "koopt_state.pt"


class KoopmanTrainerCallback(TrainerCallback):
    """Koopman jumps for a Hugging Face ``Trainer``.

    Args:
        loss_fn: ``loss_fn(model) -> float``, the jump check, evaluated under ``no_grad``
            on the model as it stands (a fixed training subset, never the eval set).
        advance_scheduler: advance the trainer's LR scheduler by an accepted jump's horizon.
        resume_from: checkpoint folder to read ``koopt_state.pt`` from; by default
            ``{output_dir}/checkpoint-{global_step}`` when the trainer resumes.
        **options: any ``KoopmanOptimizer`` option (warmup, stride, window, horizons, ...).

    ``self.koopman`` is the wrapper (its ``log`` lists every fit) once training started.
    """

    def __init__(
        self,
        loss_fn: Callable[[torch.nn.Module], Any] | None = None,
        *,
        advance_scheduler: bool = False,
        resume_from: str | None = None,
        **options: Any,
    ) -> None:
        for reserved in ("loss_fn", "module", "scheduler"):
            options.pop(reserved, None)
        self.loss_fn = loss_fn
        self.advance_scheduler = advance_scheduler
        self.resume_from = resume_from
        self.options = options
        self.koopman: KoopmanOptimizer | None = None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        if optimizer is None:
            raise RuntimeError("KoopmanTrainerCallback: the Trainer passed no optimizer")
        loss_fn = None
        if self.loss_fn is not None:
            user_fn = self.loss_fn

            def loss_fn() -> Any:
                return user_fn(model)

        self.koopman = KoopmanOptimizer(
            optimizer,
            loss_fn=loss_fn,
            module=model,
            scheduler=lr_scheduler if self.advance_scheduler else None,
            **self.options,
        )
        if state.global_step > 0 or self.resume_from is not None:
            folder = self.resume_from or os.path.join(
                args.output_dir, f"checkpoint-{state.global_step}"
            )
            path = os.path.join(folder, STATE_FILE)
            if os.path.isfile(path):
                self.koopman.load_koopman_state_dict(torch.load(path, weights_only=True))
            else:
                warnings.warn(
                    f"KoopmanTrainerCallback: no {STATE_FILE} in {folder}; the snapshot window "
                    "starts afresh",
                    stacklevel=2,
                )

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.koopman is not None:
            self.koopman.record_step()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.koopman is None:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            torch.save(self.koopman.koopman_state_dict(), os.path.join(folder, STATE_FILE))
