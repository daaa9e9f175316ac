"""X-ray geometry for the bone network: depth targets, input fitting, normalisation, augmentation.

**Height, the network's depth target.** A depth along a pixel's ray (mm from the source, as the
conventions define it) is turned into the *height above the detector*: the distance from the
detector plane to the point, along the camera's z axis,

    h = SDD − d · cos θ,        d = (SDD − h) / cos θ,

with ``SDD`` the source-to-detector distance (``fx · pixel_spacing_x``) and ``θ`` the angle between
the pixel's ray and the camera's z axis. Heights of a hand are 0-80 mm instead of ~1000 mm; the
front of a bone lies *above* its back (``h_front ≥ h_back``); and a height does not change when the
detector is rolled about its z axis or mirrored, so rotating or flipping an image rotates or flips
its height maps and nothing else. The network works in *height units*: heights in detector pixels
of its input grid (mm over the input's pixel spacing, which makes them independent of the image's
scale, as the image is) divided by :data:`~regkit_recon.net.model.HEIGHT_SCALE`.

**The common offset.** One view hardly fixes the hand's distance from the detector (10 mm change
the magnification by ~1 %). Training therefore scores heights mostly after removing each image's
mean residual (shift-invariant), plus a small weight on the raw residual, which teaches the network
the prior of its training data: where hands lie above the detector (the phantoms' anatomy box
2-25 mm above it, with 8 mm of margin around the bones). The absolute heights it predicts are that
prior, refined by whatever the image tells.

**Fitting an image to the network.** Any ``W × H`` detector is resampled to ``S × S``: scaled by
``S / max(W, H)`` (antialiased bilinear) into the top-left corner and padded with the image's air
value. The camera follows exactly: K's first two rows scale by the per-axis factors (the outer
corner (0, 0) stays put), and the padding adds pixels beyond the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.utils.checks import is_real

__all__ = ["Augmentation", "Fit", "augment", "augment_batch", "cos_theta", "depth_to_height",
           "draw_augmentation", "fit_image", "height_to_depth", "normalise", "unfit"]


SDD_RANGE_MM = (100.0, 5000.0)
"""Source-to-detector distances a radiograph's camera may give (fx · pixel spacing): from a mini
C-arm's (about 400 mm) with room below, to well past a radiography room's (1000-1800 mm)."""
DETECTOR_RANGE_MM = (10.0, 1000.0)
"""The detector's larger side (pixels · spacing) a radiograph's camera may give."""


def _sdd(camera: Camera) -> float:
    sdd = camera.source_to_detector_mm
    spacing = camera.pixel_spacing_mm
    if sdd is None or spacing is None:
        raise InputError("the camera has no pixel_spacing_mm, so the source-to-detector "
                         "distance (fx · spacing) and depths in mm are unknown; add it to the "
                         "camera file", key="pixel_spacing_mm")
    if not SDD_RANGE_MM[0] <= sdd <= SDD_RANGE_MM[1]:
        raise InputError(f"gives a source-to-detector distance (fx · pixel_spacing_mm) of "
                         f"{sdd:.4g} mm, outside the {SDD_RANGE_MM[0]:g}-{SDD_RANGE_MM[1]:g} mm "
                         "of an X-ray system: check pixel_spacing_mm and the focal lengths",
                         key="camera")
    side = max(camera.width * spacing[0], camera.height * spacing[1])
    if not DETECTOR_RANGE_MM[0] <= side <= DETECTOR_RANGE_MM[1]:
        raise InputError(f"gives a detector {side:.4g} mm wide (pixels · pixel_spacing_mm), "
                         f"outside {DETECTOR_RANGE_MM[0]:g}-{DETECTOR_RANGE_MM[1]:g} mm: check "
                         "pixel_spacing_mm", key="camera")
    return sdd


def cos_theta(camera: Camera) -> np.ndarray:
    """``(H, W)`` cosine between each pixel-centre ray and the camera's z axis."""
    k = camera.intrinsic
    u = np.arange(camera.width, dtype=np.float64) + 0.5
    v = np.arange(camera.height, dtype=np.float64) + 0.5
    x = (u[None, :] - k[0, 2]) / k[0, 0]
    y = (v[:, None] - k[1, 2]) / k[1, 1]
    return 1.0 / np.sqrt(1.0 + x * x + y * y)


