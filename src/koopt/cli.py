"""The ``koopt`` command: ``koopt reproduce hnn|mnist|all`` runs the paper's experiments
(Dogra & Redman, NeurIPS 2020) end to end and writes results.json, report.md and plots."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "SIZES", "SWEEP"]


@dataclass(frozen=True)
class Sizes:
    t1: int
    window: int
    horizon: int
    seeds: int
    horizons: tuple[int, ...] = ()


#: the issue-5 horizon sweep of the classifier (938 = one MNIST epoch at batch 64)
SWEEP = (100, 250, 500, 938, 1876)

#: (experiment, quick) -> default sizes. HNN: the paper (method.md). Digits: 23 steps make
#: an epoch (1437 training images, batch 64): burn-in 30 epochs, a 20-epoch window (more
#: snapshots than the 65-dimensional first-layer node operators need); horizons: the MNIST
#: sweep in steps, headline T = 938 (one MNIST epoch's worth of steps). Real MNIST (938
#: steps per epoch): burn-in 3 epochs, a 1-epoch window, the same sweep.
SIZES: dict[tuple[str, bool], Sizes] = {
    ("hnn", False): Sizes(t1=35_000, window=10_000, horizon=2_500, seeds=25),
    ("hnn", True): Sizes(t1=5_000, window=2_000, horizon=500, seeds=3),
    ("digits", False): Sizes(t1=690, window=460, horizon=938, seeds=25, horizons=SWEEP),
    ("digits", True): Sizes(t1=690, window=460, horizon=938, seeds=2, horizons=SWEEP),
    ("mnist", False): Sizes(t1=2_814, window=938, horizon=938, seeds=5, horizons=SWEEP),
    ("mnist", True): Sizes(t1=938, window=469, horizon=117, seeds=2),
}

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: upper bounds checked before anything runs: steps (--t1, --window, --horizon(s)) and seeds
MAX_STEPS = 10**7
MAX_SEEDS = 10**5
MAX_WORKERS = 1024  # --threads and --jobs


def _int_at_least(lo: int, what: str, hi: int | None = None):
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{what} must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"{what} must be <= {hi}, got {v}")
        return v

    return conv


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def _list_of(choices: Sequence[str], what: str):
    """Comma-separated names from ``choices``; ``all`` means every one."""

    def conv(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        if names == ["all"]:
            return list(choices)
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {', '.join(map(repr, bad)) or repr(text)} (choose "
                f"{what} from {', '.join(choices)}, comma-separated, or all)")
        return list(dict.fromkeys(names))

    return conv


def _int_list(text: str) -> list[int]:
    try:
        vals = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None
    if not vals or vals[0] < 1 or vals[-1] > MAX_STEPS:
        raise argparse.ArgumentTypeError(f"horizons must be integers from 1 to {MAX_STEPS}, "
                                         f"got {text!r}")
    return vals


def _version() -> str:
    """The installed distribution's version (the package's own when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("koopt")
    except PackageNotFoundError:
        import koopt

        return koopt.__version__


WINDOWS = ("late", "early")


