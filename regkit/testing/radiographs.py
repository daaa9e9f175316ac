"""Radiograph forward models for 2D–3D benchmarks that regkit's renderer does not share.

regkit registers a CT to a radiograph by comparing the radiograph with DRRs of
μ = 0.02 (1 + HU/1000) /mm: one monochromatic material scale. A benchmark whose radiographs come
from that same mapping tests the search, not the model error. :class:`PolyForwardModel` makes the
radiograph another way, closer to how an X-ray tube and a flat-panel detector make it:

1. **Two materials.** Each voxel is split into water-equivalent soft tissue and cortical bone
   (ICRU-44, 1.92 g/cm³) by :func:`material_fractions`: below 0 HU only soft tissue, at a density
   of ``1 + HU/1000`` times water's (air at -1000 HU and below: nothing; fat at -100 HU: 0.9);
   from 0 HU to ``bone_hu`` (1500 HU) a linear mix, bone fraction ``HU / 1500`` and soft fraction
   ``1 - HU / 1500``; above 1500 HU bone only, at ``HU / 1500`` times cortical density. 1500 HU
   is about where cortical bone sits on a 120 kVp CT: at its ~70 keV effective energy, cortical
   bone's μ is 2.6× water's, i.e. about 1600 HU.
2. **Path lengths.** Two volumes of units ``"mu"`` hold those fractions; regkit's public renderer
   (:func:`regkit.render.select.make_renderer`, ``renderer.drr``) integrates each along every
   pixel's ray, so the two "DRRs" are ``L_w`` (mm of water at 1 g/cm³) and ``L_b`` (mm of
   cortical bone at 1.92 g/cm³). With this split regkit's own μ is exactly
   ``0.02 L_w + 0.05 L_b`` for every voxel up to 1500 HU: the DRR weighs a millimetre of bone
   2.5× a millimetre of water, whatever the energy.
3. **Polychromatic transmission** (beam hardening)::

       I / I0 = Σ_E w_E · exp(−μ_w(E) · L_w − μ_b(E) · L_b),     Σ_E w_E = 1

   with μ_w(E) = (μ/ρ)_water(E) · 1.00 g/cm³ and μ_b(E) = (μ/ρ)_bone(E) · 1.92 g/cm³ (in 1/mm:
   cm²/g · g/cm³ / 10). ``w_E`` are the detected-energy weights of :func:`tungsten_spectrum`.
4. **Detector side** (:func:`degrade`): scatter (a fraction of the transmitted image blurred by a
   wide Gaussian, added), Poisson noise at ``photons`` quanta per unattenuated pixel, detector
   blur (Gaussian σ in pixels, on the counts: it correlates the noise as a scintillator's light
   spread does), flat-field normalisation by the open-beam reading ``photons · (1 + scatter)``,
   ``−log`` to line integrals, and optionally a collimated border set to zero.

Mass attenuation coefficients μ/ρ (cm²/g, with coherent scattering), NIST XCOM / Hubbell & Seltzer
tables (water, liquid; bone, cortical (ICRU-44); aluminium), interpolated log-log between these
energies (none of the three has an absorption edge between 10 and 100 keV):

    ======  =======  =============  ==========
    keV     water    cortical bone  aluminium
    ======  =======  =============  ==========
    10      5.329    28.51          26.23
    15      1.673    9.032          7.955
    20      0.8096   4.001          3.441
    30      0.3756   1.331          1.128
    40      0.2683   0.6655         0.5685
    50      0.2269   0.4242         0.3681
    60      0.2059   0.3148         0.2778
    80      0.1837   0.2229         0.2018
    100     0.1707   0.1855         0.1704
    ======  =======  =============  ==========

Spectrum (:func:`tungsten_spectrum`, defaults 70 kVp, 2.5 mm Al total filtration): Kramers'
thick-target bremsstrahlung, photon fluence per keV ∝ (kVp − E)/E, times the aluminium's
transmission exp(−(μ/ρ)_Al(E) · 2.699 g/cm³ · 2.5 mm), times E (an energy-integrating detector
that absorbs every photon), on a 0.5 keV grid from 10 keV, grouped into 6 equal bins over
15–70 keV (the 0.03 % of the signal below 15 keV is dropped); each bin sits at its
weight-averaged energy. No characteristic lines (tungsten's K edge, 69.5 keV, is barely reached at
70 kVp; its L lines are filtered out). Mean photon energy 37.5 keV. The default bins:

    =========  ======  ========  ===================  ==================
    bin keV    E keV   w_E       μ_w(E) 1/mm (water)  μ_b(E) 1/mm (bone)
    =========  ======  ========  ===================  ==================
    15–24.2    21.36   0.0619    0.0715               0.6425
    24.2–33.3  29.18   0.2356    0.0396               0.2756
    33.3–42.5  37.97   0.2700    0.0285               0.1449
    42.5–51.7  46.79   0.2278    0.0239               0.0931
    51.7–60.8  55.75   0.1549    0.0214               0.0682
    60.8–70    64.02   0.0498    0.0201               0.0559
    =========  ======  ========  ===================  ==================

What that does (noise-free, no scatter): through water only, the effective μ (−log(I/I0)/L)
falls from 0.0312 /mm at the surface to 0.0286 at 50 mm, 0.0256 at 200 mm and 0.0247 at 300 mm
(beam hardening). Behind 200 mm of water a further millimetre of bone weighs 3.8× a millimetre of
water (5.7× at the surface, 3.6× behind 300 mm), against the DRR's 2.5×: bone stands out more,
and by an amount that depends on what lies in front of it. On the chest CT's AP view
(:func:`sanity_figures`, 256² at 1.6 mm): L_w up to 233 mm and L_b up to 42 mm; where a ray
crosses more than 5 mm of bone, a millimetre of bone weighs 3.6× one of water (median; 3.4–3.8
from the 10th to the 90th percentile) and bone's line-integral contrast over the same
millimetres of water, relative to that water's, is 1.63× the DRR's (1.54× with the 5 % scatter).
Beyond the two path DRRs (~0.4 s each, OpenGL here), spectrum, scatter, noise and blur take
~15 ms for a 256² image.

Defaults of the detector side match ``benchmarks/test_bench_2d3d.py`` (5 % scatter blurred by
σ = 20 px, 10⁴ photons, σ = 1 px blur), so that a comparison with its ``bone15`` radiographs
isolates the intensity model. :class:`Bone15ForwardModel` reimplements those radiographs (μ with
bone weighted 1.5× above 0 HU, blur on the line integrals), drawing the same random numbers in
the same order, so a case seeded alike is the same image.

Run ``python -m regkit.testing.radiographs --png /tmp/poly_case.png`` for the sanity figures and a
picture of the chest CT's AP view: the poly radiograph | the same noise-free and without scatter |
regkit's DRR | the poly transmitted image.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import gaussian_filter

from regkit.geometry.camera import Camera
from regkit.render.base import Views
from regkit.render.select import make_renderer
from regkit.volume import MU_WATER_PER_MM, Volume

__all__ = [
    "BONE_DENSITY",
    "Bone15ForwardModel",
    "ForwardModel",
    "PolyForwardModel",
    "PolyOptions",
    "SimulatedView",
    "Spectrum",
    "degrade",
    "make_forward_model",
    "mass_attenuation",
    "material_fractions",
    "transmission",
    "tungsten_spectrum",
]

NIST_ENERGIES_KEV = np.array([10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0])
_MU_RHO = {  # cm²/g at NIST_ENERGIES_KEV (see the module docstring)
    "water": np.array([5.329, 1.673, 0.8096, 0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707]),
    "bone": np.array([28.51, 9.032, 4.001, 1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855]),
    "aluminium": np.array([26.23, 7.955, 3.441, 1.128, 0.5685, 0.3681, 0.2778, 0.2018, 0.1704]),
}
WATER_DENSITY = 1.0  # g/cm³
BONE_DENSITY = 1.92  # g/cm³, cortical bone (ICRU-44)
ALUMINIUM_DENSITY = 2.699  # g/cm³
MU_WATER_DRR = MU_WATER_PER_MM  # 1/mm, regkit's HU → μ (docs/CONVENTIONS.md)
_GRID_STEP_KEV = 0.5
_GRID_LOW_KEV = 10.0

RngLike = int | np.random.Generator


def _rng(seed: RngLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# ---------------------------------------------------------------------------- physics tables


def mass_attenuation(material: str, energies_kev: ArrayLike) -> NDArray[np.float64]:
    """μ/ρ (cm²/g) of ``"water"``, ``"bone"`` or ``"aluminium"``, log-log interpolated.

    Args:
        material: One of the tabulated materials.
        energies_kev: Photon energies, keV, within 10–100.

    Raises:
        ValueError: an unknown material or an energy outside the table.
    """
    if material not in _MU_RHO:
        raise ValueError(f"unknown material {material!r}; expected one of {sorted(_MU_RHO)}")
    e = np.asarray(energies_kev, dtype=np.float64)
    if e.size and (e.min() < NIST_ENERGIES_KEV[0] or e.max() > NIST_ENERGIES_KEV[-1]):
        raise ValueError(f"energies must lie in {NIST_ENERGIES_KEV[0]:g}–"
                         f"{NIST_ENERGIES_KEV[-1]:g} keV, got {e.min():g}–{e.max():g}")
    return np.exp(np.interp(np.log(e), np.log(NIST_ENERGIES_KEV), np.log(_MU_RHO[material])))


@dataclass(frozen=True)
class Spectrum:
    """A discrete X-ray spectrum as seen by an energy-integrating detector.

    Attributes:
        energies_kev: ``(E,)`` bin energies, keV.
        weights: ``(E,)`` detected-energy weights, summing to 1.
        mean_photon_kev: Mean photon energy of the filtered beam (before detection).
        description: How it was made, for result files.
    """

    energies_kev: NDArray[np.float64]
    weights: NDArray[np.float64]
    mean_photon_kev: float
    description: str

    @property
    def mu_water_per_mm(self) -> NDArray[np.float64]:
        """μ of water (1 g/cm³) at each bin, 1/mm."""
        return mass_attenuation("water", self.energies_kev) * WATER_DENSITY / 10.0

    @property
    def mu_bone_per_mm(self) -> NDArray[np.float64]:
        """μ of cortical bone (1.92 g/cm³) at each bin, 1/mm."""
        return mass_attenuation("bone", self.energies_kev) * BONE_DENSITY / 10.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return {"energies_kev": np.round(self.energies_kev, 3).tolist(),
                "weights": np.round(self.weights, 5).tolist(),
                "mu_water_per_mm": np.round(self.mu_water_per_mm, 5).tolist(),
                "mu_bone_per_mm": np.round(self.mu_bone_per_mm, 5).tolist(),
                "mean_photon_kev": round(self.mean_photon_kev, 3),
                "description": self.description}


def tungsten_spectrum(kvp: float = 70.0, aluminium_mm: float = 2.5, bins: int = 6,
                      low_kev: float = 15.0) -> Spectrum:
    """A smooth tungsten-anode spectrum: Kramers' law, aluminium filtration, energy weighting.

    Photon fluence per keV ∝ (kVp − E)/E · exp(−(μ/ρ)_Al(E) · ρ_Al · t), on a 0.5 keV grid from
    10 keV to kVp; detected weight ∝ E × fluence; ``bins`` equal bins over ``[low_kev, kVp]``,
    each at its weight-averaged energy (see the module docstring for the default figures).

    Args:
        kvp: Tube voltage, kV (at most 100, the table's end; above ``low_kev``).
        aluminium_mm: Total filtration, mm of aluminium.
        bins: Number of energy bins, >= 1.
        low_kev: Energies below are dropped (the filter leaves almost nothing there).
    """
    if not (low_kev < kvp <= NIST_ENERGIES_KEV[-1]) or low_kev < _GRID_LOW_KEV:
        raise ValueError(f"need {_GRID_LOW_KEV:g} <= low_kev < kvp <= "
                         f"{NIST_ENERGIES_KEV[-1]:g}, got low_kev={low_kev}, kvp={kvp}")
    if bins < 1 or aluminium_mm < 0:
        raise ValueError(f"need bins >= 1 and aluminium_mm >= 0, got {bins}, {aluminium_mm}")
    e = np.arange(_GRID_LOW_KEV + _GRID_STEP_KEV / 2, kvp, _GRID_STEP_KEV)
    fluence = (kvp - e) / e * np.exp(-mass_attenuation("aluminium", e) * ALUMINIUM_DENSITY
                                     * aluminium_mm / 10.0)
    detected = e * fluence
    keep = e >= low_kev
    edges = np.linspace(low_kev, kvp, bins + 1)
    index = np.clip(np.searchsorted(edges, e[keep], side="right") - 1, 0, bins - 1)
    weight = np.bincount(index, detected[keep], minlength=bins)
    energy = np.bincount(index, detected[keep] * e[keep], minlength=bins) / weight
    return Spectrum(energies_kev=energy, weights=weight / weight.sum(),
                    mean_photon_kev=float((e * fluence).sum() / fluence.sum()),
                    description=f"tungsten {kvp:g} kVp, {aluminium_mm:g} mm Al, Kramers, "
                                f"{bins} bins over {low_kev:g}-{kvp:g} keV, energy-integrating")


def material_fractions(hu: ArrayLike, bone_hu: float = 1500.0
                       ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Water-equivalent soft-tissue and cortical-bone fractions of each voxel.

    Args:
        hu: CT values, Hounsfield units.
        bone_hu: HU of pure cortical bone; 0 HU is pure water.

    Returns:
        ``(soft, bone)``, float32 like ``hu``: soft = clip(1 + min(HU, 0)/1000, 0, 1) −
        min(bone, 1) clipped at 0, bone = max(HU, 0) / ``bone_hu`` (above 1 for denser voxels).
    """
    h = np.asarray(hu, dtype=np.float32)
    bone = np.maximum(h, 0.0) / np.float32(bone_hu)
    soft = np.clip(1.0 + np.minimum(h, 0.0) / 1000.0, 0.0, 1.0) - np.minimum(bone, 1.0)
    return np.maximum(soft, 0.0).astype(np.float32), bone.astype(np.float32)


def transmission(path_water_mm: ArrayLike, path_bone_mm: ArrayLike,
                 spectrum: Spectrum) -> NDArray[np.float64]:
    """Primary transmitted fraction ``Σ_E w_E exp(−μ_w(E) L_w − μ_b(E) L_b)`` (no scatter)."""
    lw = np.asarray(path_water_mm, dtype=np.float64)
    lb = np.asarray(path_bone_mm, dtype=np.float64)
    out = np.zeros(np.broadcast_shapes(lw.shape, lb.shape))
    for w, mw, mb in zip(spectrum.weights, spectrum.mu_water_per_mm, spectrum.mu_bone_per_mm,
                         strict=True):
        out += w * np.exp(-mw * lw - mb * lb)
    return out


def effective_attenuation(path_water_mm: ArrayLike, path_bone_mm: ArrayLike,
                          spectrum: Spectrum) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """∂(−log T)/∂L_w and ∂(−log T)/∂L_b: μ of each material under the hardened spectrum."""
    lw = np.asarray(path_water_mm, dtype=np.float64)
    lb = np.asarray(path_bone_mm, dtype=np.float64)
    shape = np.broadcast_shapes(lw.shape, lb.shape)
    total, dw, db = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for w, mw, mb in zip(spectrum.weights, spectrum.mu_water_per_mm, spectrum.mu_bone_per_mm,
                         strict=True):
        part = w * np.exp(-mw * lw - mb * lb)
        total += part
        dw += mw * part
        db += mb * part
    return dw / total, db / total


# ----------------------------------------------------------------------------- detector side


@dataclass(frozen=True)
class SimulatedView:
    """One simulated radiograph.

    Attributes:
        line_integral: ``(H, W)`` float32 ``−log(I / I0)`` (bone bright): what
            ``register_2d3d`` takes with ``image_kind="line-integral"``. Collimated pixels: 0.
        transmitted: ``(H, W)`` float32 ``I / I0`` (open beam 1), noise, scatter and blur
            included; collimated pixels 0.
        extras: Noise-free intermediate images (``path_water_mm``, ``path_bone_mm`` for the
            polychromatic model, ``primary`` the noise-free transmitted fraction), float32.
    """

    line_integral: NDArray[np.float32]
    transmitted: NDArray[np.float32]
    extras: dict[str, NDArray[np.float32]] = field(default_factory=dict)


def degrade(primary: ArrayLike, rng: RngLike, *, scatter_fraction: float = 0.05,
            scatter_sigma_px: float = 20.0, photons: float = 1e4, blur_px: float = 1.0,
            collimation_px: int = 0) -> SimulatedView:
    """Scatter, quantum noise, detector blur, flat field, log and collimation.

    ``counts = Poisson(photons · (T + s · G_σs * T))``, then a Gaussian of ``blur_px`` on the
    counts, then ``I / I0 = counts / (photons · (1 + s))`` (the open-beam reading, scatter
    included, is 1) floored at ``0.5 / photons`` (half a quantum, so no pixel is infinite),
    ``line = −log(I / I0)``.

    Args:
        primary: ``(H, W)`` noise-free transmitted fraction ``T`` in (0, 1].
        rng: Seed or generator of the Poisson draws.
        scatter_fraction: ``s``, scatter as a fraction of the blurred transmitted image.
        scatter_sigma_px: σ of the scatter's Gaussian, pixels.
        photons: Quanta per unattenuated pixel (<= 0: no noise).
        blur_px: σ of the detector's Gaussian, pixels (0: none).
        collimation_px: Width of a border set to 0 in both outputs (0: none).
    """
    t = np.asarray(primary, dtype=np.float64)
    expected = t.copy()
    if scatter_fraction > 0:
        expected += scatter_fraction * gaussian_filter(t, scatter_sigma_px, mode="nearest")
    if photons > 0:
        signal = _rng(rng).poisson(photons * expected).astype(np.float64) / photons
    else:
        signal = expected
    if blur_px > 0:
        signal = gaussian_filter(signal, blur_px, mode="nearest")
    floor = 0.5 / photons if photons > 0 else 1e-12
    relative = np.maximum(signal / (1.0 + scatter_fraction), floor)
    line = -np.log(relative)
    if collimation_px > 0:
        c = int(collimation_px)
        for a in (relative, line):
            a[:c, :] = 0.0
            a[-c:, :] = 0.0
            a[:, :c] = 0.0
            a[:, -c:] = 0.0
    return SimulatedView(line.astype(np.float32), relative.astype(np.float32))


# --------------------------------------------------------------------------------- the models


class ForwardModel(Protocol):
    """What the harness needs of a radiograph model."""

    name: str

    def render(self, cameras: Sequence[Camera], rng: RngLike) -> list[SimulatedView]:
        """One radiograph per camera (equal detector sizes), noise drawn from ``rng``."""
        ...

    def describe(self) -> dict[str, Any]:
        """The model's figures, JSON-ready."""
        ...

    def close(self) -> None:
        """Release the renderers."""
        ...


@dataclass(frozen=True)
class PolyOptions:
    """Figures of :class:`PolyForwardModel` (see the module docstring).

    Attributes:
        kvp: Tube voltage, kV.
        aluminium_mm: Total filtration, mm Al.
        bins: Energy bins.
        bone_hu: HU of pure cortical bone in the material split.
        scatter_fraction: Scatter added, as a fraction of the blurred transmitted image.
        scatter_sigma_px: σ of the scatter's Gaussian, pixels.
        photons: Quanta per unattenuated pixel.
        blur_px: Detector blur σ, pixels.
        collimation_px: Zeroed border, pixels.
    """

    kvp: float = 70.0
    aluminium_mm: float = 2.5
    bins: int = 6
    bone_hu: float = 1500.0
    scatter_fraction: float = 0.05
    scatter_sigma_px: float = 20.0
    photons: float = 1e4
    blur_px: float = 1.0
    collimation_px: int = 0


def _no_grad_drr(renderer: Any, cameras: Sequence[Camera]) -> NDArray[np.float32]:
    with torch.no_grad():
        return renderer.drr(Views.from_cameras(list(cameras))).numpy().astype(np.float32)


class PolyForwardModel:
    """Polychromatic two-material radiographs of a CT in HU (see the module docstring).

    Args:
        ct: The CT, units ``"HU"``.
        options: :class:`PolyOptions`, a dict of its fields, or None for the defaults.
        backend: regkit renderer backend for the path lengths (None: regkit's choice).
    """

    name = "poly"

    def __init__(self, ct: Volume, options: PolyOptions | dict[str, Any] | None = None, *,
                 backend: str | None = None) -> None:
        if ct.units != "HU":
            raise ValueError(f"the CT must be in HU, got units {ct.units!r}")
        if options is None:
            options = PolyOptions()
        elif isinstance(options, dict):
            options = PolyOptions(**options)
        self.options = options
        self.spectrum = tungsten_spectrum(options.kvp, options.aluminium_mm, options.bins)
        soft, bone = material_fractions(ct.data, options.bone_hu)
        self._soft = make_renderer(Volume(soft, ct.world_from_index, units="mu"),
                                   backend=backend)
        self._bone = make_renderer(Volume(bone, ct.world_from_index, units="mu"),
                                   backend=backend)

    def paths(self, cameras: Sequence[Camera]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """``(L_w, L_b)``, each ``(V, H, W)`` mm: soft-tissue and bone path lengths per pixel."""
        return _no_grad_drr(self._soft, cameras), _no_grad_drr(self._bone, cameras)

    def render(self, cameras: Sequence[Camera], rng: RngLike) -> list[SimulatedView]:
        """One radiograph per camera; views draw their noise from ``rng`` in order."""
        gen = _rng(rng)
        lw, lb = self.paths(cameras)
        out = []
        o = self.options
        for v in range(len(cameras)):
            primary = transmission(lw[v], lb[v], self.spectrum)
            view = degrade(primary, gen, scatter_fraction=o.scatter_fraction,
                           scatter_sigma_px=o.scatter_sigma_px, photons=o.photons,
                           blur_px=o.blur_px, collimation_px=o.collimation_px)
            view.extras.update(path_water_mm=lw[v], path_bone_mm=lb[v],
                               primary=primary.astype(np.float32))
            out.append(view)
        return out

    def describe(self) -> dict[str, Any]:
        """The model's figures."""
        return {"name": self.name, **vars(self.options), "spectrum": self.spectrum.to_dict(),
                "materials": "water (1.00 g/cm3) + cortical bone ICRU-44 (1.92 g/cm3), NIST "
                             "XCOM mu/rho, log-log interpolated"}

    def close(self) -> None:
        """Release both renderers."""
        for r in (self._soft, self._bone):
            r.close()


class Bone15ForwardModel:
    """``benchmarks/test_bench_2d3d.py``'s radiographs: monochromatic, bone weighted 1.5×.

    μ = 0.02 (1 + 1.5 HU/1000) /mm above 0 HU and 0.02 (1 + HU/1000) below (clamped at 0); the
    DRR's transmitted image plus 5 % scatter (σ = 20 px), Poisson noise at 10⁴ photons, back to
    line integrals against the open beam 1.05 · 10⁴, then a σ = 1 px blur of the line integrals.
    With the generator of that benchmark's case (after its pose draws) the image is the same.
    """

    name = "bone15"
    bone_boost = 1.5
    scatter_fraction = 0.05
    scatter_sigma_px = 20.0
    photons = 1e4
    blur_px = 1.0

    def __init__(self, ct: Volume, *, backend: str | None = None) -> None:
        if ct.units != "HU":
            raise ValueError(f"the CT must be in HU, got units {ct.units!r}")
        hu = ct.data.astype(np.float32)
        mu = np.where(hu > 0, MU_WATER_DRR * (1 + self.bone_boost * hu / 1000),
                      MU_WATER_DRR * (1 + hu / 1000))
        self._renderer = make_renderer(
            Volume(mu.clip(0).astype(np.float32), ct.world_from_index, units="mu"),
            backend=backend)

    def render(self, cameras: Sequence[Camera], rng: RngLike) -> list[SimulatedView]:
        """One radiograph per camera; views draw their noise from ``rng`` in order."""
        gen = _rng(rng)
        lines = _no_grad_drr(self._renderer, cameras)
        out = []
        for line in lines:
            primary = np.exp(-line)
            scatter = self.scatter_fraction * gaussian_filter(primary, self.scatter_sigma_px)
            counts = gen.poisson(self.photons * (primary + scatter))
            open_beam = self.photons * (1 + self.scatter_fraction)
            image = -np.log(np.maximum(counts, 1) / open_beam)
            image = gaussian_filter(image, self.blur_px).astype(np.float32)
            out.append(SimulatedView(image, np.exp(-image).astype(np.float32),
                                     {"primary": primary.astype(np.float32)}))
        return out

    def describe(self) -> dict[str, Any]:
        """The model's figures."""
        return {"name": self.name, "bone_boost": self.bone_boost,
                "scatter_fraction": self.scatter_fraction,
                "scatter_sigma_px": self.scatter_sigma_px, "photons": self.photons,
                "blur_px": self.blur_px}

    def close(self) -> None:
        """Release the renderer."""
        self._renderer.close()


def make_forward_model(name: str, ct: Volume, *, backend: str | None = None,
                       options: dict[str, Any] | None = None) -> ForwardModel:
    """``"poly"`` (:class:`PolyForwardModel`, with ``options``) or ``"bone15"``."""
    if name == "poly":
        return PolyForwardModel(ct, options, backend=backend)
    if name == "bone15":
        if options:
            raise ValueError("the bone15 model takes no options")
        return Bone15ForwardModel(ct, backend=backend)
    raise ValueError(f"unknown forward model {name!r}; expected 'poly' or 'bone15'")


# ---------------------------------------------------------------------------- sanity check


def sanity_figures(lw: NDArray[np.float32], lb: NDArray[np.float32], drr: NDArray[np.float32],
                   spectrum: Spectrum, options: PolyOptions,
                   min_bone_mm: float = 5.0) -> dict[str, Any]:
    """Figures that say whether a polychromatic image is plausible next to regkit's DRR.

    * ``drr_vs_paths``: regkit's DRR against ``0.02 L_w + 0.05 L_b`` (equal by construction up
      to 1500 HU): median and 99th percentile of the relative difference where the DRR > 0.1.
    * ``water_mu_eff_per_mm``: −log T / L through water alone (beam hardening).
    * ``bone_to_water_per_mm``: ∂/∂L_b over ∂/∂L_w of −log T, median over pixels with
      ``L_b > min_bone_mm`` (the DRR: 2.5).
    * ``bone_contrast_ratio``: bone's line-integral contrast, i.e. the image minus the image
      with the bone's millimetres turned into water's, relative to that water-only image,
      poly ÷ DRR; median over the same pixels, noise-free, without and with scatter.
    * ``fit``: least-squares ``line ≈ a L_w + b L_b`` over the body (L_w > 10 mm), and b/a.
    """
    out: dict[str, Any] = {}
    model_drr = MU_WATER_DRR * lw + 2.5 * MU_WATER_DRR * lb
    body = drr > 0.1
    rel = np.abs(drr[body] - model_drr[body]) / drr[body]
    out["drr_vs_paths"] = {"median_rel": float(np.median(rel)),
                           "p99_rel": float(np.percentile(rel, 99))}
    lengths = np.array([1.0, 50.0, 100.0, 200.0, 300.0])
    out["water_mu_eff_per_mm"] = {
        f"{int(length)}mm": float(-np.log(transmission(length, 0.0, spectrum)) / length)
        for length in lengths}
    bone = (lb > min_bone_mm) & (lw > 10.0)
    dw, db = effective_attenuation(lw[bone], lb[bone], spectrum)
    out["bone_to_water_per_mm"] = {"poly_median": float(np.median(db / dw)),
                                   "poly_p10_p90": np.percentile(db / dw, [10, 90]).tolist(),
                                   "drr": 2.5, "pixels": int(bone.sum())}

    def contrast(scatter: float) -> float:
        def line(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
            t = transmission(a, b, spectrum)
            if scatter > 0:
                t = t + scatter * gaussian_filter(t, options.scatter_sigma_px, mode="nearest")
            return -np.log(t / (1 + scatter))

        full = line(lw.astype(np.float64), lb.astype(np.float64))[bone]
        water = line((lw + lb).astype(np.float64), np.zeros_like(lb, dtype=np.float64))[bone]
        poly_rel = (full - water) / water
        drr_water = MU_WATER_DRR * (lw + lb)[bone]
        drr_rel = (model_drr[bone] - drr_water) / drr_water
        return float(np.median(poly_rel / drr_rel))

    out["bone_contrast_ratio"] = {"no_scatter": contrast(0.0),
                                  f"scatter_{options.scatter_fraction:g}":
                                  contrast(options.scatter_fraction)}
    fit_px = lw > 10.0
    clean = -np.log(transmission(lw[fit_px], lb[fit_px], spectrum))
    a_poly = np.linalg.lstsq(np.c_[lw[fit_px], lb[fit_px]], clean, rcond=None)[0]
    out["fit"] = {"poly_a_b": a_poly.tolist(), "poly_b_over_a": float(a_poly[1] / a_poly[0]),
                  "drr_b_over_a": 2.5}
    return out


def _side_by_side(images: Sequence[NDArray[Any]], gap: int = 4) -> NDArray[np.uint8]:
    from regkit.io.png import to_uint8

    tiles = [to_uint8(np.asarray(im, dtype=np.float64)) for im in images]
    h = max(t.shape[0] for t in tiles)
    parts = []
    for i, t in enumerate(tiles):
        pad = np.full((h, t.shape[1]), 255, np.uint8)
        pad[:t.shape[0]] = t
        parts.append(pad)
        if i < len(tiles) - 1:
            parts.append(np.full((h, gap), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def main(argv: Sequence[str] | None = None) -> int:
    """Render the chest CT's AP view both ways, print the sanity figures, write a PNG."""
    import json

    from regkit.geometry.carm import camera_from_carm
    from regkit.io.nifti import load_nifti
    from regkit.io.png import write_png

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ct", type=Path, default=None,
                   help="CT (NIfTI, HU); default: the chest CT crop shipped with regkit")
    p.add_argument("--png", type=Path, default=Path("/tmp/poly_case.png"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=None)
    p.add_argument("--options", default=None, help="PolyOptions fields as JSON")
    args = p.parse_args(argv)
    if args.ct is None:
        from regkit.data import chest_ct_crop

        args.ct = chest_ct_crop()["ct"]
    ct = load_nifti(args.ct)
    cam = camera_from_carm(source_to_detector_mm=1020.0, source_to_isocenter_mm=850.0,
                           pixel_spacing_mm=1.6, width=256, height=256,
                           isocenter_world=tuple(float(v) for v in ct.center_world))
    model = PolyForwardModel(ct, json.loads(args.options) if args.options else None,
                             backend=args.backend)
    drr_renderer = make_renderer(ct, backend=args.backend)
    try:
        model.paths([cam])  # warm both renderers
        t0 = time.perf_counter()
        lw, lb = model.paths([cam])
        t_paths = time.perf_counter() - t0
        t0 = time.perf_counter()
        primary = transmission(lw[0], lb[0], model.spectrum)
        o = model.options
        view = degrade(primary, args.seed, scatter_fraction=o.scatter_fraction,
                       scatter_sigma_px=o.scatter_sigma_px, photons=o.photons,
                       blur_px=o.blur_px, collimation_px=o.collimation_px)
        t_rest = time.perf_counter() - t0
        drr = _no_grad_drr(drr_renderer, [cam])[0]
    finally:
        model.close()
        drr_renderer.close()
    figures = sanity_figures(lw[0], lb[0], drr, model.spectrum, model.options)
    figures["seconds"] = {"two_path_drrs": round(t_paths, 3),
                          "spectrum_scatter_noise_blur": round(t_rest, 4)}
    figures["spectrum"] = model.spectrum.to_dict()
    figures["ranges"] = {"L_w_max_mm": float(lw.max()), "L_b_max_mm": float(lb.max()),
                         "poly_line_max": float(view.line_integral.max()),
                         "drr_max": float(drr.max()),
                         "transmitted_min": float(view.transmitted.min())}
    print(json.dumps(figures, indent=2))
    clean = -np.log(primary)
    write_png(args.png, _side_by_side([view.line_integral, clean, drr, view.transmitted]))
    print(f"wrote {args.png}: poly line integral | poly noise-free, no scatter | regkit DRR | "
          "poly transmitted (each windowed to its 0.5-99.5th percentiles)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