def depth_to_height(depth: np.ndarray, camera: Camera) -> np.ndarray:
    """Depths ``(..., H, W)`` mm along the rays → heights above the detector, mm (NaN kept)."""
    return _sdd(camera) - np.asarray(depth, np.float64) * cos_theta(camera)


def height_to_depth(height: np.ndarray, camera: Camera) -> np.ndarray:
    """Heights above the detector ``(..., H, W)`` mm → depths along the rays, mm."""
    return (_sdd(camera) - np.asarray(height, np.float64)) / cos_theta(camera)


def normalise(image: torch.Tensor) -> torch.Tensor:
    """Line integrals ``(B, 1, H, W)`` → network input: air near 0, dense bone near 1.

    Each image is shifted by its 1st percentile and scaled by the spread up to its 99.5th, which
    removes the unknown exposure (an additive offset of the line integrals) and the unknown gain
    of a transmitted image. A flat image (no spread) is refused upstream.
    """
    flat = image.flatten(1).float()
    lo = torch.quantile(flat, 0.01, dim=1)
    hi = torch.quantile(flat, 0.995, dim=1)
    scale = (hi - lo).clamp_min(1e-6)
    return ((image - lo[:, None, None, None]) / scale[:, None, None, None]).float()


@dataclass(frozen=True)
class Fit:
    """How an image was fitted to the network's input.

    Attributes:
        size: The input's width = height S.
        width, height: The original detector's W, H.
        inner_width, inner_height: The image's size inside the input (the rest is padding).
        camera: The original camera; ``net_camera`` the camera of the S × S input.
    """

    size: int
    width: int
    height: int
    inner_width: int
    inner_height: int
    camera: Camera
    net_camera: Camera

    @property
    def net_spacing_mm(self) -> float:
        """Detector mm per input pixel (mean of the two axes)."""
        spacing = self.net_camera.pixel_spacing_mm
        if spacing is None:
            _sdd(self.camera)
        assert spacing is not None
        return 0.5 * (spacing[0] + spacing[1])


def fit_image(image: np.ndarray, camera: Camera, size: int, *, fill: float = 1.0
              ) -> tuple[torch.Tensor, Fit]:
    """Resample a radiograph to the network's ``size × size`` input.

    Args:
        image: ``(H, W)`` line integrals.
        camera: Its camera (``W × H``, with ``pixel_spacing_mm``).
        size: The network's input size S.
        fill: The share of S the image's longer side takes (0 < fill ≤ 1; the rest is air):
            below 1 the hand is shown smaller, as a zoom of the training data does.

    Returns:
        The normalised input ``(1, 1, S, S)`` and the :class:`Fit`.

    Raises:
        InputError: a camera of another size than the image, a camera without pixel spacing, a
            flat image, a fill outside (0, 1].
    """
    if not is_real(fill) or not 0.0 < float(fill) <= 1.0:
        raise InputError(f"must lie in (0, 1], got {fill!r}", key="fill")
    img = np.asarray(image)
    if img.ndim != 2:
        raise InputError(f"a radiograph is a 2-D array, got shape {img.shape}", key="image")
    h, w = img.shape
    if (camera.width, camera.height) != (w, h):
        raise InputError(f"the camera is {camera.width} x {camera.height} pixels but the image "
                         f"is {w} x {h}", key="camera")
    _sdd(camera)
    if not np.isfinite(img).all():
        raise InputError("the image holds NaN or infinite pixels", key="image")
    if float(np.ptp(img)) <= 0.0:
        raise InputError("the image is flat (zero variance): nothing to see", key="image")
    scale = float(fill) * size / max(w, h)
    iw, ih = max(1, round(w * scale)), max(1, round(h * scale))
    sx, sy = iw / w, ih / h
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    if (iw, ih) != (w, h):
        x = F.interpolate(x, size=(ih, iw), mode="bilinear", align_corners=False,
                          antialias=True)
    x = normalise(x)
    pad = torch.full((1, 1, size, size), float(torch.quantile(x.flatten(), 0.01)))
    pad[..., :ih, :iw] = x
    k = camera.intrinsic.copy()
    k[0] *= sx
    k[1] *= sy
    spacing = camera.pixel_spacing_mm
    assert spacing is not None
    net_camera = Camera(k, camera.camera_from_world, size, size,
                        (spacing[0] / sx, spacing[1] / sy))
    return pad, Fit(size, w, h, iw, ih, camera, net_camera)


