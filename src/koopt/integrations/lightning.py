"""PyTorch Lightning adapter: loss-checked Koopman jumps as a ``Callback``.

Follows Lightning's ``WeightAveraging`` callback: it acts in ``on_train_batch_end`` only
when ``trainer.global_step`` advanced (one optimizer step, whatever the gradient
accumulation), and its state goes into checkpoints through ``state_dict`` /
``load_state_dict``. The trainer keeps stepping its own optimizer; the callback wraps it
in a :class:`koopt.KoopmanOptimizer` that records snapshots and jumps (Dogra & Redman,
NeurIPS 2020; loss-checked candidates as in QuACK, NeurIPS 2023).

    trainer = L.Trainer(callbacks=[KoopmanCallback(loss_fn=lambda m: m.check_loss())])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

try:
    from lightning.pytorch import LightningModule, Trainer
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    try:
        from pytorch_lightning import LightningModule, Trainer
        from pytorch_lightning.callbacks import Callback
    except ImportError as err:
        raise ImportError(
            "koopt.integrations.lightning needs Lightning: pip install 'koopt[lightning]'"
        ) from err

from koopt.optim import KoopmanOptimizer

__all__ = ["KoopmanCallback"]


class KoopmanCallback(Callback):
    """Koopman jumps for a Lightning ``Trainer``.

    Args:
        loss_fn: ``loss_fn(pl_module) -> float``, the jump check, evaluated under
            ``no_grad`` on the module as it stands (a fixed training subset).
        optimizer_index: which of ``trainer.optimizers`` to record.
        advance_scheduler: advance the first LR scheduler by an accepted jump's horizon.
        **options: any ``KoopmanOptimizer`` option (warmup, stride, window, horizons, ...).

    ``self.koopman`` is the wrapper (its ``log`` lists every fit) once training started.
    """

    def __init__(
        self,
        loss_fn: Callable[[LightningModule], Any] | None = None,
        *,
        optimizer_index: int = 0,
        advance_scheduler: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        for reserved in ("loss_fn", "module", "scheduler"):
            options.pop(reserved, None)
        self.loss_fn = loss_fn
        self.optimizer_index = optimizer_index
        self.advance_scheduler = advance_scheduler
        self.options = options
        self.koopman: KoopmanOptimizer | None = None
        self._pending: dict[str, Any] | None = None
        self._last_global_step = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = trainer.optimizers[self.optimizer_index]
        loss_fn = None
        if self.loss_fn is not None:
            user_fn = self.loss_fn

            def loss_fn() -> Any:
                return user_fn(pl_module)

        scheduler = None
        if self.advance_scheduler and trainer.lr_scheduler_configs:
            config = trainer.lr_scheduler_configs[0]
            if config.interval == "step" and config.frequency == 1:
                scheduler = config.scheduler
            else:  # a jump counts optimizer steps; this scheduler does not step per step
                warnings.warn(
                    f"KoopmanCallback(advance_scheduler=True): the LR scheduler steps every "
                    f"{config.frequency} {config.interval}(s), not every optimizer step, so "
                    "jumps do not advance it (use interval='step', frequency=1 for that)",
                    stacklevel=2,
                )
        self.koopman = KoopmanOptimizer(
            optimizer, loss_fn=loss_fn, module=pl_module, scheduler=scheduler, **self.options
        )
        if self._pending is not None:
            self.koopman.load_koopman_state_dict(self._pending)
            self._pending = None
        self._last_global_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.koopman is None or trainer.global_step <= self._last_global_step:
            return  # still accumulating gradients
        self._last_global_step = trainer.global_step
        self.koopman.record_step()

    def state_dict(self) -> dict[str, Any]:
        if self.koopman is not None:
            return self.koopman.koopman_state_dict()
        return dict(self._pending or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.koopman is not None:
            self.koopman.load_koopman_state_dict(state_dict)
        else:  # optimizers do not exist yet: apply in on_train_start
            self._pending = dict(state_dict)