def build_parser() -> argparse.ArgumentParser:
    from koopt.experiments.training import OPTIMIZERS

    parser = argparse.ArgumentParser(
        prog="koopt",
        description="Koopman operator theory for cheaper neural-network training "
                    "(Dogra & Redman, NeurIPS 2020).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    rep = sub.add_parser(
        "reproduce", help="run the paper's experiments: record, fit, jump, compare",
        description="Train, record every step from t1 to t2, fit every Koopman variant once, "
                    "jump each horizon T in one shot and compare with the optimizer's own "
                    "steps and the baselines (no jump, window mean, linear extrapolation).")
    rep.add_argument("experiment", choices=("hnn", "mnist", "all"),
                     help="hnn: the Hamiltonian-network ODE solver; mnist: the MLP classifier "
                          "(scikit-learn digits unless --data-dir); all: both")
    rep.add_argument("--quick", action="store_true",
                     help="small sizes: both experiments in about two minutes on 2 CPU cores")
    rep.add_argument("--seeds", type=_int_at_least(1, "--seeds", MAX_SEEDS), metavar="N",
                     help="number of networks (seeds 0..N-1, N at most 100000); default 25, 5 "
                          "on real MNIST (--quick: 3 hnn, 2 digits, 2 MNIST)")
    rep.add_argument("--t1", type=_int_at_least(0, "--t1", MAX_STEPS),
                     help="first recorded step of the late window (default: hnn 35000 as in "
                          "the paper, digits 690, MNIST 2814 = 3 epochs; --quick: hnn 5000); "
                          "steps are at most 10^7 here and in --window and --horizon(s)")
    rep.add_argument("--window", type=_int_at_least(2, "--window", MAX_STEPS),
                     help="recorded steps t2 - t1, at least 2 (default: hnn 10000, digits 460, "
                          "MNIST 938 = 1 epoch)")
    rep.add_argument("--windows", type=_list_of(WINDOWS, "windows"), default=["late"],
                     metavar="late,early",
                     help="late: from --t1 (the paper's); early: the same lengths from step 0")
    rep.add_argument("--horizon", type=_int_at_least(1, "--horizon", MAX_STEPS), metavar="T",
                     help="headline jump T (default: hnn 2500, digits and MNIST 938)")
    rep.add_argument("--horizons", type=_int_list, metavar="T,T,...",
                     help="horizon sweep, one fit for all (default: hnn just T; digits and "
                          "MNIST 100,250,500,938,1876)")
    rep.add_argument("--optimizer", type=_list_of(OPTIMIZERS, "optimizers"),
                     default=["adadelta"], metavar="NAME[,NAME]|all",
                     help=f"one or more of {', '.join(OPTIMIZERS)}, or all (default adadelta)")
    rep.add_argument("--lr", type=_positive_float,
                     help="learning rate (default: adadelta 1.0; adam 8e-3 for hnn, 1e-3 for "
                          "mnist; adagrad 1e-2)")
    rep.add_argument("--family", default="all", metavar="NAME[,NAME]|all",
                     help="Koopman variants to fit: family names (node, quasi_node, layer, "
                          "network, single_weight: their default variants), variant names "
                          "(see docs/results.md) or all (default); the first is the headline")
    rep.add_argument("--q", type=_int_at_least(1, "--q"),
                     help="quasi-node size (makes one custom variant of --family)")
    rep.add_argument("--rank", type=_int_at_least(1, "--rank"),
                     help="DMD rank for layer/network (makes one custom variant)")
    rep.add_argument("--delays", type=_int_at_least(1, "--delays"),
                     help="delay embedding for layer/network (makes one custom variant)")
    rep.add_argument("--affine", action="store_true",
                     help="fit an affine (constant) term (makes one custom variant)")
    rep.add_argument("--stabilize", choices=("none", "clip", "drop"), default="none",
                     help="move (clip) or drop growing modes (makes one custom variant)")
    rep.add_argument("--data-dir", type=Path, metavar="DIR",
                     help="folder with the four MNIST IDX files (raw or .gz); without it "
                          "scikit-learn's 8x8 digits are used")
    rep.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                     help="training precision of the HNN (snapshots are float64 always)")
    rep.add_argument("--threads", type=_int_at_least(1, "--threads", MAX_WORKERS), default=1,
                     help="torch CPU threads (default 1: the networks are tiny, and with more "
                          "threads a busy machine slows every step down many times)")
    rep.add_argument("--jobs", type=_int_at_least(1, "--jobs", MAX_WORKERS), default=1,
                     help="seeds in parallel processes, one torch thread each (default 1)")
    rep.add_argument("--resume", action="store_true",
                     help="continue the run in --out (which must exist): keep its finished "
                          "seeds, run the rest")
    rep.add_argument("--out", type=Path, metavar="DIR",
                     help="output folder (default: a new folder under runs/); with several "
                          "optimizers or windows, one sub-folder OPTIMIZER-WINDOW each")
    r = sub.add_parser("report", help="rebuild report.md and the plots from results.json",
                       description="Rebuild report.md and the PNGs of RUN_DIR (and of its "
                                   "sub-runs) from results.json and trace.npz.")
    r.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    c = sub.add_parser("compare", help="runs side by side: one table and one plot",
                       description="Put runs side by side: best variant, ρ, error2growth, "
                                   "window speedup and baselines per run and horizon.")
    c.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    c.add_argument("--out", type=Path, metavar="DIR",
                   help="where compare.md and compare.png go (default: the current folder)")
    return parser


