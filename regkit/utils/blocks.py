"""Reductions over blocks of array elements: detector binning, CT block-averaging, level pyramids.

numpy only, so that light modules (``regkit.volume``) can use it without loading torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = ["block_reduce"]


def block_reduce(data: Any, factors: Sequence[int], reduce: Literal["sum", "mean", "min"],
                 dtype: Any = None) -> np.ndarray:
    """Sum, mean or minimum over blocks of ``factors[i]`` elements along each axis ``i``.

    Trailing elements that do not fill a block are dropped (as :meth:`Camera.downsample` and
    :meth:`Volume.downsample` drop them). Axis by axis, each pass shrinking the data: faster
    than one reduction over a 2n-D view, and exact for integer data summed in a wider type.

    Args:
        data: an n-D array.
        factors: ``n`` whole numbers ≥ 1 (1 leaves an axis as it is).
        reduce: ``"sum"``, ``"mean"`` (the sum divided by the block size) or ``"min"``.
        dtype: the accumulator and output dtype of a sum or mean (default: the data's, at
            least float64 for a mean); a minimum keeps the data's dtype.
    """
    out = np.asarray(data)
    f = [int(k) for k in factors]
    if len(f) != out.ndim or min(f) < 1:
        raise ValueError(f"need {out.ndim} block sizes >= 1, got {list(factors)}")
    if reduce == "mean" and dtype is None:
        dtype = np.result_type(out.dtype, np.float64)
    out = out[tuple(slice(0, (n // k) * k) for n, k in zip(out.shape, f, strict=True))]
    for axis, k in enumerate(f):
        if k == 1:
            continue
        shape = out.shape
        blocked = out.reshape(*shape[:axis], shape[axis] // k, k, *shape[axis + 1:])
        out = blocked.min(axis=axis + 1) if reduce == "min" else blocked.sum(axis=axis + 1,
                                                                             dtype=dtype)
    if reduce == "mean":
        return np.divide(out, math.prod(f), dtype=dtype)
    if reduce == "sum" and dtype is not None:
        return np.asarray(out, dtype=dtype)
    return out
