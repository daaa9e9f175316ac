"""Image helpers of the 2D–3D registration.

Views cropped to the bones, radiographs and their weights binned to a level's detector, the Gaussian
smoothing applied to radiographs and DRRs alike, the bone weight fitted to each radiograph, and
(with two or more views) each radiograph's intensities matched to the DRR's: an increasing map
and the removal of a smooth veil (scatter).

Used by :mod:`regkit.registration.radiograph_registration`; all work on ``(H, W)`` numpy images
or ``(B, H, W)`` torch batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from regkit.geometry.camera import Camera
from regkit.utils.blocks import block_reduce
from regkit.volume import Volume

__all__ = [
    "BONE_WEIGHT_RANGE",
    "DETECTOR_BLUR_GRID_PX",
    "IDENTITY_MAP",
    "IntensityMap",
    "apply_intensity_map",
    "bin_image",
    "bin_weight",
    "bone_rois",
    "bone_weight_ratio",
    "detector_blur",
    "detector_blur_part",
    "detector_factor",
    "fit_bone_weight",
    "fit_intensity_map",
    "joint_bone_weight_ratio",
    "match_intensities",
    "smooth",
]

DETECTOR_BLUR_GRID_PX = tuple(0.125 * i for i in range(25))
"""The detector blurs (σ, detector pixels) tried when the blur is estimated at a level's start."""


def bone_rois(mu: Volume, bones: tuple[int, ...], cams: list[Camera],
              images: list[NDArray[np.float32]], weights: list[NDArray[np.float32] | None],
              margin_mm: float) -> tuple[list[Camera], list[NDArray[np.float32]],
                                         list[NDArray[np.float32] | None]]:
    """Each view cropped to the bones' projected box at the initial pose, widened by ``margin_mm``.

    The margin is at the bones' depth on each side: the pyramid's pixels then go to the bone.
    """
    assert mu.labels is not None
    index = np.argwhere(np.isin(mu.labels, bones))
    lo, hi = index.min(axis=0) - 0.5, index.max(axis=0) + 0.5
    corners = np.array([[a[0], b[1], c[2]] for a in (lo, hi) for b in (lo, hi) for c in (lo, hi)],
                       dtype=np.float64)
    world = mu.index_to_world(corners)
    centroid = mu.index_to_world(index.mean(axis=0))
    out_c, out_i, out_w = [], [], []
    for cam, img, w in zip(cams, images, weights, strict=True):
        uv = cam.project(world)
        depth = float((cam.camera_from_world @ np.append(centroid, 1.0))[2])
        if not np.isfinite(uv).all() or depth <= 0:
            out_c.append(cam)
            out_i.append(img)
            out_w.append(w)
            continue
        margin = margin_mm * np.array(cam.focal_lengths) / depth   # pixels (u, v)
        u0, v0 = np.floor(uv.min(axis=0) - margin).astype(int)
        u1, v1 = np.ceil(uv.max(axis=0) + margin).astype(int)
        u0, v0 = max(0, int(u0)), max(0, int(v0))
        u1, v1 = min(cam.width, int(u1)), min(cam.height, int(v1))
        if u1 - u0 < 8 or v1 - v0 < 8:   # the bone is (nearly) off this detector: keep it all
            u0, v0, u1, v1 = 0, 0, cam.width, cam.height
        out_c.append(cam.crop(u0, v0, u1 - u0, v1 - v0))
        out_i.append(np.ascontiguousarray(img[v0:v1, u0:u1]))
        out_w.append(None if w is None else np.ascontiguousarray(w[v0:v1, u0:u1]))
    return out_c, out_i, out_w


