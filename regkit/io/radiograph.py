"""Radiographs (single X-ray images) from ``.npy``, PNG, TIFF and DICOM files.

Convention:
    A :class:`Radiograph` holds the line-integral image ``∫ μ dl`` along each pixel's ray
    (dimensionless, the exponent of Beer–Lambert ``I = I0 · exp(−image)``), so bone is bright.
    Arrays are indexed ``[row, column]``; pixel ``(u, v) = (column, row)`` as in the camera frame.

    Files hold either line integrals already (``kind="line-integral"``, the default: a DRR, or a
    radiograph displayed bone-bright) or detector intensities (``kind="transmitted"``, I: bone
    dark), which :func:`to_line_integral` turns into ``−log(I / I0)``.

    Worked example: a transmitted pixel of 250 with ``I0 = 1000`` becomes ``−log(0.25) ≈ 1.386``.

DICOM radiographs are rescaled (RescaleSlope / RescaleIntercept) and MONOCHROME1 images inverted
over their value range, so that larger values always mean brighter display, before ``kind`` is
applied. When the file carries the C-arm geometry (DistanceSourceToDetector, ImagerPixelSpacing and
DistanceSourceToPatient or DistanceSourceToIsocenter) a camera is built with
:func:`regkit.geometry.carm.camera_from_carm`, DICOM's positioner angles converted from degrees to
radians here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray

from regkit.errors import FileFormatError, InputError, ShapeError, UserInputError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from regkit.geometry.camera import Camera

__all__ = [
    "NEGATIVE_TRANSMITTED_FRACTION",
    "TRANSMITTED_FLOOR",
    "ImageKind",
    "Radiograph",
    "load_radiograph",
    "to_line_integral",
]

PathLike = str | os.PathLike[str]

ImageKind = Literal["line-integral", "transmitted"]
"""What a radiograph file's values are: line integrals (bone bright) or transmitted intensity."""

_KINDS: tuple[str, ...] = get_args(ImageKind)

TRANSMITTED_FLOOR = 1e-6
"""Transmitted intensities are clamped to at least ``TRANSMITTED_FLOOR · I0`` before the log, so a
dead or fully shielded pixel becomes the line integral ``−log(1e-6) ≈ 13.8`` instead of infinity."""

# Where the source-to-isocentre distance is read from, in order of preference.
_ISOCENTER_FIELDS = ("DistanceSourceToPatient", "DistanceSourceToIsocenter")

