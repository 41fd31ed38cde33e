"""Sharded fits across two gloo processes equal the single-process fit."""

from __future__ import annotations

import gc
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


def _train_distributed(rank: int, world: int, init_file: str, out_dir: str, sharded: bool) -> None:
    """Run ``_train_body`` in a process group. The model, the DDP wrapper and the optimizer
    die with the body's frame, before the group is destroyed: gloo work still holding
    tensors when the interpreter exits aborts the process (it made this test flaky)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        _train_body(rank, world, out_dir, sharded)
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _train_body(rank: int, world: int, out_dir: str, sharded: bool) -> None:
    """A few hundred steps of a small MLP, each rank on its own data, with Koopman jumps."""
    import torch.nn.functional as F
    from torch import nn

    from koopt import KoopmanOptimizer

    gen = torch.Generator().manual_seed(100 + rank)
    X = torch.randn(512, 8, generator=gen)
    y = (X[:, 0] * X[:, 1] > 0).long()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        fully_shard(net[0], mesh=mesh)
        fully_shard(net, mesh=mesh)
    options = dict(warmup=20, stride=5, window=6, horizons=(10, 25, 50))
    if sharded:
        model = net

        def check():
            return F.cross_entropy(model(X[:128]), y[:128])

        opt = KoopmanOptimizer(
            torch.optim.Adam(model.parameters(), lr=1e-2), loss_fn=check, **options
        )
    else:  # the wrapper is created before the DDP wrap: it holds the same parameters
        from torch.nn.parallel import DistributedDataParallel as DDP

        def check():
            return F.cross_entropy(model(X[:128]), y[:128])

        opt = KoopmanOptimizer(
            torch.optim.Adam(net.parameters(), lr=1e-2), loss_fn=check, **options
        )
        model = DDP(net)
    for _ in range(200):
        idx = torch.randint(0, 512, (32,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    torch.save(
        {
            "params": [t.detach().clone() for t in local],
            "log": [(r["accepted"], r["chosen"], r["loss_before"]) for r in opt.log],
            "gate": [(r["step"], r.get("heldout_error"), r.get("unfitted_windows"),
                      r.get("timescale")) for r in opt.log],
            "state": opt.state_dict(),
        },
        os.path.join(out_dir, f"{'fsdp' if sharded else 'ddp'}{rank}.pt"),
    )


def test_ddp_replicas_stay_bit_identical_after_jumps(tmp_path):
    mp.spawn(
        _train_distributed,
        args=(2, str(tmp_path / "init"), str(tmp_path), False),
        nprocs=2,
        join=True,
    )
    r0, r1 = (torch.load(tmp_path / f"ddp{r}.pt") for r in range(2))
    assert any(accepted for accepted, _, _ in r0["log"])  # jumps happened
    assert r0["log"] == r1["log"]  # same decisions, from losses averaged over ranks
    assert r0["gate"] == r1["gate"] and (r0["gate"][0][1] or r0["gate"][0][2])  # the same gate
    for a, b in zip(r0["params"], r1["params"], strict=True):
        assert torch.equal(a, b)
    # the checkpoint of the DDP run loads into a plain, unwrapped model's optimizer
    from torch import nn

    from koopt import KoopmanOptimizer

    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    plain = KoopmanOptimizer(
        torch.optim.Adam(net.parameters(), lr=1e-2),
        warmup=20,
        stride=5,
        window=6,
        horizons=(10, 25, 50),
    )
    plain.load_state_dict(r0["state"])
    assert plain.num_accepted == sum(a for a, _, _ in r0["log"])
    assert plain.state_dict()["state"][0]["exp_avg"].shape == (16, 8)


def test_fsdp2_shards_jump_with_the_same_decisions(tmp_path):
    mp.spawn(
        _train_distributed,
        args=(2, str(tmp_path / "init"), str(tmp_path), True),
        nprocs=2,
        join=True,
    )
    r0, r1 = (torch.load(tmp_path / f"fsdp{r}.pt") for r in range(2))
    assert any(accepted for accepted, _, _ in r0["log"])
    assert r0["log"] == r1["log"]
    # the early scale's held-out gate ran on the shards (a summed Gram, summed errors) and
    # every rank left it at the same step for the same reason
    assert r0["gate"] == r1["gate"] and (r0["gate"][0][1] or r0["gate"][0][2])
    assert r0["state"]["koopman"]["timescale"] == r1["state"]["koopman"]["timescale"]
    assert all(torch.isfinite(t).all() for t in r0["params"] + r1["params"])
    # each rank holds its own half of every weight matrix
    assert r0["params"][0].shape == (8, 8) and r1["params"][0].shape == (8, 8)