def bin_image(image: NDArray[np.float32], factor: int,
              weight: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """Mean over ``factor × factor`` pixel blocks (a remainder dropped, as Camera.downsample).

    With ``weight``, the weighted mean (a block with no weight keeps its plain mean).
    """
    if factor == 1:
        return image
    blocks = (factor, factor)
    plain = block_reduce(image, blocks, "mean", np.float64)
    if weight is None:
        return plain.astype(np.float32)
    w = weight.astype(np.float64)
    total = block_reduce(w, blocks, "sum")
    num = block_reduce(image * w, blocks, "sum")
    return np.where(total > 0, num / np.maximum(total, 1e-12), plain).astype(np.float32)


def bin_weight(weight: NDArray[np.float32], factor: int) -> NDArray[np.float32]:
    """A block's weight is its least pixel weight: a block half under a collimator is out."""
    if factor == 1:
        return weight
    return block_reduce(weight, (factor, factor), "min").astype(np.float32)


def smooth(images: torch.Tensor, sigma: float, weight: torch.Tensor | None = None
           ) -> torch.Tensor:
    """``(B, H, W)`` images blurred by a Gaussian of ``sigma`` pixels; differentiable.

    Separable, edges replicated; ``sigma = 0`` returns them as they are.

    With ``weight`` (B, H, W), a normalised convolution ``G * (w·x) / G * w``: pixels of zero
    weight (a collimator's border) do not bleed into their neighbours. The radiograph and the
    DRRs must be smoothed with the same weights: smoothing only the radiograph this way made
    masked registrations fail. See docs/decisions/registration-2d3d-depth-bias.md.
    """
    if sigma <= 0:
        return images
    if weight is not None:
        num = smooth(torch.where(weight > 0, images, 0.0) * weight, sigma)
        den = smooth(weight, sigma)
        return torch.where(den > 1e-6, num / den.clamp(min=1e-6), images)
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = images[:, None]
    out = torch.nn.functional.pad(out, (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1))
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[:, 0]


# Bounds of the fitted bone weight (1: the CT's own HU-to-μ mapping).
BONE_WEIGHT_RANGE = (0.25, 5.0)


def fit_bone_weight(fixed: torch.Tensor, drr: torch.Tensor, bone: torch.Tensor,
                    weight: torch.Tensor | None) -> torch.Tensor:
    """The DRR with its bone part re-weighted to match the radiograph's edges best.

    ``drr`` is ``S + B`` (soft tissue and ``bone`` = B, the CT's μ above ``bone_threshold_hu``
    of :class:`~regkit.registration.radiograph_registration.Register2D3DOptions`); the
    radiograph's Sobel derivatives are fitted by those of ``p·drr + q·B`` in weighted least
    squares over both axes (closed form, per image), and ``drr + (q/p)·B`` returned: bone then
    weighs ``w = 1 + q/p`` against soft tissue, clamped to :data:`BONE_WEIGHT_RANGE`. A
    radiograph made with another HU-to-μ mapping or spectrum than the renderer's (bone weighing
    3.6× water per mm under a 70 kVp beam, against 2.5× in the DRR) otherwise moves a gradient
    metric's optimum, mostly along the view. Differentiable; ``(B, H, W)`` in and out. See
    docs/decisions/registration-2d3d-bones.md.
    """
    ratio = bone_weight_ratio(fixed, drr, bone, weight)
    return drr + ratio.to(drr.dtype)[:, None, None] * bone


def bone_weight_ratio(fixed: torch.Tensor, drr: torch.Tensor, bone: torch.Tensor,
                      weight: torch.Tensor | None) -> torch.Tensor:
    """``q/p`` of :func:`fit_bone_weight`, one per image: ``(B,)`` float64."""
    return _ratio(*_bone_normal_equations(fixed, drr, bone, weight))


def joint_bone_weight_ratio(parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor | None]]) -> float:
    """One ``q/p`` for every image of ``parts`` together: the weight of one CT's bone.

    ``parts``: ``(fixed, drr, bone, weight)`` batches as :func:`fit_bone_weight` takes them,
    of any sizes (views of several detectors). Each image keeps its own scale ``p`` (views
    differ in exposure and detector gain); the ratio ``r`` maximises the sum over images of
    the squared weighted correlation between the radiograph's Sobel derivatives and those of
    ``drr + r·bone`` (an image anti-correlated there counts negatively), over the clamped
    range of :data:`BONE_WEIGHT_RANGE`. For one image that is :func:`bone_weight_ratio`'s
    closed form wherever that one's scale ``p`` is positive (where it is not, the closed form
    gives 0 and this fit the range's lower end). 0 where the images do not fix it: no bone
    gradient, or a gain that does not change with ``r``.
    """
    lo, hi = BONE_WEIGHT_RANGE
    terms = []
    for fixed, drr, bone, weight in parts:
        gram, rhs, energy = _bone_normal_equations(fixed, drr, bone, weight, energy=True)
        terms.append(torch.cat([gram.flatten(1), rhs, energy[:, None]], dim=1))
    t = torch.cat(terms).to(torch.float64)                         # (N, 4 + 2 + 1)
    dd, db, bb, fd, fb, ff = t[:, 0], t[:, 1], t[:, 3], t[:, 4], t[:, 5], t[:, 6]
    ok = (dd > 0) & (ff > 0)
    if not ok.any():
        return 0.0
    dd, db, bb, fd, fb, ff = (x[ok] for x in (dd, db, bb, fd, fb, ff))

    def gain(r: torch.Tensor) -> torch.Tensor:   # Σ signed squared correlations, (R,)
        num = fd[None] + r[:, None] * fb[None]
        den = (dd[None] + 2 * r[:, None] * db[None] + r[:, None] ** 2 * bb[None]) * ff[None]
        return (num * num.abs() / den.clamp_min(1e-300)).sum(dim=1)

    grid = torch.linspace(lo - 1.0, hi - 1.0, 2049, dtype=torch.float64)
    values = gain(grid)
    spread = float(values.max() - values.min())
    if float(bb.sum()) <= 1e-12 * float(dd.sum()) \
            or spread <= 1e-9 * max(float(values.abs().max()), 1e-300):
        return 0.0   # nothing to fit: keep the CT's own weight
    best = int(torch.argmax(values))
    a = grid[max(best - 1, 0)]
    b = grid[min(best + 1, grid.numel() - 1)]
    for _ in range(60):   # golden section inside the best grid cell's neighbours
        c1, c2 = b - 0.618034 * (b - a), a + 0.618034 * (b - a)
        g1, g2 = gain(torch.stack([c1, c2]))
        if g1 >= g2:
            b = c2
        else:
            a = c1
    return float(0.5 * (a + b))