def unfit(maps: torch.Tensor, fit: Fit) -> torch.Tensor:
    """Maps ``(C, S, S)`` on the network's grid → ``(C, H, W)`` on the original detector."""
    inner = maps[None, :, :fit.inner_height, :fit.inner_width].float()
    if (fit.inner_width, fit.inner_height) != (fit.width, fit.height):
        inner = F.interpolate(inner, size=(fit.height, fit.width), mode="bilinear",
                              align_corners=False)
    return inner[0]


@dataclass(frozen=True)
class Augmentation:
    """One training sample's drawn augmentation (see :func:`augment`).

    Attributes:
        angle: In-plane turn, radians.
        mirror: Mirror the image (a left hand from a right one).
        zoom: Zoom factor (heights in input pixels scale with it).
        gamma: The tone curve's exponent.
        shift: Shift of the sampling grid, normalised coordinates ``(x, y)``.
    """

    angle: float
    mirror: bool
    zoom: float
    gamma: float
    shift: tuple[float, float]

    def matrix(self) -> torch.Tensor:
        """``(2, 3)`` map from output to input normalised coordinates (``affine_grid``'s)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        z = self.zoom
        mat = torch.tensor([[c / z, -s / z, self.shift[0]], [s / z, c / z, self.shift[1]]],
                           dtype=torch.float32)
        if self.mirror:
            mat[:, 0] = -mat[:, 0]
        return mat

    def record(self) -> dict[str, float]:
        """The drawn values, as :func:`augment` reports them."""
        return {"angle": self.angle, "mirror": float(self.mirror), "zoom": self.zoom,
                "gamma": self.gamma}


def draw_augmentation(rng: np.random.Generator, *, zoom: tuple[float, float] = (0.8, 1.15),
                      gamma: tuple[float, float] = (0.7, 1.4)) -> Augmentation:
    """Draw one sample's augmentation from its generator (zoom log-uniform, gamma uniform)."""
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    mirror = bool(rng.random() < 0.5)
    z = float(math.exp(rng.uniform(math.log(zoom[0]), math.log(zoom[1]))))
    g = float(rng.uniform(*gamma))
    shift = rng.uniform(-0.08, 0.08, size=2)
    return Augmentation(angle, mirror, z, g, (float(shift[0]), float(shift[1])))


