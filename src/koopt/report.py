"""What a run leaves behind for people: report.md, PNG plots and a terminal table.

The plots follow Dogra & Redman (2020): loss against step with the jump marked (Fig. 1/3
style, both the optimizer's and the Koopman-predicted path), the per-parameter scatter of
jump error against true movement (Fig. 2 style) and the operators' eigenvalues against the
unit circle. Matplotlib is used through the Agg canvas only (no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from koopt._atomic import write_bytes_atomic, write_text_atomic

__all__ = ["write_report", "plot_loss", "plot_scatter", "plot_eigenvalues", "summary_table",
           "render_markdown", "fmt", "plot_sweep", "rebuild", "write_compare", "best_variant",
           "method_median", "grid_markdown"]

METHODS: tuple[tuple[str, str], ...] = (
    ("koopman", "Koopman jump"),
    ("optimizer", "optimizer, T more steps"),
    ("no_jump", "no jump: stay at w(t2)"),
    ("window_mean", "window mean (averaging)"),
    ("linear", "linear extrapolation"),
)

PLOTS = {"loss": "loss.png", "scatter": "jump_scatter.png", "eigenvalues": "eigenvalues.png",
         "sweep": "sweep.png"}


def fmt(v: Any, digits: int = 3) -> str:
    """Compact number: 3 significant digits, '–' for missing, 'inf'/'nan' spelled out."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def _med(summary: Mapping[str, Any], key: str, spread: bool = True) -> str:
    s = summary.get(key)
    if not s or s.get("median") is None:
        n_bad = (s or {}).get("n_nonfinite", 0)
        return f"– ({n_bad} non-finite)" if n_bad else "–"
    text = fmt(s["median"])
    if spread and s["n"] > 1:
        text += f" [{fmt(s['min'])}, {fmt(s['max'])}]"
    if s.get("n_nonfinite"):
        text += f" +{s['n_nonfinite']} non-finite"
    return text


def _method_keys(method: str) -> dict[str, str]:
    """Record keys of a method's loss, rho, val loss, val rho and error2growth."""
    if method == "koopman":
        return {"loss": "loss_koopman", "rho": "rho_train", "val": "val_loss_koopman",
                "rho_val": "rho_val", "e2g": "error2growth"}
    if method == "optimizer":
        return {"loss": "loss_optimizer", "val": "val_loss_optimizer"}
    keys = {"loss": f"loss_{method}", "rho": f"rho_{method}", "val": f"val_loss_{method}",
            "rho_val": f"rho_val_{method}"}
    if method != "no_jump":
        keys["e2g"] = f"error2growth_{method}"
    return keys


def _rows(results: Mapping[str, Any], loss_spread: bool = True, spread: bool = True
          ) -> tuple[list[str], list[list[str]]]:
    summary = results.get("summary", {})
    has_val = "val_loss_optimizer" in summary
    header = ["method", "train loss at t2+T", "ρ train"]
    if has_val:
        header += ["val loss at t2+T", "ρ val"]
    header.append("error2growth")
    rows = []
    for method, label in METHODS:
        keys = _method_keys(method)
        if method == "koopman":
            label = f"Koopman jump ({results.get('config', {}).get('family', 'node')})"
        rho = _med(summary, keys["rho"], spread) if "rho" in keys else "1 (reference)"
        row = [label, _med(summary, keys["loss"], loss_spread), rho]
        if has_val:
            row += [_med(summary, keys["val"], loss_spread),
                    _med(summary, keys["rho_val"], spread) if "rho_val" in keys
                    else "1 (reference)"]
        row.append(_med(summary, keys["e2g"], spread) if "e2g" in keys
                   else ("1 (by definition)" if method == "no_jump" else "0 (reference)"))
        rows.append(row)
    return header, rows


