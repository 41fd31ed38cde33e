"""The shared cycle of both experiments (Dogra & Redman 2020, Sec. 3-4):

train to t1 -> record every step t1..t2 -> fit every Koopman variant once (timed) -> jump
to each horizon T in one shot (timed) -> continue the optimizer from t2 to t2 + max T
(timed, cumulative per horizon) -> compare at every horizon.

Next to the Koopman variants the trivial baselines are always evaluated: "no jump" (stay at
w(t2)), "window mean" (the mean of the recorded window: weight averaging) and "linear"
(w(t2) + T x the window's mean update). Results are rewritten atomically after every seed;
seeds can run in parallel processes and an interrupted run can be resumed.
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
from koopt._atomic import write_bytes_atomic, write_json_atomic
from koopt.core.errors import DivergentPredictionError
from koopt.experiments.training import Task, default_lr
from koopt.experiments.variants import Variant
from koopt.families import fit_family
from koopt.layout import ParameterLayout

__all__ = ["CycleConfig", "SeedTrace", "run_seed", "run_experiment", "BASELINES",
           "load_trace", "read_trace", "save_trace", "load_results", "RESUME_KEYS",
           "TrainingDiverged"]

#: baselines evaluated next to every jump, in report order
BASELINES = ("no_jump", "window_mean", "linear")
#: target of "time to target": L_min + TARGET_FRACTION (L(t2) - L_min) on the continuation
TARGET_FRACTION = 0.01

ProgressFn = Callable[[int], None]


class TrainingDiverged(ValueError):
    """The optimizer's own training blew up (a non-finite loss or weights, or a step that
    failed); the message is one line for the user."""


@dataclass
class CycleConfig:
    """Sizes and choices of one experiment (steps count optimizer steps from 0).

    ``horizon`` is the headline T; ``horizons`` the sweep (default: just ``horizon``).
    ``variants`` are the Koopman fits; the first is the primary one whose numbers fill the
    flat record keys (``rho_train``, ``error2growth``...). Without variants, ``family`` and
    ``family_options`` make the single one.
    """

    experiment: str
    t1: int
    window: int
    horizon: int
    seeds: list[int]
    optimizer: str = "adadelta"
    lr: float | None = None
    family: str = "node"
    family_options: dict[str, Any] = field(default_factory=dict)
    horizons: list[int] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    window_name: str = ""
    checkpoints: int = 40  # evaluation points along each path (plots, valid horizon)
    path_budget_s: float = 10.0  # time allowed for each Koopman path (thinned if slow)

    @property
    def t2(self) -> int:
        return self.t1 + self.window

    def all_horizons(self) -> list[int]:
        return sorted({self.horizon, *self.horizons})

    def all_variants(self) -> list[Variant]:
        if self.variants:
            return list(self.variants)
        return [Variant(self.family, self.family, dict(self.family_options))]

    def lr_used(self) -> float:
        return default_lr(self.optimizer, self.experiment) if self.lr is None else self.lr

    def validate(self) -> None:
        if self.t1 < 0:
            raise ValueError(f"t1 must be >= 0, got {self.t1}")
        if self.window < 2:
            raise ValueError(f"window must be >= 2 steps, got {self.window}")
        if self.horizon < 1 or any(h < 1 for h in self.horizons):
            raise ValueError(f"horizons must be >= 1 step, got {self.all_horizons()}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        names = [v.name for v in self.all_variants()]
        if len(set(names)) != len(names) or set(names) & {*BASELINES, "optimizer"}:
            raise ValueError(f"variant names must be unique and not baseline names: {names}")
        for v in self.all_variants():
            if v.stride > 1 and (any(h % v.stride for h in self.all_horizons())
                                 or self.window < 2 * v.stride):
                raise ValueError(f"variant {v.name}: stride {v.stride} must divide every "
                                 f"horizon and leave at least 3 snapshots in the window")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variants"] = [v.as_dict() for v in self.all_variants()]
        d["horizons"] = self.all_horizons()
        d["t2"] = self.t2
        d["lr"] = self.lr_used()
        d["n_seeds"] = len(self.seeds)
        return d


#: config fields that must match for --resume to continue a run
RESUME_KEYS = ("experiment", "t1", "window", "horizon", "horizons", "optimizer", "lr",
               "variants", "checkpoints")


@dataclass
class SeedTrace:
    """Everything the plots need from one seed (primary variant at the headline T)."""

    seed: int
    t1: int
    t2: int
    horizon: int
    step_losses: np.ndarray  # (t2 + max T,) mini-batch / collocation loss of every step
    opt_steps: np.ndarray  # steps of the optimizer-path evaluations
    opt_eval: dict[str, np.ndarray]  # "train"/"val" -> deterministic losses at opt_steps
    koop_steps: np.ndarray  # t2 + horizons of the Koopman-path evaluations
    koop_eval: dict[str, np.ndarray]
    final: dict[str, dict[str, float]]  # method -> eval at t2 + T
    jump_error: np.ndarray  # per parameter |w_hat - w(t2+T)|
    movement: np.ndarray  # per parameter |w(t2+T) - w(t2)|
    mean_error: np.ndarray  # per parameter |w_mean - w(t2+T)| (averaging baseline)
    eigenvalues: np.ndarray  # complex, every operator's eigenvalues


def save_trace(trace: SeedTrace, path: Path) -> Path:
    """The trace as one .npz (atomic), so ``koopt report`` can redraw the plots."""
    import io

    arrays: dict[str, np.ndarray] = {}
    for k, v in asdict(trace).items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                if isinstance(vv, dict):
                    for k3, v3 in vv.items():
                        arrays[f"{k}/{kk}/{k3}"] = np.asarray(v3, dtype=np.float64)
                else:
                    arrays[f"{k}/{kk}"] = np.asarray(vv)
        else:
            arrays[k] = np.asarray(v)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes_atomic(path, buf.getvalue())


def read_trace(path: Path) -> SeedTrace:
    """Read a trace written by ``save_trace``. Raises FileNotFoundError if it is missing
    and ValueError naming the file if it is not a readable trace (truncated, corrupt)."""
    import zipfile
    import zlib

    if not Path(path).is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    kw: dict[str, Any] = {"opt_eval": {}, "koop_eval": {}, "final": {}}
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":
                raise ValueError("not an .npz archive")
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                parts = key.split("/")
                if len(parts) == 1:
                    v = data[key]
                    kw[key] = int(v) if key in ("seed", "t1", "t2", "horizon") else v
                elif len(parts) == 2:
                    kw[parts[0]][parts[1]] = data[key]
                else:
                    kw[parts[0]].setdefault(parts[1], {})[parts[2]] = float(data[key])
        return SeedTrace(**kw)
    except (OSError, ValueError, TypeError, KeyError, EOFError, AttributeError,
            zipfile.BadZipFile, zlib.error) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not a readable koopt trace ({why})") from None


def load_trace(path: Path) -> SeedTrace | None:
    """Read a trace written by ``save_trace``; None if the file is missing or unreadable."""
    try:
        return read_trace(path)
    except (OSError, ValueError):
        return None


def _not_results(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not a koopt results file ({why})")


def load_results(path: Path) -> dict[str, Any]:
    """Read ``results.json`` and check its shape (what the reports rely on). Raises
    ValueError naming the file if it is not valid JSON or not a koopt results file."""
    import json

    try:
        res = json.loads(Path(path).read_text())
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.reason})") from None
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(res, dict):
        raise _not_results(path, f"a JSON {type(res).__name__}, expected an object")
    for key, kind in (("experiment", str), ("config", dict), ("runs", list)):
        if key not in res:
            raise _not_results(path, f"no {key!r}")
        if not isinstance(res[key], kind):
            raise _not_results(path, f"{key!r} is {json.dumps(res[key])[:40]}, expected a "
                                     f"{'string' if kind is str else 'JSON ' + kind.__name__}")
    for key in ("summary", "grid", "status"):
        want = str if key == "status" else dict
        if key in res and not isinstance(res[key], want):
            raise _not_results(path, f"{key!r} is not a JSON "
                                     f"{'string' if want is str else 'object'}")
    for key in ("summary", "grid"):
        if any(not isinstance(v, dict) for v in res.get(key, {}).values()):
            raise _not_results(path, f"an entry of {key!r} is not a JSON object")
    for i, run in enumerate(res["runs"]):
        if not isinstance(run, dict) or not isinstance(run.get("seed"), int):
            raise _not_results(path, f"run {i} is not an object with an integer 'seed'")
        methods = run.get("methods", {})
        if not isinstance(methods, dict) or any(
                not isinstance(m, dict) or not isinstance(m.get("at", {}), dict)
                for m in methods.values()):
            raise _not_results(path, f"run {i}: 'methods' is malformed")
    return res


def _checkpoints(n: int, k: int) -> list[int]:
    """About k evenly spaced integers in 1..n, always including n."""
    m = max(1, min(k, n))
    pts = sorted({max(1, round(n * (i + 1) / m)) for i in range(m)})
    if pts[-1] != n:
        pts.append(n)
    return pts


def _thin(horizons: list[int], time_jump: float, budget_s: float,
          keep: set[int] | None = None) -> list[int]:
    """The Koopman-path horizons: all of them when one jump is cheap, else an evenly spread
    subset (at least 4 points) that fits ``budget_s``; ``keep`` horizons always stay."""
    keep = keep or set()
    if time_jump <= 0 or time_jump * len(horizons) <= budget_s:
        return horizons
    k = max(4, int(budget_s / time_jump))
    if k >= len(horizons):
        return horizons
    picks = {horizons[round(i * (len(horizons) - 1) / (k - 1))] for i in range(k)}
    return sorted(picks | (keep & set(horizons)))


def _step(task: Task, i: int) -> torch.Tensor:
    """The task's optimizer step number i + 1 (0-based i); a failing step (e.g. a learning
    rate the precision cannot hold) raises TrainingDiverged."""
    try:
        return task.step()
    except (RuntimeError, OverflowError, FloatingPointError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrainingDiverged(f"optimizer step {i + 1} failed ({why})") from None


def _check_losses(losses: torch.Tensor, start: int, stop: int) -> None:
    """Raise TrainingDiverged at the first non-finite loss in losses[start:stop]."""
    bad = ~torch.isfinite(losses[start:stop])
    if bool(bad.any()):
        step = start + int(bad.nonzero()[0, 0]) + 1
        raise TrainingDiverged(f"the training loss became {float(losses[step - 1])} at "
                               f"step {step}")


def _check_weights(w: torch.Tensor, step: int) -> None:
    if not bool(torch.isfinite(w).all()):
        raise TrainingDiverged(f"the weights became non-finite by step {step}")


def _empty(shape: tuple[int, ...], what: str) -> torch.Tensor:
    """torch.empty in float64, or a one-line ValueError when it does not fit in memory."""
    try:
        return torch.empty(shape, dtype=torch.float64)
    except (RuntimeError, MemoryError):
        gib = math.prod(shape) * 8 / 2**30
        raise ValueError(f"cannot allocate {gib:.3g} GiB for {what}; use a shorter --window "
                         "or --horizon") from None


def _train(task: Task, n: int, losses: torch.Tensor, offset: int,
           advance: ProgressFn | None, every: int = 250) -> None:
    """n optimizer steps, losses into losses[offset:offset+n]; progress every ``every``.
    Raises TrainingDiverged as soon as a loss is not finite."""
    done = 0
    while done < n:
        m = min(every, n - done)
        for i in range(offset + done, offset + done + m):
            losses[i] = _step(task, i)
        _check_losses(losses, offset + done, offset + done + m)
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
    except (DivergentPredictionError, OverflowError, FloatingPointError, RuntimeError,
            ValueError):
        return None


class _Strided:
    """A family fitted on every ``stride``-th snapshot, predicting in optimizer steps."""

    def __init__(self, fam: Any, stride: int) -> None:
        self.fam, self.stride = fam, stride
        self.n_operators = fam.n_operators
        self.spectral_radius = fam.spectral_radius
        self.eigenvalues = fam.eigenvalues

    def predict(self, h: int | list[int]) -> torch.Tensor:
        if isinstance(h, int):
            return self.fam.predict(h // self.stride)
        return self.fam.predict([x // self.stride for x in h])


def _fit_variant(v: Variant, layout: ParameterLayout, snaps: torch.Tensor) -> Any:
    if v.stride <= 1:
        return fit_family(v.family, layout, snaps, **v.options)
    rows = torch.arange(snaps.shape[0] - 1, -1, -v.stride).flip(0)  # always ends at w(t2)
    return _Strided(fit_family(v.family, layout, snaps[rows], **v.options), v.stride)


def _time_to_target(hs: list[int], losses: list[float], target: float,
                    cost: Callable[[int], float]) -> tuple[float, int | None]:
    """(cost of the first horizon whose loss reaches ``target``, that horizon) or (inf, None)."""
    for h, v in zip(hs, losses, strict=True):
        if math.isfinite(v) and v <= target:
            return cost(h), h
    return math.inf, None


def run_seed(task: Task, cfg: CycleConfig, seed: int, *, advance: ProgressFn | None = None,
             keep_trace: bool = False) -> tuple[dict[str, Any], SeedTrace | None]:
    """One full cycle on a freshly seeded ``task``; returns (record, trace or None).

    Raises TrainingDiverged (a ValueError, one line naming the seed and the learning rate)
    when the optimizer itself diverges: there is then nothing to compare a jump with."""
    try:
        return _run_seed(task, cfg, seed, advance=advance, keep_trace=keep_trace)
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"seed {seed} ({cfg.optimizer}, lr {cfg.lr_used():g}): {exc}; "
                               "the optimizer diverged, use a smaller --lr") from None


def _run_seed(task: Task, cfg: CycleConfig, seed: int, *, advance: ProgressFn | None,
              keep_trace: bool) -> tuple[dict[str, Any], SeedTrace | None]:
    t1, t2, T = cfg.t1, cfg.t2, cfg.horizon
    sweep = cfg.all_horizons()
    t_max = sweep[-1]
    variants = cfg.all_variants()
    layout = ParameterLayout.from_module(task.model)
    n = layout.numel
    losses = _empty((t2 + t_max,), f"the losses of {t2 + t_max} steps")
    snaps = _empty((cfg.window + 1, n), f"{cfg.window + 1} snapshots of {n} weights")

    # 1. burn-in to t1
    t_start = time.perf_counter()
    _train(task, t1, losses, 0, advance)
    # 2. record every step t1..t2: row k = weights after step t1 + k
    t0 = time.perf_counter()
    layout.snapshot_into(snaps[0])
    time_record = time.perf_counter() - t0  # the recording overhead, every snapshot
    done = 0
    while done < cfg.window:
        m = min(250, cfg.window - done)
        for k in range(done, done + m):
            losses[t1 + k] = _step(task, t1 + k)
            t0 = time.perf_counter()
            layout.snapshot_into(snaps[k + 1])
            time_record += time.perf_counter() - t0
        _check_losses(losses, t1 + done, t1 + done + m)
        done += m
        if advance is not None:
            advance(m)
    time_train = time.perf_counter() - t_start
    _check_weights(snaps, t2)
    w_t2 = snaps[-1].clone()
    w_mean = snaps.mean(0)
    drift = (w_t2 - snaps[0]) / cfg.window

    # 3. the optimizer from t2 to t2 + max T (timed, cumulative at every checkpoint)
    horizons = sorted(set(_checkpoints(t_max, cfg.checkpoints)) | set(sweep))
    ckpt = set(horizons)
    kept: dict[int, torch.Tensor] = {}
    opt_time: dict[int, float] = {}
    elapsed = 0.0
    for i in range(t_max):
        t0 = time.perf_counter()
        losses[t2 + i] = _step(task, t2 + i)
        elapsed += time.perf_counter() - t0
        if i + 1 in ckpt:
            kept[i + 1] = layout.flatten(torch.float64)
            opt_time[i + 1] = elapsed
            _check_weights(kept[i + 1], t2 + i + 1)
        if (i + 1) % 250 == 0:
            _check_losses(losses, t2 + i + 1 - 250, t2 + i + 1)
            if advance is not None:
                advance(250)
    _check_losses(losses, t2 + t_max - t_max % 250, t2 + t_max)
    if advance is not None and t_max % 250:
        advance(t_max % 250)
    w_end = layout.flatten(torch.float64)

    ev_t2 = _eval_at(task, layout, w_t2)
    opt_ev = {h: _eval_at(task, layout, kept[h]) for h in horizons}
    window_rows = _checkpoints(cfg.window, cfg.checkpoints // 2)
    win_ev = [_eval_at(task, layout, snaps[r]) for r in [0, *window_rows]]
    keys = list(ev_t2)
    has_val = "val" in ev_t2

    # time to target on the continuation: L_min over the optimizer's checkpoints
    l_min = min(opt_ev[h]["train"] for h in horizons)
    target = l_min + TARGET_FRACTION * (ev_t2["train"] - l_min)
    tt_opt, h_opt = _time_to_target(horizons, [opt_ev[h]["train"] for h in horizons], target,
                                    lambda h: opt_time[h])

    def at_horizon(ev: dict[str, float], h: int, w: torch.Tensor | None) -> dict[str, Any]:
        o = opt_ev[h]
        row: dict[str, Any] = {"loss": ev.get("train"), "rho_train":
                               metrics.loss_ratio(ev.get("train"), o["train"])}
        if has_val:
            row["val_loss"] = ev.get("val")
            row["rho_val"] = metrics.loss_ratio(ev.get("val"), o["val"])
        for acc in ("train_acc", "val_acc"):
            if acc in o:
                row[acc] = ev.get(acc)
        row["error2growth"] = (math.nan if w is None or not bool(torch.isfinite(w).all())
                               else metrics.error2growth(w, kept[h], w_t2))
        return row

    methods: dict[str, dict[str, Any]] = {}
    # 4a. baselines at every horizon
    for b in BASELINES:
        at: dict[str, Any] = {}
        path_losses = []
        for h in horizons:
            w = {"no_jump": w_t2, "window_mean": w_mean, "linear": w_t2 + h * drift}[b]
            e = _eval_at(task, layout, w) or _failed(ev_t2)
            path_losses.append(e["train"])
            if h in sweep:
                at[str(h)] = at_horizon(e, h, w)
        rhos = [metrics.loss_ratio(v, opt_ev[h]["train"]) for h, v in zip(horizons, path_losses,
                                                                         strict=True)]
        methods[b] = {"kind": "baseline", "at": at,
                      "valid_horizon": metrics.valid_horizon(horizons, rhos)}

    # 4b. every Koopman variant: one fit, a timed one-shot jump per sweep horizon, the path
    trace = None
    for vi, v in enumerate(variants):
        t0 = time.perf_counter()
        try:
            fam = _fit_variant(v, layout, snaps)
            fit_error = ""
        except (ValueError, RuntimeError) as exc:  # e.g. too few snapshots for the options
            fam, fit_error = None, f"{type(exc).__name__}: {exc}"
        time_fit = time.perf_counter() - t0
        m: dict[str, Any] = {"kind": "koopman", "family": v.family, "stride": v.stride,
                             "options": dict(v.options), "time_fit": time_fit, "at": {}}
        if fam is None:
            m.update(fit_error=fit_error, diverged=True, valid_horizon=0, valid_horizon_val=0,
                     n_operators=0, spectral_radius=math.nan)
            for h in sweep:
                m["at"][str(h)] = {**at_horizon(_failed(ev_t2), h, None), "time_jump": math.nan,
                                   "window_speedup": 0.0}
            methods[v.name] = m
            continue
        m["n_operators"] = int(fam.n_operators)
        m["spectral_radius"] = float(fam.spectral_radius)
        jumps: dict[int, torch.Tensor | None] = {}
        time_jump: dict[int, float] = {}
        for h in sweep:  # the deployed cost: one call per horizon
            t0 = time.perf_counter()
            jumps[h] = _safe_predict(fam, h)
            time_jump[h] = time.perf_counter() - t0
        path_h = _thin(horizons, time_jump[t_max], cfg.path_budget_s, keep=set(sweep))
        others = [h for h in path_h if h not in jumps]
        path = _safe_predict(fam, others) if others else None
        path_ev: dict[int, dict[str, float]] = {}
        for h in path_h:
            w = jumps[h] if h in jumps else (None if path is None else path[others.index(h)])
            path_ev[h] = _eval_at(task, layout, w) or _failed(ev_t2)
        for h in sweep:
            row = at_horizon(path_ev[h], h, jumps[h])
            row["time_jump"] = time_jump[h]
            row["window_speedup"] = metrics.window_speedup(opt_time[h], time_fit, time_jump[h])
            # every overhead: also recording the snapshots this variant uses
            used = len(range(snaps.shape[0] - 1, -1, -max(1, v.stride)))
            row["window_speedup_all"] = metrics.window_speedup(
                opt_time[h], time_fit + time_record * used / snaps.shape[0], time_jump[h])
            m["at"][str(h)] = row
        rho_t = [metrics.loss_ratio(path_ev[h]["train"], opt_ev[h]["train"]) for h in path_h]
        m["valid_horizon"] = metrics.valid_horizon(path_h, rho_t)
        if has_val:
            rho_v = [metrics.loss_ratio(path_ev[h]["val"], opt_ev[h]["val"]) for h in path_h]
            m["valid_horizon_val"] = metrics.valid_horizon(path_h, rho_v)
        m["diverged"] = jumps[T] is None or not bool(torch.isfinite(jumps[T]).all())
        # time to target: the first sweep horizon whose jump reaches it (fit + that jump)
        tt, h_hit = _time_to_target(sweep, [path_ev[h]["train"] for h in sweep], target,
                                    lambda h, f=time_fit, j=time_jump: f + j[h])
        m["time_to_target"], m["target_horizon"] = tt, h_hit
        m["target_speedup"] = (tt_opt / tt if math.isfinite(tt) and tt > 0 else 0.0)
        methods[v.name] = m
        if vi == 0 and keep_trace:
            w_hat = jumps[T]
            bad = w_hat is None or not bool(torch.isfinite(w_hat).all())
            final = {"koopman": path_ev[T], "optimizer": opt_ev[T], "no_jump": ev_t2}
            for b in BASELINES[1:]:
                w = w_mean if b == "window_mean" else w_t2 + T * drift
                final[b] = _eval_at(task, layout, w) or _failed(ev_t2)
            opt_path = win_ev + [opt_ev[h] for h in horizons]
            trace = SeedTrace(
                seed=seed, t1=t1, t2=t2, horizon=T, step_losses=losses.numpy().copy(),
                opt_steps=np.array([t1, *[t1 + r for r in window_rows],
                                    *[t2 + h for h in horizons]]),
                opt_eval={k: np.array([e.get(k, math.nan) for e in opt_path]) for k in keys},
                koop_steps=np.array([t2 + h for h in path_h]),
                koop_eval={k: np.array([path_ev[h].get(k, math.nan) for h in path_h])
                           for k in keys},
                final=final,
                jump_error=(metrics.jump_errors(w_hat, kept[T]) if not bad
                            else np.full(n, np.nan)),
                movement=metrics.true_movement(kept[T], w_t2),
                mean_error=metrics.jump_errors(w_mean, kept[T]),
                eigenvalues=fam.eigenvalues.numpy().astype(np.complex128),
            )
    layout.write_(w_end)  # leave the model where the optimizer got it

    # 5. the record: the grid, plus flat keys (primary variant at the headline T)
    opt_at = {str(h): {**opt_ev[h], "time": opt_time[h]} for h in sweep}
    primary = variants[0].name
    p = methods[primary]
    pa = p["at"][str(T)]
    rec: dict[str, Any] = {
        "seed": seed, "optimizer": cfg.optimizer, "lr": cfg.lr_used(), "family": variants[0].family,
        "variant": primary, "window_name": cfg.window_name, "t1": t1, "t2": t2, "T": T,
        "horizons": sweep, "window": cfg.window, "n_params": n,
        "n_operators": p["n_operators"], "spectral_radius": p["spectral_radius"],
        "diverged": p["diverged"],
        "loss_t2": ev_t2["train"], "loss_koopman": pa["loss"],
        "loss_optimizer": opt_ev[T]["train"], "rho_train": pa["rho_train"],
    }
    if has_val:
        rec.update(val_loss_t2=ev_t2["val"], val_loss_koopman=pa["val_loss"],
                   val_loss_optimizer=opt_ev[T]["val"], rho_val=pa["rho_val"])
    for acc in ("train_acc", "val_acc"):
        if acc in ev_t2:
            rec.update({f"{acc}_t2": ev_t2[acc], f"{acc}_koopman": pa.get(acc),
                        f"{acc}_optimizer": opt_ev[T][acc]})
    rec.update(error2growth=pa["error2growth"], time_train=time_train, time_record=time_record,
               time_optimizer_T=opt_time[T], time_fit=p["time_fit"],
               time_jump=pa.get("time_jump", math.nan),
               window_speedup=pa.get("window_speedup", 0.0),
               valid_horizon=p["valid_horizon"], time_to_target_optimizer=tt_opt,
               target_horizon_optimizer=h_opt, target_loss=target)
    if has_val:
        rec["valid_horizon_val"] = p.get("valid_horizon_val", 0)
    for b in BASELINES:
        ba = methods[b]["at"][str(T)]
        rec[f"loss_{b}"] = ba["loss"]
        rec[f"rho_{b}"] = ba["rho_train"]
        if has_val:
            rec[f"val_loss_{b}"] = ba["val_loss"]
            rec[f"rho_val_{b}"] = ba["rho_val"]
        if b != "no_jump":
            rec[f"error2growth_{b}"] = ba["error2growth"]
    rec["optimizer_at"] = opt_at
    rec["methods"] = methods
    return rec, trace


#: the record fields summarized over seeds (in report order)
SUMMARY_KEYS = (
    "loss_t2", "loss_koopman", "loss_optimizer", "rho_train", "val_loss_t2", "val_loss_koopman",
    "val_loss_optimizer", "rho_val", "train_acc_koopman", "train_acc_optimizer", "val_acc_koopman",
    "val_acc_optimizer", "error2growth",
    "valid_horizon", "valid_horizon_val", "spectral_radius", "time_optimizer_T", "time_record",
    "time_fit",
    "time_jump", "window_speedup", "time_to_target_optimizer",
    *[f"{p}{b}" for b in BASELINES for p in ("loss_", "rho_", "val_loss_", "rho_val_",
                                             "error2growth_")],
)
#: per method and horizon, summarized over seeds
GRID_KEYS = ("loss", "rho_train", "val_loss", "rho_val", "train_acc", "val_acc", "error2growth",
             "time_jump", "window_speedup", "window_speedup_all")
#: per method, summarized over seeds
METHOD_KEYS = ("valid_horizon", "valid_horizon_val", "spectral_radius", "time_fit",
               "time_to_target", "target_speedup", "n_operators")


def summarize_grid(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """{method: {"overall": {key: summary}, "at": {T: {key: summary}}}} over the seeds, plus
    the optimizer's own losses at every horizon under "optimizer"."""
    out: dict[str, Any] = {}
    names: list[str] = []
    for r in runs:
        for name in r.get("methods", {}):
            if name not in names:
                names.append(name)
    for name in names:
        ms = [r["methods"][name] for r in runs if name in r.get("methods", {})]
        hs = sorted({int(h) for m in ms for h in m.get("at", {})})
        out[name] = {
            "kind": ms[0].get("kind"),
            "overall": metrics.summarize_records(ms, METHOD_KEYS),
            "n_diverged": sum(bool(m.get("diverged")) for m in ms),
            "at": {str(h): metrics.summarize_records(
                [m["at"][str(h)] for m in ms if str(h) in m["at"]], GRID_KEYS) for h in hs},
        }
    opt = [r["optimizer_at"] for r in runs if "optimizer_at" in r]
    if opt:
        hs = sorted({int(h) for o in opt for h in o})
        out["optimizer"] = {"kind": "optimizer", "at": {
            str(h): metrics.summarize_records([o[str(h)] for o in opt if str(h) in o],
                                              ("train", "val", "train_acc", "val_acc", "time"))
            for h in hs}}
    return out


