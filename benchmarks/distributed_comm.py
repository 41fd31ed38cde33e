"""Bytes koopt communicates per jump under FSDP2 sharding, against the parameter count.

Two gloo processes on CPU shard an MLP of growing width with ``fully_shard`` and train it
wrapped in ``KoopmanOptimizer``; every collective koopt itself issues (the T x T Gram
all-reduce, the averaged check losses, the agreement flags) is counted. The forward passes
of the loss checks all-gather parameters as any FSDP forward does; that traffic belongs to
evaluating the loss, not to fitting or jumping, and is not counted.

    python benchmarks/distributed_comm.py           # widths up to 2048 (about 4.2M params)
    python benchmarks/distributed_comm.py --quick   # widths up to 256

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init: str, widths: list[int], out: str) -> None:
    import torch.nn.functional as F
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import koopt.distributed as kd
    from koopt import KoopmanOptimizer

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    counted = {"bytes": 0, "calls": 0}
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):
        counted["bytes"] += tensor.numel() * tensor.element_size()
        counted["calls"] += 1
        return real_all_reduce(tensor, *args, **kwargs)

    kd.dist.all_reduce = counting_all_reduce  # koopt's collectives only
    rows = []
    mesh = init_device_mesh("cpu", (world,))
    gen = torch.Generator().manual_seed(rank)
    X = torch.randn(256, 64, generator=gen)
    y = torch.randint(0, 10, (256,), generator=gen)
    for width in widths:
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Linear(64, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 10),
        )
        n_params = sum(p.numel() for p in net.parameters())
        for layer in net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(net, mesh=mesh)
        opt = KoopmanOptimizer(
            torch.optim.SGD(net.parameters(), lr=1e-2),
            warmup=0,
            stride=1,
            window=16,
            horizons=(5, 10, 20),
            loss_fn=lambda net=net: F.cross_entropy(net(X[:64]), y[:64]),
            fast_start=False,  # one fit of the 16-snapshot window, nothing else
        )
        before = dict(counted)
        for _ in range(16):
            opt.zero_grad()
            F.cross_entropy(net(X[:32]), y[:32]).backward()
            opt.step()
        fits = len(opt.log)
        rows.append(
            {
                "width": width,
                "n_params": n_params,
                "fits": fits,
                "bytes_per_fit": (counted["bytes"] - before["bytes"]) / max(fits, 1),
                "all_reduces_per_fit": (counted["calls"] - before["calls"]) / max(fits, 1),
            }
        )
    if rank == 0:
        torch.save(rows, out)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="widths up to 256")
    args = parser.parse_args()
    widths = [16, 64, 256] if args.quick else [16, 64, 256, 1024, 2048]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.pt")
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), widths, out), nprocs=2, join=True)
        rows = torch.load(out)
    print(f"{'width':>6} {'params':>10} {'fits':>5} {'bytes/fit':>10} {'all-reduces/fit':>16}")
    for r in rows:
        print(
            f"{r['width']:>6} {r['n_params']:>10} {r['fits']:>5} {r['bytes_per_fit']:>10.0f} "
            f"{r['all_reduces_per_fit']:>16.0f}"
        )
    print(json.dumps({"benchmark": "distributed_comm", "world": 2, "window": 16, "rows": rows}))


if __name__ == "__main__":
    main()
