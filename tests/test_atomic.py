"""Atomic writes: the target is replaced whole or not at all; strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from koopt import _atomic


def test_json_is_strict_and_replaces_whole(tmp_path) -> None:
    p = tmp_path / "r.json"
    _atomic.write_json_atomic(p, {"a": math.inf, "b": np.float32(0.5), "c": (1, math.nan)})
    assert json.loads(p.read_text()) == {"a": None, "b": 0.5, "c": [1, None]}
    _atomic.write_json_atomic(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]


def test_failed_write_leaves_old_file(tmp_path, monkeypatch) -> None:
    p = tmp_path / "r.json"
    _atomic.write_json_atomic(p, {"old": True})

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(_atomic.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        _atomic.write_json_atomic(p, {"new": True})
    assert json.loads(p.read_text()) == {"old": True}
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]
