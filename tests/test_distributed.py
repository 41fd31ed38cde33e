"""Sharded fits across two gloo processes equal the single-process fit."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from koopt import fit_dmd
from koopt.distributed import gram_all_reduce


def trajectory_matrix() -> torch.Tensor:
    rng = np.random.default_rng(0)
    A = rng.normal(size=(5, 5))
    A *= 0.95 / np.abs(np.linalg.eigvals(A)).max()
    z = [rng.normal(size=5)]
    for _ in range(11):
        z.append(A @ z[-1] + 0.01 * rng.normal(size=5))
    lift = rng.normal(size=(601, 5))
    return torch.from_numpy(lift @ np.stack(z, axis=1) + 3.0)  # (601, 12), non-zero mean


def _sharded_fit(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        X = trajectory_matrix()
        rows = torch.tensor_split(torch.arange(X.shape[0]), world)[rank]
        shard = X[rows]
        for affine in (False, True):
            model = fit_dmd(shard, rank=4, affine=affine, reduce_gram=gram_all_reduce())
            torch.save(
                {"pred": model.predict([1, 50]), "eigs": model.eigenvalues},
                os.path.join(out_dir, f"rank{rank}_{affine}.pt"),
            )
    finally:
        dist.destroy_process_group()


def test_sharded_fit_equals_single_process_fit(tmp_path):
    world = 2
    mp.spawn(
        _sharded_fit, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True
    )
    X = trajectory_matrix()
    for affine in (False, True):
        full = fit_dmd(X, rank=4, affine=affine, reduce_gram=lambda g: g)
        parts = [torch.load(tmp_path / f"rank{r}_{affine}.pt") for r in range(world)]
        joined = torch.cat([p["pred"] for p in parts], dim=1)
        torch.testing.assert_close(joined, full.predict([1, 50]), atol=1e-10, rtol=0)
        torch.testing.assert_close(parts[0]["eigs"], full.eigenvalues, atol=1e-10, rtol=0)
        torch.testing.assert_close(parts[1]["eigs"], parts[0]["eigs"], atol=0, rtol=0)
