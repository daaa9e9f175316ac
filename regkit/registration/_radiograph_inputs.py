"""Input checks of the 2D–3D registration, and the radiographs' flat pixels.

The CT, the cameras, the radiographs, their masks and bones, each refused with a message that names
the argument; and the radiographs' flat (collimated, padded) pixels, found so that the metric can
leave them out.

Used by :func:`~regkit.registration.radiograph_registration.register_2d3d` and its report.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import product
from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.errors import InputError, ShapeError
from regkit.geometry.camera import Camera
from regkit.io.radiograph import Radiograph, to_line_integral
from regkit.labels import check_present, present_labels
from regkit.registration._volume_inputs import as_volume, refuse_constant
from regkit.render.base import bone_key
from regkit.volume import Volume, hu_to_mu

__all__ = [
    "MIN_PIXELS_IN_VIEW",
    "check_bones",
    "check_cameras",
    "check_images",
    "check_in_view",
    "check_masks",
    "check_variance",
    "check_volume",
    "check_volume_source",
    "flat_mask",
]

# Flat-pixel detection: a 3x3 neighbourhood whose range is at most this fraction of the image's
# value range counts as exactly constant.
_FLAT_RTOL = 1e-7
# Pixels of dilation around flat (collimated) regions, at full resolution.
_FLAT_MARGIN_PX = 2


def check_volume(volume: Any, mu_water: float) -> Volume:
    """The CT in μ (1/mm; HU converted with ``mu_water``), refused if not a non-constant Volume."""
    ct, to_mu = check_volume_source(volume, mu_water)
    return ct if to_mu is None else ct.to_mu(mu_water)


def check_volume_source(volume: Any, mu_water: float
                        ) -> tuple[Volume, Callable[[NDArray[np.float32]], NDArray[np.float32]]
                                   | None]:
    """The CT as given and the elementwise map of its values to μ (None when already in μ).

    Refused as :func:`check_volume` refuses. The map lets the pyramid convert slab by slab
    instead of making a full-size μ copy of the CT first.
    """
    volume = as_volume(volume, "volume")
    if volume.units not in ("HU", "mu"):
        raise InputError(f"must be in 'HU' or 'mu', got units {volume.units!r}", key="volume")
    to_mu = None if volume.units == "mu" else partial(hu_to_mu, mu_water=mu_water)
    ends = np.array([float(volume.data.min()), float(volume.data.max())])
    if to_mu is not None:   # μ is a non-decreasing function of HU: its extremes are theirs
        ends = to_mu(ends).astype(np.float64)
    if ends[1] - ends[0] <= 0:
        raise InputError("the CT is constant: no DRR of it can be registered", key="volume")
    return volume, to_mu


def check_cameras(cameras: Any) -> list[Camera]:
    """One camera or a sequence of them, as a non-empty list."""
    if isinstance(cameras, Camera):
        cameras = [cameras]
    try:
        cams = list(cameras)
    except TypeError:
        raise InputError(f"must be a sequence of Camera, got {type(cameras).__name__}",
                         key="cameras") from None
    if not cams:
        raise InputError("needs at least one camera", key="cameras")
    for i, c in enumerate(cams):
        if not isinstance(c, Camera):
            raise InputError(f"must be a Camera, got {type(c).__name__}", key=f"cameras[{i}]")
    return cams


def check_images(images: Any, cameras: list[Camera], kind: str) -> list[NDArray[np.float32]]:
    """One float32 line-integral image per camera, of its detector's size."""
    if kind not in ("line-integral", "transmitted"):
        raise InputError(f"must be 'line-integral' or 'transmitted', got {kind!r}",
                         key="image_kind")
    if isinstance(images, np.ndarray | Radiograph):
        images = [images]
    try:
        items = list(images)
    except TypeError:
        raise InputError(f"must be a sequence of arrays or Radiographs, got "
                         f"{type(images).__name__}", key="images") from None
    if len(items) != len(cameras):
        raise InputError(f"{len(items)} image(s) for {len(cameras)} camera(s): give one "
                         "image per camera, in the same order", key="images")
    out = []
    for i, (item, cam) in enumerate(zip(items, cameras, strict=True)):
        key = f"images[{i}]"
        if isinstance(item, Radiograph):
            values = np.array(item.image, dtype=np.float32)   # already line integrals
        else:
            raw = np.asarray(item)
            if raw.ndim != 2:
                raise ShapeError(f"{key} must be a 2-D image (H, W), got shape {raw.shape}")
            if raw.size == 0:
                raise InputError("is empty (0 pixels)", key=key)
            try:
                values = np.array(to_line_integral(raw, kind), dtype=np.float32)  # type: ignore[arg-type]
            except InputError as err:
                raise InputError(err.reason, key=key) from None
        if values.shape != (cam.height, cam.width):
            raise ShapeError(f"{key} is {values.shape[1]} x {values.shape[0]} pixels (width x "
                             f"height) but camera {i}'s detector is {cam.width} x {cam.height}")
        out.append(values)
    return out