def _timing_line(results: Mapping[str, Any]) -> str:
    s = results.get("summary", {})
    return (f"T optimizer steps {_med(s, 'time_optimizer_T', False)} s; fit "
            f"{_med(s, 'time_fit', False)} s; jump {_med(s, 'time_jump', False)} s; "
            f"window speedup {_med(s, 'window_speedup')} (median [min, max])")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _family_text(cfg: Mapping[str, Any]) -> str:
    fam = cfg.get("family", "node")
    opts = cfg.get("family_options") or {}
    text = f"{fam} operators"
    if fam in ("single_weight", "quasi_node", "node") and not opts.get("affine"):
        text += " U = F' pinv(F) (the seed's least squares)"
    if opts:
        text += " (" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"
    return text


def render_markdown(results: Mapping[str, Any], plots: Mapping[str, str] | None = None) -> str:
    """The report: command, configuration, summary over seeds, timings, every seed."""
    cfg = results.get("config", {})
    runs = results.get("runs", [])
    n = len(runs)
    exp = results.get("experiment", "?")
    out = [f"# koopt reproduce {exp}", "",
           f"Produced by: `{results.get('command') or 'koopt reproduce ' + exp}`", "",
           f"Status: {results.get('status', '?')}, {n} of {cfg.get('n_seeds', n)} seeds "
           f"finished. Started {results.get('started', '?')}.", ""]
    if results.get("error"):
        out += [f"Error: {results['error']}", ""]
    if cfg.get("data"):
        out += [f"Data: {cfg['data']}.", ""]
    out += [
        f"Setup: {cfg.get('model', '')}; optimizer {cfg.get('optimizer')} (lr "
        f"{fmt(cfg.get('lr'))}); record every step from t1 = {cfg.get('t1')} to t2 = "
        f"{cfg.get('t2')} (window {cfg.get('window')}); {_family_text(cfg)}; jump T = "
        f"{cfg.get('horizon')} steps in one shot; the optimizer "
        f"continues from t2 to t2 + T for comparison.", "",
        f"## Summary: median [min, max] over {n} seed{'s' if n != 1 else ''}", "",
    ]
    header, rows = _rows(results)
    out += [_md_table(header, rows), ""]
    s = results.get("summary", {})
    out += [
        f"Timing: {_timing_line(results)}.", "",
        f"Valid horizon (largest checked T with ρ ≤ 1.05): {_med(s, 'valid_horizon')} steps; "
        f"spectral radius of the operators: {_med(s, 'spectral_radius')}.", "",
        "## Every seed", "",
    ]
    has_val = any("rho_val" in r for r in runs)
    head = ["seed", "loss t2", "loss Koopman", "loss optimizer", "ρ train"]
    head += ["ρ val"] if has_val else []
    head += ["ρ window mean", "error2growth", "fit s", "jump s", "T steps s", "speedup",
             "diverged"]
    body = []
    for r in runs:
        row = [str(r["seed"]), fmt(r.get("loss_t2")), fmt(r.get("loss_koopman")),
               fmt(r.get("loss_optimizer")), fmt(r.get("rho_train"))]
        row += [fmt(r.get("rho_val"))] if has_val else []
        row += [fmt(r.get("rho_window_mean")), fmt(r.get("error2growth")),
                fmt(r.get("time_fit")), fmt(r.get("time_jump")), fmt(r.get("time_optimizer_T")),
                fmt(r.get("window_speedup")), fmt(bool(r.get("diverged")))]
        body.append(row)
    out += [_md_table(head, body), ""]
    out += grid_markdown(results)
    if plots:
        out += ["## Figures (first seed)", ""]
        for key, title in (("loss", "Loss against step, jump marked"),
                           ("scatter", "Jump error against true movement, per parameter"),
                           ("eigenvalues", "Operator eigenvalues and the unit circle"),
                           ("sweep", "Median loss ratio against horizon, every method")):
            if key in plots:
                out += [f"![{title}]({plots[key]})", ""]
    out += [
        "## Definitions", "",
        "- ρ = L(ŵ(t2+T)) / L(w(t2+T)): a method's loss against the optimizer's at the same "
        "step (below 1: better than the optimizer).",
        "- error2growth = median |ŵ(t2+T) − w(t2+T)| / median |w(t2+T) − w(t2)| over "
        "parameters (below 1: the jump predicts the movement better than staying put).",
        "- window speedup = time of the T optimizer steps / (time to fit + time to jump).",
        "- Baselines: no jump keeps w(t2); window mean is the mean of the recorded window "
        "(weight averaging); linear is w(t2) + T (w(t2) − w(t1)) / window. A Koopman claim "
        "counts only where it beats them.",
        "- Losses are deterministic evaluations: " + cfg.get("loss_note", "full dataset."),
        "",
    ]
    return "\n".join(out)


