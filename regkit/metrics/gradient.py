"""Gradient-based similarities: gradient correlation (``gc``) and gradient NCC (``gncc``).

Both use Sobel derivatives on the valid region (the one-pixel border, whose stencil would leave
the image, is dropped) and, with a mask, the mask eroded by the 3×3 (×3) stencil: a gradient
pixel counts only as much as the least-counted pixel it is computed from, so masked-out pixels
cannot leak in. Every spatial size must be at least 3.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from regkit.errors import ShapeError
from regkit.metrics._ops import erode, ncc_flat, sobel
from regkit.metrics.base import Metric, register

__all__ = ["GC", "GNCC"]


def _check_size(name: str, moving: torch.Tensor) -> None:
    if min(moving.shape[1:]) < 3:
        raise ShapeError(f"metric '{name}' needs every image side to be at least 3 (Sobel "
                         f"stencil); moving has shape {tuple(moving.shape)}")


@register("gc")
class GC(Metric):
    """Gradient correlation: the mean over spatial axes of the NCC of the Sobel derivatives.

    ``gc = (1/d) Σ_a ncc(∂_a f, ∂_a m)`` over the d = 2 (x, y) or 3 (x, y, z) axes, each NCC
    weighted by the eroded mask. In ``[-1, 1]``; 1 for ``m = a·f + b`` with ``a > 0`` (any
    offset ``b``), -1 for ``a < 0``. Higher is better.

    Degenerate cases (finite values, zero gradients):
        * an axis along which either derivative image has zero variance (a constant image, or a
          linear ramp, whose derivative is constant) contributes 0 to the mean; a constant image
          gives 0;
        * an empty (eroded) mask: 0 (``empty_score``).

    Args:
        check_finite: Check the inputs for NaN/inf on every call (see :class:`Metric`).
    """

    higher_is_better: ClassVar[bool] = True
    empty_score: ClassVar[float] = 0.0

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor,
                weight: torch.Tensor | None) -> torch.Tensor:
        """``(B,)`` gradient correlation of checked inputs (see :meth:`Metric.forward`)."""
        _check_size(self.name, moving)
        w = None if weight is None else erode(weight)
        per_axis = [ncc_flat(gf, gm, w)
                    for gf, gm in zip(sobel(fixed), sobel(moving), strict=True)]
        return torch.stack(per_axis).mean(dim=0)


@register("gncc")
class GNCC(Metric):
    """Gradient NCC: the NCC of the Sobel gradient magnitudes ``|∇f|`` and ``|∇m|``.

    ``gncc = ncc(sqrt(Σ_a (∂_a f)²), sqrt(Σ_a (∂_a m)²))``, weighted by the eroded mask.
    Magnitudes (rather than the stacked derivative components) were chosen because they make
    the score independent of contrast polarity: ``m = a·f + b`` gives 1 for any ``a != 0``, so a
    radiograph matches a DRR even where their greyscales are inverted, and edges count alike
    whatever their direction. Use ``gc`` where the sign of the contrast must count. Higher is
    better; range ``[-1, 1]`` (in practice ``>= -1`` and mostly positive).

    The magnitude's derivative is taken as 0 where the gradient vanishes exactly (its
    subgradient), so the gradient w.r.t. ``moving`` stays finite.

    Degenerate cases (finite values, zero gradients):
        * a gradient-magnitude image of zero variance in either input (a constant image, or a
          linear ramp): 0;
        * an empty (eroded) mask: 0 (``empty_score``).

    Args:
        check_finite: Check the inputs for NaN/inf on every call (see :class:`Metric`).
    """

    higher_is_better: ClassVar[bool] = True
    empty_score: ClassVar[float] = 0.0

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor,
                weight: torch.Tensor | None) -> torch.Tensor:
        """``(B,)`` gradient-magnitude NCC of checked inputs (see :meth:`Metric.forward`)."""
        _check_size(self.name, moving)
        w = None if weight is None else erode(weight)
        return ncc_flat(_magnitude(fixed), _magnitude(moving), w)


def _magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude ``(B, *[s - 2 for s in S])`` with a zero subgradient at 0."""
    grads = sobel(x)
    sq = grads[0] * grads[0]
    for g in grads[1:]:
        sq = sq.addcmul_(g, g)
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).sqrt(),
                       torch.zeros_like(sq))
