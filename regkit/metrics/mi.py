"""Histogram-based similarities: normalised MI (``nmi``) and Mattes MI (``mattes_mi``).

Both build a soft joint histogram with B-spline Parzen windows of order 0 (box), 1 (linear) or
3 (cubic). A B-spline of order p gives weight to only p + 1 neighbouring bins per pixel, and the
window's bin weights are polynomials of degree p in the pixel's fraction past a bin. The
histogram is therefore filled from moment histograms: one ``index_add`` per product of powers
``s_f^a s_m^b`` (a ≤ p_f, b ≤ p_m) on flattened ``(batch, bin_f, bin_m)`` indices, then fixed
combinations of them shifted by each window's bin offsets. Time grows with the number of
pixels times ``(p_f + 1)(p_m + 1)``; memory holds as many ``batch × bins²`` moment
histograms. Rounding can leave cells a few float epsilons below zero where the true mass is
zero; entropies count only positive cells.

Intensity range: each image is binned between its own minimum and maximum over the counted
pixels (positive mask weight), per batch element, so both histograms always span the data.
Gradients flow through the Parzen weights and through that range.
"""

from __future__ import annotations

import itertools
import math
from typing import ClassVar, Literal

import torch

from regkit.errors import InputError
from regkit.metrics._ops import flat, relative_tolerance
from regkit.metrics.base import Metric, int_option, register

__all__ = ["NMI", "MattesMI"]

_ORDERS = {"box": 0, "linear": 1, "cubic": 3}


