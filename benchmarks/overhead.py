"""Recording overhead: the cost of snapshots per training step, as a fraction of the step.

Digits MLP 64-20-20-20-10 (Adadelta lr 1.0, batch 64, ``torch.set_num_threads(1)``).
Three loops over the same batches, interleaved in rounds so that machine load hits all:

- ``plain``: the bare optimizer;
- ``record``: ``KoopmanOptimizer`` with the default schedule whose fit is replaced by
  restarting the window (what happens after a refusal, minus the fit and checks): the
  wrapper's step plus the snapshot copies at the default stride, i.e. what recording costs;
- ``record_every_step``: the same with ``stride=1`` (the seed paper's schedule).

Overhead = (wrapped - plain) / plain per step, median over rounds. Target (issue 6): <= 5%
at the default stride. The jump itself (fit + checks) is not recording; its cost is counted
in ``time_to_target.py`` and timed in ``window_speedup.py``.

    python benchmarks/overhead.py            # 15 rounds of 2000 steps
    python benchmarks/overhead.py --quick    # 7 rounds of 1000 steps

Last line printed: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from koopt.experiments.mnist import MLP, load_digits_split
from koopt.experiments.training import make_optimizer
from koopt.optim import KoopmanOptimizer


def make(kind: str, data, seed: int = 0):
    torch.manual_seed(seed)
    model = MLP(64)
    opt = make_optimizer("adadelta", model.parameters())
    if kind != "plain":
        stride = 1 if kind == "record_every_step" else 10
        # the base time scale only (fast_start's every-step phase is short and gated)
        kopt = KoopmanOptimizer(opt, warmup=0, stride=stride, loss_fn=lambda: 0.0,
                                fast_start=False)
        # record only: a full window restarts without a fit
        kopt._jump = lambda groups: [kopt._reopen(g) for g in groups]  # type: ignore[method-assign]
        opt = kopt
    return model, opt


def timed_steps(model, opt, data, batches) -> float:
    t0 = time.perf_counter()
    for idx in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rounds = args.rounds or (7 if args.quick else 15)
    steps = args.steps or (1000 if args.quick else 2000)
    data = load_digits_split()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(data.y_train), (64,), generator=g) for _ in range(steps)]
    kinds = ("plain", "record", "record_every_step")
    arms = {k: make(k, data) for k in kinds}
    for k in kinds:  # warm up allocators and kernels
        timed_steps(*arms[k], data, batches[:100])
    per_step: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(rounds):
        order = kinds if r % 2 == 0 else tuple(reversed(kinds))
        for k in order:
            per_step[k].append(timed_steps(*arms[k], data, batches) / steps)
    base = per_step["plain"]
    overhead = {
        k: statistics.median((w - b) / b for w, b in zip(per_step[k], base, strict=True))
        for k in kinds[1:]
    }
    print("torch threads: 1; digits MLP 64-20-20-20-10, Adadelta, batch 64")
    print(f"{'loop':<18} {'median us/step':>14} {'overhead':>9}")
    for k in kinds:
        ov = f"{overhead[k]:>8.1%}" if k in overhead else f"{'-':>9}"
        print(f"{k:<18} {statistics.median(per_step[k]) * 1e6:>14.1f} {ov}")
    print(json.dumps({
        "benchmark": "overhead", "rounds": rounds, "steps": steps, "threads": 1,
        "us_per_step": {k: statistics.median(v) * 1e6 for k, v in per_step.items()},
        "overhead_default_stride": overhead["record"],
        "overhead_every_step": overhead["record_every_step"],
        "target": 0.05, "met": overhead["record"] <= 0.05,
    }))


if __name__ == "__main__":
    main()