# Pillow modes read exactly, and what they hold.
_GRAY_MODES = ("1", "L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@dataclass(frozen=True, eq=False)
class Radiograph:
    """One X-ray image as line integrals, with the view's camera when the file gave one.

    Attributes:
        image: (H, W) line integrals (dimensionless, bone bright), indexed ``[row, column]``;
            stored as a read-only float32 array (converted if needed, the caller's array is never
            modified). Must be non-empty and finite.
        camera: The view's camera (intrinsics in pixels, pose against the RAS+ world), or ``None``.
            Its ``width`` × ``height`` must be ``W`` × ``H``.
        source: Where the image came from (a file path), for messages.
        geometry_missing: DICOM keywords of the geometry fields the file lacked. ``camera`` is
            ``None`` when a required one is missing: DistanceSourceToDetector, ImagerPixelSpacing,
            or both DistanceSourceToPatient and DistanceSourceToIsocenter (either gives the
            source-to-isocentre distance, and they are listed only when both are absent).
            Missing positioner angles are taken as 0 and listed too. Empty for formats that
            carry no geometry.

    Raises:
        ShapeError: ``image`` is not a non-empty 2-D real array, or the camera's size differs.
        InputError: ``image`` holds NaN or infinite values.
    """

    image: np.ndarray
    camera: Camera | None = None
    source: str | None = None
    geometry_missing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.ndim != 2 or image.size == 0:
            raise ShapeError(f"Radiograph image must be a non-empty 2-D array (H, W), got shape "
                             f"{image.shape}")
        if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
            raise ShapeError(f"Radiograph image must hold real numbers, got dtype {image.dtype}")
        _check_finite(image, self.source)
        image = image.astype(np.float32, copy=False).view()
        image.flags.writeable = False
        object.__setattr__(self, "image", image)
        if self.camera is not None and \
                (self.camera.width, self.camera.height) != (image.shape[1], image.shape[0]):
            raise ShapeError(f"camera detector is {self.camera.width}x{self.camera.height} pixels "
                             f"but the image is {image.shape[1]}x{image.shape[0]} (width x height)")
        object.__setattr__(self, "geometry_missing", tuple(self.geometry_missing))

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        height, width = self.image.shape
        return (int(height), int(width))


def _check_finite(image: np.ndarray, source: str | Path | None) -> None:
    """Refuse NaN and infinite pixels, saying how many of each there are."""
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
        n_nan = int(np.count_nonzero(np.isnan(image)))
        n_inf = int(np.count_nonzero(np.isinf(image)))
        raise InputError(f"holds {n_nan} NaN and {n_inf} infinite pixel(s); every pixel needs a "
                         "finite value", source=source, key="image")


def _line_integral(image: np.ndarray, kind: str, i0: float | None,
                   source: str | Path | None) -> NDArray[np.float32]:
    """:func:`to_line_integral`, with ``source`` named in every error."""
    if kind not in _KINDS:
        raise InputError(f"must be one of {', '.join(_KINDS)}; got {kind!r}", source=source,
                         key="kind")
    values = np.asarray(image)
    if values.size == 0:
        raise InputError("is empty (0 pixels)", source=source, key="image")
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise InputError(f"must hold real numbers, got dtype {values.dtype}", source=source,
                         key="image")
    _check_finite(values, source)
    if kind == "line-integral":
        return values.astype(np.float32)
    intensity = values.astype(np.float64)
    negative = int(np.count_nonzero(intensity < -NEGATIVE_TRANSMITTED_FRACTION
                                    * max(float(intensity.max()), 0.0)))
    if negative > NEGATIVE_TRANSMITTED_FRACTION * intensity.size:
        raise InputError(f"holds {negative} pixels ({100 * negative / intensity.size:.1f} %) "
                         "below minus 1 % of its brightest, which transmitted intensities "
                         "cannot be: is it a line-integral image, or offset?", source=source,
                         key="image")
    reference = float(intensity.max()) if i0 is None else float(i0)
    if not (math.isfinite(reference) and reference > 0):
        what = "the brightest pixel" if i0 is None else "i0"
        raise InputError(f"unattenuated intensity I0 ({what}) must be positive and finite, got "
                         f"{reference!r}", source=source, key="i0")
    np.maximum(intensity, TRANSMITTED_FLOOR * reference, out=intensity)
    return (-np.log(intensity / reference)).astype(np.float32)


NEGATIVE_TRANSMITTED_FRACTION = 0.01
"""A transmitted image may hold this fraction of pixels below minus this fraction of its
brightest pixel, clamped like dark ones; more is refused. Noise about a subtracted dark frame
(a collimated border, say) stays far above that."""


def to_line_integral(image: ArrayLike, kind: ImageKind, *, i0: float | None = None
                     ) -> NDArray[np.float32]:
    """Turn an image into line integrals ``∫ μ dl`` (float32, same shape).

    Args:
        image: Pixel values, any shape (usually (H, W)), non-empty and finite.
        kind: ``"line-integral"`` (returned as float32 unchanged) or ``"transmitted"``: detector
            intensity I, converted to ``−log(I / I0)`` after clamping I to at least
            ``TRANSMITTED_FLOOR · I0``. Pixels brighter than I0 give negative values.
        i0: Unattenuated intensity for ``"transmitted"``; default the image's maximum.

    Raises:
        InputError: unknown ``kind``; empty, NaN or infinite image; a non-positive I0; a
            transmitted image of more than 1 % pixels below −1 % of its brightest.
    """
    return _line_integral(np.asarray(image), kind, i0, None)


# ------------------------------------------------------------------------------------- readers

_Read = tuple[np.ndarray, "Camera | None", tuple[str, ...]]


def _read_npy(path: Path) -> _Read:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FileFormatError(f"not a readable .npy array ({exc})", source=path) from exc
    if not isinstance(array, np.ndarray):
        raise FileFormatError("holds an archive of arrays, not one image", source=path)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise FileFormatError(f"expected a 2-D image (H, W) or (1, H, W), got shape "
                              f"{array.shape}", source=path)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise FileFormatError(f"pixels must be real numbers, got dtype {array.dtype}",
                              source=path)
    return array, None, ()


def _read_pillow(path: Path) -> _Read:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            frames = int(getattr(picture, "n_frames", 1))
            picture.load()
            mode = picture.mode
            array = np.array(picture)
    except UnidentifiedImageError as exc:
        raise FileFormatError(f"not a readable {path.suffix} image", source=path) from exc
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise FileFormatError(f"truncated or corrupt image ({exc})", source=path) from exc
    if frames != 1:
        raise FileFormatError(f"holds {frames} images (pages); expected one", source=path)
    if mode == "RGB":
        if not (np.array_equal(array[..., 0], array[..., 1])
                and np.array_equal(array[..., 0], array[..., 2])):
            raise FileFormatError("is a colour (RGB) image; a radiograph must be grayscale",
                                  source=path)
        array = array[..., 0]
    elif mode not in _GRAY_MODES:
        raise FileFormatError(f"image mode {mode!r} is not supported; expected grayscale "
                              f"({', '.join(_GRAY_MODES)}) or RGB with equal channels",
                              source=path)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return array, None, ()


def _dicom_camera(dataset: Dataset, width: int, height: int, path: Path
                  ) -> tuple[Camera | None, tuple[str, ...]]:
    """The C-arm camera described by a DICOM radiograph's geometry fields, and what was missing."""
    from regkit.io.dicom import read_number, read_numbers

    def absent(keyword: str) -> bool:
        return dataset.get(keyword) in (None, "")

    # The source-to-isocentre distance comes from either field; both are missing only together.
    isocenter_key = next((k for k in _ISOCENTER_FIELDS if not absent(k)), None)
    missing = [k for k in ("DistanceSourceToDetector", "ImagerPixelSpacing") if absent(k)]
    if isocenter_key is None:
        missing.extend(_ISOCENTER_FIELDS)
    missing.extend(k for k in ("PositionerPrimaryAngle", "PositionerSecondaryAngle") if absent(k))
    if isocenter_key is None or "DistanceSourceToDetector" in missing \
            or "ImagerPixelSpacing" in missing:
        return None, tuple(missing)

    row_spacing, column_spacing = read_numbers(dataset, "ImagerPixelSpacing", 2, path)
    from regkit.geometry.carm import camera_from_carm

    try:
        camera = camera_from_carm(
            source_to_detector_mm=read_number(dataset, "DistanceSourceToDetector", path),
            source_to_isocenter_mm=read_number(dataset, isocenter_key, path),
            pixel_spacing_mm=(column_spacing, row_spacing),
            width=width,
            height=height,
            primary_angle=math.radians(read_number(dataset, "PositionerPrimaryAngle", path,
                                               default=0.0)),
            secondary_angle=math.radians(read_number(dataset, "PositionerSecondaryAngle", path,
                                                 default=0.0)),
        )
    except UserInputError as exc:
        raise FileFormatError(f"inconsistent C-arm geometry ({exc})", source=path) from exc
    return camera, tuple(missing)


def _read_dicom(path: Path) -> _Read:
    from regkit.io.dicom import read_dataset, rescale, stored_pixels

    dataset = read_dataset(path)
    stored = stored_pixels(dataset, path)
    slope, intercept = rescale(dataset, path)
    values = stored.astype(np.float64) * slope + intercept
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "MONOCHROME1":
        # Invert over the full range the stored bits can hold (after rescaling), so that the
        # result does not depend on which values this particular image happens to contain.
        bits = int(dataset.get("BitsStored", stored.dtype.itemsize * 8))
        signed = int(dataset.get("PixelRepresentation", 0)) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        values = (lo + hi) * slope + 2 * intercept - values
    elif photometric != "MONOCHROME2":
        raise FileFormatError(f"photometric interpretation {photometric!r} is not grayscale",
                              source=path, key="PhotometricInterpretation")
    camera, missing = _dicom_camera(dataset, width=values.shape[1], height=values.shape[0],
                                    path=path)
    return values, camera, missing


def _is_dicom(path: Path) -> bool:
    """Whether ``path`` has the DICOM part-10 signature ('DICM' after a 128-byte preamble)."""
    with path.open("rb") as stream:
        header = stream.read(132)
    return len(header) == 132 and header[128:] == b"DICM"


_READERS: dict[str, Callable[[Path], _Read]] = {
    ".npy": _read_npy,
    ".png": _read_pillow,
    ".tif": _read_pillow,
    ".tiff": _read_pillow,
    ".dcm": _read_dicom,
    ".dicom": _read_dicom,
}


def load_radiograph(path: PathLike, *, kind: ImageKind = "line-integral",
                    i0: float | None = None) -> Radiograph:
    """Read a radiograph and convert it to line integrals.

    Formats, chosen by suffix: ``.npy`` (2-D, or 3-D with a single image first), ``.png``,
    ``.tif``/``.tiff`` (8- and 16-bit grayscale, 32-bit integer and float TIFF, RGB only when the
    three channels are equal), and ``.dcm``/``.dicom`` or any other name when the file carries the
    DICOM signature.

    Args:
        path: The image file.
        kind: What the file's values are (see :func:`to_line_integral`).
        i0: Unattenuated intensity for ``kind="transmitted"``; default the image's maximum.

    Returns:
        The :class:`Radiograph`, with a camera for DICOM files that carry the C-arm geometry.

    Raises:
        FileFormatError: missing file, unknown suffix, truncated or corrupt file, wrong number of
            dimensions, empty image, NaN or infinite pixels, colour image, inconsistent geometry.
        InputError: unknown ``kind`` or a non-positive I0.
    """
    source = Path(path)
    if not source.is_file():
        raise FileFormatError("no such file", source=source)
    reader = _READERS.get(source.suffix.lower())
    if reader is None and _is_dicom(source):  # DICOM files are often named without a suffix
        reader = _read_dicom
    if reader is None:
        raise FileFormatError(f"unknown radiograph format '{source.suffix}'; expected one of "
                              f"{', '.join(sorted(_READERS))} (or a DICOM file)", source=source)
    values, camera, missing = reader(source)
    if values.size == 0:
        raise FileFormatError("is an empty image (0 pixels)", source=source)
    try:
        _check_finite(values, source)
    except InputError as exc:
        raise FileFormatError(exc.reason, source=source, key=exc.key) from exc
    image = _line_integral(values, kind, i0, source)
    return Radiograph(image, camera=camera, source=str(source), geometry_missing=missing)
