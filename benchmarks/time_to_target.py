"""Time to target: the plain optimizer against the same optimizer wrapped by KoopmanOptimizer.

Protocol (QuACK, Luo, Shen, Dangovski, Soljacic, NeurIPS 2023; ``docs/method.md``):
target = L_min + 0.01 (L_0 - L_min) of the *full-batch training loss*, where L_0 is the
loss at initialisation and L_min the lowest loss of the plain optimizer's own run of
``steps`` gradient steps (the long run, same seed). Time to target = wall clock until the
loss is first at or below the target; speedup = plain / wrapped.

Fairness:
- per seed both arms start from the same weights and see the same data in the same order
  (step i of either arm uses batch i);
- the arms run interleaved, ``every`` steps of one then ``every`` steps of the other, in
  one process with ``torch.set_num_threads(1)``, so load from other processes hits both;
- the loss monitoring (every ``every`` gradient steps, both arms at the same step index)
  is outside the timers; everything koopt does (recording, fitting, loss checks, writes)
  is inside them, because it happens inside ``opt.step()``;
- the wrapped arm uses the library defaults; only ``loss_fn`` (a fixed training subset,
  never validation data) and ``module`` are passed.

Wall clock on a shared machine is noisy, so a second, noise-robust figure is printed:
``step-eq`` = plain gradient steps to target / (wrapped gradient steps to target + koopt's
own time until then expressed in plain steps), QuACK's cost unit with every koopt cost
converted at the plain arm's measured time per step.

The cheap baseline ("restart", "restarts only"): a third arm, the plain optimizer with
its state cleared every 20 steps and no jump, timed the same way: the speedup that
restarting the optimizer alone gives (``state_policy="reset"`` restarts it after jumps).

The whole run ("end tr", "end val"): the lowest training and validation loss the wrapped
arm reached within the plain arm's total wall clock, over the plain arm's lowest ones (the
best checkpoint each would keep); below 1 means koopt left a better model for the same time.

Validation loss "at the same wall clock": both arms' validation loss at the plain arm's
time to target (the wrapped arm's last monitor point at or before that time).

    python benchmarks/time_to_target.py --quick          # a few minutes on 2 cores
    python benchmarks/time_to_target.py                  # 5 seeds, longer runs
    python benchmarks/time_to_target.py --tasks mlp --options '{"state_policy": "reset"}'

Last line printed: one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from koopt.experiments.hnn import HNNConfig, HNNet, hamiltonian_loss_fast, perturb_points
from koopt.experiments.mnist import MLP, load_digits_split
from koopt.experiments.training import make_optimizer
from koopt.optim import KoopmanOptimizer


@dataclass
class Arm:
    """One training run: ``step()`` one gradient step; losses measured outside the timer."""

    model: nn.Module
    opt: torch.optim.Optimizer
    step: Callable[[], None]
    train_loss: Callable[[], float]
    val_loss: Callable[[], float]
    wall: float = 0.0
    curve: list[tuple[int, float, float, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- tasks
def hnn_arm(seed: int, optimizer: str, koopman: dict[str, Any] | None) -> Arm:
    """The paper's HNN oscillator solver (1-10-10-2, sin), full batch of 200 fresh points."""
    cfg = HNNConfig()
    torch.manual_seed(seed)
    model = HNNet(cfg.hidden)
    opt = make_optimizer(optimizer, model.parameters(), task="hnn")
    gen = torch.Generator().manual_seed(10_000 + seed)
    grid = torch.linspace(cfg.t0, cfg.tf, cfg.n_points).unsqueeze(1)
    eval_grid = torch.linspace(cfg.t0, cfg.tf, cfg.n_eval).unsqueeze(1)
    # held-out times: uniform random points (fixed per seed), reported as "validation"
    val_t = (torch.rand(cfg.n_eval, 1, generator=torch.Generator().manual_seed(7 + seed))
             * (cfg.tf - cfg.t0) + cfg.t0)
    if koopman is not None:
        # the check: the loss on the unperturbed collocation grid (training points)
        check = lambda: hamiltonian_loss_fast(model, grid, cfg)  # noqa: E731
        opt = KoopmanOptimizer(opt, loss_fn=check, module=model, **koopman)
    points: list[Tensor] = []

    def step() -> None:
        if not points:
            noise = torch.randn((1000, cfg.n_points, 1), generator=gen)
            points.extend(reversed(perturb_points(grid, noise, cfg).unbind(0)))
        t = points.pop()
        opt.zero_grad(set_to_none=True)
        hamiltonian_loss_fast(model, t, cfg).backward()
        opt.step()

    @torch.no_grad()
    def loss_on(t: Tensor) -> float:
        return float(hamiltonian_loss_fast(model, t, cfg))

    return Arm(model, opt, step, lambda: loss_on(eval_grid), lambda: loss_on(val_t))


