"""The ``koopt`` command: ``koopt reproduce hnn|mnist|all`` runs the paper's experiments
(Dogra & Redman, NeurIPS 2020) end to end and writes results.json, report.md and plots."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "SIZES"]


@dataclass(frozen=True)
class Sizes:
    t1: int
    window: int
    horizon: int
    seeds: int


#: (experiment, quick) -> default sizes. HNN: the paper (method.md). Digits: 23 steps make
#: an epoch (1437 training images, batch 64): burn-in 30 epochs, a 20-epoch window (more
#: snapshots than the 65-dimensional first-layer node operators need), T = window / 4 as in
#: the HNN. Real MNIST (938 steps per epoch): burn-in 3 epochs, a 1-epoch window, T = 235.
SIZES: dict[tuple[str, bool], Sizes] = {
    ("hnn", False): Sizes(t1=35_000, window=10_000, horizon=2_500, seeds=25),
    ("hnn", True): Sizes(t1=5_000, window=2_000, horizon=500, seeds=3),
    ("digits", False): Sizes(t1=690, window=460, horizon=115, seeds=25),
    ("digits", True): Sizes(t1=690, window=460, horizon=115, seeds=5),
    ("mnist", False): Sizes(t1=2_814, window=938, horizon=235, seeds=5),
    ("mnist", True): Sizes(t1=938, window=469, horizon=117, seeds=2),
}

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _int_at_least(lo: int, what: str):
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{what} must be >= {lo}, got {v}")
        return v

    return conv


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from koopt.experiments.training import OPTIMIZERS
    from koopt.families import FAMILIES

    parser = argparse.ArgumentParser(
        prog="koopt",
        description="Koopman operator theory for cheaper neural-network training "
                    "(Dogra & Redman, NeurIPS 2020).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    rep = sub.add_parser(
        "reproduce", help="run the paper's experiments: record, fit, jump, compare",
        description="Train, record every step from t1 to t2, fit Koopman operators, jump T "
                    "steps in one shot and compare with T more optimizer steps.")
    rep.add_argument("experiment", choices=("hnn", "mnist", "all"),
                     help="hnn: the Hamiltonian-network ODE solver; mnist: the MLP classifier "
                          "(scikit-learn digits unless --data-dir); all: both")
    rep.add_argument("--quick", action="store_true",
                     help="small sizes: both experiments in about two minutes on 2 CPU cores")
    rep.add_argument("--seeds", type=_int_at_least(1, "--seeds"), metavar="N",
                     help="number of networks (seeds 0..N-1); default 25, 5 on real MNIST "
                          "(--quick: 3 hnn, 5 digits, 2 MNIST)")
    rep.add_argument("--t1", type=_int_at_least(0, "--t1"),
                     help="first recorded step (default: hnn 35000 as in the paper, digits 690, "
                          "MNIST 2814 = 3 epochs; --quick: hnn 5000)")
    rep.add_argument("--window", type=_int_at_least(2, "--window"),
                     help="recorded steps t2 - t1, at least 2 (default: hnn 10000, digits 460, "
                          "MNIST 938 = 1 epoch)")
    rep.add_argument("--horizon", type=_int_at_least(1, "--horizon"), metavar="T",
                     help="steps to jump, at least 1 (default: hnn 2500, digits 115, MNIST 235)")
    rep.add_argument("--optimizer", choices=OPTIMIZERS, default="adadelta")
    rep.add_argument("--lr", type=_positive_float,
                     help="learning rate (default: adadelta 1.0; adam 8e-3 for hnn, 1e-3 for "
                          "mnist; adagrad 1e-2)")
    rep.add_argument("--family", choices=sorted(FAMILIES), default="node",
                     help="operator family (default node, as in the paper)")
    rep.add_argument("--q", type=_int_at_least(1, "--q"),
                     help="quasi-node size (with --family quasi_node)")
    rep.add_argument("--rank", type=_int_at_least(1, "--rank"),
                     help="DMD rank (with --family layer or network)")
    rep.add_argument("--affine", action="store_true", help="fit an affine (constant) term")
    rep.add_argument("--stabilize", choices=("none", "clip", "drop"), default="none",
                     help="move (clip) or drop growing modes; default none, as in the paper")
    rep.add_argument("--data-dir", type=Path, metavar="DIR",
                     help="folder with the four MNIST IDX files (raw or .gz); without it "
                          "scikit-learn's 8x8 digits are used")
    rep.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                     help="training precision of the HNN (snapshots are float64 always)")
    rep.add_argument("--threads", type=_int_at_least(1, "--threads"), default=1,
                     help="torch CPU threads (default 1: the networks are tiny, and with more "
                          "threads a busy machine slows every step down many times)")
    rep.add_argument("--out", type=Path, metavar="DIR",
                     help="output folder (default: a new folder under runs/)")
    return parser


def _family_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if args.affine:
        opts["affine"] = True
    if args.stabilize != "none":
        opts["stabilize"] = args.stabilize
    if args.family == "quasi_node" and args.q is not None:
        opts["q"] = args.q
    if args.family in ("layer", "network") and args.rank is not None:
        opts["rank"] = args.rank
    return opts


def _default_out(experiment: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{experiment}-{stamp}"
    out, i = base, 1
    while out.exists():
        out = base.with_name(f"{base.name}-{i}")
        i += 1
    return out


def _sizes(args: argparse.Namespace, key: str) -> Sizes:
    d = SIZES[(key, bool(args.quick))]
    return Sizes(
        t1=d.t1 if args.t1 is None else args.t1,
        window=d.window if args.window is None else args.window,
        horizon=d.horizon if args.horizon is None else args.horizon,
        seeds=d.seeds if args.seeds is None else args.seeds,
    )


def _run_one(experiment: str, args: argparse.Namespace, out: Path, command: str,
             console: Any) -> dict[str, Any]:
    """Run one experiment into ``out``; print its table; return the results."""
    import torch
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from koopt.experiments.runner import CycleConfig, run_experiment
    from koopt.report import summary_table, write_report

    extra: dict[str, Any] = {}
    if experiment == "hnn":
        from koopt.experiments.hnn import HNNConfig, HNNTask

        sizes = _sizes(args, "hnn")
        dtype = torch.float64 if args.dtype == "float64" else torch.float32
        hcfg = HNNConfig()

        def make_task(seed: int) -> Any:
            return HNNTask(seed, optimizer=args.optimizer, lr=args.lr, cfg=hcfg, dtype=dtype)

        extra.update(
            model="1-10-10-2 sin network (152 parameters), x̂ = x0 + (1 − e^−t) N(t)",
            problem=dict(hcfg.__dict__), dtype=args.dtype,
            loss_note=f"HNN residual loss on a fixed uniform grid of {hcfg.n_eval} points "
                      f"in [0, 4π] (training uses {hcfg.n_points} points perturbed every step)")
        console.print(f"[bold]hnn[/]: nonlinear oscillator, 1-10-10-2 sin network, "
                      f"{args.optimizer}; t1={sizes.t1} window={sizes.window} "
                      f"T={sizes.horizon}, {sizes.seeds} seed(s) -> {out}")
    else:
        from koopt.experiments.mnist import MNISTTask, load_digits_split, load_mnist_idx

        if args.data_dir is not None:
            data = load_mnist_idx(args.data_dir)
            sizes = _sizes(args, "mnist")
        else:
            data = load_digits_split()
            sizes = _sizes(args, "digits")
            console.print("[yellow]No --data-dir: using scikit-learn's 8x8 handwritten digits "
                          "(real scans) with a 64-20-20-20-10 network and a held-out "
                          "validation split, not MNIST.[/]")

        def make_task(seed: int) -> Any:
            return MNISTTask(seed, data, optimizer=args.optimizer, lr=args.lr)

        steps = data.steps_per_epoch(64)
        extra.update(
            model=f"{data.n_features}-20-20-20-10 ReLU MLP, batch 64 ({steps} steps per epoch)",
            data=data.source, dataset=data.name, batch_size=64, steps_per_epoch=steps,
            loss_note="cross-entropy over the full training set and the full validation set")
        console.print(f"[bold]mnist[/] ({data.name}): {data.n_features}-20-20-20-10 ReLU, "
                      f"{args.optimizer}, batch 64 ({steps} steps/epoch); t1={sizes.t1} "
                      f"window={sizes.window} T={sizes.horizon}, {sizes.seeds} seed(s) -> {out}")

    cfg = CycleConfig(experiment=experiment, t1=sizes.t1, window=sizes.window,
                      horizon=sizes.horizon, seeds=list(range(sizes.seeds)),
                      optimizer=args.optimizer, lr=args.lr, family=args.family,
                      family_options=_family_options(args))
    total = cfg.t2 + cfg.horizon
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                        transient=True, disable=not console.is_terminal)

    def advance_factory(seed: int):
        tid = progress.add_task(f"{experiment} seed {seed}", total=total)
        return lambda m: progress.advance(tid, m)

    def on_seed(rec: dict[str, Any]) -> None:
        console.print(
            f"  seed {rec['seed']}: ρ train {rec['rho_train']:.3g}"
            + (f", ρ val {rec['rho_val']:.3g}" if "rho_val" in rec else "")
            + f", error2growth {rec['error2growth']:.3g}, window speedup "
              f"{rec['window_speedup']:.3g} (T steps {rec['time_optimizer_T']:.3g} s, fit "
              f"{rec['time_fit']:.3g} s, jump {rec['time_jump']:.3g} s)"
            + (" [diverged]" if rec["diverged"] else ""), highlight=False)

    with progress:
        try:
            results, trace = run_experiment(make_task, cfg, out, extra_config=extra,
                                            command=command, advance_factory=advance_factory,
                                            on_seed=on_seed)
        except KeyboardInterrupt:
            _partial_report(out)
            raise
    write_report(results, trace, out)
    console.print(summary_table(results, width=console.width))
    console.print(f"results: {out / 'results.json'}; report: {out / 'report.md'}")
    return results


def _partial_report(out: Path) -> None:
    """After Ctrl-C: write report.md from the finished seeds, if any (no plots)."""
    import json

    from koopt.report import write_report

    try:
        results = json.loads((out / "results.json").read_text())
        if results.get("runs"):
            write_report(results, None, out)
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``koopt`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0)
        return int(exc.code or 0)
    import torch
    from rich.console import Console

    from koopt.experiments.idx import DataError

    console = Console() if sys.stdout.isatty() else Console(width=120)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    command = "koopt " + shlex.join(argv)
    if args.experiment == "all":
        root = args.out or _default_out("all")
        targets = [("hnn", root / "hnn"), ("mnist", root / "mnist")]
    else:
        targets = [(args.experiment, args.out or _default_out(args.experiment))]
    current = targets[0][1]
    try:
        for experiment, out in targets:
            current = out
            _run_one(experiment, args, out, command, console)
    except DataError as exc:
        print(f"koopt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        saved = current / "results.json"
        where = (f"finished seeds are saved in {saved}" if saved.exists()
                 else "no results were written")
        print(f"\nkoopt: interrupted; {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads_before)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
