"""``koopt reproduce`` end to end, in process, at tiny sizes; bad input and Ctrl-C."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from koopt.cli import main
from koopt.experiments import runner
from koopt.experiments.idx import write_idx
from koopt.experiments.mnist import MNIST_FILES

PLOTS = ("loss.png", "jump_scatter.png", "eigenvalues.png")
FINITE = ("loss_t2", "loss_koopman", "loss_optimizer", "rho_train", "error2growth",
          "time_optimizer_T", "time_fit", "time_jump", "window_speedup", "loss_no_jump",
          "rho_no_jump", "loss_window_mean", "rho_window_mean", "loss_linear")


def _check_results(out, experiment: str, n_seeds: int, val: bool) -> dict:
    res = json.loads((out / "results.json").read_text())
    assert res["experiment"] == experiment and res["status"] == "complete"
    assert len(res["runs"]) == n_seeds
    keys = FINITE + (("rho_val", "val_loss_koopman", "val_loss_optimizer") if val else ())
    for rec in res["runs"]:
        for k in keys:
            assert isinstance(rec[k], float) and math.isfinite(rec[k]), (k, rec[k])
        assert rec["t2"] == rec["t1"] + rec["window"] and rec["family"] == "node"
        assert rec["window_speedup"] == pytest.approx(
            rec["time_optimizer_T"] / (rec["time_fit"] + rec["time_jump"]))
    assert res["summary"]["rho_train"]["n"] == n_seeds
    for name in PLOTS:
        png = out / name
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "`koopt reproduce" in report and "window mean" in report
    return res


def test_reproduce_hnn_quick(tmp_path, capsys) -> None:
    out = tmp_path / "hnn"
    rc = main(["reproduce", "hnn", "--quick", "--seeds", "2", "--t1", "40", "--window", "30",
               "--horizon", "10", "--out", str(out)])
    assert rc == 0
    res = _check_results(out, "hnn", 2, val=False)
    rec = res["runs"][0]
    assert rec["n_params"] == 152 and rec["n_operators"] == 22 and rec["T"] == 10
    assert res["config"]["lr"] == 1.0 and res["config"]["optimizer"] == "adadelta"
    assert "--horizon 10" in res["command"]
    printed = capsys.readouterr().out
    assert "Koopman (node)" in printed and "window speedup" in printed
    # the same seed gives the same losses (deterministic per seed)
    out2 = tmp_path / "again"
    assert main(["reproduce", "hnn", "--seeds", "1", "--t1", "40", "--window", "30",
                 "--horizon", "10", "--out", str(out2)]) == 0
    rec2 = json.loads((out2 / "results.json").read_text())["runs"][0]
    for k in ("loss_t2", "loss_koopman", "loss_optimizer", "error2growth"):
        assert rec2[k] == rec[k]


def test_reproduce_mnist_quick_digits(tmp_path, capsys) -> None:
    out = tmp_path / "digits"
    rc = main(["reproduce", "mnist", "--quick", "--seeds", "1", "--t1", "30", "--window", "70",
               "--horizon", "10", "--out", str(out)])
    assert rc == 0
    res = _check_results(out, "mnist", 1, val=True)
    assert res["config"]["dataset"] == "digits" and res["runs"][0]["n_params"] == 2350
    # train and validation loss and accuracy for every method at every horizon
    at = res["runs"][0]["methods"]["network_r4_affine_clip"]["at"]["10"]
    opt = res["runs"][0]["optimizer_at"]["10"]
    for k in ("train_acc", "val_acc"):
        assert 0.0 <= at[k] <= 1.0 and 0.0 <= opt[k] <= 1.0
    assert at["rho_val"] == pytest.approx(at["val_loss"] / opt["val"])
    assert "scikit-learn" in capsys.readouterr().out


def _fake_mnist(folder, side: int = 8) -> None:
    """IDX files like MNIST's, with small side x side images so the test stays fast."""
    rng = np.random.default_rng(0)
    for key, n in (("train", 96), ("val", 32)):
        write_idx(folder / (MNIST_FILES[f"{key}_images"] + ".gz"),
                  rng.integers(0, 256, (n, side, side), dtype=np.uint8))
        write_idx(folder / MNIST_FILES[f"{key}_labels"], rng.integers(0, 10, n, dtype=np.uint8))