def check_masks(masks: Any, images: list[NDArray[np.float32]]) -> list[NDArray[np.float32] | None]:
    """One float32 weight map in [0, 1] per image (None: no mask), each selecting a pixel."""
    if masks is None:
        return [None] * len(images)
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    items = list(masks)
    if len(items) != len(images):
        raise InputError(f"{len(items)} mask(s) for {len(images)} image(s): give one per "
                         "image (None for none)", key="image_masks")
    out: list[NDArray[np.float32] | None] = []
    for i, (m, img) in enumerate(zip(items, images, strict=True)):
        key = f"image_masks[{i}]"
        if m is None:
            out.append(None)
            continue
        a = np.asarray(m)
        if a.shape != img.shape:
            raise ShapeError(f"{key} has shape {a.shape} but its image has shape {img.shape}")
        if a.dtype == np.bool_:
            w = a.astype(np.float32)
        elif np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                raise InputError("holds NaN or infinite values", key=key)
            w = (a != 0).astype(np.float32) if np.issubdtype(a.dtype, np.integer) \
                else np.clip(a, 0.0, 1.0).astype(np.float32)
        else:
            raise InputError(f"must be boolean or numeric, got dtype {a.dtype}", key=key)
        if not (w > 0).any():
            raise InputError("selects no pixel", key=key)
        out.append(w)
    return out


def check_variance(images: list[NDArray[np.float32]],
                   weights: list[NDArray[np.float32] | None]) -> None:
    """Refuse an image that is constant (inside its mask, where it has one)."""
    for i, (img, w) in enumerate(zip(images, weights, strict=True)):
        refuse_constant(img if w is None else img[w > 0], w is not None, f"images[{i}]")


MIN_PIXELS_IN_VIEW = 16
"""The fewest detector pixels the CT's box must cover in each view at the initial pose."""


def check_in_view(volume: Volume, cameras: list[Camera]) -> None:
    """Refuse views in which the CT cannot be seen at the initial pose.

    The CT's box (its eight corner voxels' centres, world) is projected into each view; a view
    where every corner lies behind the source, or where the box's projection covers fewer than
    :data:`MIN_PIXELS_IN_VIEW` of the detector's pixels, renders an empty DRR that no search can
    start from. A source inside the box is not judged.

    Raises:
        InputError: a view that cannot see the CT, naming it.
    """
    last = np.asarray(volume.shape[:3], dtype=np.float64) - 1.0
    world = volume.index_to_world(np.array(list(product(*[(0.0, n) for n in last]))))
    for i, cam in enumerate(cameras):
        uv = cam.project(world)
        ahead = np.isfinite(uv).all(axis=1)
        if not ahead.any():
            raise InputError(f"view {i} looks away from the CT: the whole CT lies behind its "
                             "source at the initial pose", key="cameras")
        if not ahead.all():
            continue
        lo = np.clip(uv.min(axis=0), 0.0, [cam.width, cam.height])
        hi = np.clip(uv.max(axis=0), 0.0, [cam.width, cam.height])
        covered = float(np.prod(hi - lo))
        if covered < MIN_PIXELS_IN_VIEW:
            raise InputError(f"the CT covers {covered:.3g} of view {i}'s pixels at the initial "
                             f"pose (at least {MIN_PIXELS_IN_VIEW} needed): it lies outside the "
                             "view or projects to a point; check the camera's pose and focal "
                             "lengths, and the CT's position and voxel size", key="cameras")


def check_bones(bones: Any, volume: Volume) -> tuple[int, ...] | None:
    """The bones' labels as a sorted key, each present in the volume's label map."""
    if bones is None:
        return None
    key = bone_key(bones)
    if volume.labels is None:
        raise InputError("bones were given but the volume has no label map (load it with "
                         "labels=...)", key="bones")
    check_present(key, present_labels(volume.labels), key="bones")
    return key


def flat_mask(image: NDArray[np.float32]) -> NDArray[np.float32] | None:
    """Weights that drop the flat (exactly constant 3×3) pixels and a margin; None: none flat."""
    from scipy.ndimage import binary_dilation, maximum_filter, minimum_filter

    span = float(image.max() - image.min())
    local = maximum_filter(image, size=3, mode="nearest") - minimum_filter(image, size=3,
                                                                           mode="nearest")
    flat = local <= _FLAT_RTOL * max(span, 1e-30)
    if not flat.any():
        return None
    flat = binary_dilation(flat, iterations=_FLAT_MARGIN_PX)
    if flat.mean() > 0.9:   # nearly everything flat: a synthetic image; do not mask
        return None
    return (~flat).astype(np.float32)
