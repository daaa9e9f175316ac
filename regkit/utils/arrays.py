"""numpy <-> torch plumbing, so that the maths is written once, in torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["as_tensors", "from_tensor"]


def _one(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True, order="C")  # torch cannot wrap read-only memory
    return torch.from_numpy(arr)


def as_tensors(*arrays: Any) -> tuple[list[torch.Tensor], bool]:
    """Convert arrays to floating tensors on one device and dtype.

    The dtype and device are those of the first torch input if there is one, else of the first
    input. Lists and non-float arrays become float64.

    Returns:
        The tensors, and whether no input was a tensor (so results go back as numpy; any torch
        input makes the result torch, so that a gradient is never silently dropped).
    """
    was_numpy = not any(isinstance(a, torch.Tensor) for a in arrays)
    tensors = [_one(a) for a in arrays]
    ref = next((t for a, t in zip(arrays, tensors, strict=True) if isinstance(a, torch.Tensor)),
               tensors[0])
    return [t.to(device=ref.device, dtype=ref.dtype) for t in tensors], was_numpy


def from_tensor(x: torch.Tensor, was_numpy: bool) -> Any:
    """Give ``x`` back as numpy (detached, on the CPU) when the caller gave numpy."""
    return x.detach().cpu().numpy() if was_numpy else x