# -- plots ------------------------------------------------------------------------------
def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return write_bytes_atomic(path, buf.getvalue())


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or y.size < k:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    return (c[k:] - c[:-k]) / k


def plot_loss(trace: Any, path: Path, title: str = "") -> Path:
    """Left: every step's training loss over the whole run; right: the deterministic loss
    from t1 to t2 + T along the optimizer's path and the Koopman-predicted path."""
    fig, (ax0, ax1) = _figure(2, width=11, height=4.4)
    y = np.asarray(trace.step_losses, dtype=float)
    steps = np.arange(1, y.size + 1)
    k = max(1, y.size // 300)
    ax0.plot(steps, y, color="0.75", lw=0.5, label="loss of each step")
    ys = _smooth(y, k)
    ax0.plot(steps[k - 1:] if k > 1 else steps, ys, color="C0", lw=1.0,
             label=f"moving mean ({k} steps)" if k > 1 else None)
    ax0.axvspan(trace.t1, trace.t2, color="C2", alpha=0.15, label="recorded window")
    ax0.axvline(trace.t2, color="C3", lw=1, ls="--", label="jump at t2")
    ax0.set_yscale("log")
    ax0.set_xlabel("optimizer step")
    ax0.set_ylabel("training loss")
    ax0.set_title("whole run")
    ax0.legend(fontsize=8)

    for key, ls in (("train", "-"), ("val", ":")):
        if key in trace.opt_eval:
            ax1.plot(trace.opt_steps, trace.opt_eval[key], ls, color="C0", marker=".", ms=3,
                     label=f"optimizer ({key})")
        if key in trace.koop_eval:
            kx = np.concatenate([[trace.t2], trace.koop_steps])
            ky = np.concatenate([[trace.final["no_jump"].get(key, np.nan)],
                                 trace.koop_eval[key]])
            ax1.plot(kx, ky, ls, color="C3", marker=".", ms=3,
                     label=f"Koopman path ({key})")
    end = trace.t2 + trace.horizon
    for name, marker, color in (("window_mean", "s", "C2"), ("linear", "^", "C4"),
                                ("no_jump", "o", "0.3")):
        v = trace.final.get(name, {}).get("train")
        if v is not None and np.isfinite(v):
            ax1.plot([end], [v], marker, color=color, label=f"{name.replace('_', ' ')} (train)")
    ax1.axvline(trace.t2, color="C3", lw=1, ls="--")
    ax1.axvspan(trace.t1, trace.t2, color="C2", alpha=0.1)
    ax1.set_yscale("log")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("loss (deterministic evaluation)")
    ax1.set_title(f"t1 = {trace.t1} … t2 = {trace.t2}, jump T = {trace.horizon}")
    ax1.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_scatter(trace: Any, path: Path, title: str = "") -> Path:
    """Per parameter: |ŵ(t2+T) − w(t2+T)| against |w(t2+T) − w(t2)| (log-log)."""
    fig, (ax,) = _figure(1, width=6, height=5.2)
    move = np.asarray(trace.movement, dtype=float)
    tiny = 1e-16
    for err, label, color, size in ((trace.mean_error, "window mean", "0.6", 4),
                                    (trace.jump_error, "Koopman jump", "C3", 6)):
        e = np.asarray(err, dtype=float)
        ok = np.isfinite(e)
        if ok.any():
            ax.scatter(np.maximum(move[ok], tiny), np.maximum(e[ok], tiny), s=size,
                       alpha=0.6, color=color, label=f"{label} ({int(ok.sum())} parameters)",
                       edgecolors="none")
        else:
            ax.text(0.5, 0.5, f"{label}: prediction not finite", transform=ax.transAxes,
                    ha="center")
    pos = move[move > 0]
    lo, hi = (pos.min(), pos.max()) if pos.size else (1e-6, 1.0)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="error = movement")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("true movement |w(t2+T) − w(t2)|")
    ax.set_ylabel("jump error |ŵ(t2+T) − w(t2+T)|")
    ax.set_title(title or f"per-parameter jump error, T = {trace.horizon}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_eigenvalues(trace: Any, path: Path, title: str = "") -> Path:
    """Left: eigenvalues in the complex plane with the unit circle; right: |λ| − 1 against
    the angle, where growing modes (above 0) stand out."""
    fig, (ax0, ax1) = _figure(2, width=11, height=4.8)
    lam = np.asarray(trace.eigenvalues).astype(complex)
    lam = lam[np.isfinite(lam)]
    th = np.linspace(0, 2 * np.pi, 400)
    ax0.plot(np.cos(th), np.sin(th), "k-", lw=0.8, label="unit circle")
    ax0.scatter(lam.real, lam.imag, s=8, color="C0", alpha=0.7, edgecolors="none",
                label=f"{lam.size} eigenvalues")
    ax0.set_aspect("equal", adjustable="datalim")
    ax0.set_xlabel("Re λ")
    ax0.set_ylabel("Im λ")
    ax0.legend(fontsize=8, loc="lower left")
    rad = np.abs(lam) - 1.0
    ax1.axhline(0.0, color="k", lw=0.8)
    ax1.scatter(np.angle(lam), rad, s=8, color="C0", alpha=0.7, edgecolors="none")
    ax1.set_yscale("symlog", linthresh=1e-6)
    ax1.set_xlabel("arg λ (rad)")
    ax1.set_ylabel("|λ| − 1 (above 0: growing)")
    r = float(np.abs(lam).max()) if lam.size else float("nan")
    ax1.set_title(f"spectral radius {r:.6g}")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def write_report(results: Mapping[str, Any], trace: Any, out_dir: Path) -> dict[str, Path]:
    """Write the PNGs (first seed's trace, if any) and report.md into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    exp = results.get("experiment", "")
    if trace is not None:
        written["loss"] = plot_loss(trace, out_dir / PLOTS["loss"], f"{exp}, seed {trace.seed}")
        written["scatter"] = plot_scatter(trace, out_dir / PLOTS["scatter"])
        written["eigenvalues"] = plot_eigenvalues(trace, out_dir / PLOTS["eigenvalues"],
                                                  f"{exp}, seed {trace.seed}")
    if results.get("runs") and any("methods" in r for r in results["runs"]):
        written["sweep"] = plot_sweep(results, out_dir / PLOTS["sweep"], exp)
    md = render_markdown(results, {k: p.name for k, p in written.items()})
    written["report"] = write_text_atomic(out_dir / "report.md", md)
    return written


def summary_table(results: Mapping[str, Any], width: int | None = None) -> Any:
    """A one-screen rich Table of the summary (median [min, max] over seeds); on a console
    narrower than the table needs, medians only (the spreads stay in report.md)."""
    from rich.markup import escape
    from rich.table import Table

    n = len(results.get("runs", []))
    cfg = results.get("config", {})
    table = Table(title=f"koopt reproduce {results.get('experiment', '')}: {n} seed(s), "
                        f"t1={cfg.get('t1')} window={cfg.get('window')} T={cfg.get('horizon')}"
                        f", {cfg.get('optimizer')}",
                  caption=escape(_timing_line(results)), caption_justify="left")
    has_val = "val_loss_optimizer" in results.get("summary", {})
    spread = width is None or width >= (118 if has_val else 80) or n < 2
    header, rows = _rows(results, loss_spread=False, spread=spread)
    if not spread:
        table.title += " (medians; spreads in report.md)"
    short = {"Koopman jump": "Koopman", "optimizer, T more steps": "optimizer +T",
             "no jump: stay at w(t2)": "no jump", "window mean (averaging)": "window mean",
             "linear extrapolation": "linear extrap."}
    for i, h in enumerate(header):
        h = h.replace(" at t2+T", "")
        table.add_column(escape(h), justify="left" if i == 0 else "right", no_wrap=True)
    best = best_variant(results) if results.get("grid") else None
    if best:
        T = cfg.get("horizon")
        key = rho_key(results)
        table.caption += escape(
            f"\nbest variant at T = {T}: {best}, median {key.replace('_', ' ')} "
            f"{fmt(method_median(results, best, T, key))}, error2growth "
            f"{fmt(method_median(results, best, T, 'error2growth'))}, window speedup "
            f"{fmt(method_median(results, best, T, 'window_speedup'))} (all variants in "
            f"report.md)")
    for r in rows:
        label = r[0]
        for long, brief in short.items():
            label = label.replace(long, brief)
        cells = [c.split(" (")[0] if c.endswith(("(reference)", "(by definition)")) else c
                 for c in r[1:]]
        table.add_row(escape(label), *[escape(c) for c in cells])
    return table


# -- every variant at every horizon ------------------------------------------------------
def _finite_or_inf(v: Any) -> float:
    if v is None:
        return math.inf
    v = float(v)
    return math.inf if math.isnan(v) else v


def method_values(results: Mapping[str, Any], method: str, T: int | str, key: str
                  ) -> list[float]:
    """``key`` of ``method`` at horizon T over the seeds; missing / nan count as inf (a
    diverged jump is the worst result, never skipped)."""
    out = []
    for r in results.get("runs", []):
        m = r.get("methods", {}).get(method)
        if m is None:
            continue
        row = m.get("at", {}).get(str(T))
        out.append(_finite_or_inf(None if row is None else row.get(key)))
    return out


def method_median(results: Mapping[str, Any], method: str, T: int | str, key: str) -> float:
    vals = method_values(results, method, T, key)
    return float(np.median(vals)) if vals else math.nan


def rho_key(results: Mapping[str, Any]) -> str:
    """The loss ratio that judges a task: validation where there is a validation set."""
    return "rho_val" if "val_loss_optimizer" in results.get("summary", {}) else "rho_train"


def koopman_methods(results: Mapping[str, Any]) -> list[str]:
    return [v["name"] for v in results.get("config", {}).get("variants", [])] or [
        k for k, g in results.get("grid", {}).items() if g.get("kind") == "koopman"]


def best_variant(results: Mapping[str, Any], T: int | None = None) -> str | None:
    """The Koopman variant with the lowest median ρ (validation if any) at T (default: the
    headline horizon) among those that stayed finite on every seed; if none did, the lowest
    median with diverged seeds counted as infinite. Ties go to the earlier variant."""
    T = T or results.get("config", {}).get("horizon")
    key = rho_key(results)
    scored = [(name, method_values(results, name, T, key)) for name in koopman_methods(results)]
    scored = [(n, v) for n, v in scored if v]
    finite = [(n, v) for n, v in scored if all(math.isfinite(x) for x in v)]
    best, best_v = None, math.inf
    for name, vals in finite or scored:
        v = float(np.median(vals))
        if v < best_v:
            best, best_v = name, v
    return best


def _grid_cell(results: Mapping[str, Any], method: str, T: int, key: str) -> str:
    g = results.get("grid", {}).get(method, {}).get("at", {}).get(str(T), {})
    return _med(g, key, spread=True)


def grid_markdown(results: Mapping[str, Any]) -> list[str]:
    """Per horizon: every Koopman variant and baseline, median [min, max] over seeds."""
    grid = results.get("grid", {})
    if not grid:
        return []
    cfg = results.get("config", {})
    hs = cfg.get("horizons") or [cfg.get("horizon")]
    has_val = rho_key(results) == "rho_val"
    has_acc = any("val_acc" in (grid.get("optimizer", {}).get("at", {}).get(str(h), {}))
                  for h in hs)
    out = ["## Every variant at every horizon (one fit per variant)", ""]
    best = best_variant(results)
    if best:
        out += [f"Best Koopman variant at the headline T = {cfg.get('horizon')} (lowest "
                f"median {'validation ' if has_val else ''}ρ among the variants finite on every "
                f"seed): **{best}**.", ""]
    descr = {v["name"]: v.get("description", "") for v in cfg.get("variants", [])}
    if descr:
        out += ["Variants: " + "; ".join(f"`{k}` = {v}" for k, v in descr.items()) + ".", ""]
    names = [*koopman_methods(results), *BASELINE_NAMES]
    for h in hs:
        opt = grid.get("optimizer", {}).get("at", {}).get(str(h), {})
        line = f"### T = {h}: optimizer train loss {_med(opt, 'train', False)}"
        if has_val:
            line += f", val loss {_med(opt, 'val', False)}"
        if has_acc:
            line += f", accuracy train {_med(opt, 'train_acc', False)} / val " \
                    f"{_med(opt, 'val_acc', False)}"
        line += f"; T optimizer steps took {_med(opt, 'time', False)} s"
        head = ["method", "ρ train"] + (["ρ val"] if has_val else []) + \
            (["train acc", "val acc"] if has_acc else []) + ["error2growth", "window speedup",
                                                             "incl. recording", "diverged"]
        rows = []
        for name in names:
            g = grid.get(name)
            if g is None:
                continue
            row = [name + (" **(best)**" if name == best else ""),
                   _grid_cell(results, name, h, "rho_train")]
            if has_val:
                row.append(_grid_cell(results, name, h, "rho_val"))
            if has_acc:
                row += [_grid_cell(results, name, h, "train_acc"),
                        _grid_cell(results, name, h, "val_acc")]
            row.append(_grid_cell(results, name, h, "error2growth"))
            if g.get("kind") == "koopman":
                row += [_grid_cell(results, name, h, "window_speedup"),
                        _grid_cell(results, name, h, "window_speedup_all"),
                        str(g.get("n_diverged", 0))]
            else:
                row += ["–", "–", "–"]
            rows.append(row)
        out += [line, "", _md_table(head, rows), ""]
        key = rho_key(results)
        for base in ("window_mean", "no_jump"):
            ref = method_median(results, base, h, key)
            beat = [n for n in koopman_methods(results)
                    if method_median(results, n, h, key) < ref]
            out.append(f"- Koopman variants with a lower median {key.replace('_', ' ')} than "
                       f"`{base}` ({fmt(ref)}) at T = {h}: "
                       + (", ".join(f"`{n}`" for n in beat) or "none") + ".")
        out.append("")
    head = ["method", "valid horizon (train)"] + (["valid horizon (val)"] if has_val else []) \
        + ["spectral radius", "fit s", "time-to-target speedup"]
    rows = []
    for name in names:
        g = grid.get(name)
        if g is None:
            continue
        o = g.get("overall", {})
        row = [name, _med(o, "valid_horizon")]
        if has_val:
            row.append(_med(o, "valid_horizon_val"))
        row += [_med(o, "spectral_radius"), _med(o, "time_fit", False),
                _med(o, "target_speedup")]
        rows.append(row)
    out += ["### Per method", "", _md_table(head, rows), "",
            "Time to target: the continuation's target L_min + 0.01 (L(t2) − L_min), L_min "
            "the optimizer's lowest checked loss up to t2 + max T; the optimizer's time is its "
            "steps until the first checkpoint at or below it, a variant's is fit + one jump "
            "to the first sweep horizon at or below it; speedup 0 = never reached.", ""]
    return out


BASELINE_NAMES = ("no_jump", "window_mean", "linear")


def plot_sweep(results: Mapping[str, Any], path: Path, title: str = "") -> Path:
    """Median ρ against the horizon T for every method (validation ρ if any, else train)."""
    key = rho_key(results)
    cfg = results.get("config", {})
    hs = cfg.get("horizons") or [cfg.get("horizon")]
    import matplotlib

    fig, (ax,) = _figure(1, width=7.5, height=4.8)
    cmap = matplotlib.colormaps["tab20"]
    top, low = 100.0, math.inf  # ρ above 100 is off the scale (marked at the top edge)
    for i, name in enumerate([*koopman_methods(results), *BASELINE_NAMES]):
        ys = np.array([method_median(results, name, h, key) for h in hs], dtype=float)
        low = min(low, float(np.nanmin(np.where(np.isfinite(ys), ys, np.nan)))
                  if np.isfinite(ys).any() else low)
        off = ~(ys <= top)
        ls = "--" if name in BASELINE_NAMES else "-"
        line, = ax.plot(hs, np.where(off, top, ys), ls, marker="o", ms=3, color=cmap(i % 20),
                        label=name + (" (off scale)" if off.any() else ""))
        if off.any():
            ax.plot(np.array(hs)[off], [top] * int(off.sum()), "^", color=line.get_color(), ms=7)
    ax.axhline(1.05, color="k", lw=0.8, ls=":", label="ρ = 1.05")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(min(0.9, low * 0.9) if math.isfinite(low) else 0.1, top * 1.5)
    ax.set_xlabel("horizon T (optimizer steps)")
    ax.set_ylabel(f"median {key.replace('_', ' ')} (lower is better)")
    ax.set_title(title or "loss ratio against horizon")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


# -- rebuild and compare -----------------------------------------------------------------
def _load(run_dir: Path) -> dict[str, Any]:
    """run_dir/results.json, checked; ValueError naming the file if it is not one."""
    from koopt.experiments.runner import load_results

    path = run_dir / "results.json"
    if not path.exists():
        raise ValueError(f"no results.json in {run_dir}")
    return load_results(path)


def _unexpected(path: Path, exc: Exception) -> ValueError:
    """A results file that passed the shape check but holds values of the wrong kind."""
    return ValueError(f"{path}: not a koopt results file (unexpected content: "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")


def run_dirs_under(path: Path) -> list[Path]:
    """``path`` itself if it holds results.json, else its sub-folders that do."""
    if not path.exists():
        raise ValueError(f"{path}: no such folder")
    if not path.is_dir():
        raise ValueError(f"{path}: not a folder; expected a run folder with results.json")
    if (path / "results.json").exists():
        return [path]
    subs = sorted(p.parent for p in path.glob("*/results.json"))
    subs += sorted(p.parent for p in path.glob("*/*/results.json"))
    if not subs:
        raise ValueError(f"no results.json in {path} or its sub-folders")
    return subs


def rebuild(path: Path, warn: Callable[[str], None] | None = None) -> list[Path]:
    """Rewrite report.md and the plots of every run under ``path`` from its files.

    A missing or unreadable trace.npz only skips the plots drawn from it; ``warn`` gets a
    one-line "note: ..." / "warning: ..." about it."""
    from koopt.experiments.runner import read_trace

    written = []
    trace_plots = ", ".join(PLOTS[k] for k in ("loss", "scatter", "eigenvalues"))
    for d in run_dirs_under(path):
        results = _load(d)
        try:
            trace = read_trace(d / "trace.npz")
        except FileNotFoundError:
            trace = None
            if warn is not None:
                warn(f"note: {d / 'trace.npz'} is missing; {trace_plots} need it and were not "
                     "redrawn")
        except ValueError as exc:
            trace = None
            if warn is not None:
                warn(f"warning: {exc}; {trace_plots} were not redrawn")
        try:
            written += list(write_report(results, trace, d).values())
        except (TypeError, KeyError, AttributeError, IndexError, ValueError) as exc:
            raise _unexpected(d / "results.json", exc) from None
    return written


def compare_rows(dirs: Sequence[Path]) -> tuple[list[str], list[list[str]], list[Any]]:
    """One row per run and headline T: its best variant against the baselines."""
    head = ["run", "seeds", "T", "best variant", "ρ", "error2growth", "window speedup",
            "ρ node (seed's)", "ρ no jump", "ρ window mean", "ρ linear"]
    rows, loaded = [], []
    for d in dirs:
        for sub in run_dirs_under(d):
            res = _load(sub)
            loaded.append((sub, res))
            try:
                rows.append(_compare_row(sub, res))
            except (TypeError, KeyError, AttributeError, IndexError, ValueError) as exc:
                raise _unexpected(sub / "results.json", exc) from None
    return head, rows, loaded


def _compare_row(sub: Path, res: Mapping[str, Any]) -> list[str]:
    """One compare row: the run's best variant at its headline T against the baselines."""
    cfg = res.get("config", {})
    T = cfg.get("horizon")
    key = rho_key(res)
    best = best_variant(res) or "–"
    label = f"{cfg.get('experiment')} {cfg.get('optimizer')} " \
            f"{cfg.get('window_name') or 'late'} ({sub.name})"

    def med(name: str, k: str) -> str:
        return fmt(method_median(res, name, T, k)) if name in res.get("grid", {}) else "–"

    return [label, str(len(res.get("runs", []))), str(T), best, med(best, key),
            med(best, "error2growth"), med(best, "window_speedup"), med("node", key),
            med("no_jump", key), med("window_mean", key), med("linear", key)]


def write_compare(dirs: Sequence[Path], out: Path, console: Any = None) -> dict[str, Path]:
    """compare.md (table) and compare.png (median ρ against T, best variant of each run)."""
    head, rows, loaded = compare_rows(dirs)
    md = ["# koopt compare", "",
          "Median over seeds (a diverged seed counts as infinite). ρ is validation ρ where "
          "the task has a validation set, else train ρ; best = lowest median ρ at the run's "
          "headline T among the variants that stayed finite on every seed.", "",
          _md_table(head, rows), ""]
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax,) = _figure(1, width=8, height=5)
    for i, (d, res) in enumerate(loaded):
        cfg = res.get("config", {})
        hs = cfg.get("horizons") or [cfg.get("horizon")]
        best = best_variant(res)
        if best is None:
            continue
        ys = [method_median(res, best, h, rho_key(res)) for h in hs]
        ax.plot(hs, [y if math.isfinite(y) else np.nan for y in ys], marker="o",
                color=f"C{i % 10}", label=f"{d.name}: {best}")
    ax.axhline(1.05, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("horizon T")
    ax.set_ylabel("median ρ of the best variant")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    written = {"plot": _save(fig, out / "compare.png")}
    md += ["![median ρ of each run's best variant against T](compare.png)", ""]
    written["markdown"] = write_text_atomic(out / "compare.md", "\n".join(md))
    if console is not None:
        from rich import box
        from rich.markup import escape
        from rich.table import Table

        short = ["run", "n", "T", "best variant", "ρ", "e2g", "speedup", "ρ node", "ρ stay",
                 "ρ mean", "ρ linear"]
        table = Table(title="koopt compare (medians over seeds; details in compare.md)",
                      box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
        for i, h in enumerate(short):
            table.add_column(escape(h), justify="left" if i in (0, 3) else "right",
                             no_wrap=True)
        for r in rows:
            table.add_row(escape(r[0].split(" (")[0]), *[escape(c) for c in r[1:]])
        console.print(table)
    return written