class SmallCNN(nn.Module):
    """8x8 digits: conv 1->8 3x3, ReLU, max-pool 2, conv 8->16 3x3, ReLU, max-pool 2, 64->10."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = x.view(-1, 1, 8, 8)
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


_DIGITS = None


def digits():
    global _DIGITS
    if _DIGITS is None:
        _DIGITS = load_digits_split()
    return _DIGITS


def classifier_arm(seed: int, make_model: Callable[[], nn.Module], optimizer: str,
                   koopman: dict[str, Any] | None, batch: int = 64) -> Arm:
    """Mini-batch training on sklearn digits (80/20 split); the check: 512 training samples."""
    d = digits()
    torch.manual_seed(seed)
    model = make_model()
    opt = make_optimizer(optimizer, model.parameters(), task="mnist")
    gen = torch.Generator().manual_seed(20_000 + seed)
    if koopman is not None:
        sub = torch.randperm(len(d.y_train), generator=torch.Generator().manual_seed(
            30_000 + seed))[:512]
        Xc, yc = d.x_train[sub], d.y_train[sub]
        check = lambda: F.cross_entropy(model(Xc), yc)  # noqa: E731
        opt = KoopmanOptimizer(opt, loss_fn=check, module=model, **koopman)
    batches: list[Tensor] = []

    def step() -> None:
        if not batches:
            perm = torch.randperm(len(d.y_train), generator=gen)
            batches.extend(reversed(perm.split(batch)))
        idx = batches.pop()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(d.x_train[idx]), d.y_train[idx]).backward()
        opt.step()

    @torch.no_grad()
    def loss_on(x: Tensor, y: Tensor) -> float:
        return float(F.cross_entropy(model(x), y))

    return Arm(model, opt, step, lambda: loss_on(d.x_train, d.y_train),
               lambda: loss_on(d.x_val, d.y_val))


def width_mlp(h: int) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, 10))


# name -> (arm factory(seed, koopman options), gradient steps full, quick, monitor every)
TASKS: dict[str, tuple[Callable[[int, dict | None], Arm], int, int, int]] = {
    "hnn_adam": (lambda s, k: hnn_arm(s, "adam", k), 8000, 3000, 20),
    "hnn_adadelta": (lambda s, k: hnn_arm(s, "adadelta", k), 8000, 3000, 20),
    "mlp": (lambda s, k: classifier_arm(s, lambda: MLP(64), "adadelta", k), 3000, 1500, 10),
    "mlp_adam": (lambda s, k: classifier_arm(s, lambda: MLP(64), "adam", k), 3000, 1500, 10),
    **{
        f"width{h}": (lambda s, k, h=h: classifier_arm(s, width_mlp(h), "adadelta", k),
                      2000, 1000, 10)
        for h in (16, 64, 256, 1024)
    },
    "cnn": (lambda s, k: classifier_arm(s, SmallCNN, "adadelta", k), 2000, 1000, 10),
}


# ----------------------------------------------------------------------------- running
def monitor(arm: Arm, step: int) -> None:
    arm.curve.append((step, arm.wall, arm.train_loss(), arm.val_loss()))


#: The cheap baseline arm: the plain optimizer with its state cleared every this many steps
#: (no Koopman). ``state_policy="reset"`` clears it after every accepted jump; this arm says
#: how much of a speedup the restarts alone would give.
RESTART_EVERY = 20


def with_restarts(arm: Arm, every: int) -> Arm:
    """Clear the optimizer's state (Adam's moments, Adadelta's accumulators) every ``every``
    steps, as QuACK's restarts do, without any jump."""
    opt, count = arm.opt, [0]
    inner_step = opt.step

    def step(*args: Any, **kwargs: Any) -> Any:
        out = inner_step(*args, **kwargs)
        count[0] += 1
        if count[0] % every == 0:
            opt.state.clear()
        return out

    opt.step = step  # type: ignore[method-assign]
    return arm