def _variants(args: argparse.Namespace, experiment: str, horizons: list[int],
              window: int) -> list[Any]:
    from koopt.experiments.variants import FAMILY_NAMES, Variant, check_window, resolve_variants

    custom = (args.rank, args.delays, args.q) != (None, None, None) or args.affine or \
        args.stabilize != "none"
    if not custom:
        return resolve_variants(args.family, experiment, horizons, window)
    fam = args.family.strip()
    if fam not in FAMILY_NAMES:
        raise ValueError(f"--rank/--delays/--q/--affine/--stabilize need exactly one family "
                         f"in --family ({', '.join(FAMILY_NAMES)}), got {fam!r}")
    opts: dict[str, Any] = {}
    if args.affine:
        opts["affine"] = True
    if args.stabilize != "none":
        opts["stabilize"] = args.stabilize
    if fam == "quasi_node" and args.q is not None:
        opts["q"] = args.q
    if fam in ("layer", "network"):
        if args.rank is not None:
            opts["rank"] = args.rank
        if args.delays is not None:
            opts["delays"] = args.delays
    name = fam + "".join(f"_{k}{v}" if v is not True else f"_{k}" for k, v in opts.items())
    variant = Variant(name, fam, opts)
    check_window(variant, window)
    return [variant]


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
    horizon = d.horizon if args.horizon is None else args.horizon
    if args.horizons is not None:
        horizons = tuple(args.horizons)
        if args.horizon is None:
            horizon = max(horizons)
    elif args.horizon is not None:
        horizons = (horizon,)
    else:
        horizons = d.horizons or (horizon,)
    return Sizes(
        t1=d.t1 if args.t1 is None else args.t1,
        window=d.window if args.window is None else args.window,
        horizon=horizon,
        seeds=d.seeds if args.seeds is None else args.seeds,
        horizons=horizons,
    )


def _run_one(experiment: str, args: argparse.Namespace, out: Path, command: str,
             console: Any) -> list[dict[str, Any]]:
    """Run one experiment (every optimizer x window) under ``out``; return the results."""
    from koopt.experiments.tasks import TaskSpec

    extra: dict[str, Any] = {}
    data_dir = None
    if experiment == "hnn":
        from koopt.experiments.hnn import HNNConfig

        sizes = _sizes(args, "hnn")
        hcfg = HNNConfig()
        extra.update(
            model="1-10-10-2 sin network (152 parameters), x̂ = x0 + (1 − e^−t) N(t)",
            problem=dict(hcfg.__dict__), dtype=args.dtype,
            loss_note=f"HNN residual loss on a fixed uniform grid of {hcfg.n_eval} points "
                      f"in [0, 4π] (training uses {hcfg.n_points} points perturbed every step)")
        head = "[bold]hnn[/]: nonlinear oscillator, 1-10-10-2 sin network"
    else:
        from koopt.experiments.mnist import load_digits_split, load_mnist_idx

        if args.data_dir is not None:
            data = load_mnist_idx(args.data_dir)
            data_dir = str(args.data_dir)
            sizes = _sizes(args, "mnist")
        else:
            data = load_digits_split()
            sizes = _sizes(args, "digits")
            console.print("[yellow]No --data-dir: using scikit-learn's 8x8 handwritten digits "
                          "(real scans) with a 64-20-20-20-10 network and a held-out "
                          "validation split, not MNIST.[/]")
        steps = data.steps_per_epoch(64)
        extra.update(
            model=f"{data.n_features}-20-20-20-10 ReLU MLP, batch 64 ({steps} steps per epoch)",
            data=data.source, dataset=data.name, batch_size=64, steps_per_epoch=steps,
            loss_note="cross-entropy over the full training set and the full validation set")
        head = (f"[bold]mnist[/] ({data.name}): {data.n_features}-20-20-20-10 ReLU, batch 64 "
                f"({steps} steps/epoch)")
    horizons = sorted({sizes.horizon, *sizes.horizons})
    variants = _variants(args, experiment, horizons, sizes.window)
    combos = [(o, w) for o in args.optimizer for w in args.windows]
    results_all = []
    for opt, win in combos:
        sub_out = out if len(combos) == 1 else out / f"{opt}-{win}"
        t1 = sizes.t1 if win == "late" else 0
        spec = TaskSpec(experiment, opt, args.lr, args.dtype, data_dir)
        console.print(f"{head}, {opt}, {win} window: t1={t1} window={sizes.window} "
                      f"T={','.join(map(str, horizons))}, {sizes.seeds} seed(s), "
                      f"{len(variants)} variant(s) -> {sub_out}", soft_wrap=True)
        from koopt.experiments.runner import CycleConfig

        cfg = CycleConfig(experiment=experiment, t1=t1, window=sizes.window,
                          horizon=sizes.horizon, horizons=horizons,
                          seeds=list(range(sizes.seeds)), optimizer=opt, lr=args.lr,
                          family=variants[0].family, family_options=dict(variants[0].options),
                          variants=variants, window_name=win,
                          **({"checkpoints": 12, "path_budget_s": 1.0} if args.quick else {}))
        results_all.append(_run_cycle(experiment, cfg, spec, args, sub_out, command, extra,
                                      console))
    if len(combos) > 1:
        from koopt.report import write_compare

        write_compare([out / f"{o}-{w}" for o, w in combos], out, console=None)
        console.print(f"side by side: {out / 'compare.md'}")
    return results_all