def augment_batch(image: torch.Tensor, hit: torch.Tensor, front: torch.Tensor,
                  back: torch.Tensor, augmentations: list[Augmentation], *, outline: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply drawn augmentations to a batch, on the batch's device (CPU or GPU).

    Args:
        image: ``(B, 1, S, S)`` normalised inputs.
        hit: ``(B, NB, S, S)`` bool.
        front: ``(B, NB, S, S)`` heights, height units (anything where ``hit`` is False).
        back: ``(B, NB, S, S)`` heights, as ``front``.
        augmentations: One per item.
        outline: Where a resampled pixel mixes pixels with and without a height (a bone's
            outline), give it the weighted mean of those with one, if they carry at least half
            of its weight (heights times coverage and the coverage resampled alike, then
            divided); without, such a pixel has no height (NaN), as before.

    Returns:
        ``image``, ``hit``, ``front``, ``back`` and ``valid`` ``(B, S, S)``, as :func:`augment`
        returns them for each item.
    """
    b, nb, size = image.shape[0], hit.shape[1], image.shape[-1]
    if len(augmentations) != b:
        raise InputError(f"{len(augmentations)} augmentations for {b} items",
                         key="augmentations")
    dev = image.device
    mat = torch.stack([a.matrix() for a in augmentations]).to(dev)
    grid = F.affine_grid(mat, [b, 1, size, size], align_corners=False)
    known = (torch.isfinite(front) & torch.isfinite(back)).float()
    stack = torch.cat([image.float(), hit.float(), torch.nan_to_num(front.float()),
                       torch.nan_to_num(back.float()), known,
                       torch.ones_like(image.float())], dim=1)
    out = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    img = out[:, :1]
    valid = out[:, -1] > 0.999
    air = torch.quantile(image.flatten(1).float(), 0.01, dim=1)
    img = torch.where(valid[:, None], img, air[:, None, None, None].expand_as(img))
    g = torch.tensor([a.gamma for a in augmentations], dtype=torch.float32,
                     device=dev)[:, None, None, None]
    img = img.sign() * img.abs() ** g  # sign-preserving: the few values below 0 keep their order
    hit_t = out[:, 1:1 + nb] > 0.5
    # heights are resampled bilinearly only where every contributing pixel had a height, or
    # with ``outline`` as the mean of those that had one (unknown heights are 0 in the stack)
    cover = out[:, 1 + 3 * nb:1 + 4 * nb]
    inside = cover > (0.5 if outline else 0.999)
    z = torch.tensor([a.zoom for a in augmentations], dtype=torch.float32,
                     device=dev)[:, None, None, None]
    scale = z / cover.clamp_min(0.5) if outline else z
    front_t = out[:, 1 + nb:1 + 2 * nb] * scale
    back_t = out[:, 1 + 2 * nb:1 + 3 * nb] * scale
    return img, hit_t, torch.where(inside, front_t, torch.nan), \
        torch.where(inside, back_t, torch.nan), valid


def augment(image: torch.Tensor, hit: torch.Tensor, front: torch.Tensor, back: torch.Tensor,
            rng: np.random.Generator, *, zoom: tuple[float, float] = (0.8, 1.15),
            gamma: tuple[float, float] = (0.7, 1.4)
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                       dict[str, float]]:
    """A random in-plane turn, mirror and zoom of one training sample, and a tone curve.

    The radiograph of a left hand is the mirror image of a right hand's (with the camera mirrored
    to match), and any in-plane orientation is the same view with the detector rolled: heights
    are invariant under both, so the maps are turned with the image and keep their values.
    A zoom by ``z`` (a detector of another pixel size) multiplies heights in input pixels by
    ``z``. :func:`draw_augmentation` then :func:`augment_batch` on a batch of one.

    Args:
        image: ``(1, S, S)`` normalised input.
        hit: ``(NB, S, S)`` bool.
        front: ``(NB, S, S)`` heights, height units (anything where ``hit`` is False).
        back: ``(NB, S, S)`` heights, height units (anything where ``hit`` is False).
        rng: The sample's generator.
        zoom: Range the zoom factor is drawn from (log-uniform).
        gamma: Range the tone curve's gamma is drawn from (uniform).

    Returns:
        ``image``, ``hit``, ``front``, ``back`` turned (heights NaN wherever a resampled value
        would mix in a pixel without one), ``valid`` ``(S, S)`` bool (pixels that came from
        inside the ``S × S`` input, padding included), and the drawn values.
    """
    aug = draw_augmentation(rng, zoom=zoom, gamma=gamma)
    img, hit_t, front_t, back_t, valid = augment_batch(image[None], hit[None], front[None],
                                                      back[None], [aug])
    return img[0], hit_t[0], front_t[0], back_t[0], valid[0], aug.record()
