"""Building blocks shared by the metrics: weighted NCC, Sobel gradients, erosion, box filters.

Every function takes batched tensors ``(B, *S)`` whose batch sizes broadcast (1 or B), so that a
fixed image shared by the whole batch is processed once.
"""

from __future__ import annotations

import torch

__all__ = [
    "box_sum",
    "erode",
    "flat",
    "ncc_flat",
    "relative_tolerance",
    "safe_ratio",
    "sobel",
]


def flat(x: torch.Tensor) -> torch.Tensor:
    """``(B, *S)`` -> ``(B, N)`` with ``N = prod(S)``."""
    return x.reshape(x.shape[0], -1)


def relative_tolerance(dtype: torch.dtype) -> float:
    """100 machine epsilons of ``dtype``: the relative size below which a spread is rounding."""
    return 100.0 * torch.finfo(dtype).eps


def safe_ratio(cov: torch.Tensor, var_f: torch.Tensor, var_m: torch.Tensor,
               ok: torch.Tensor) -> torch.Tensor:
    """``cov / sqrt(var_f * var_m)`` where ``ok``, else exactly 0, with finite gradients.

    The square roots see 1 where ``ok`` is False, so that neither the value nor the gradient
    of the branch that is not taken can be NaN or inf.
    """
    one = torch.ones((), dtype=cov.dtype, device=cov.device)
    inv = torch.rsqrt(torch.where(ok, var_f, one)) * torch.rsqrt(torch.where(ok, var_m, one))
    return torch.where(ok, cov * inv, torch.zeros_like(cov))


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of ``(Ba, N)`` and ``(Bb, N)`` with broadcastable batch sizes."""
    if a.shape[0] == 1 and b.shape[0] != 1:
        return b @ a[0]
    if b.shape[0] == 1 and a.shape[0] != 1:
        return a @ b[0]
    return (a * b).sum(dim=1)


def ncc_flat(f: torch.Tensor, m: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Weighted global normalised cross-correlation, with 0 for degenerate inputs.

    Args:
        f: ``(Bf, *S)`` with Bf 1 or B.
        m: ``(B, *S)``.
        w: None or ``(Bw, *S)`` weights in ``[0, 1]`` with Bw 1 or B.

    Returns:
        ``(B,)`` in ``[-1, 1]``; exactly 0 where either image's weighted variance is below
        ``(100 eps)^2`` of its weighted mean square (a constant image, to rounding) or where the
        weights sum to 0.
    """
    f2, m2 = flat(f), flat(m)
    if w is None:
        n = f2.shape[1]
        mu_f = f2.mean(dim=1, keepdim=True)
        mu_m = m2.mean(dim=1, keepdim=True)
        fc, mc = f2 - mu_f, m2 - mu_m
        var_f = _rowdot(fc, fc)
        var_m = _rowdot(mc, mc)
        cov = _rowdot(fc, mc)
        msq_f = var_f + n * mu_f[:, 0].square()
        msq_m = var_m + n * mu_m[:, 0].square()
    else:
        w2 = flat(w)
        total = w2.sum(dim=1, keepdim=True)
        safe_total = torch.where(total > 0, total, torch.ones_like(total))
        mu_f = _rowdot(w2, f2).unsqueeze(1) / safe_total
        mu_m = _rowdot(w2, m2).unsqueeze(1) / safe_total
        fc, mc = f2 - mu_f, m2 - mu_m
        wfc = w2 * fc
        var_f = _rowdot(wfc, fc)
        cov = _rowdot(wfc, mc)
        var_m = _rowdot(w2 * mc, mc)
        msq_f = var_f + total[:, 0] * mu_f[:, 0].square()
        msq_m = var_m + total[:, 0] * mu_m[:, 0].square()
    tol2 = relative_tolerance(m.dtype) ** 2
    ok = (var_f > tol2 * msq_f) & (var_m > tol2 * msq_m)
    return safe_ratio(cov, var_f, var_m, ok)


def _diff(x: torch.Tensor, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    return x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2)


def _smooth(x: torch.Tensor, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    return torch.add(x.narrow(dim, 0, n - 2), x.narrow(dim, 2, n - 2)).add_(
        x.narrow(dim, 1, n - 2), alpha=2)


def sobel(x: torch.Tensor) -> list[torch.Tensor]:
    """Sobel derivatives of a batch along each spatial axis, on the valid region.

    The derivative along axis ``a`` is the central difference ``x[i+1] - x[i-1]`` along ``a``,
    smoothed by ``[1, 2, 1]`` along every other spatial axis (3-D Sobel in 3-D). No padding:
    the border pixels, whose stencil would leave the image, are dropped.

    Args:
        x: ``(B, *S)``, every spatial size at least 3.

    Returns:
        One ``(B, *[s - 2 for s in S])`` tensor per spatial axis, in the order of ``S``.
    """
    dims = range(1, x.ndim)
    out = []
    for a in dims:
        g = _diff(x, a)
        for d in dims:
            if d != a:
                g = _smooth(g, d)
        out.append(g)
    return out


def erode(w: torch.Tensor) -> torch.Tensor:
    """Minimum of ``w`` over each 3×3 (×3) neighbourhood, on the valid region.

    A Sobel output pixel depends on the 3×3 (×3) input pixels around it; with the eroded weights
    it counts only as much as its least-counted input, so that masked-out pixels cannot leak
    into a gradient metric.

    Args:
        w: ``(B, *S)`` weights.

    Returns:
        ``(B, *[s - 2 for s in S])``.
    """
    for d in range(1, w.ndim):
        n = w.shape[d]
        w = torch.minimum(torch.minimum(w.narrow(d, 0, n - 2), w.narrow(d, 1, n - 2)),
                          w.narrow(d, 2, n - 2))
    return w


def _window_sum(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sums of ``size`` consecutive values along ``dim`` (valid positions only).

    Built by doubling: partial sums of widths 1, 2, 4, ... are formed with one add each, and
    those named by the binary digits of ``size`` are added up, so a window of ``size`` costs
    about ``2 log2(size)`` full-array adds whatever the axis, each summing values of similar
    magnitude (no long running sums, unlike an integral image).
    """
    n_out = x.shape[dim] - size + 1
    result: torch.Tensor | None = None
    offset = 0
    partial = x  # partial[i] = sum of `width` values starting at i
    width = 1
    remaining = size
    while remaining:
        if remaining & 1:
            piece = partial.narrow(dim, offset, n_out)
            result = piece if result is None else result + piece
            offset += width
        remaining >>= 1
        if remaining:
            m = partial.shape[dim] - width
            partial = partial.narrow(dim, 0, m) + partial.narrow(dim, width, m)
            width *= 2
    if result is None:  # size == 0 is refused by the callers
        raise ValueError("window size must be positive")
    return result


def box_sum(x: torch.Tensor, size: int) -> torch.Tensor:
    """Sum over every ``size``-wide square (cubic) window that fits in the image.

    Separable, one windowed sum per spatial axis (see :func:`_window_sum`).

    Args:
        x: ``(B, *S)``, each spatial size at least ``size``.
        size: The window's side in pixels, at least 1.

    Returns:
        ``(B, *[s - size + 1 for s in S])``.
    """
    for dim in range(1, x.ndim):
        x = _window_sum(x, size, dim)
    return x
