"""Histogram-based similarities: normalised MI (``nmi``) and Mattes MI (``mattes_mi``).

Both build a soft joint histogram with B-spline Parzen windows of order 0 (box), 1 (linear) or
3 (cubic). A B-spline of order p gives weight to only p + 1 neighbouring bins per pixel, so the
histogram is filled with index arithmetic and one ``index_add`` per pair of bin offsets on
flattened ``(batch, bin_f, bin_m)`` indices: memory and time grow with the number of pixels
times ``(p_f + 1)(p_m + 1)``, never with the number of bins.

Intensity range: each image is binned between its own minimum and maximum over the counted
pixels (positive mask weight), per batch element, so both histograms always span the data.
Gradients flow through the Parzen weights and through that range.
"""

from __future__ import annotations

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
            ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Soft-bin ``x`` ``(Bx, N)`` into ``bins`` bins with a B-spline window of ``order``.

    Bin centres are the integers ``0 .. bins - 1``. The counted range ``[lo, hi]`` maps
    linearly to ``[0, bins]`` for the box window (bin k holds ``[k, k + 1)``, the maximum goes
    to the last bin), to ``[0, bins - 1]`` for the linear window and to ``[1, bins - 2]`` for
    the cubic one, so that every window lies inside the histogram. Pixels outside the counted
    range (masked-out ones) are clamped to it. A degenerate (constant) image puts all of its
    weight at the first position.

    Returns:
        ``first`` (``(Bx', N)`` int32): the first bin each pixel touches, and ``order + 1``
        weights ``(Bx', N)`` of bins ``first``, ``first + 1``, ... (each pixel's weights sum to
        1); the box window's single weight is None, meaning 1.
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
        return first, [None]
    u = t - first  # in [0, 1]
    if order == 1:
        return first, [1.0 - u, u]
    # Uniform cubic B-spline weights of bins first - 1 .. first + 2 at fraction u.
    v = 1.0 - u
    u2, v2 = u * u, v * v
    weights: list[torch.Tensor | None] = [
        v2 * v * (1.0 / 6.0),
        torch.addcmul(torch.full_like(u, 2.0 / 3.0), u2, 2.0 - u, value=-0.5),
        torch.addcmul(torch.full_like(v, 2.0 / 3.0), v2, 2.0 - v, value=-0.5),
        u2 * u * (1.0 / 6.0),
    ]
    return first - 1, weights


def _joint_histogram(fixed: torch.Tensor, moving: torch.Tensor, w: torch.Tensor | None,
                     bins: int, order_f: int, order_m: int) -> torch.Tensor:
    """Soft joint histogram ``(B, bins, bins)`` (fixed bins along axis 1), unnormalised.

    Args:
        fixed: ``(Bf, N)``, Bf 1 or B.
        moving: ``(B, N)``.
        w: None or ``(Bw, N)`` weights, Bw 1 or B.
        bins: Bins along each axis.
        order_f: B-spline order of the fixed image's Parzen window (0, 1 or 3).
        order_m: B-spline order of the moving image's Parzen window (1 or 3).
    """
    batch, n = moving.shape
    first_f, wts_f = _parzen(fixed, w, bins, order_f)
    first_m, wts_m = _parzen(moving, w, bins, order_m)
    # int32 indices halve the index traffic; int64 only for histograms too large for them.
    itype = torch.int32 if batch * bins * bins < 2**31 else torch.int64
    offsets = torch.arange(batch, device=moving.device, dtype=itype).unsqueeze(1) * (bins * bins)
    base = ((first_f.to(itype) * bins + offsets) + first_m.to(itype)).reshape(-1)
    hist = moving.new_zeros(batch * bins * bins)
    for k, a in enumerate(wts_f):
        # The mask weight joins the fixed side, usually one image shared by the whole batch.
        wa = w if a is None else a if w is None else a * w
        for j, c in enumerate(wts_m):
            if c is None:
                raise ValueError("the moving image needs a linear or cubic window")
            value = c if wa is None else c * wa
            shift = k * bins + j
            index = base if shift == 0 else base + shift
            hist = hist.index_add(0, index, value.expand(batch, n).reshape(-1))
    return hist.reshape(batch, bins, bins)


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
