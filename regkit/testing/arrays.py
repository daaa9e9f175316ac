"""Array kinds: functions that take numpy or torch, float32 or float64, give back the same kind."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["KINDS", "KIND_IDS", "assert_kind", "make", "to_numpy"]

KINDS: list[tuple[str, str]] = [("numpy", "float32"), ("numpy", "float64"),
                                ("torch", "float32"), ("torch", "float64")]
"""Every ``(kind, dtype name)`` a kind-preserving function is tested on."""
KIND_IDS: list[str] = [f"{kind}-{dtype}" for kind, dtype in KINDS]
"""Test ids of :data:`KINDS`, such as ``"torch-float32"``."""


def make(x: Any, kind: str, dtype: str) -> Any:
    """``x`` as a numpy array (``kind="numpy"``) or torch tensor of the dtype named."""
    arr = np.asarray(x, dtype=np.float64).astype(dtype)
    return torch.from_numpy(arr.copy()) if kind == "torch" else arr


def to_numpy(x: Any) -> np.ndarray:
    """A float64 numpy copy of an array or tensor (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def assert_kind(out: Any, kind: str, dtype: str) -> None:
    """Fail unless ``out`` is of the kind and dtype named."""
    if kind == "torch":
        assert isinstance(out, torch.Tensor), type(out)
        assert out.dtype == getattr(torch, dtype), out.dtype
    else:
        assert isinstance(out, np.ndarray), type(out)
        assert out.dtype == np.dtype(dtype), out.dtype