def environment() -> dict[str, Any]:
    """Versions and machine, so a reader can judge the timings."""
    import os

    import koopt

    return {
        "koopt": getattr(koopt, "__version__", "?"), "torch": torch.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
    }


def _refresh(results: dict[str, Any]) -> None:
    results["runs"].sort(key=lambda r: r["seed"])
    results["summary"] = metrics.summarize_records(results["runs"], SUMMARY_KEYS)
    results["grid"] = summarize_grid(results["runs"])
    results["finished_seeds"] = len(results["runs"])


def _load_previous(path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished seeds of an earlier run in the same folder (for --resume)."""
    if not path.exists():
        return []
    try:
        old = load_results(path)
    except ValueError as err:
        raise ValueError(f"{err}; cannot resume: move it away or use another --out") from None
    old_cfg = old["config"]
    diff = [k for k in RESUME_KEYS if old_cfg.get(k) != config.get(k)]
    if diff:
        raise ValueError(f"{path}: cannot resume, the configuration differs in "
                         f"{', '.join(diff)} (use another --out or the same options)")
    return list(old["runs"])


def run_experiment(make_task: Callable[[int], Task], cfg: CycleConfig, out_dir: Path, *,
                   extra_config: dict[str, Any] | None = None, command: str = "",
                   advance_factory: Callable[[int], ProgressFn | None] | None = None,
                   on_seed: Callable[[dict[str, Any]], None] | None = None,
                   resume: bool = False, jobs: int = 1,
                   worker: Callable[[int], tuple[dict[str, Any], SeedTrace | None]] | None = None,
                   ) -> tuple[dict[str, Any], SeedTrace | None]:
    """Run every seed; rewrite ``out_dir/results.json`` after each finished one.

    ``resume``: keep the seeds already in ``out_dir/results.json`` (same configuration) and
    run only the others. ``jobs`` > 1 runs seeds in that many processes through ``worker``
    (a picklable callable seed -> (record, trace)); records do not depend on the order.
    On KeyboardInterrupt the file is rewritten with ``status: "interrupted"`` (atomically)
    and the interrupt propagates. Returns (results, trace of the lowest new seed, or the
    saved one when resuming).
    """
    cfg.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    config = cfg.as_dict()
    config.update(extra_config or {})
    previous = _load_previous(path, config) if resume else []
    done = {r["seed"] for r in previous}
    todo = [s for s in cfg.seeds if s not in done]
    results: dict[str, Any] = {
        "experiment": cfg.experiment, "command": command,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running", "config": config, "environment": environment(),
        "runs": [r for r in previous if r["seed"] in cfg.seeds], "summary": {},
        "resumed_seeds": sorted(done & set(cfg.seeds)),
    }
    results["environment"]["jobs"] = jobs
    _refresh(results)
    write_json_atomic(path, results)
    trace: SeedTrace | None = None
    first = min(todo, default=None)
    if previous and (out_dir / "trace.npz").exists():  # resumed: keep the first run's plots
        trace, first = load_trace(out_dir / "trace.npz"), None
    if worker is not None and hasattr(worker, "trace_seed"):
        from dataclasses import replace

        worker = replace(worker, trace_seed=first)

    def finish(rec: dict[str, Any], tr: SeedTrace | None) -> None:
        nonlocal trace
        if tr is not None:
            trace = tr
            save_trace(tr, out_dir / "trace.npz")
        results["runs"].append(rec)
        _refresh(results)
        write_json_atomic(path, results)
        if on_seed is not None:
            on_seed(rec)

    try:
        if jobs > 1 and len(todo) > 1:
            if worker is None:
                raise ValueError("jobs > 1 needs a picklable worker")
            _run_parallel(worker, todo, jobs, finish)
        else:
            for seed in todo:
                if worker is not None:
                    rec, tr = worker(seed)
                else:
                    task = make_task(seed)
                    advance = advance_factory(seed) if advance_factory else None
                    rec, tr = run_seed(task, cfg, seed, advance=advance,
                                       keep_trace=(seed == first))
                finish(rec, tr)
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        _refresh(results)
        write_json_atomic(path, results)
        raise
    except Exception as exc:  # never leave "running" behind: the finished seeds stay
        results["status"] = "failed"
        results["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _refresh(results)
        write_json_atomic(path, results)
        raise
    results["status"] = "complete"
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(path, results)
    return results, trace


def _run_parallel(worker: Callable[[int], Any], seeds: list[int], jobs: int,
                  finish: Callable[[dict[str, Any], SeedTrace | None], None]) -> None:
    """Seeds in ``jobs`` spawned processes (one torch thread each); finished in any order."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(seeds)), mp_context=ctx,
                               initializer=_init_worker)
    try:
        pending = {pool.submit(worker, s) for s in seeds}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                rec, tr = fut.result()
                finish(rec, tr)
    except BaseException:
        # Ctrl-C: stop the workers now (their unfinished seeds are lost, finished ones saved)
        procs = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        raise
    pool.shutdown(wait=True)


def _init_worker() -> None:
    import signal

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