def run_pair(task: str, seed: int, steps: int, every: int, options: dict) -> dict[str, Any]:
    make = TASKS[task][0]
    plain, koop = make(seed, None), make(seed, options)
    restart = with_restarts(make(seed, None), RESTART_EVERY)
    arms = [plain, koop, restart]
    for arm in arms:
        monitor(arm, 0)
    for done in range(every, steps + 1, every):
        k = done // every
        for arm in arms[k % 3:] + arms[: k % 3]:  # each arm first in turn
            t0 = time.perf_counter()
            for _ in range(every):
                arm.step()
            arm.wall += time.perf_counter() - t0
            monitor(arm, done)
    L0 = plain.curve[0][2]
    Lmin = min(c[2] for c in plain.curve)
    target = Lmin + 0.01 * (L0 - Lmin)

    def hit(arm: Arm) -> tuple[float, int, float] | None:
        for step, wall, train, val in arm.curve:
            if train <= target:
                return wall, step, val
        return None

    hp, hk, hr = hit(plain), hit(koop), hit(restart)
    assert hp is not None  # the plain arm reaches its own L_min
    t_plain, step_plain, val_plain = hp
    # wrapped arm's validation loss at the plain arm's time to target
    val_koop_same = [c[3] for c in koop.curve if c[1] <= t_plain][-1]
    # the whole run: the best losses the wrapped arm reached within the plain arm's total
    # wall clock, over the plain arm's best (single end points are too noisy on the HNN)
    within = [c for c in koop.curve if c[1] <= plain.wall]
    end_train_ratio = min(c[2] for c in within) / Lmin
    end_val_ratio = min(c[3] for c in within) / min(c[3] for c in plain.curve)
    kopt = koop.opt
    assert isinstance(kopt, KoopmanOptimizer)
    # noise-robust second measure: cost in gradient-step equivalents (QuACK's unit), the
    # wrapped arm's gradient steps plus koopt's own time up to its hit in plain-step units
    plain_step_s = plain.wall / steps
    koop_s_steps = None
    if hk:
        spent = sum(r.get("time_s", 0.0) for r in kopt.log if r["step"] <= hk[1])
        koop_s_steps = hk[1] + spent / plain_step_s
    out: dict[str, Any] = {
        "task": task, "seed": seed, "L0": L0, "Lmin": Lmin, "target": target,
        "plain_s": t_plain, "plain_step": step_plain,
        "koop_s": hk[0] if hk else None, "koop_step": hk[1] if hk else None,
        "speedup": (t_plain / hk[0]) if hk else 0.0,
        "speedup_steps": (step_plain / koop_s_steps) if koop_s_steps else 0.0,
        "restart_speedup": (t_plain / hr[0]) if hr else 0.0,
        "restart_step": hr[1] if hr else None,
        "val_plain": val_plain, "val_koop": val_koop_same,
        "koop_val_at_own_target": hk[2] if hk else None,
        "end_train_ratio": end_train_ratio, "end_val_ratio": end_val_ratio,
        "accepted": kopt.num_accepted, "refused": kopt.num_refused,
        "virtual_steps": kopt.virtual_steps,
        "koop_overhead_s": sum(r.get("time_s", 0.0) for r in kopt.log),
        "fits": len(kopt.log),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: " + ",".join(TASKS))
    ap.add_argument("--seeds", type=int, default=None, help="default 5 (3 with --quick)")
    ap.add_argument("--quick", action="store_true", help="shorter runs, 3 seeds")
    ap.add_argument("--steps", type=int, default=None, help="override the gradient steps")
    ap.add_argument("--options", default="{}", help="JSON: KoopmanOptimizer keyword arguments")
    args = ap.parse_args()
    torch.set_num_threads(1)
    options = json.loads(args.options)
    seeds = args.seeds or (3 if args.quick else 5)
    tasks = [t for t in args.tasks.split(",") if t]
    print(f"torch threads: {torch.get_num_threads()}; options: {options or 'defaults'}")
    print(f"{'task':<13} {'seed':>4} {'plain s':>8} {'koop s':>8} {'speedup':>7} "
          f"{'steps p/k':>11} {'step-eq':>7} {'acc/ref':>8} {'virt':>6} {'ovh s':>6} "
          f"{'val plain':>9} {'val koop':>9} {'end tr':>7} {'end val':>7} {'restart':>7}")
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for task in tasks:
        _, full, quick, every = TASKS[task]
        steps = args.steps or (quick if args.quick else full)
        for seed in range(seeds):
            r = run_pair(task, seed, steps, every, options)
            rows.append(r)
            print(f"{task:<13} {seed:>4} {r['plain_s']:>8.3f} "
                  f"{(r['koop_s'] if r['koop_s'] is not None else math.nan):>8.3f} "
                  f"{r['speedup']:>7.2f} {r['plain_step']:>5}/{r['koop_step'] or -1:<5} "
                  f"{r['speedup_steps']:>7.2f} "
                  f"{r['accepted']:>3}/{r['refused']:<4} {r['virtual_steps']:>6} "
                  f"{r['koop_overhead_s']:>6.3f} {r['val_plain']:>9.4f} {r['val_koop']:>9.4f} "
                  f"{r['end_train_ratio']:>7.3f} {r['end_val_ratio']:>7.3f} "
                  f"{r['restart_speedup']:>7.2f}",
                  flush=True)
        sp = [r["speedup"] for r in rows if r["task"] == task]
        se = [r["speedup_steps"] for r in rows if r["task"] == task]
        vr = [r["val_koop"] / r["val_plain"] for r in rows if r["task"] == task]
        er = [r["end_train_ratio"] for r in rows if r["task"] == task]
        ev = [r["end_val_ratio"] for r in rows if r["task"] == task]
        rs = [r["restart_speedup"] for r in rows if r["task"] == task]
        summary[task] = {"median_speedup": statistics.median(sp), "min_speedup": min(sp),
                         "max_speedup": max(sp), "median_speedup_steps": statistics.median(se),
                         "min_speedup_steps": min(se),
                         "median_val_ratio": statistics.median(vr),
                         "median_end_train_ratio": statistics.median(er),
                         "median_end_val_ratio": statistics.median(ev),
                         "median_restart_speedup": statistics.median(rs),
                         "steps": steps, "seeds": seeds}
    print()
    print(f"{'task':<13} {'median':>7} {'min':>6} {'max':>6} {'step-eq median':>14} "
          f"{'min':>6} {'val koop/plain':>14} {'end train':>9} {'end val':>7} "
          f"{'restarts only':>13}")
    for task, s in summary.items():
        print(f"{task:<13} {s['median_speedup']:>7.2f} {s['min_speedup']:>6.2f} "
              f"{s['max_speedup']:>6.2f} {s['median_speedup_steps']:>14.2f} "
              f"{s['min_speedup_steps']:>6.2f} {s['median_val_ratio']:>14.3f} "
              f"{s['median_end_train_ratio']:>9.3f} {s['median_end_val_ratio']:>7.3f} "
              f"{s['median_restart_speedup']:>13.2f}")
    print(json.dumps({"benchmark": "time_to_target", "quick": args.quick, "options": options,
                      "threads": 1, "summary": summary, "rows": rows}))


if __name__ == "__main__":
    main()