def test_reproduce_mnist_from_idx_files(tmp_path) -> None:
    data = tmp_path / "mnist"
    data.mkdir()
    _fake_mnist(data)
    out = tmp_path / "out"
    rc = main(["reproduce", "mnist", "--data-dir", str(data), "--seeds", "1", "--t1", "4",
               "--window", "12", "--horizon", "3", "--out", str(out)])
    assert rc == 0
    res = _check_results(out, "mnist", 1, val=True)
    assert res["config"]["dataset"] == "mnist" and res["runs"][0]["n_params"] == 2350
    assert "64-20-20-20-10" in res["config"]["model"]


def test_missing_idx_file_is_one_line_exit_2(tmp_path, capsys) -> None:
    data = tmp_path / "mnist"
    data.mkdir()
    _fake_mnist(data)
    (data / (MNIST_FILES["val_images"] + ".gz")).unlink()
    rc = main(["reproduce", "mnist", "--data-dir", str(data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "t10k-images-idx3-ubyte" in err and "expected" in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_corrupt_idx_file_is_one_line_exit_2(tmp_path, capsys) -> None:
    data = tmp_path / "mnist"
    data.mkdir()
    _fake_mnist(data)
    (data / MNIST_FILES["train_labels"]).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x60xx")
    rc = main(["reproduce", "mnist", "--data-dir", str(data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert "train-labels-idx1-ubyte" in err and "expected 96 data bytes" in err


@pytest.mark.parametrize("argv, needle", [
    (["reproduce", "hnn", "--window", "1"], "--window must be >= 2"),
    (["reproduce", "hnn", "--horizon", "0"], "--horizon must be >= 1"),
    (["reproduce", "hnn", "--seeds", "zero"], "--seeds must be an integer"),
    (["reproduce", "hnn", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["reproduce", "cifar"], "invalid choice: 'cifar'"),
    (["reproduce", "hnn", "--optimizer", "sgd"], "invalid choice: 'sgd'"),
    ([], "usage:"),
    (["reproduce", "hnn", "--lr", "inf"], "--lr: must be a finite number, got 'inf'"),
    (["reproduce", "hnn", "--lr", "nan"], "--lr: must be a finite number, got 'nan'"),
    (["reproduce", "hnn", "--horizon", "100000000000000"],
     "--horizon must be <= 10000000, got 100000000000000"),
    (["reproduce", "hnn", "--horizons", "5,20000000"], "horizons must be integers from 1 to"),
    (["reproduce", "hnn", "--window", "10000001"], "--window must be <= 10000000"),
    (["reproduce", "hnn", "--t1", "10000001"], "--t1 must be <= 10000000"),
    (["reproduce", "hnn", "--seeds", "100000000000"], "--seeds must be <= 100000"),
    (["reproduce", "hnn", "--jobs", "100000000000"], "--jobs must be <= 1024"),
])
def test_usage_errors_exit_2(argv, needle, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and needle in err


def test_ctrl_c_keeps_finished_seeds(tmp_path, monkeypatch, capsys) -> None:
    real = runner.run_seed
    calls = {"n": 0}

    def interrupted_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_seed", interrupted_second)
    out = tmp_path / "o"
    rc = main(["reproduce", "hnn", "--seeds", "3", "--t1", "5", "--window", "10", "--horizon",
               "3", "--out", str(out)])
    assert rc == 130
    assert str(out / "results.json") in capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "interrupted" and len(res["runs"]) == 1
    assert (out / "report.md").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_out_must_be_a_fresh_folder_or_resumed(tmp_path, capsys) -> None:
    args = ["reproduce", "hnn", "--seeds", "1", "--t1", "5", "--window", "10", "--horizon", "3"]
    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert main([*args, "--out", str(a_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"koopt: error: --out {a_file} is a file, not a folder"
    out = tmp_path / "o"
    assert main([*args, "--out", str(out)]) == 0
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 2  # a finished run is never overwritten
    assert "pass --resume" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before
    assert main([*args, "--out", str(out), "--resume"]) == 0
    # a corrupt results.json named, one line, no traceback
    (out / "results.json").write_text("{\n")
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out / "results.json") in err and "not valid JSON" in err


def test_results_files_get_the_umask_mode(tmp_path) -> None:
    import os
    import stat

    out = tmp_path / "o"
    old = os.umask(0o022)
    try:
        assert main(["reproduce", "hnn", "--seeds", "1", "--t1", "5", "--window", "10",
                     "--horizon", "3", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    for name in ("results.json", "report.md", "loss.png"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("extra, needle", [
    (["--family", "network", "--delays", "1000"],
     "needs at least 1001 snapshots; a window of 20 steps gives it 21;"),
    (["--family", "network_r4_affine_clip_s100", "--horizon", "100"], "use a longer --window"),
])
def test_variants_a_window_cannot_feed_are_refused_up_front(tmp_path, capsys, extra, needle):
    rc = main(["reproduce", "hnn", "--seeds", "1", "--t1", "5", "--window", "20", "--horizon",
               "3", *extra, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and err.count("\n") == 0
    assert not (tmp_path / "o").exists()


def test_short_window_drops_strided_defaults_quietly(tmp_path) -> None:
    out = tmp_path / "o"
    assert main(["reproduce", "hnn", "--seeds", "1", "--t1", "5", "--window", "20",
                 "--horizon", "100", "--out", str(out)]) == 0
    names = [v["name"] for v in json.loads((out / "results.json").read_text())["config"]
             ["variants"]]
    assert "network_r4_affine_clip" in names and not any(n.endswith("_s100") for n in names)


@pytest.mark.parametrize("lr, needle", [
    ("1e12", "the training loss became"),  # the loss overflows after a step or two
    ("1e300", "optimizer step 1 failed"),  # float32 weights cannot take the step at all
])
def test_diverging_optimizer_is_one_line_exit_2_marked_failed(tmp_path, capsys, lr, needle):
    out = tmp_path / "o"
    rc = main(["reproduce", "hnn", "--seeds", "2", "--t1", "5", "--window", "10", "--horizon",
               "3", "--family", "node", "--lr", lr, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("koopt: error: seed 0 (adadelta, lr ") and needle in err
    assert "diverged" in err
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "failed" and needle in res["error"] and res["runs"] == []


def test_out_below_a_file_is_a_usage_error(tmp_path, capsys) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    rc = main(["reproduce", "hnn", "--quick", "--out", str(a_file / "sub" / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == f"koopt: error: --out {a_file / 'sub' / 'run'}: {a_file} is a file, not a folder"


def test_data_dir_and_resume_misuse_exit_2(tmp_path, capsys) -> None:
    assert main(["reproduce", "hnn", "--data-dir", str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    assert "--data-dir is for the classifier" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # --resume on a folder that does not exist yet starts the run there (repeatable command)
    tiny = ["--seeds", "1", "--t1", "5", "--window", "10", "--horizon", "3"]
    fresh = tmp_path / "fresh"
    assert main(["reproduce", "hnn", *tiny, "--resume", "--out", str(fresh)]) == 0
    assert f"nothing to continue in {fresh} yet" in capsys.readouterr().err
    assert json.loads((fresh / "results.json").read_text())["status"] == "complete"
    assert main(["reproduce", "hnn", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_version_and_python_dash_m(capsys) -> None:
    import subprocess
    import sys
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"koopt {version('koopt')}"
    proc = subprocess.run([sys.executable, "-m", "koopt", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"koopt {version('koopt')}"
    proc = subprocess.run([sys.executable, "-m", "koopt", "report"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "usage: koopt report" in proc.stderr
