"""Spectral tools: stabilising a fitted operator and describing its spectrum.

Purely linear models on identity observables extrapolate growing modes exponentially, the
failure the independent MNIST re-implementation of Dogra & Redman (2020) ran into. Like
PyDMD's BOPDMD ``eig_constraints={"stable"}`` we offer to move growing modes onto the unit
circle ("clip") or to remove them ("drop").
"""

from __future__ import annotations

import torch

STABILIZE_OPTIONS = ("none", "clip", "drop")


def validate_stabilize(option: str) -> None:
    if option not in STABILIZE_OPTIONS:
        raise ValueError(f"stabilize must be one of {STABILIZE_OPTIONS}, got {option!r}")


def stabilized(A: torch.Tensor, option: str, tol: float = 1e-12) -> torch.Tensor:
    """A real operator (..., n, n) whose eigenvalues outside the unit disk are clipped onto
    the unit circle or dropped; operators without growing modes are returned unchanged."""
    if option == "none" or A.shape[-1] == 0:
        return A
    lam, W = torch.linalg.eig(A)
    growing = lam.abs() > 1.0 + tol
    if not bool(growing.any()):
        return A
    if option == "clip":
        new = torch.where(growing, lam / lam.abs().clamp_min(1e-300), lam)
    else:
        new = torch.where(growing, torch.zeros_like(lam), lam)
    rebuilt = (W * new.unsqueeze(-2)) @ torch.linalg.inv(W)
    rebuilt = rebuilt.real.to(A.dtype)
    needs = growing.any(dim=-1)
    if A.ndim == 2:
        return rebuilt
    return torch.where(needs[..., None, None], rebuilt, A)


def spectral_radius(eigenvalues: torch.Tensor) -> float:
    """Largest modulus of the eigenvalues (0 for none)."""
    return float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
