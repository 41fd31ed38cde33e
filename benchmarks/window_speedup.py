"""Window speedup, the paper's measure: one Koopman jump of T steps vs T optimizer steps.

Dogra & Redman (NeurIPS 2020) time the fit and one-shot jump of their operators against
the T gradient steps it replaces, late in training of the HNN oscillator solver
(``koopt.experiments.hnn``, 1-10-10-2 sin network, Adadelta lr 1.0). Here, per seed:

1. train ``start`` steps; then record every ``stride``-th step for ``window`` steps (t1..t2);
2. time the jump: fit (whole-network affine rank-4 exact DMD, eigenvalues clipped to the
   unit disk: the ``KoopmanOptimizer`` default) and predict T steps ahead;
3. time T more optimizer steps from t2 (the thing the jump replaces);
4. window speedup = time(T steps) / time(fit + jump); loss ratio rho = L(jump) / L(w(t2+T))
   on the fixed evaluation grid, next to the trivial baselines "no jump" (stay at w(t2))
   and "window mean" (weight averaging), and error2growth = median|w_hat - w(t2+T)| /
   median|w(t2+T) - w(t2)|.

``torch.set_num_threads(1)``. The jump is timed best of 5 (it takes milliseconds, and a
single time is at the mercy of the scheduler); the T steps once.

    python benchmarks/window_speedup.py            # start 10000, window 5000 (every 50th), T 2500
    python benchmarks/window_speedup.py --quick    # start 3000, window 2000 (every 20th), T 1000

Last line printed: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from time_to_target import hnn_arm  # noqa: E402  (same directory)

from koopt.experiments.hnn import HNNConfig, hamiltonian_loss_fast
from koopt.families import fit_family
from koopt.layout import ParameterLayout


def run(seed: int, start: int, window: int, stride: int, T: int) -> dict:
    arm = hnn_arm(seed, "adadelta", None)
    cfg = HNNConfig()
    grid = torch.linspace(cfg.t0, cfg.tf, cfg.n_eval).unsqueeze(1)
    layout = ParameterLayout.from_module(arm.model)

    @torch.no_grad()
    def loss_at(vec: torch.Tensor) -> float:
        keep = layout.flatten()
        layout.write_(vec)
        value = float(hamiltonian_loss_fast(arm.model, grid, cfg))
        layout.write_(keep)
        return value

    for _ in range(start):
        arm.step()
    rows = [layout.flatten()]
    for i in range(1, window + 1):
        arm.step()
        if i % stride == 0:
            rows.append(layout.flatten())
    snaps = torch.stack(rows)  # (m, N), row t = weights at t1 + t * stride
    h = round(T / stride)
    opts = {"rank": 4, "affine": True, "stabilize": "clip"}
    jump_s = []
    for _ in range(5):
        t0 = time.perf_counter()
        pred = fit_family("network", layout, snaps, **opts).predict(h)
        jump_s.append(time.perf_counter() - t0)
    w2 = snaps[-1]
    t0 = time.perf_counter()
    for _ in range(h * stride):
        arm.step()
    steps_s = time.perf_counter() - t0
    wT = layout.flatten()
    L_true = loss_at(wT)
    err = (pred - wT).abs().median() / (wT - w2).abs().median()
    return {
        "seed": seed, "snapshots": len(rows), "T": h * stride, "jump_s": min(jump_s),
        "steps_s": steps_s, "window_speedup": steps_s / min(jump_s),
        "rho_koopman": loss_at(pred) / L_true, "rho_no_jump": loss_at(w2) / L_true,
        "rho_window_mean": loss_at(snaps.mean(0)) / L_true,
        "error2growth": float(err), "loss_t2_plus_T": L_true,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    start, window, stride, T = (3000, 2000, 20, 1000) if args.quick else (10000, 5000, 50, 2500)
    print(f"HNN Adadelta, late window: start {start}, window {window} steps (every {stride}th), "
          f"T = {T}; torch threads 1")
    print(f"{'seed':>4} {'jump ms':>8} {'T steps s':>9} {'speedup':>8} {'rho koop':>8} "
          f"{'rho stay':>8} {'rho mean':>8} {'err2growth':>10}")
    rows = []
    for seed in range(args.seeds):
        r = run(seed, start, window, stride, T)
        rows.append(r)
        print(f"{seed:>4} {r['jump_s'] * 1e3:>8.2f} {r['steps_s']:>9.2f} "
              f"{r['window_speedup']:>8.0f} {r['rho_koopman']:>8.3f} {r['rho_no_jump']:>8.3f} "
              f"{r['rho_window_mean']:>8.3f} {r['error2growth']:>10.3f}", flush=True)
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("window_speedup", "rho_koopman", "rho_no_jump", "rho_window_mean",
                     "error2growth")}
    print(f"median window speedup {med['window_speedup']:.0f}x, rho {med['rho_koopman']:.3f}")
    print(json.dumps({"benchmark": "window_speedup", "quick": args.quick, "start": start,
                      "window": window, "stride": stride, "T": T, "median": med, "rows": rows}))


if __name__ == "__main__":
    main()
