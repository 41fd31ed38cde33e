"""Issue 5: many variants and horizons from one fit, --resume, --jobs, report and compare."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
import torch
from torch import nn

from koopt.cli import main
from koopt.experiments import runner
from koopt.experiments.runner import CycleConfig, load_trace, run_seed
from koopt.experiments.variants import VARIANTS, resolve_variants

TINY = ["--t1", "20", "--window", "40", "--horizons", "10,20", "--family",
        "node,node_affine,network_r4_affine_clip"]


def _timeless(x: Any) -> Any:
    """The record without wall-clock fields (they differ between any two runs)."""
    if isinstance(x, dict):
        return {k: _timeless(v) for k, v in x.items()
                if not any(w in k for w in ("time", "speedup"))}
    if isinstance(x, list):
        return [_timeless(v) for v in x]
    return x


class LinearTask:
    """w <- 0.9 w + 0.1: node operators with an affine term predict it exactly."""

    name = "toy"

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = nn.Linear(3, 2).double()

    def step(self) -> torch.Tensor:
        with torch.no_grad():
            for p in self.model.parameters():
                p.mul_(0.9).add_(0.1)
        return torch.tensor(self.evaluate()["train"])

    def evaluate(self) -> dict[str, float]:
        w = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
        return {"train": float((w - 1.0).square().sum()) + 1e-3}


def test_every_variant_and_horizon_from_one_fit(monkeypatch) -> None:
    calls: list[str] = []
    real = runner.fit_family

    def counting(name, *a, **k):
        calls.append(name)
        return real(name, *a, **k)

    monkeypatch.setattr(runner, "fit_family", counting)
    variants = [VARIANTS["node_affine"], VARIANTS["node"], VARIANTS["network_r4_affine_clip"]]
    cfg = CycleConfig(experiment="toy", t1=3, window=12, horizon=7, horizons=[2, 7, 15],
                      seeds=[0], variants=variants)
    rec, trace = run_seed(LinearTask(0), cfg, 0, keep_trace=True)
    assert calls == ["node", "node", "network"]  # one fit per variant, not per horizon
    assert rec["horizons"] == [2, 7, 15] and rec["variant"] == "node_affine"
    exact = rec["methods"]["node_affine"]
    for h in ("2", "7", "15"):
        assert exact["at"][h]["rho_train"] == pytest.approx(1.0, rel=1e-6)
        assert exact["at"][h]["error2growth"] < 1e-6
        assert exact["at"][h]["window_speedup"] > exact["at"][h]["window_speedup_all"] > 0
        # staying put is worse the further the optimizer moves on
        assert rec["methods"]["no_jump"]["at"][h]["rho_train"] > 1.0
    assert exact["valid_horizon"] == 15
    # the flat keys are the primary variant at the headline T
    assert rec["rho_train"] == exact["at"]["7"]["rho_train"] and rec["T"] == 7
    # the optimizer reaches the 1% target on the checkpoints; the exact jump does too, cheaper
    assert math.isfinite(rec["time_to_target_optimizer"]) and exact["target_speedup"] > 0
    assert trace is not None and trace.step_losses.shape == (15 + 15,)


def test_resolve_variants_by_family_name_and_stride() -> None:
    names = [v.name for v in resolve_variants("network", "hnn", [2500])]
    assert "network_r4_affine_clip_s100" in names and "node" not in names
    # strided variants are left out when a horizon is not a multiple of the stride
    assert all(v.stride == 1 for v in resolve_variants("all", "hnn", [250, 938]))
    with pytest.raises(ValueError, match="multiple of 100"):
        resolve_variants("network_r4_affine_clip_s100", "hnn", [938])
    with pytest.raises(ValueError, match="unknown family or variant"):
        resolve_variants("nodes", "mnist")
    # a name that is both a family and a variant ("node": the seed's) means the variant
    assert [v.name for v in resolve_variants("layer,node", "mnist")] == ["layer", "node"]
    assert [v.name for v in resolve_variants("quasi_node", "mnist")] == ["quasi_node"]


def test_resume_after_interrupt_recomputes_nothing(tmp_path, monkeypatch, capsys) -> None:
    argv = ["reproduce", "hnn", "--seeds", "3", *TINY]
    full = tmp_path / "full"
    assert main([*argv, "--out", str(full)]) == 0
    reference = json.loads((full / "results.json").read_text())

    real = runner.run_seed
    seen: list[int] = []
    hook = {"armed": True}

    def interrupt_second(task, cfg, seed, **kw):
        seen.append(seed)
        if hook["armed"] and len(seen) == 2:
            hook["armed"] = False
            raise KeyboardInterrupt  # the hook: Ctrl-C after one finished seed
        return real(task, cfg, seed, **kw)

    monkeypatch.setattr(runner, "run_seed", interrupt_second)
    out = tmp_path / "o"
    assert main([*argv, "--out", str(out)]) == 130
    part = json.loads((out / "results.json").read_text())
    assert part["status"] == "interrupted" and [r["seed"] for r in part["runs"]] == [0]
    seen.clear()
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert seen == [1, 2]  # seed 0 was kept, not recomputed
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete" and res["resumed_seeds"] == [0]
    assert _timeless(res["runs"]) == _timeless(reference["runs"])
    assert res["grid"]["node"]["at"]["20"]["rho_train"]["n"] == 3
    assert load_trace(out / "trace.npz").seed == 0  # the plots still show the first seed
    # resuming with another configuration is refused, the old file untouched
    assert main([*argv[:-1], "node", "--out", str(out), "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["runs"] == res["runs"]


def test_jobs_give_the_serial_results(tmp_path) -> None:
    argv = ["reproduce", "hnn", "--seeds", "3", *TINY]
    assert main([*argv, "--out", str(tmp_path / "serial")]) == 0
    assert main([*argv, "--jobs", "2", "--out", str(tmp_path / "par")]) == 0
    a = json.loads((tmp_path / "serial" / "results.json").read_text())
    b = json.loads((tmp_path / "par" / "results.json").read_text())
    assert b["environment"]["jobs"] == 2 and len(b["runs"]) == 3
    assert _timeless(a["runs"]) == _timeless(b["runs"])
    assert (tmp_path / "par" / "loss.png").exists()  # the trace came back from a worker


def test_optimizers_windows_report_and_compare(tmp_path, capsys) -> None:
    out = tmp_path / "multi"
    assert main(["reproduce", "hnn", "--seeds", "1", "--optimizer", "adam",
                 "--windows", "late,early", *TINY, "--out", str(out)]) == 0
    subs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert subs == ["adam-early", "adam-late"]
    early = json.loads((out / "adam-early" / "results.json").read_text())
    assert early["config"]["t1"] == 0 and early["config"]["window_name"] == "early"
    assert early["config"]["optimizer"] == "adam" and early["config"]["lr"] == 8e-3
    assert (out / "compare.md").read_text().count("| hnn ") == 2
    # report rebuilds everything from results.json and trace.npz
    run = out / "adam-late"
    for name in ("report.md", "loss.png", "sweep.png"):
        (run / name).unlink()
    assert load_trace(run / "trace.npz") is not None
    assert main(["report", str(out)]) == 0
    md = (run / "report.md").read_text()
    assert (run / "loss.png").exists() and (run / "sweep.png").exists()
    assert "Best Koopman variant" in md and "### T = 20" in md and "window_mean" in md
    # compare: one table (markdown + terminal) and one plot
    capsys.readouterr()
    assert main(["compare", str(out / "adam-late"), str(out / "adam-early"), "--out",
                 str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "adam late" in table and "adam early" in table
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "koopt compare" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_sigterm_ends_like_ctrl_c(tmp_path, monkeypatch, capsys) -> None:
    import os
    import signal

    real = runner.run_seed
    calls: list[int] = []

    def terminated_second(task, cfg, seed, **kw):
        calls.append(seed)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(task, cfg, seed, **kw)

    monkeypatch.setattr(runner, "run_seed", terminated_second)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "o"
    rc = main(["reproduce", "hnn", "--seeds", "3", *TINY, "--out", str(out)])
    assert rc == 130 and "--resume" in capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "interrupted" and len(res["runs"]) == 1
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_best_variant_prefers_finite_on_every_seed() -> None:
    from koopt.report import best_variant

    def run(a: float, b: float) -> dict:
        return {"methods": {"x": {"at": {"5": {"rho_train": a}}},
                            "y": {"at": {"5": {"rho_train": b}}}}}

    res = {"config": {"horizon": 5, "variants": [{"name": "x"}, {"name": "y"}]},
           "summary": {}, "runs": [run(0.5, 0.9), run(0.6, 0.95), run(math.inf, 1.0)]}
    assert best_variant(res) == "y"  # x has the lower median but diverged on one seed
    res["runs"][2] = run(0.7, 1.0)
    assert best_variant(res) == "x"


def test_ctrl_c_with_jobs_stops_workers_and_keeps_results(tmp_path) -> None:
    import multiprocessing as mp
    import time

    from koopt.experiments.runner import run_experiment
    from koopt.experiments.tasks import SeedWorker, TaskSpec

    cfg = CycleConfig(experiment="hnn", t1=5, window=20, horizon=5, seeds=[0, 1, 2, 3],
                      variants=[VARIANTS["node"]])
    spec = TaskSpec("hnn")

    def stop(rec: dict) -> None:
        raise KeyboardInterrupt  # Ctrl-C right after the first finished seed

    with pytest.raises(KeyboardInterrupt):
        run_experiment(spec, cfg, tmp_path, jobs=2, worker=SeedWorker(spec, cfg), on_seed=stop)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "interrupted" and len(res["runs"]) == 1
    deadline = time.time() + 10
    while mp.active_children() and time.time() < deadline:
        time.sleep(0.1)
    assert not mp.active_children()


@pytest.fixture
def tiny_run(tmp_path):
    out = tmp_path / "run"
    assert main(["reproduce", "hnn", "--seeds", "1", "--t1", "5", "--window", "10",
                 "--horizon", "3", "--family", "node", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("text, why", [
    ("[1, 2, 3]", "a JSON list, expected an object"),
    ("NaN", "a JSON float, expected an object"),
    ("{}", "no 'experiment'"),
    ('{"config": "x"}', "no 'experiment'"),
    ('{"experiment": "hnn", "config": "x", "runs": []}', "'config' is \"x\", expected a JSON dict"),
    ('{"experiment": "hnn", "config": {}, "runs": null}', "'runs' is null, expected a JSON list"),
    ('{"experiment": "hnn", "config": {}, "runs": "x"}', "'runs' is \"x\", expected a JSON list"),
    ('{"experiment": "hnn", "config": {}, "runs": ["x"]}', "run 0 is not an object"),
    ('{"experiment": "hnn", "config": {}, "runs": [], "summary": [1]}',
     "'summary' is not a JSON object"),
    ('{"experiment": "hnn", "config": {}, "runs": [{"seed": 0, "loss_t2": "x"}]}',
     "unexpected content"),
])
def test_report_and_compare_refuse_a_wrong_shape(tmp_path, capsys, text, why) -> None:
    run = tmp_path / "bad"
    run.mkdir()
    (run / "results.json").write_text(text)
    path = run / "results.json"
    commands = [["report", str(run)], ["compare", str(run), "--out", str(tmp_path / "c")]]
    if "loss_t2" in text:  # compare does not read the per-seed losses
        commands.pop()
    for argv in commands:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"koopt: error: {path}: not a koopt results file (")
        assert why in err
    assert not (run / "report.md").exists()


def test_corrupt_results_json_is_named(tmp_path, capsys) -> None:
    run = tmp_path / "bad"
    run.mkdir()
    (run / "results.json").write_text('{"experi')
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"koopt: error: {run / 'results.json'}: "
                                                   "not valid JSON (")
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == \
        f"koopt: error: {tmp_path / 'missing'}: no such folder"


def test_resume_refuses_a_wrong_shape(tiny_run, capsys) -> None:
    (tiny_run / "results.json").write_text('{"experiment": "hnn", "config": {}, "runs": "x"}')
    assert main(["reproduce", "hnn", "--seeds", "1", "--t1", "5", "--window", "10",
                 "--horizon", "3", "--family", "node", "--out", str(tiny_run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a koopt results file" in err and "cannot resume" in err


@pytest.mark.parametrize("damage", ["truncate", "random", "empty", "missing"])
def test_report_with_a_bad_trace_warns_and_rebuilds_the_rest(tiny_run, capsys, damage):
    trace = tiny_run / "trace.npz"
    raw = trace.read_bytes()
    if damage == "truncate":
        trace.write_bytes(raw[: len(raw) // 2])
    elif damage == "random":
        trace.write_bytes(random.Random(0).randbytes(3000))
    elif damage == "empty":
        trace.write_bytes(b"")
    else:
        trace.unlink()
    (tiny_run / "report.md").unlink()
    (tiny_run / "loss.png").unlink()
    capsys.readouterr()
    assert main(["report", str(tiny_run)]) == 0
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    if damage == "missing":
        assert err == (f"koopt: note: {trace} is missing; loss.png, jump_scatter.png, "
                       "eigenvalues.png need it and were not redrawn")
    else:
        assert err.startswith(f"koopt: warning: {trace}: not a readable koopt trace (")
        assert err.endswith("loss.png, jump_scatter.png, eigenvalues.png were not redrawn")
    assert (tiny_run / "report.md").exists() and not (tiny_run / "loss.png").exists()
    assert str(tiny_run / "report.md") in captured.out


def test_compare_out_must_be_a_folder(tiny_run, tmp_path, capsys) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    capsys.readouterr()
    assert main(["compare", str(tiny_run), "--out", str(a_file)]) == 2
    assert capsys.readouterr().err.strip() == \
        f"koopt: error: --out {a_file} is a file, not a folder"
    assert main(["compare", str(tiny_run), "--out", str(a_file / "x")]) == 2
    assert capsys.readouterr().err.strip() == \
        f"koopt: error: --out {a_file / 'x'}: {a_file} is a file, not a folder"