def _run_cycle(experiment: str, cfg: Any, spec: Any, args: argparse.Namespace, out: Path,
               command: str, extra: dict[str, Any], console: Any) -> dict[str, Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from koopt.experiments.runner import run_experiment
    from koopt.experiments.tasks import SeedWorker
    from koopt.report import summary_table, write_report

    total = cfg.t2 + max(cfg.all_horizons())
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                        transient=True, disable=not console.is_terminal or args.jobs > 1)

    def advance_factory(seed: int):
        tid = progress.add_task(f"{experiment} seed {seed}", total=total)
        return lambda m: progress.advance(tid, m)

    def on_seed(rec: dict[str, Any]) -> None:
        console.print(
            f"  seed {rec['seed']} ({rec['variant']}): ρ train {rec['rho_train']:.3g}"
            + (f", ρ val {rec['rho_val']:.3g}" if "rho_val" in rec else "")
            + f", error2growth {rec['error2growth']:.3g}, window speedup "
              f"{rec['window_speedup']:.3g} (T steps {rec['time_optimizer_T']:.3g} s, fit "
              f"{rec['time_fit']:.3g} s, jump {rec['time_jump']:.3g} s)"
            + (" [diverged]" if rec["diverged"] else ""), highlight=False, soft_wrap=True)

    worker = SeedWorker(spec, cfg) if args.jobs > 1 else None
    with progress:
        try:
            results, trace = run_experiment(spec, cfg, out, extra_config=extra,
                                            command=command, advance_factory=advance_factory,
                                            on_seed=on_seed, resume=args.resume,
                                            jobs=args.jobs, worker=worker)
        except BaseException:  # Ctrl-C, or a run that failed (e.g. the optimizer diverged)
            _partial_report(out)
            raise
    if trace is None:
        from koopt.experiments.runner import load_trace

        trace = load_trace(out / "trace.npz")
    write_report(results, trace, out)
    console.print(summary_table(results, width=console.width))
    console.print(f"results: {out / 'results.json'}; report: {out / 'report.md'}")
    return results


def _partial_report(out: Path) -> None:
    """After Ctrl-C or a failure: write report.md from the finished seeds, if any (no plots)."""
    from koopt.experiments.runner import load_results
    from koopt.report import write_report

    try:
        results = load_results(out / "results.json")
        if results["runs"] and results.get("status") in ("interrupted", "failed"):
            write_report(results, None, out)
    except (OSError, ValueError):
        pass


