"""Koopman jumps under DistributedDataParallel on CPU (gloo), on scikit-learn's digits.

    torchrun --nproc_per_node 2 examples/ddp_digits.py

Each rank trains on its own half of the training split; KoopmanOptimizer sees the process
group, averages the check loss over ranks, so every rank takes the same decision, and all
replicas stay bit-identical.
"""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from koopt import KoopmanOptimizer


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    train_and_report(dist.get_rank(), dist.get_world_size())
    # The DDP model (its reducer) and the wrapper died with train_and_report's frame; the
    # process group goes only after that: gloo work still holding tensors when the
    # interpreter exits aborts the process.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def train_and_report(rank: int, world: int) -> None:
    digits = load_digits()
    X = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    X_train, y_train = X[rank:1400:world], y[rank:1400:world]  # this rank's shard
    X_val, y_val = X[1400:], y[1400:]

    torch.manual_seed(0)  # same initial weights on every rank
    net = nn.Sequential(
        nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 10)
    )
    model = DDP(net)
    # each rank checks on its own data; the wrapper averages the loss over ranks
    check = lambda: F.cross_entropy(model.module(X_train[:256]), y_train[:256])  # noqa: E731
    opt = KoopmanOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), loss_fn=check)

    gen = torch.Generator().manual_seed(rank)
    for _ in range(600):
        idx = torch.randint(0, len(X_train), (32,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(X_train[idx]), y_train[idx]).backward()
        opt.step()

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)
    identical = all(torch.equal(c, copies[0]) for c in copies)
    with torch.no_grad():
        val = F.cross_entropy(model.module(X_val), y_val).item()
    if rank == 0:
        print(
            f"{world} ranks: {opt.num_accepted} jumps accepted, {opt.num_refused} refused, "
            f"{opt.virtual_steps} steps skipped; validation loss {val:.4f}; "
            f"replicas bit-identical: {identical}"
        )


if __name__ == "__main__":
    main()
