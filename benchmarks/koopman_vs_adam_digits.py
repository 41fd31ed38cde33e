"""Issue 4 done-when check: Adam vs Adam wrapped in KoopmanOptimizer on the digits MLP.

Both runs of a seed start from the same weights and see the same mini-batches in the same
order; the wrapped run additionally takes loss-checked Koopman jumps (QuACK, NeurIPS 2023),
checked on a fixed 512-sample subset of the *training* split. The validation split is only
measured: at the end, and every 50 steps for the report's "best validation loss" columns
(nothing in training reads it). Printed: one row per seed (validation and training loss of
both runs after the same number of gradient steps, jumps accepted / refused, best validation
loss along the run and its step) and a final JSON line.

    python benchmarks/koopman_vs_adam_digits.py            # 5 seeds, 1000 steps
    python benchmarks/koopman_vs_adam_digits.py --steps 300 --seeds 2   # quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from koopt.optim import KoopmanOptimizer


def load(split_seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Digits scaled to [0, 1]; a fixed stratified 80/20 train/validation split."""
    X, y = load_digits(return_X_y=True)
    Xtr, Xva, ytr, yva = train_test_split(
        X / 16.0, y, test_size=0.2, random_state=split_seed, stratify=y
    )
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return as_x(Xtr), as_y(ytr), as_x(Xva), as_y(yva)


def mlp() -> nn.Module:
    """The seed paper's MNIST architecture scaled to digits: 64-20-20-20-10, ReLU."""
    return nn.Sequential(
        nn.Linear(64, 20), nn.ReLU(),
        nn.Linear(20, 20), nn.ReLU(),
        nn.Linear(20, 20), nn.ReLU(),
        nn.Linear(20, 10),
    )  # fmt: skip


def batches(n: int, steps: int, batch: int, seed: int) -> list[torch.Tensor]:
    """The mini-batch index stream: reshuffled epochs, identical for both runs of a seed."""
    g = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=g)
        out.extend(perm[i : i + batch] for i in range(0, n - batch + 1, batch))
    return out[:steps]


def run(seed: int, steps: int, koopman: bool, data: tuple[torch.Tensor, ...]) -> dict:
    Xtr, ytr, Xva, yva = data
    torch.manual_seed(seed)
    model = mlp()
    g = torch.Generator().manual_seed(10_000 + seed)
    check = torch.randperm(len(Xtr), generator=g)[:512]  # fixed training subset
    Xc, yc = Xtr[check], ytr[check]

    inner = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt: torch.optim.Optimizer = inner
    if koopman:
        opt = KoopmanOptimizer(inner, loss_fn=lambda: F.cross_entropy(model(Xc), yc), module=model)
    t0 = time.perf_counter()
    monitor = 0.0  # time spent on the (report-only) validation curve, excluded from wall_s
    best_val, best_step = float("inf"), 0
    for step, idx in enumerate(batches(len(Xtr), steps, 64, seed), 1):
        opt.zero_grad()
        F.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
        opt.step()
        if step % 50 == 0:  # reported only; nothing in training reads it
            tm = time.perf_counter()
            with torch.no_grad():
                v = F.cross_entropy(model(Xva), yva).item()
            if v < best_val:
                best_val, best_step = v, step
            monitor += time.perf_counter() - tm
    wall = time.perf_counter() - t0 - monitor
    with torch.no_grad():
        val = F.cross_entropy(model(Xva), yva).item()
        train = F.cross_entropy(model(Xtr), ytr).item()
        acc = (model(Xva).argmax(1) == yva).float().mean().item()
    out = {
        "val_loss": val,
        "train_loss": train,
        "val_acc": acc,
        "wall_s": wall,
        "best_val_loss": best_val,
        "best_val_step": best_step,
    }
    if koopman:
        assert isinstance(opt, KoopmanOptimizer)
        out.update(
            accepted=opt.num_accepted,
            refused=opt.num_refused,
            virtual_steps=opt.virtual_steps,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load()
    rows = []
    print(
        f"{'seed':>4} {'val Adam':>9} {'val +Koop':>9} {'train Adam':>10} {'train +Koop':>11} "
        f"{'jumps acc/ref':>13} {'virt. steps':>11} {'ok':>3}  "
        f"{'best val Adam (step)':>20} {'best val +Koop (step)':>21}"
    )
    for seed in range(args.seeds):
        a = run(seed, args.steps, False, data)
        k = run(seed, args.steps, True, data)
        ok = k["val_loss"] <= a["val_loss"]
        rows.append({"seed": seed, "adam": a, "koopman": k, "val_no_higher": ok})
        print(
            f"{seed:>4} {a['val_loss']:>9.4f} {k['val_loss']:>9.4f} {a['train_loss']:>10.4f} "
            f"{k['train_loss']:>11.4f} {k['accepted']:>6}/{k['refused']:<6} "
            f"{k['virtual_steps']:>11} {'yes' if ok else 'NO':>3}  "
            f"{a['best_val_loss']:>13.4f} ({a['best_val_step']:>4}) "
            f"{k['best_val_loss']:>14.4f} ({k['best_val_step']:>4})"
        )
    ratio = [r["koopman"]["val_loss"] / r["adam"]["val_loss"] for r in rows]
    summary = {
        "benchmark": "koopman_vs_adam_digits",
        "steps": args.steps,
        "seeds": args.seeds,
        "all_val_no_higher": all(r["val_no_higher"] for r in rows),
        "median_val_ratio": statistics.median(ratio),
        "rows": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