def _masked_range(x: torch.Tensor, w: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row min and span of ``x`` ``(Bx, N)`` over pixels with positive weight.

    Returns:
        ``lo``, ``span`` and ``degenerate``, each ``(Bx', 1)`` with Bx' the broadcast batch of
        x and w. ``degenerate`` (bool) is True where the counted values span no more than
        rounding (100 machine epsilons of their magnitude) or no pixel counts; ``span`` is 1
        there.
    """
    if w is None:
        lo = x.amin(dim=1, keepdim=True)
        hi = x.amax(dim=1, keepdim=True)
    else:
        counted = w > 0
        lo = torch.where(counted, x, float("inf")).amin(dim=1, keepdim=True)
        hi = torch.where(counted, x, float("-inf")).amax(dim=1, keepdim=True)
        empty = ~counted.any(dim=1, keepdim=True)
        lo = torch.where(empty, torch.zeros_like(lo), lo)
        hi = torch.where(empty, torch.zeros_like(hi), hi)
    span = hi - lo
    degenerate = span <= relative_tolerance(x.dtype) * torch.maximum(lo.abs(), hi.abs())
    return lo, torch.where(degenerate, torch.ones_like(span), span), degenerate


def _parzen(x: torch.Tensor, w: torch.Tensor | None, bins: int, order: int
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Soft-bin ``x`` ``(Bx, N)`` into ``bins`` bins with a B-spline window of ``order``.

    Bin centres are the integers ``0 .. bins - 1``. The counted range ``[lo, hi]`` maps
    linearly to ``[0, bins]`` for the box window (bin k holds ``[k, k + 1)``, the maximum goes
    to the last bin), to ``[0, bins - 1]`` for the linear window and to ``[1, bins - 2]`` for
    the cubic one, so that every window lies inside the histogram. Pixels outside the counted
    range (masked-out ones) are clamped to it. A degenerate (constant) image puts all of its
    weight at the first position.

    Returns:
        ``first`` (``(Bx', N)`` int32): the first of the ``order + 1`` bins each pixel touches,
        and the pixel's position within its window as ``s = u - 1/2`` (``(Bx', N)``, u in
        ``[0, 1]`` the fraction past the bin ``first + (order - 1) / 2``), whose powers weight
        the window's bins (:data:`_WINDOW_POLYNOMIALS`); None for the box window.
    """
    lo, span, degenerate = _masked_range(x, w)
    start, stop = {0: (0, bins), 1: (0, bins - 1), 3: (1, bins - 2)}[order]
    scale = torch.where(degenerate, torch.zeros_like(span), (stop - start) / span)
    # t = start + (x - lo) * scale in one fused pass; 0 <= t - start <= stop - start.
    t = torch.addcmul(start - lo * scale, x, scale).clamp(start, stop)
    # Float -> int conversion, then the clamp that keeps the whole window inside the histogram
    # (t == stop puts the window's last bin at the top); the clamp also keeps NaN input, let
    # through with check_finite=False, from indexing outside it (fatal on CUDA).
    first = torch.floor(t).to(torch.int32).clamp_(start, bins - 1 if order == 0 else stop - 1)
    if order == 0:
        return first, None
    # s = t - first - 1/2 in [-1/2, 1/2]: centred, so that the window's polynomials sum
    # moments of small values (float32 cancellation stays at rounding, see _joint_histogram).
    s = t - first.to(t.dtype) - 0.5
    return (first - 1 if order == 3 else first), s


def _centred(coefficients: list[list[float]]) -> list[list[float]]:
    """Rows of polynomial coefficients in u (``Σ c_p u^p``) re-expressed in ``s = u - 1/2``."""
    # u^p = (s + 1/2)^p = Σ_q binom(p, q) (1/2)^(p - q) s^q
    return [[sum(row[p] * math.comb(p, q) * 0.5 ** (p - q) for p in range(q, len(row)))
             for q in range(len(row))] for row in coefficients]


_WINDOW_POLYNOMIALS: dict[int, list[list[float]]] = {
    0: [[1.0]],
    # linear: bins first, first + 1 weigh 1 - u and u
    1: _centred([[1.0, -1.0], [0.0, 1.0]]),
    # cubic: bins first .. first + 3 (first + 1 the bin below the pixel) weigh the uniform
    # cubic B-spline's pieces (1 - u)^3 / 6, (4 - 6u^2 + 3u^3) / 6, (1 + 3u + 3u^2 - 3u^3) / 6
    # and u^3 / 6
    3: _centred([[1 / 6, -3 / 6, 3 / 6, -1 / 6], [4 / 6, 0.0, -1.0, 3 / 6],
                 [1 / 6, 3 / 6, 3 / 6, -3 / 6], [0.0, 0.0, 0.0, 1 / 6]]),
}
"""Per B-spline order: row k holds the coefficients of the weight of the window's k-th bin as
a polynomial in the pixel's centred fraction s (see :func:`_parzen`)."""


def _powers(s: torch.Tensor | None, order: int) -> list[torch.Tensor | None]:
    """``[1, s, s², ...]`` up to ``s^order`` (None standing for 1)."""
    out: list[torch.Tensor | None] = [None]
    if s is not None:
        out.append(s)
        for _ in range(order - 1):
            prev = out[-1]
            assert prev is not None
            out.append(prev * s)
    return out


def _joint_histogram(fixed: torch.Tensor, moving: torch.Tensor, w: torch.Tensor | None,
                     bins: int, order_f: int, order_m: int) -> torch.Tensor:
    """Soft joint histogram ``(B, bins, bins)`` (fixed bins along axis 1), unnormalised.

    Each window's bin weights are polynomials in the pixel's centred fraction s, so the
    histogram is a fixed linear combination of moment histograms ``Σ s_f^p s_m^q w`` over the
    pixels whose windows start at each pair of bins: one ``index_add`` per moment (p, q), then
    a shifted sum over the window's bins on the small ``(B, bins, bins)`` arrays. This makes
    about a third of the full-size arithmetic of forming every bin weight per pixel, and gives
    the same histogram up to rounding (s in [-1/2, 1/2] keeps the moments' cancellation at a
    few float32 epsilons of a bin's mass).

    Args:
        fixed: ``(Bf, N)``, Bf 1 or B.
        moving: ``(B, N)``.
        w: None or ``(Bw, N)`` weights, Bw 1 or B.
        bins: Bins along each axis.
        order_f: B-spline order of the fixed image's Parzen window (0, 1 or 3).
        order_m: B-spline order of the moving image's Parzen window (1 or 3).
    """
    if order_m == 0:
        raise ValueError("the moving image needs a linear or cubic window")
    batch, n = moving.shape
    first_f, s_f = _parzen(fixed, w, bins, order_f)
    first_m, s_m = _parzen(moving, w, bins, order_m)
    # int32 indices halve the index traffic; int64 only for histograms too large for them.
    itype = torch.int32 if batch * bins * bins < 2**31 else torch.int64
    offsets = torch.arange(batch, device=moving.device, dtype=itype).unsqueeze(1) * (bins * bins)
    index = ((first_f.to(itype) * bins + offsets) + first_m.to(itype)).reshape(-1)
    weight = None if w is None else w.to(moving.dtype)
    moments = []
    for a in _powers(s_f, order_f):
        # The mask weight joins the fixed side, usually one image shared by the whole batch.
        wa = weight if a is None else a if weight is None else a * weight
        for c in _powers(s_m, order_m):
            value = wa if c is None else c if wa is None else c * wa
            source = (moving.new_ones(()) if value is None else value).expand(batch, n)
            moments.append(moving.new_zeros(batch * bins * bins)
                           .index_add(0, index, source.reshape(-1)))
    # Each bin offset (k, j) of the windows gets Σ_pq poly_f[k, p] poly_m[j, q] M_pq, added at
    # that offset. Element-wise in the moments' own dtype, never a matmul: the terms largely
    # cancel, so reduced-precision matmuls (autocast, TF32) would ruin the histogram.
    hist = moving.new_zeros(batch, bins, bins)
    for k, row_f in enumerate(_WINDOW_POLYNOMIALS[order_f]):
        for j, row_m in enumerate(_WINDOW_POLYNOMIALS[order_m]):
            part: torch.Tensor | None = None
            for i, (cf, cm) in enumerate(itertools.product(row_f, row_m)):
                if cf * cm != 0.0:
                    term = moments[i] * (cf * cm)
                    part = term if part is None else part + term
            if part is not None:
                # Windows never reach past the last bin, so nothing is lost at the edges.
                hist[:, k:, j:] += part.reshape(batch, bins, bins)[:, : bins - k, : bins - j]
    return hist


def _entropy(p: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``-Σ p log p`` over ``dims`` with ``0 log 0 = 0`` and a zero gradient at ``p = 0``."""
    positive = p > 0
    logp = torch.log(torch.where(positive, p, torch.ones_like(p)))
    return -(torch.where(positive, p * logp, torch.zeros_like(p))).sum(dim=dims)


def _entropies(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                             torch.Tensor]:
    """``H(F)``, ``H(M)``, ``H(F, M)`` (nats, ``(B,)`` each) and the total histogram mass."""
    total = hist.sum(dim=(1, 2))
    safe = torch.where(total > 0, total, torch.ones_like(total))
    p = hist / safe[:, None, None]
    h_f = _entropy(p.sum(dim=2), (1,))
    h_m = _entropy(p.sum(dim=1), (1,))
    h_fm = _entropy(p, (1, 2))
    return h_f, h_m, h_fm, total


def _window(key: str, value: object) -> int:
    if value not in ("linear", "cubic"):
        raise InputError(f"must be 'linear' or 'cubic', got {value!r}", key=key)
    return _ORDERS[str(value)]


@register("nmi")
class NMI(Metric):
    """Normalised mutual information ``(H(F) + H(M)) / H(F, M)`` (Studholme et al. 1999).

    Entropies come from a soft joint histogram of ``bins × bins`` bins, filled with a linear
    (triangular, the default) or cubic B-spline Parzen window on both images, each binned between
    its own counted minimum and maximum (see the module docstring); mask weights weight the
    pixels. In ``[1, 2]``: 1 for independent images, 2 for images that determine each other
    exactly. Invariant to any bijective intensity remapping that keeps each image's binning
    (e.g. permuting the grey levels of a piecewise-constant image whose levels sit on bin
    centres). Identical images give exactly 2 when every value sits on a bin centre (e.g. a
    piecewise-constant image with equally spaced levels and ``bins - 1`` a multiple of the
    number of gaps); otherwise the Parzen window blurs the diagonal and identical images score
    noticeably below 2 (about 1.6 for uniform noise with the defaults), while in practice still
    scoring best. Higher is better.

    Degenerate cases (finite values):
        * a zero-variance (constant) image: 1 (it shares no information), also when both are;
        * an empty mask: 1 (``empty_score``).

    Args:
        bins: Bins per image, at least 2 (4 for the cubic window).
        window: ``"linear"`` or ``"cubic"`` B-spline Parzen window.
        check_finite: Check the inputs for NaN/inf on every call (see :class:`Metric`).
    """

    higher_is_better: ClassVar[bool] = True
    empty_score: ClassVar[float] = 1.0

    def __init__(self, *, bins: int = 32, window: Literal["linear", "cubic"] = "linear",
                 check_finite: bool = True) -> None:
        super().__init__(check_finite=check_finite)
        self.window = window
        self._order = _window("window", window)
        self.bins = int_option("bins", bins, 4 if self._order == 3 else 2)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor,
                weight: torch.Tensor | None) -> torch.Tensor:
        """``(B,)`` NMI of checked inputs (see :meth:`Metric.forward`)."""
        w = None if weight is None else flat(weight)
        hist = _joint_histogram(flat(fixed), flat(moving), w, self.bins, self._order,
                                self._order)
        h_f, h_m, h_fm, _ = _entropies(hist)
        # H(F, M) >= max(H(F), H(M)), so H(F, M) = 0 only when both marginals are single bins.
        ok = h_fm > relative_tolerance(h_fm.dtype)
        score = (h_f + h_m) / torch.where(ok, h_fm, torch.ones_like(h_fm))
        return torch.where(ok, score, torch.full_like(score, self.empty_score))


@register("mattes_mi")
class MattesMI(Metric):
    """Mattes mutual information ``Σ p(f, m) log(p(f, m) / (p(f) p(m)))`` (nats).

    As in Mattes et al. (IEEE TMI 2003): the joint histogram uses a zero-order (box) Parzen
    window for the fixed image, whose bins are then fixed and need no derivative, and a cubic
    B-spline window for the moving image, which makes the score twice continuously
    differentiable in the moving intensities. Each image is binned between its own counted
    minimum and maximum per batch element; mask weights weight the pixels. ``MI >= 0``; 0 for
    independent images; invariant to bijective intensity remappings that keep the binning (see
    :class:`NMI`). Higher is better (the loss is ``-MI``).

    With ``samples``, only that many pixels, drawn at random without replacement from the whole
    image with a generator seeded by ``seed``, are used; the draw depends only on the image size,
    ``samples`` and ``seed``, so every batch element and every call uses the same pixels and the
    score is a deterministic function (sampled pixels outside the mask count 0).

    Degenerate cases (finite values):
        * a zero-variance (constant) image: 0;
        * an empty mask (or no counted pixel among the samples): 0 (``empty_score``).

    Args:
        bins: Bins per image, at least 4 (the cubic window spans 4).
        samples: Number of pixels to use, at least 1; None uses all of them.
        seed: Seed of the pixel draw.
        check_finite: Check the inputs for NaN/inf on every call (see :class:`Metric`).
    """

    higher_is_better: ClassVar[bool] = True
    empty_score: ClassVar[float] = 0.0

    def __init__(self, *, bins: int = 50, samples: int | None = None, seed: int = 0,
                 check_finite: bool = True) -> None:
        super().__init__(check_finite=check_finite)
        self.bins = int_option("bins", bins, 4)
        self.samples = None if samples is None else int_option("samples", samples, 1)
        self.seed = int_option("seed", seed, 0)
        self._draws: dict[tuple[int, str], torch.Tensor] = {}

    def _sample_index(self, n: int, device: torch.device) -> torch.Tensor | None:
        if self.samples is None or self.samples >= n:
            return None
        key = (n, str(device))
        index = self._draws.get(key)
        if index is None:
            gen = torch.Generator().manual_seed(self.seed)
            index = torch.randperm(n, generator=gen)[: self.samples].sort().values.to(device)
            self._draws[key] = index
        return index

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor,
                weight: torch.Tensor | None) -> torch.Tensor:
        """``(B,)`` Mattes MI of checked inputs (see :meth:`Metric.forward`)."""
        f, m = flat(fixed), flat(moving)
        w = None if weight is None else flat(weight)
        index = self._sample_index(m.shape[1], m.device)
        if index is not None:
            f, m = f[:, index], m[:, index]
            w = None if w is None else w[:, index]
        hist = _joint_histogram(f, m, w, self.bins, _ORDERS["box"], _ORDERS["cubic"])
        h_f, h_m, h_fm, total = _entropies(hist)
        score = h_f + h_m - h_fm
        return torch.where(total > 0, score, torch.full_like(score, self.empty_score))