def _check_out_folder(out: Path) -> None:
    """--out must be a folder, or one that can be made: no file at it or above it."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a folder")
            break


def _check_out(out: Path, resume: bool) -> None:
    """--out must be a folder (or be creatable as one); one that holds results already needs
    --resume. --resume on a folder that does not exist yet starts the run, with a note, so
    that one command can be repeated until a long run is done (e.g. by a job scheduler)."""
    _check_out_folder(out)
    if resume and not out.is_dir():
        print(f"koopt: note: --resume: nothing to continue in {out} yet; starting the run there",
              file=sys.stderr)
    if not resume and out.is_dir():
        found = sorted(out.glob("results.json")) + sorted(out.glob("*/results.json"))
        if found:
            raise ValueError(f"--out {out} already holds results ({found[0]}); pass --resume "
                             "to continue that run, or choose another --out")


def _os_error(exc: OSError) -> str:
    """One line for a failed file operation: the path and the reason, no errno."""
    if exc.filename is None or not exc.strerror:
        return str(exc)
    return f"{exc.filename}: {exc.strerror[0].lower()}{exc.strerror[1:]}"


def _note(message: str) -> None:
    print(f"koopt: {message}", file=sys.stderr)


def _report_cmd(dirs: Sequence[Path]) -> int:
    """``koopt report``: rebuild every report.md and plot under the given run folders."""
    from koopt.report import rebuild

    status = 0
    for d in dirs:
        try:
            for path in rebuild(d, warn=_note):
                print(path)
        except OSError as exc:
            print(f"koopt: error: {_os_error(exc)}", file=sys.stderr)
            status = EXIT_USAGE
        except ValueError as exc:  # the messages name the folder or file
            print(f"koopt: error: {exc}", file=sys.stderr)
            status = EXIT_USAGE
    return status


def _compare_cmd(dirs: Sequence[Path], out: Path | None, console: Any) -> int:
    from koopt.report import write_compare

    try:
        if out is not None:
            _check_out_folder(out)
        written = write_compare(list(dirs), out or Path("."), console=console)
    except OSError as exc:
        print(f"koopt: error: {_os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"koopt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for p in written.values():
        print(p)
    return 0


def _terminate_as_interrupt() -> dict[int, Any]:
    """SIGTERM (a scheduler, ``kill``) ends a run like Ctrl-C: results.json stays valid and
    marked interrupted. Also restores Ctrl-C where a shell started us with SIGINT ignored."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``koopt`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0)
        return int(exc.code or 0)
    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=120)
    if args.command == "report":
        return _report_cmd(args.run_dirs)
    if args.command == "compare":
        return _compare_cmd(args.run_dirs, args.out, console)
    if args.data_dir is not None and args.experiment == "hnn":
        print("koopt: error: --data-dir is for the classifier (reproduce mnist or all), not "
              "hnn", file=sys.stderr)
        return EXIT_USAGE
    if args.resume and args.out is None:
        print("koopt: error: --resume needs --out DIR, the folder of the run to continue",
              file=sys.stderr)
        return EXIT_USAGE
    import torch

    from koopt.experiments.idx import DataError

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    handlers = _terminate_as_interrupt()
    command = "koopt " + shlex.join(argv)
    root = args.out
    if args.experiment == "all":
        root = args.out or _default_out("all")
        targets = [("hnn", root / "hnn"), ("mnist", root / "mnist")]
    else:
        targets = [(args.experiment, args.out or _default_out(args.experiment))]
    current = root if args.experiment == "all" else targets[0][1]
    try:
        _check_out(current, args.resume)
        for experiment, out in targets:
            current = out
            _run_one(experiment, args, out, command, console)
    except DataError as exc:
        print(f"koopt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # bad variants, --resume with another configuration, divergence
        print(f"koopt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # --out not writable, disk full
        print(f"koopt: error: {_os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print("koopt: error: out of memory; use a shorter --window or --horizon, or fewer "
              "--seeds or --jobs", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        saved = sorted(current.rglob("results.json")) if current.is_dir() else []
        where = (f"finished seeds are saved in {', '.join(map(str, saved))}; continue with "
                 f"--resume --out {current}" if saved else "no results were written")
        print(f"\nkoopt: interrupted; {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        torch.set_num_threads(threads_before)
        import signal

        for sig, old in handlers.items():
            signal.signal(sig, old)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
