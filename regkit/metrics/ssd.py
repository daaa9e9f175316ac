"""Mean squared intensity difference (``ssd``)."""

from __future__ import annotations

from typing import ClassVar

import torch

from regkit.metrics._ops import flat
from regkit.metrics.base import Metric, register

__all__ = ["SSD"]


@register("ssd")
class SSD(Metric):
    """Mean squared difference ``Σ w (f - m)² / Σ w`` (``w = 1`` without a mask). Lower is better.

    It is the mean, not the sum, so that scores of masks of different sizes (a 3-D–3-D overlap
    that changes with the pose) stay comparable. It assumes both images share one intensity
    scale (same modality, same calibration); it is 0 for identical images.

    Degenerate cases:
        * zero-variance images are not degenerate here: the score is the mean squared difference
          as usual (e.g. ``(c1 - c2)²`` for two constant images);
        * an empty mask: ``1e30`` (``empty_score``), a finite value worse than any real score
          (for images whose squared differences stay below it), so that an optimizer never
          prefers a pose that leaves no overlap. Its gradient is 0.

    Args:
        check_finite: Check the inputs for NaN/inf on every call (see :class:`Metric`).
    """

    higher_is_better: ClassVar[bool] = False
    empty_score: ClassVar[float] = 1e30

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor,
                weight: torch.Tensor | None) -> torch.Tensor:
        """``(B,)`` mean squared differences of checked inputs (see :meth:`Metric.forward`)."""
        diff = flat(moving) - flat(fixed)
        if weight is None:
            return torch.linalg.vecdot(diff, diff) / diff.shape[1]
        w = flat(weight)
        total = w.sum(dim=1)
        num = (w * diff * diff).sum(dim=1)
        score = num / torch.where(total > 0, total, torch.ones_like(total))
        return torch.where(total > 0, score, torch.full_like(score, self.empty_score))
