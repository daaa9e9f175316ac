"""A clean DRR made to look like a real radiograph, kept as line integrals.

The model, applied in this order to the transmitted intensity ``T = exp(−DRR)`` (relative to an
unattenuated beam of 1), each step with parameters drawn per sample from :class:`DegradeRanges`:

1. **Heel effect**: the beam falls off linearly along the anode–cathode axis (a random in-plane
   direction): ``T *= 1 + heel · t`` with ``t`` in [−½, ½] across the detector.
2. **Collimation**: outside a rectangle (random margins on each side) the primary beam is cut to
   ``leakage`` of itself.
3. **Scatter**: a broad Gaussian blur (σ a fraction of the detector) of the collimated primary,
   times the scatter-to-primary fraction, is added.
4. **Detector blur**: a Gaussian point-spread function of σ ``blur_px`` (given for 256² and
   scaled with the detector size).
5. **Quantum noise at a drawn dose and exposure**: Poisson counts of ``photons · exposure · T``
   per pixel; the image is normalised by the nominal ``photons`` (the exposure is not known to
   the reader), so ``−log`` of it is the measured line integral, offset by ``−log(exposure)``.
6. **Tone curve (gamma)**: ``L = s · sign(L) · (|L| / s)^gamma`` with ``s`` the 99th percentile
   of the clean DRR: contrast compressed or stretched non-linearly. The curve is strictly
   increasing over all values: an exposure above the nominal one (plus scatter and the heel
   effect) puts air and thin anatomy *below* zero, and the curve must not erase them there. (Up
   to format version 2 it clipped at zero and blanked whole fingers of over-exposed samples.)

The output is float32 line integrals (bone bright) of the same shape, like the clean DRR.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["DegradeRanges", "degrade"]


@dataclass(frozen=True)
class DegradeRanges:
    """Where each degradation parameter is drawn from (uniform unless said otherwise).

    Attributes:
        photons: Photons per pixel of the unattenuated beam (log-uniform).
        exposure: Actual over nominal exposure (log-uniform).
        blur_px: Detector PSF σ in pixels at 256² (scaled by size / 256).
        scatter_fraction: Scatter-to-primary ratio of the collimated field.
        scatter_sigma: Scatter kernel σ as a fraction of the detector side.
        heel: Relative beam fall-off across the detector along the anode–cathode axis.
        collimation: Fraction of the side cut off on each of the four sides.
        leakage: Primary transmitted outside the collimated field.
        gamma: Exponent of the tone curve.
    """

    photons: tuple[float, float] = (3e3, 1e5)
    exposure: tuple[float, float] = (0.7, 1.4)
    blur_px: tuple[float, float] = (0.3, 1.2)
    scatter_fraction: tuple[float, float] = (0.02, 0.3)
    scatter_sigma: tuple[float, float] = (0.04, 0.15)
    heel: tuple[float, float] = (0.0, 0.25)
    collimation: tuple[float, float] = (0.0, 0.06)
    leakage: tuple[float, float] = (0.01, 0.05)
    gamma: tuple[float, float] = (0.8, 1.25)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {k: list(v) for k, v in asdict(self).items()}


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(lo_hi[0]), math.log(lo_hi[1]))))


def degrade(clean: np.ndarray, rng: np.random.Generator,
            ranges: DegradeRanges | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Degrade a clean DRR ``(H, W)`` as a real radiograph would be (see the module docstring).

    Args:
        clean: Line integrals, dimensionless, ``(H, W)``.
        rng: The sample's generator.
        ranges: Parameter ranges (default :class:`DegradeRanges`).

    Returns:
        The degraded line integrals (float32 ``(H, W)``) and the drawn parameters (JSON-ready).
    """
    r = ranges or DegradeRanges()
    h, w = clean.shape
    side = float(max(h, w))
    p: dict[str, Any] = {
        "photons": _log_uniform(rng, r.photons),
        "exposure": _log_uniform(rng, r.exposure),
        "blur_px": float(rng.uniform(*r.blur_px)) * side / 256.0,
        "scatter_fraction": float(rng.uniform(*r.scatter_fraction)),
        "scatter_sigma_px": float(rng.uniform(*r.scatter_sigma)) * side,
        "heel": float(rng.uniform(*r.heel)),
        "heel_direction_deg": float(rng.uniform(0.0, 360.0)),
        "collimation_px": [round(float(rng.uniform(*r.collimation)) * n)
                           for n in (w, w, h, h)],   # left, right, top, bottom
        "leakage": float(rng.uniform(*r.leakage)),
        "gamma": float(rng.uniform(*r.gamma)),
    }
    primary = np.exp(-clean.astype(np.float64))
    rows = (np.arange(h) + 0.5) / h - 0.5
    cols = (np.arange(w) + 0.5) / w - 0.5
    a = math.radians(p["heel_direction_deg"])
    along = math.cos(a) * cols[None, :] + math.sin(a) * rows[:, None]
    primary *= 1.0 + p["heel"] * along / (abs(math.cos(a)) + abs(math.sin(a)))
    left, right, top, bottom = p["collimation_px"]
    field = np.zeros((h, w), dtype=bool)
    field[top:h - bottom, left:w - right] = True
    primary = np.where(field, primary, primary * p["leakage"])
    # the broad scatter blur is done on a 4x-binned image: it is smooth at that scale
    small = ndimage.zoom(primary, 0.25, order=1, grid_mode=True, mode="nearest")
    small = ndimage.gaussian_filter(small, p["scatter_sigma_px"] / 4.0, mode="nearest")
    scatter = ndimage.zoom(small, (h / small.shape[0], w / small.shape[1]), order=1,
                           grid_mode=True, mode="nearest")
    total = primary + p["scatter_fraction"] * scatter
    total = ndimage.gaussian_filter(total, p["blur_px"], mode="nearest")
    counts = rng.poisson(np.clip(total, 0.0, None) * p["photons"] * p["exposure"])
    measured = np.maximum(counts, 0.5) / p["photons"]
    line = -np.log(measured)
    scale = float(np.percentile(clean, 99.0))
    p["tone_scale"] = scale
    if scale > 0:
        line = np.sign(line) * scale * (np.abs(line) / scale) ** p["gamma"]
    return line.astype(np.float32), p
