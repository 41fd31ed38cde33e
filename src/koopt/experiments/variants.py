"""The Koopman variants a run fits next to each other (one fit each, every horizon from it).

A variant is an operator family with core options (affine term, rank, delays, stabilised
spectrum) and a snapshot stride (fit on every ``stride``-th recorded step; horizons are then
counted in strides). ``node`` with no options is the seed's method (Dogra & Redman 2020).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Variant", "VARIANTS", "DEFAULT_VARIANTS", "resolve_variants", "FAMILY_NAMES",
           "check_window", "snapshots_used"]

FAMILY_NAMES = ("single_weight", "quasi_node", "node", "layer", "network")


@dataclass(frozen=True)
class Variant:
    """One Koopman fit: ``family`` with ``options`` on every ``stride``-th snapshot."""

    name: str
    family: str
    options: dict[str, Any] = field(default_factory=dict)
    stride: int = 1
    note: str = ""

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        text = self.family + (f" ({opts})" if opts else "")
        if self.stride > 1:
            text += f", every {self.stride}th snapshot"
        return text + (f": {self.note}" if self.note else "")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "options": dict(self.options),
                "stride": self.stride, "description": self.describe()}


def _v(name: str, family: str, stride: int = 1, note: str = "", **options: Any) -> Variant:
    return Variant(name, family, options, stride, note)


#: every variant by name; strides only where the horizons are multiples of them (HNN)
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    _v("node", "node", note="the seed's method, U = F' pinv(F) per node"),
    _v("node_clip", "node", stabilize="clip"),
    _v("node_affine", "node", affine=True),
    _v("single_weight", "single_weight"),
    _v("quasi_node", "quasi_node", q=8, note="chunks of 8 inputs per node"),
    _v("layer", "layer"),
    _v("layer_affine", "layer", affine=True),
    _v("network_r4_affine_clip", "network", rank=4, affine=True, stabilize="clip"),
    _v("network_r4_affine_clip_s100", "network", stride=100, rank=4, affine=True,
       stabilize="clip"),
    _v("network_d2_r8_affine_clip", "network", rank=8, delays=2, affine=True,
       stabilize="clip"),
    _v("network_d2_r8_affine_clip_s100", "network", stride=100, rank=8, delays=2,
       affine=True, stabilize="clip"),
)}

#: what a run fits when no --family is given, per experiment
DEFAULT_VARIANTS: dict[str, tuple[str, ...]] = {
    "hnn": ("node", "node_clip", "node_affine", "single_weight", "layer_affine",
            "network_r4_affine_clip", "network_r4_affine_clip_s100",
            "network_d2_r8_affine_clip_s100"),
    "mnist": ("node", "node_clip", "node_affine", "single_weight", "quasi_node", "layer",
              "layer_affine", "network_r4_affine_clip", "network_d2_r8_affine_clip"),
}


def snapshots_used(v: Variant, window: int) -> int:
    """How many snapshots ``v`` fits from a window of ``window`` recorded steps."""
    return window // v.stride + 1


def check_window(v: Variant, window: int) -> None:
    """Refuse a variant that a window of ``window`` steps gives too few snapshots."""
    need = int(v.options.get("delays", 1)) + 1 + int(bool(v.options.get("affine")))
    have = snapshots_used(v, window)
    if have < need:
        every = f" (every {v.stride}th of {window + 1})" if v.stride > 1 else ""
        raise ValueError(f"variant {v.name!r} needs at least {need} snapshots; a window of "
                         f"{window} steps gives it {have}{every}; use a longer --window")


def resolve_variants(spec: str | list[str] | None, experiment: str,
                     horizons: list[int] | None = None,
                     window: int | None = None) -> list[Variant]:
    """Names from ``--family``: variant names (``node`` is the seed's method), family names
    that are no variant name (``network``: every default variant of that family), or ``all``
    (the experiment's defaults). None means ``all``. Strided variants whose stride does not
    divide every horizon, or that a ``window`` of that many steps gives too few snapshots,
    are left out of family/``all`` selections and refused when named."""
    defaults = DEFAULT_VARIANTS["hnn" if experiment == "hnn" else "mnist"]
    items = spec.split(",") if isinstance(spec, str) else list(spec or ["all"])
    hs = horizons or []

    def fits(v: Variant) -> bool:
        if window is not None:
            try:
                check_window(v, window)
            except ValueError:
                return False
        return all(h % v.stride == 0 for h in hs)

    out: list[Variant] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        if name == "all":
            picked = [VARIANTS[n] for n in defaults if fits(VARIANTS[n])]
        elif name in VARIANTS:
            v = VARIANTS[name]
            if window is not None:
                check_window(v, window)
            if not fits(v):
                raise ValueError(f"variant {name!r} fits every {v.stride}th snapshot; every "
                                 f"horizon must be a multiple of {v.stride} (got {hs})")
            picked = [v]
        elif name in FAMILY_NAMES:
            picked = [VARIANTS[n] for n in defaults
                      if VARIANTS[n].family == name and fits(VARIANTS[n])] or [
                          VARIANTS[name] if name in VARIANTS else Variant(name, name)]
        else:
            names = dict.fromkeys(("all", *FAMILY_NAMES, *VARIANTS))  # each name once
            raise ValueError(f"unknown family or variant {name!r}; choose from "
                             f"{', '.join(names)}")
        for v in picked:
            if v not in out:
                out.append(v)
    if not out:
        raise ValueError("no variant selected")
    return out
