"""The shared cycle of both experiments (Dogra & Redman 2020, Sec. 3-4):

train to t1 -> record every step t1..t2 -> fit the operators (timed) -> jump T steps in one
shot (timed) -> continue the optimizer from t2 to t2 + T (timed) -> compare.

Next to the Koopman jump the trivial baselines are always evaluated: "no jump" (stay at
w(t2)), "window mean" (the mean of the recorded window: weight averaging) and "linear"
(w(t2) + T x the window's mean update). Results are rewritten atomically after every seed.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from koopt import metrics
from koopt._atomic import write_json_atomic
from koopt.core.errors import DivergentPredictionError
from koopt.experiments.training import Task, default_lr
from koopt.families import fit_family
from koopt.layout import ParameterLayout

__all__ = ["CycleConfig", "SeedTrace", "run_seed", "run_experiment", "BASELINES"]

#: baselines evaluated next to every jump, in report order
BASELINES = ("no_jump", "window_mean", "linear")

ProgressFn = Callable[[int], None]


@dataclass
class CycleConfig:
    """Sizes and choices of one experiment (steps count optimizer steps from 0)."""

    experiment: str
    t1: int
    window: int
    horizon: int
    seeds: list[int]
    optimizer: str = "adadelta"
    lr: float | None = None
    family: str = "node"
    family_options: dict[str, Any] = field(default_factory=dict)
    checkpoints: int = 40  # evaluation points along each path (plots, valid horizon)
    path_budget_s: float = 10.0  # time allowed for the Koopman path (thinned if jumps are slow)

    @property
    def t2(self) -> int:
        return self.t1 + self.window

    def lr_used(self) -> float:
        return default_lr(self.optimizer, self.experiment) if self.lr is None else self.lr

    def validate(self) -> None:
        if self.t1 < 0:
            raise ValueError(f"t1 must be >= 0, got {self.t1}")
        if self.window < 2:
            raise ValueError(f"window must be >= 2 steps, got {self.window}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1 step, got {self.horizon}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")


@dataclass
class SeedTrace:
    """Everything the plots need from one seed."""

    seed: int
    t1: int
    t2: int
    horizon: int
    step_losses: np.ndarray  # (t2 + T,) mini-batch / collocation loss of every step
    opt_steps: np.ndarray  # steps of the optimizer-path evaluations
    opt_eval: dict[str, np.ndarray]  # "train"/"val" -> deterministic losses at opt_steps
    koop_steps: np.ndarray  # t2 + horizons of the Koopman-path evaluations
    koop_eval: dict[str, np.ndarray]
    final: dict[str, dict[str, float]]  # method -> eval at t2 + T
    jump_error: np.ndarray  # per parameter |w_hat - w(t2+T)|
    movement: np.ndarray  # per parameter |w(t2+T) - w(t2)|
    mean_error: np.ndarray  # per parameter |w_mean - w(t2+T)| (averaging baseline)
    eigenvalues: np.ndarray  # complex, every operator's eigenvalues


def _checkpoints(n: int, k: int) -> list[int]:
    """About k evenly spaced integers in 1..n, always including n."""
    m = max(1, min(k, n))
    pts = sorted({max(1, round(n * (i + 1) / m)) for i in range(m)})
    if pts[-1] != n:
        pts.append(n)
    return pts


def _thin(horizons: list[int], time_jump: float, budget_s: float) -> list[int]:
    """The Koopman-path horizons: all of them when one jump is cheap, else an evenly spread
    subset (always ending at T) that fits ``budget_s`` (at least 4 points)."""
    if time_jump <= 0 or time_jump * len(horizons) <= budget_s:
        return horizons
    k = max(4, int(budget_s / time_jump))
    if k >= len(horizons):
        return horizons
    picks = sorted({horizons[round(i * (len(horizons) - 1) / (k - 1))] for i in range(k)})
    return picks


def _train(task: Task, n: int, losses: torch.Tensor, offset: int,
           advance: ProgressFn | None, every: int = 250) -> None:
    """n optimizer steps, losses into losses[offset:offset+n]; progress every ``every``."""
    done = 0
    while done < n:
        m = min(every, n - done)
        for i in range(offset + done, offset + done + m):
            losses[i] = task.step()
        done += m
        if advance is not None:
            advance(m)


def _eval_at(task: Task, layout: ParameterLayout, w: torch.Tensor | None
             ) -> dict[str, float]:
    """Evaluate the task with the weights set to ``w``; {} if w is missing or not finite."""
    if w is None or not bool(torch.isfinite(w).all()):
        return {}
    layout.write_(w)
    return task.evaluate()


def _failed(like: dict[str, float]) -> dict[str, float]:
    """The evaluation of a diverged prediction: infinite losses, no accuracy."""
    return {k: (math.nan if "acc" in k else math.inf) for k in like}


def _safe_predict(fam: Any, h: int | list[int]) -> torch.Tensor | None:
    try:
        return fam.predict(h)
    except (DivergentPredictionError, OverflowError, FloatingPointError, RuntimeError):
        return None


def run_seed(task: Task, cfg: CycleConfig, seed: int, *, advance: ProgressFn | None = None,
             keep_trace: bool = False) -> tuple[dict[str, Any], SeedTrace | None]:
    """One full cycle on a freshly seeded ``task``; returns (record, trace or None)."""
    t1, t2, T = cfg.t1, cfg.t2, cfg.horizon
    layout = ParameterLayout.from_module(task.model)
    n = layout.numel
    losses = torch.empty(t2 + T, dtype=torch.float64)

    # 1. burn-in to t1
    t_start = time.perf_counter()
    _train(task, t1, losses, 0, advance)
    # 2. record every step t1..t2: row k = weights after step t1 + k
    snaps = torch.empty((cfg.window + 1, n), dtype=torch.float64)
    layout.snapshot_into(snaps[0])
    done = 0
    while done < cfg.window:
        m = min(250, cfg.window - done)
        for k in range(done, done + m):
            losses[t1 + k] = task.step()
            layout.snapshot_into(snaps[k + 1])
        done += m
        if advance is not None:
            advance(m)
    time_train = time.perf_counter() - t_start
    w_t2 = snaps[-1].clone()

    # 3. fit and jump, timed separately
    t0 = time.perf_counter()
    fam = fit_family(cfg.family, layout, snaps, **cfg.family_options)
    time_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    w_hat = _safe_predict(fam, T)
    time_jump = time.perf_counter() - t0
    diverged = w_hat is None or not bool(torch.isfinite(w_hat).all())

    # baselines
    candidates: dict[str, torch.Tensor | None] = {
        "koopman": w_hat,
        "no_jump": w_t2,
        "window_mean": snaps.mean(0),
        "linear": w_t2 + T * (w_t2 - snaps[0]) / cfg.window,
    }
    ev = {name: _eval_at(task, layout, w) for name, w in candidates.items()}
    for name in candidates:
        ev[name] = ev[name] or _failed(ev["no_jump"])

    # Koopman path at the checkpoints (evaluation only; not timed)
    horizons = _checkpoints(T, cfg.checkpoints)
    koop_h = _thin(horizons, time_jump, cfg.path_budget_s)
    path = _safe_predict(fam, koop_h[:-1]) if len(koop_h) > 1 else None
    koop_eval: dict[str, list[float]] = {}
    for i in range(len(koop_h)):
        if i == len(koop_h) - 1:
            e = ev["koopman"]  # the jump itself: already evaluated
        elif path is not None:
            e = _eval_at(task, layout, path[i]) or _failed(ev["no_jump"])
        else:
            e = {}
        for k in ev["no_jump"]:  # the same keys on every point, nan where not finite
            koop_eval.setdefault(k, []).append(e.get(k, math.nan))

    # 4. the optimizer from t2 to t2 + T (timed), keeping the weights at the checkpoints
    layout.write_(w_t2.to(snaps.dtype))
    ckpt = set(horizons)
    kept: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for i in range(T):
        losses[t2 + i] = task.step()
        if i + 1 in ckpt:
            kept.append(layout.flatten(torch.float64))
        if advance is not None and (i + 1) % 250 == 0:
            advance(250)
    time_opt = time.perf_counter() - t0
    if advance is not None and T % 250:
        advance(T % 250)
    w_true = layout.flatten(torch.float64)
    ev["optimizer"] = task.evaluate()
    opt_eval: dict[str, list[float]] = {}
    window_rows = _checkpoints(cfg.window, cfg.checkpoints // 2)
    for w in [snaps[r] for r in [0, *window_rows]] + kept:
        for k, v in (_eval_at(task, layout, w) or _failed(ev["no_jump"])).items():
            opt_eval.setdefault(k, []).append(v)
    layout.write_(w_true)  # leave the model where the optimizer got it

    # 5. metrics
    rec: dict[str, Any] = {
        "seed": seed, "optimizer": cfg.optimizer, "lr": cfg.lr_used(), "family": cfg.family,
        "t1": t1, "t2": t2, "T": T, "window": cfg.window, "n_params": n,
        "n_operators": fam.n_operators, "spectral_radius": float(fam.spectral_radius),
        "diverged": diverged,
    }
    has_val = "val" in ev["optimizer"]
    opt = ev["optimizer"]
    rec["loss_t2"] = ev["no_jump"]["train"]
    rec["loss_koopman"] = ev["koopman"]["train"]
    rec["loss_optimizer"] = opt["train"]
    rec["rho_train"] = metrics.loss_ratio(ev["koopman"]["train"], opt["train"])
    if has_val:
        rec["val_loss_t2"] = ev["no_jump"]["val"]
        rec["val_loss_koopman"] = ev["koopman"]["val"]
        rec["val_loss_optimizer"] = opt["val"]
        rec["rho_val"] = metrics.loss_ratio(ev["koopman"]["val"], opt["val"])
    if "val_acc" in opt:
        rec["val_acc_t2"] = ev["no_jump"].get("val_acc")
        rec["val_acc_koopman"] = ev["koopman"].get("val_acc")
        rec["val_acc_optimizer"] = opt["val_acc"]
    rec["error2growth"] = (math.nan if diverged else
                           metrics.error2growth(w_hat, w_true, w_t2))
    rec["time_train"] = time_train
    rec["time_optimizer_T"] = time_opt
    rec["time_fit"] = time_fit
    rec["time_jump"] = time_jump
    rec["window_speedup"] = metrics.window_speedup(time_opt, time_fit, time_jump)
    opt_at = dict(zip(horizons, opt_eval["train"][-len(horizons):], strict=True))
    rhos = [metrics.loss_ratio(v, opt_at[h]) for h, v in zip(koop_h, koop_eval["train"],
                                                             strict=True)]
    rec["valid_horizon"] = metrics.valid_horizon(koop_h, rhos)
    for b in BASELINES:
        rec[f"loss_{b}"] = ev[b]["train"]
        rec[f"rho_{b}"] = metrics.loss_ratio(ev[b]["train"], opt["train"])
        if has_val:
            rec[f"val_loss_{b}"] = ev[b]["val"]
            rec[f"rho_val_{b}"] = metrics.loss_ratio(ev[b]["val"], opt["val"])
        if b != "no_jump":
            rec[f"error2growth_{b}"] = metrics.error2growth(candidates[b], w_true, w_t2)

    trace = None
    if keep_trace:
        opt_steps = np.array([t1, *[t1 + r for r in window_rows], *[t2 + h for h in horizons]])
        trace = SeedTrace(
            seed=seed, t1=t1, t2=t2, horizon=T, step_losses=losses.numpy().copy(),
            opt_steps=opt_steps, opt_eval={k: np.array(v) for k, v in opt_eval.items()},
            koop_steps=np.array([t2 + h for h in koop_h]),
            koop_eval={k: np.array(v) for k, v in koop_eval.items()},
            final={k: dict(v) for k, v in ev.items()},
            jump_error=(metrics.jump_errors(w_hat, w_true) if not diverged
                        else np.full(n, np.nan)),
            movement=metrics.true_movement(w_true, w_t2),
            mean_error=metrics.jump_errors(candidates["window_mean"], w_true),
            eigenvalues=fam.eigenvalues.numpy().astype(np.complex128),
        )
    return rec, trace


#: the record fields summarized over seeds (in report order)
SUMMARY_KEYS = (
    "loss_t2", "loss_koopman", "loss_optimizer", "rho_train", "val_loss_t2", "val_loss_koopman",
    "val_loss_optimizer", "rho_val", "val_acc_koopman", "val_acc_optimizer", "error2growth",
    "valid_horizon", "spectral_radius", "time_optimizer_T", "time_fit", "time_jump",
    "window_speedup",
    *[f"{p}{b}" for b in BASELINES for p in ("loss_", "rho_", "val_loss_", "rho_val_",
                                             "error2growth_")],
)


def environment() -> dict[str, Any]:
    """Versions and machine, so a reader can judge the timings."""
    import koopt

    return {
        "koopt": getattr(koopt, "__version__", "?"), "torch": torch.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }


def run_experiment(make_task: Callable[[int], Task], cfg: CycleConfig, out_dir: Path, *,
                   extra_config: dict[str, Any] | None = None, command: str = "",
                   advance_factory: Callable[[int], ProgressFn | None] | None = None,
                   on_seed: Callable[[dict[str, Any]], None] | None = None,
                   ) -> tuple[dict[str, Any], SeedTrace | None]:
    """Run every seed serially; rewrite ``out_dir/results.json`` after each one.

    On KeyboardInterrupt the file is rewritten with ``status: "interrupted"`` (atomically)
    and the interrupt propagates. Returns (results, trace of the first seed).
    """
    cfg.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    config = asdict(cfg)
    config.update({"t2": cfg.t2, "lr": cfg.lr_used(), "n_seeds": len(cfg.seeds)})
    config.update(extra_config or {})
    results: dict[str, Any] = {
        "experiment": cfg.experiment, "command": command,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running", "config": config, "environment": environment(),
        "runs": [], "summary": {},
    }
    write_json_atomic(path, results)
    trace: SeedTrace | None = None
    try:
        for i, seed in enumerate(cfg.seeds):
            task = make_task(seed)
            advance = advance_factory(seed) if advance_factory else None
            rec, tr = run_seed(task, cfg, seed, advance=advance, keep_trace=(i == 0))
            if tr is not None:
                trace = tr
            results["runs"].append(rec)
            results["summary"] = metrics.summarize_records(results["runs"], SUMMARY_KEYS)
            results["finished_seeds"] = len(results["runs"])
            write_json_atomic(path, results)
            if on_seed is not None:
                on_seed(rec)
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        results["finished_seeds"] = len(results["runs"])
        write_json_atomic(path, results)
        raise
    results["status"] = "complete"
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(path, results)
    return results, trace
