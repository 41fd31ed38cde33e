"""What a run leaves behind for people: report.md, PNG plots and a terminal table.

The plots follow Dogra & Redman (2020): loss against step with the jump marked (Fig. 1/3
style, both the optimizer's and the Koopman-predicted path), the per-parameter scatter of
jump error against true movement (Fig. 2 style) and the operators' eigenvalues against the
unit circle. Matplotlib is used through the Agg canvas only (no display needed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from koopt._atomic import write_bytes_atomic, write_text_atomic

__all__ = ["write_report", "plot_loss", "plot_scatter", "plot_eigenvalues", "summary_table",
           "render_markdown", "fmt"]

METHODS: tuple[tuple[str, str], ...] = (
    ("koopman", "Koopman jump"),
    ("optimizer", "optimizer, T more steps"),
    ("no_jump", "no jump: stay at w(t2)"),
    ("window_mean", "window mean (averaging)"),
    ("linear", "linear extrapolation"),
)

PLOTS = {"loss": "loss.png", "scatter": "jump_scatter.png", "eigenvalues": "eigenvalues.png"}


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
    if plots:
        out += ["## Figures (first seed)", ""]
        for key, title in (("loss", "Loss against step, jump marked"),
                           ("scatter", "Jump error against true movement, per parameter"),
                           ("eigenvalues", "Operator eigenvalues and the unit circle")):
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
    for r in rows:
        label = r[0]
        for long, brief in short.items():
            label = label.replace(long, brief)
        cells = [c.split(" (")[0] if c.endswith(("(reference)", "(by definition)")) else c
                 for c in r[1:]]
        table.add_row(escape(label), *[escape(c) for c in cells])
    return table
