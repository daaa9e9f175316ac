"""Normalised cross-correlation: global (``ncc``, ``masked_ncc``) and local (``lncc``)."""

from __future__ import annotations

from typing import ClassVar

import torch

from regkit.errors import ShapeError
from regkit.metrics._ops import box_sum, ncc_flat, relative_tolerance, safe_ratio
from regkit.metrics.base import Metric, int_option, register

__all__ = ["LNCC", "NCC", "MaskedNCC"]


@register("ncc")
class NCC(Metric):
    """Global normalised cross-correlation, weighted by the mask when one is given.

    ``ncc = Σ w (f - f̄)(m - m̄) / sqrt(Σ w (f - f̄)² · Σ w (m - m̄)²)`` with weighted means
    ``f̄ = Σ w f / Σ w`` (``w = 1`` without a mask), in ``[-1, 1]``: 1 for ``m = a·f + b`` with
    ``a > 0``, -1 with ``a < 0``. Higher is better.

    Degenerate cases (finite values, zero gradients):
        * a zero-variance fixed or moving image (constant over the counted pixels, to within
          100 machine epsilons of its RMS value): 0, the "no information" value;
        * an empty mask (no positive weight): 0 (``empty_score``).

    Args:
        check_finite: Check the inputs for NaN/inf on every call (see :class:`Metric`).
    """

    higher_is_better: ClassVar[bool] = True
    empty_score: ClassVar[float] = 0.0

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor,
                weight: torch.Tensor | None) -> torch.Tensor:
        """``(B,)`` NCC of checked inputs (see :meth:`Metric.forward`)."""
        return ncc_flat(fixed, moving, weight)


@register("masked_ncc")
class MaskedNCC(NCC):
    """:class:`NCC` that insists on a mask (an alias that catches a forgotten mask).

    Values and degenerate cases are those of ``ncc`` with a mask; calling without a mask raises
    :class:`~regkit.errors.InputError`.
    """

    requires_mask: ClassVar[bool] = True


@register("lncc")
class LNCC(Metric):
    """Local (patch) normalised cross-correlation: the mean NCC over every square/cubic patch.

    The patches are all ``patch_size``-wide windows that fit inside the image (stride 1, no
    padding). Local means, variances and covariances come from separable box filters (windowed
    sums) of ``w``, ``w·f``, ``w·f²``, ``w·m``, ``w·m²`` and ``w·f·m``, after each
    image has had its global (weighted) mean removed to limit rounding. Each patch's NCC is
    weighted, in the mean over patches, by the mean mask weight inside it (all equal without a
    mask), so a patch half outside the mask counts half, and masked-out pixels change nothing.
    Higher is better; range ``[-1, 1]``.

    Degenerate cases (finite values, zero gradients):
        * a constant patch in either image (local variance at most 100 machine epsilons of the
          local mean square, i.e. rounding): that patch's NCC is 0 and it still counts in the
          mean; so a zero-variance image gives 0;
        * an empty mask: 0 (``empty_score``).

    Args:
        patch_size: The patch side in pixels (voxels), at least 2; every spatial size of the
            images must be at least this.
        check_finite: Check the inputs for NaN/inf on every call (see :class:`Metric`).
    """

    higher_is_better: ClassVar[bool] = True
    empty_score: ClassVar[float] = 0.0

    def __init__(self, *, patch_size: int = 9, check_finite: bool = True) -> None:
        super().__init__(check_finite=check_finite)
        self.patch_size = int_option("patch_size", patch_size, 2)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor,
                weight: torch.Tensor | None) -> torch.Tensor:
        """``(B,)`` mean patch NCC of checked inputs (see :meth:`Metric.forward`)."""
        k = self.patch_size
        if min(moving.shape[1:]) < k:
            raise ShapeError(f"metric 'lncc' with patch_size={k} needs every image side to be at "
                             f"least {k}; moving has shape {tuple(moving.shape)}")
        dims = tuple(range(1, moving.ndim))
        local_w: torch.Tensor | None
        if weight is None:
            fc = fixed - fixed.mean(dim=dims, keepdim=True)
            mc = moving - moving.mean(dim=dims, keepdim=True)
            inv: torch.Tensor | float = 1.0 / k ** (moving.ndim - 1)
            local_w = None
            sum_f, sum_ff = box_sum(fc, k), box_sum(fc * fc, k)
            sum_m, sum_mm = box_sum(mc, k), box_sum(mc * mc, k)
            sum_fm = box_sum(fc * mc, k)
        else:
            total = weight.sum(dim=dims, keepdim=True)
            safe_total = torch.where(total > 0, total, torch.ones_like(total))
            fc = fixed - (weight * fixed).sum(dim=dims, keepdim=True) / safe_total
            mc = moving - (weight * moving).sum(dim=dims, keepdim=True) / safe_total
            wf = weight * fc
            wm = weight * mc
            local_w = box_sum(weight, k)
            inv = 1.0 / torch.where(local_w > 0, local_w, torch.ones_like(local_w))
            sum_f, sum_ff = box_sum(wf, k), box_sum(wf * fc, k)
            sum_m, sum_mm = box_sum(wm, k), box_sum(wm * mc, k)
            sum_fm = box_sum(wf * mc, k)
        mean_f, msq_f = sum_f * inv, sum_ff * inv
        mean_m, msq_m, cross = sum_m * inv, sum_mm * inv, sum_fm * inv
        var_f = msq_f - mean_f * mean_f
        var_m = msq_m - mean_m * mean_m
        cov = cross - mean_f * mean_m
        tol = relative_tolerance(moving.dtype)
        ok = (var_f > tol * msq_f) & (var_m > tol * msq_m)
        local = safe_ratio(cov, var_f, var_m, ok)
        if local_w is None:
            return local.reshape(local.shape[0], -1).mean(dim=1)
        lw = local_w.reshape(local_w.shape[0], -1)
        num = (lw * local.reshape(local.shape[0], -1)).sum(dim=1)
        den = lw.sum(dim=1)
        score = num / torch.where(den > 0, den, torch.ones_like(den))
        return torch.where(den > 0, score, torch.full_like(score, self.empty_score))