def _bone_normal_equations(fixed: torch.Tensor, drr: torch.Tensor, bone: torch.Tensor,
                           weight: torch.Tensor | None, *, energy: bool = False) -> Any:
    """``(B, 2, 2)`` and ``(B, 2)``: the least squares of ∇fixed ≈ p·∇drr + q·∇bone.

    With ``energy``, also ``(B,)``: the weighted sum of ∇fixed's squares.
    """
    from regkit.metrics._ops import erode, sobel

    bases = [drr, bone]
    grads = [sobel(x) for x in bases]
    gf = sobel(fixed)
    w = None if weight is None else erode(weight)   # as the gradient metrics weigh pixels

    def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        total = sum((x * y if w is None else x * y * w) for x, y in zip(a, b, strict=True))
        assert isinstance(total, torch.Tensor)
        return total.flatten(1).sum(dim=1).to(torch.float64)

    k = len(bases)
    gram = torch.stack([torch.stack([dot(grads[i], grads[j]) for j in range(k)], dim=-1)
                        for i in range(k)], dim=-2)
    rhs = torch.stack([dot(grads[i], gf) for i in range(k)], dim=-1)
    if energy:
        return gram, rhs, dot(gf, gf)
    return gram, rhs


def _ratio(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``q/p`` of the normal equations, clamped so that ``1 + q/p`` is in the weight range."""
    k = gram.shape[-1]
    scale = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(1e-30).sqrt()
    norm = gram / (scale[:, :, None] * scale[:, None, :]) \
        + 1e-9 * torch.eye(k, dtype=gram.dtype)
    coef = torch.linalg.solve(norm, (rhs / scale)[..., None])[..., 0] / scale
    p = coef[:, 0]
    ok = torch.isfinite(coef).all(dim=1) & (p > 0)
    p = torch.where(ok, p, torch.ones_like(p))
    lo, hi = BONE_WEIGHT_RANGE
    return torch.where(ok, coef[:, 1] / p, torch.zeros_like(p)).clamp(lo - 1.0, hi - 1.0)


def detector_factor(cam: Camera, max_pixels: int) -> int:
    """The least whole binning factor that leaves ``cam``'s detector at most ``max_pixels`` pixels.

    It never leaves fewer than 3 pixels on the detector's shorter side.
    """
    f = 1
    while (cam.width // f) * (cam.height // f) > max_pixels and min(cam.width, cam.height) // (
            f + 1) >= 3:
        f += 1
    return f


@dataclass(frozen=True)
class IntensityMap:
    """An increasing map of line integrals: a polynomial on ``[lo, hi]``, linear outside.

    Attributes:
        coef: Coefficients, lowest power first; increasing on ``[lo, hi]``.
        lo, hi: The range it was fitted on (infinite for :data:`IDENTITY_MAP`); beyond it, the
            line through the end value with the end slope (> 0), so the map increases
            everywhere and stays finite on pixels far outside the fit (a collimator's zero,
            masked out but still mapped).
    """

    coef: tuple[float, ...]
    lo: float
    hi: float

    def slope(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        c = self.coef
        return np.asarray(sum(k * c[k] * x ** (k - 1) for k in range(1, len(c))) + 0.0 * x)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float64)
        inside = x.clamp(self.lo, self.hi)
        y = torch.zeros_like(x)
        for c in reversed(self.coef):   # Horner
            y = y * inside + c
        if math.isfinite(self.lo) and math.isfinite(self.hi):
            ends = self.slope(np.array([self.lo, self.hi]))
            y = y + torch.where(x < self.lo, float(ends[0]) * (x - self.lo),
                                float(ends[1]) * (x - self.hi).clamp_min(0.0))
        return y.to(images.dtype)

    def to_json(self) -> dict[str, Any]:
        return {"coef": [round(c, 6) for c in self.coef], "range": [round(self.lo, 4),
                                                                    round(self.hi, 4)]}


IDENTITY_MAP = IntensityMap((0.0, 1.0), -math.inf, math.inf)


def fit_intensity_map(fixed: torch.Tensor, drr: torch.Tensor, weight: torch.Tensor | None,
                      degree: int = 3) -> list[IntensityMap]:
    """Per image, the increasing map ``h`` with ``h(fixed) ≈ drr`` (:class:`IntensityMap`).

    Weighted least squares over the weighted pixels, of degree ``degree`` or, where that
    polynomial is not increasing over the range of those pixels, the highest lower degree that
    is (degree 1 is when the correlation is positive; otherwise the identity). Outside that
    range the map goes on linearly. A radiograph's line integrals are a concave, not linear,
    function of the CT's (beam hardening, scatter); mapped through ``h`` they weigh edges in
    thick and thin parts as the DRR does. See docs/decisions/registration-2d3d-depth-bias.md.
    """
    out: list[IntensityMap] = []
    for b in range(fixed.shape[0]):
        x = fixed[b].detach().to(torch.float64).flatten().numpy()
        y = drr[b].detach().to(torch.float64).flatten().numpy()
        w = np.ones_like(x) if weight is None else \
            weight[b].detach().to(torch.float64).flatten().numpy()
        keep = (w > 0) & np.isfinite(x) & np.isfinite(y)
        x, y, w = x[keep], y[keep], w[keep]
        found = IDENTITY_MAP
        if x.size > 4 * (degree + 1) and np.ptp(x) > 0:
            lo, hi = float(x.min()), float(x.max())
            grid = np.linspace(lo, hi, 65)
            sw = np.sqrt(w)
            for d in range(degree, 0, -1):
                powers = np.stack([x ** k for k in range(d + 1)], axis=1)
                c, *_ = np.linalg.lstsq(powers * sw[:, None], y * sw, rcond=None)
                candidate = IntensityMap(tuple(float(a) for a in c), lo, hi)
                if np.all(np.isfinite(c)) and np.all(candidate.slope(grid) > 0):
                    found = candidate
                    break
        out.append(found)
    return out


def apply_intensity_map(images: torch.Tensor, maps: list[IntensityMap]) -> torch.Tensor:
    """``(B, H, W)`` images mapped pixel-wise, each by its own :class:`IntensityMap`."""
    return torch.stack([m(images[b]) for b, m in enumerate(maps)])


def _transmitted(drr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, e^{−(p − low)})`` of ``(B, H, W)`` line integrals ``p``, ``low`` each image's least.

    Float32; relative to each image's least value, so that large line integrals do not underflow.
    """
    p = drr.to(torch.float32)
    low = p.flatten(1).amin(dim=1).detach()[:, None, None]
    return low, torch.exp(-(p - low))


def detector_blur(drr: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(B, H, W)`` line integrals blurred as a detector blurs them: in the transmitted domain.

    ``−log(G_σ * e^{−p})``, with ``G_σ`` a Gaussian of ``sigma`` pixels (:func:`smooth`, edges
    replicated); differentiable; ``sigma = 0`` returns ``drr`` as it is. A detector (and the focal
    spot) blurs the transmitted intensity, so an edge moves towards its brighter side; blurring
    the line integrals instead is about four times weaker per px² near a body's outline, and a
    gradient metric reads the difference as a change of magnification, i.e. of depth (see
    docs/decisions/registration-2d3d-depth-bias.md). The whole detector is blurred, before any
    mask: a mask says which pixels count, not what the detector saw.
    """
    if sigma <= 0:
        return drr
    low, transmitted = _transmitted(drr)
    return low - torch.log(smooth(transmitted, sigma).clamp(min=1e-30))


def detector_blur_part(drr: torch.Tensor, part: torch.Tensor, sigma: float) -> torch.Tensor:
    """How :func:`detector_blur` of ``drr + r·part`` changes with ``r`` at ``r = 0``.

    ``G_σ * (e^{−p} · part) / G_σ * e^{−p}``: the part of a DRR (its bone) blurred as it sits in
    the whole, so that ``detector_blur(drr) + r · detector_blur_part(drr, part)`` is the blurred
    ``drr + r·part`` to first order in ``r`` (the blur is not additive). ``sigma = 0`` returns
    ``part``.
    """
    if sigma <= 0:
        return part
    _, transmitted = _transmitted(drr)
    return smooth(transmitted * part.to(torch.float32), sigma) \
        / smooth(transmitted, sigma).clamp(min=1e-30)


#: Line integrals spanning more than this (e^{-12} ≈ 6·10⁻⁶ of the open beam, below what a
#: detector records) are not a physical radiograph's: its scatter is then estimated in the
#: transmitted domain of the radiograph mapped to the DRR's intensities instead.
PHYSICAL_RANGE = 12.0
#: Attenuation rates, relative to the DRR's line integrals, of the exponentials whose
#: non-negative sum models a radiograph's primary transmission (a spectrum's energies).
PRIMARY_RATES = (0.5, 1.0, 1.5, 2.0, 3.0)
#: The scatter kernel's σ tried, as multiples of the one asked for: the one whose removal,
#: mapped, agrees best with the DRR (:func:`gradient_agreement`) is kept for all the images
#: of one :func:`match_intensities` call.
SCATTER_WIDTHS = (1.0, 1.5, 2.0, 2.5, 3.0)
#: The scatter fractions searched: scatter-to-primary ratios of a lateral chest without a grid.
SCATTER_FRACTIONS = (0.0, 2.0)


def scatter_estimate(log_image: torch.Tensor, drr: torch.Tensor, weight: torch.Tensor | None,
                     sigma: float, low: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The scatter in radiographs' transmitted domain, fitted jointly with their primary.

    Per image, ``t = e^{−(x − low)}`` (``x``: ``log_image``, line integrals) is modelled as a
    primary ``T = Σ_j c_j e^{−a_j (d − d_min)}`` (``d``: the DRR; ``a_j``:
    :data:`PRIMARY_RATES`; ``c_j ≥ 0``, so ``T`` falls as ``d`` grows, as a polychromatic
    beam's does) plus scatter ``k · G_σ * T``, a fraction ``k`` of the primary blurred by a
    Gaussian of ``sigma`` pixels, as a scatter kernel spreads it. Least squares over the
    weighted pixels: ``c`` by non-negative least squares for each ``k``, ``k`` searched in
    :data:`SCATTER_FRACTIONS`. Two numbers a view and the primary's shape: a misaligned
    starting pose barely moves them, where a free smooth veil (the Gaussian of the residual)
    takes the misalignment's edges up. See docs/decisions/registration-2d3d-depth-bias.md.

    Args:
        log_image: ``(B, H, W)`` radiographs (line integrals), smoothed as the DRRs are.
        drr: ``(B, H, W)`` DRRs at the level's starting pose, smoothed.
        weight: ``(B, H, W)`` pixel weights or None.
        sigma: σ of the scatter kernel, pixels (> 0).
        low: ``(B,)`` each image's reference line integral (its least, so that ``t`` does not
            overflow).

    Returns:
        ``(B, H, W)`` scatter ``k · G_σ * T`` in units of ``e^{−(x − low)}``, and each
        image's ``k``.
    """
    out, fractions = [], []
    for b in range(log_image.shape[0]):
        d = drr[b].detach().to(torch.float64)
        x = log_image[b].detach().to(torch.float64)
        w = torch.ones_like(d) if weight is None else weight[b].detach().to(torch.float64)
        keep = (w > 0) & torch.isfinite(d) & torch.isfinite(x)
        if int(keep.sum()) <= 2 * len(PRIMARY_RATES) \
                or float(d[keep].max() - d[keep].min()) <= 1e-6:   # no structure to fit
            out.append(torch.zeros_like(log_image[b]))
            fractions.append(0.0)
            continue
        d = torch.where(keep, d - d[keep].min(), 0.0)
        w = torch.where(keep, w, 0.0)
        phi = torch.stack([torch.exp(-a * d) for a in PRIMARY_RATES])
        # the kernel in float32 (float64 convolutions are ~10x slower on CPU); fitted in float64
        gphi = smooth(phi.float(), sigma, w.float().expand_as(phi)).double()
        t = torch.where(keep, torch.exp(-(x - float(low[b]))), 0.0)
        p_ = (phi * w.sqrt()).flatten(1)[:, keep.flatten()].numpy()
        g_ = (gphi * w.sqrt()).flatten(1)[:, keep.flatten()].numpy()
        y = (t * w.sqrt()).flatten()[keep.flatten()].numpy()
        k, c = _fit_scatter_fraction(p_, g_, y)
        primary = torch.einsum("j,jhw->hw", torch.from_numpy(c), phi)
        spread = smooth(primary[None].float(), sigma, w[None].float())[0].double()
        out.append((k * spread).to(log_image.dtype))
        fractions.append(k)
    return torch.stack(out), fractions


def _fit_scatter_fraction(p_: NDArray[np.float64], g_: NDArray[np.float64],
                          y: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
    """``k`` and ``c ≥ 0`` minimising ``‖(P + k G)ᵀ c − y‖`` (``P``, ``G``: ``(J, N)``).

    For each ``k``, the normal equations as a triangular non-negative least squares of size
    ``J``; ``k`` on a grid over :data:`SCATTER_FRACTIONS` (0 and 40 geometric steps), then
    refined between the best point's neighbours.
    """
    from scipy.optimize import minimize_scalar, nnls

    pp, pg, gg = p_ @ p_.T, p_ @ g_.T, g_ @ g_.T
    py, gy, yy = p_ @ y, g_ @ y, float(y @ y)
    eps = float(np.trace(pp)) * 1e-12

    def solve(k: float) -> tuple[NDArray[np.float64], float]:
        # with M = (P + kG)(P + kG)ᵀ + εI = LLᵀ: ‖Lᵀc − L⁻¹v‖² = ‖(P + kG)ᵀc − y‖² + ε‖c‖²
        # − ‖y‖² + ‖L⁻¹v‖²; the ridge's own term is taken off, or it alone would pick k
        # where k cannot be told (it shrinks c as k grows)
        chol = np.linalg.cholesky(pp + k * (pg + pg.T) + k * k * gg + eps * np.eye(len(py)))
        rhs = np.linalg.solve(chol, py + k * gy)
        c, rnorm = nnls(chol.T, rhs)
        return c, yy - float(rhs @ rhs) + rnorm ** 2 - eps * float(c @ c)

    grid = np.concatenate([[SCATTER_FRACTIONS[0]],
                           np.geomspace(0.005, SCATTER_FRACTIONS[1], 40)])
    i = int(np.argmin([solve(float(k))[1] for k in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    k = float(minimize_scalar(lambda v: solve(float(v))[1], bounds=(lo, hi),
                              method="bounded", options={"xatol": 1e-5}).x)
    return k, solve(k)[0]


def gradient_agreement(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None) -> float:
    """The mean over images of the correlation of ``a``'s and ``b``'s gradients.

    Both components of each ``(B, H, W)`` image's central-difference gradient, over the
    pixels of positive ``weight`` whose four neighbours have it too (all pixels without),
    correlated as one vector (Pearson); an image with no such pixel adds 0.
    """
    ga, gb = torch.gradient(a, dim=(1, 2)), torch.gradient(b, dim=(1, 2))
    ok = torch.ones_like(a, dtype=torch.bool) if weight is None else weight > 0
    # a central difference reads both neighbours: both must count (the image's edge repeats)
    pad = torch.nn.functional.pad(ok[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0] > 0
    ok = ok & pad[:, :-2, 1:-1] & pad[:, 2:, 1:-1] & pad[:, 1:-1, :-2] & pad[:, 1:-1, 2:]
    total = 0.0
    for i in range(a.shape[0]):
        x = torch.cat([g[i][ok[i]] for g in ga]).double()
        y = torch.cat([g[i][ok[i]] for g in gb]).double()
        x, y = x - x.mean(), y - y.mean()
        total += float((x * y).sum() / ((x * x).sum() * (y * y).sum()).sqrt().clamp(min=1e-30))
    return total / a.shape[0]


def match_intensities(raw: torch.Tensor, drr: torch.Tensor, weight: torch.Tensor | None,
                      degree: int, smooth_px: float, scatter_px: float = 0.0,
                      ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``(B, H, W)`` radiographs mapped to the DRRs' intensities, and what was fitted.

    1. With ``scatter_px > 0``: the radiographs' scatter is estimated
       (:func:`scatter_estimate`; radiograph and DRR smoothed by ``smooth_px``) and removed
       in their transmitted domain, ``x' = −log(e^{−x} − s)`` (never below a tenth of
       ``e^{−x}``; pixels of zero weight keep their value), for each kernel σ of
       :data:`SCATTER_WIDTHS` × ``scatter_px``; the σ whose result, mapped as in step 2,
       agrees best with the DRR's gradients (:func:`gradient_agreement`, averaged over the
       images) is kept for all the images given (a registration's views of one detector
       size). The residual of the scatter fit itself chose too narrow a kernel for a broad
       scatter (σ 40 px of 256: 0.12 of the side chosen, 0.9 mm of mTRE against 0.37 at
       0.15). Scatter adds to the transmitted image, where it is smooth. Where a radiograph's line
       integrals span more than :data:`PHYSICAL_RANGE` (not a physical radiograph's), both
       are done after the map of step 2, in its transmitted domain. Scatter flattens a
       radiograph's thick parts (their primary beam is weakest), which a gradient metric
       otherwise reads as a pose: the biplane benchmark's 0.4° rotation.
    2. ``h`` (:func:`fit_intensity_map`, degree ``degree``) fitted between the radiograph and
       the DRR, both smoothed by ``smooth_px`` (as the metric sees them), and applied.

    The fits are made at the DRR's pose: the further it is from the answer, the more of the
    misalignment they take up (see docs/decisions/registration-2d3d-depth-bias.md).

    Args:
        raw: The binned radiographs, not smoothed (line integrals).
        drr: The DRRs at the level's starting pose, not smoothed.
        weight: ``(B, H, W)`` pixel weights or None.
        degree: Highest degree of ``h`` (>= 1).
        smooth_px: The metric's smoothing σ, pixels.
        scatter_px: σ of the scatter estimate, pixels; 0: no scatter removal.

    Returns:
        The mapped radiographs (not smoothed) and, per image, ``{"map": ...}``
        (:meth:`IntensityMap.to_json`: coefficients, lowest power first, and the fitted range)
        plus, with scatter removal, ``"scatter_fraction"`` (``k`` of :func:`scatter_estimate`),
        ``"scatter_sigma_px"`` (the kernel's σ kept),
        ``"veil_fraction"`` (the median of the removed scatter over the transmitted image,
        over the weighted pixels) and ``"scatter_domain"`` (``"radiograph"`` or ``"mapped"``).
    """
    sdrr = smooth(drr, smooth_px, weight)
    facts: list[dict[str, Any]] = [{} for _ in range(raw.shape[0])]
    maps: list[IntensityMap] | None = None
    if scatter_px > 0:
        counted = torch.ones_like(raw, dtype=torch.bool) if weight is None else weight > 0
        counted = counted & torch.isfinite(raw)
        spans = [float(raw[b][counted[b]].max() - raw[b][counted[b]].min())
                 if counted[b].any() else 0.0 for b in range(raw.shape[0])]
        physical = all(span <= PHYSICAL_RANGE for span in spans)
        image = raw if physical else apply_intensity_map(
            raw, fit_intensity_map(smooth(raw, smooth_px, weight), sdrr, weight, degree))
        low = torch.stack([image[b][counted[b]].min() if counted[b].any()
                           else image.new_zeros(()) for b in range(raw.shape[0])])[:, None, None]
        simage = smooth(image, smooth_px, weight)
        best: tuple[float, torch.Tensor, torch.Tensor, list[float], float,
                   list[IntensityMap]] | None = None
        for width in (scatter_px * f for f in SCATTER_WIDTHS):
            scatter, fractions = scatter_estimate(simage, sdrr, weight, width, low.flatten())
            # s / t, and x' = x − log(1 − s/t): in the log domain, where e^{−(x − low)} of a
            # radiograph whose line integrals span far (the mapped fallback) underflows
            ratio = torch.where(scatter > 0, scatter * torch.exp(image - low), 0.0)
            removed = image - torch.log(torch.clamp(1.0 - ratio, min=0.1))
            if weight is not None:   # pixels that do not count keep their value
                removed = torch.where(weight > 0, removed, image)
            sremoved = smooth(removed, smooth_px, weight)
            width_maps = fit_intensity_map(sremoved, sdrr, weight, degree)
            mapped = apply_intensity_map(sremoved, width_maps)
            agreement = gradient_agreement(mapped, sdrr, weight)
            if not math.isfinite(agreement):
                agreement = -math.inf
            if best is None or agreement > best[0]:
                best = (agreement, ratio, removed, fractions, width, width_maps)
        assert best is not None
        _, ratio, raw, fractions, width, maps = best   # the kept width's map is step 2's
        for b, fact in enumerate(facts):
            frac = ratio[b][counted[b]].clamp(max=0.9)   # the fraction removed
            fact["scatter_fraction"] = round(fractions[b], 6)
            fact["scatter_sigma_px"] = round(width, 4)
            fact["veil_fraction"] = round(float(frac.median()), 6) if frac.numel() else 0.0
            fact["scatter_domain"] = "radiograph" if physical else "mapped"
    if maps is None:
        maps = fit_intensity_map(smooth(raw, smooth_px, weight), sdrr, weight, degree)
    for fact, m in zip(facts, maps, strict=True):
        fact["map"] = m.to_json()
    return apply_intensity_map(raw, maps), facts
