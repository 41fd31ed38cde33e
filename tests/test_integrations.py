"""Trainer adapters: Lightning Callback and Hugging Face TrainerCallback (optional extras).

Each test is skipped when its trainer library is not installed.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

FAST = {"warmup": 2, "stride": 2, "window": 4, "horizons": (4, 8), "fast_start": False}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g)
    return X, torch.sin(X.sum(1, keepdim=True))


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def lightning_module(L, epoch_scheduler: bool = False):
    """A LightningModule around ``net()``: Adam at 1e-2, MSE; optionally a StepLR halving
    the rate every epoch (Lightning's default scheduler interval)."""

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net()

        def training_step(self, batch, batch_idx):
            return F.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=1e-2)
            if not epoch_scheduler:
                return opt
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    return Module


def test_integrations_package_imports_without_extras():
    import koopt.integrations as integrations

    assert set(integrations.__all__) == {"KoopmanCallback", "KoopmanTrainerCallback"}
    with pytest.raises(AttributeError):
        integrations.Nothing  # noqa: B018


def test_lightning_callback_jumps_counts_optimizer_steps_and_resumes(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from koopt.integrations.lightning import KoopmanCallback

    X, y = data()
    Module = lightning_module(L)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16)

    def trainer(max_steps, cb):
        return L.Trainer(
            max_steps=max_steps,
            accumulate_grad_batches=2,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            callbacks=[cb],
        )

    def check(m):
        return F.mse_loss(m.net(X), y)

    cb = KoopmanCallback(loss_fn=check, **FAST)
    t = trainer(12, cb)
    t.fit(Module(), loader)
    assert cb.koopman is not None and cb.koopman.steps == t.global_step == 12
    assert [r["step"] for r in cb.koopman.log] == [8]
    ckpt = tmp_path / "run.ckpt"
    t.save_checkpoint(ckpt)

    cb2 = KoopmanCallback(loss_fn=check, **FAST)
    t2 = trainer(16, cb2)
    t2.fit(Module(), loader, ckpt_path=ckpt)
    assert cb2.koopman.steps == 16
    # the log came back, and so did the partial window: snapshots 8, 10, 12 + 14 -> a fit at 14
    assert cb2.koopman.log[:1] == cb.koopman.log
    assert [r["step"] for r in cb2.koopman.log] == [8, 14]


def test_hf_trainer_callback_jumps_saves_and_resumes(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from koopt.integrations.transformers import STATE_FILE, KoopmanTrainerCallback

    X, y = data()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net()

        def forward(self, x, labels=None):
            out = self.net(x)
            return {"loss": F.mse_loss(out, labels), "logits": out}

    dataset = [{"x": X[i], "labels": y[i]} for i in range(len(X))]

    def trainer(cb, model):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path),
            max_steps=16,
            per_device_train_batch_size=16,
            learning_rate=1e-2,
            lr_scheduler_type="constant",
            save_strategy="steps",
            save_steps=8,
            logging_steps=100,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            remove_unused_columns=False,
            seed=0,
        )
        return transformers.Trainer(model=model, args=args, train_dataset=dataset, callbacks=[cb])

    def check(model):
        return F.mse_loss(model.net(X), y)

    cb = KoopmanTrainerCallback(loss_fn=check, **FAST)
    trainer(cb, Model()).train()
    assert cb.koopman is not None and cb.koopman.steps == 16
    assert [r["step"] for r in cb.koopman.log] == [8, 14]
    for step in (8, 16):
        assert os.path.isfile(tmp_path / f"checkpoint-{step}" / STATE_FILE)

    cb2 = KoopmanTrainerCallback(loss_fn=check, **FAST)
    trainer(cb2, Model()).train(resume_from_checkpoint=str(tmp_path / "checkpoint-8"))
    assert cb2.koopman.steps == 16
    assert cb2.koopman.log[0] == cb.koopman.log[0]  # restored from checkpoint-8


def test_lightning_epoch_scheduler_is_not_advanced_by_jumps(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from koopt.integrations.lightning import KoopmanCallback

    X, y = data()
    Module = lightning_module(L, epoch_scheduler=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=8)
    cb = KoopmanCallback(loss_fn=lambda m: F.mse_loss(m.net(X), y), advance_scheduler=True,
                         **FAST)
    t = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False,
                  default_root_dir=tmp_path, callbacks=[cb])
    with pytest.warns(UserWarning, match="jumps do not advance it"):
        t.fit(Module(), loader)
    assert cb.koopman is not None and cb.koopman.scheduler is None
    assert cb.koopman.num_accepted >= 1
    # one epoch: the scheduler stepped once (0.01 -> 0.005), whatever the jumps skipped
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(5e-3)
