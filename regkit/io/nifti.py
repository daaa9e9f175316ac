"""NIfTI volumes and label maps (``.nii``, ``.nii.gz``) read and written with nibabel.

Convention:
    The world frame is the one nibabel reads: ``img.affine`` maps voxel index (i, j, k) of the
    stored array to RAS+ millimetres, and becomes :attr:`Volume.world_from_index` as it is. The
    array is never reoriented, so a file stored LAS loads with ``data[i, j, k]`` exactly as on
    disk and a negative first column in its affine.

Writing stores the affine as both sform and qform (code 1, scanner). The NIfTI-1 header holds the
sform in float32, so a written affine comes back to about 1e-7 relative (exactly when its entries
are float32 numbers); voxel values come back exactly.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from numpy.typing import NDArray

from regkit.errors import FileFormatError, InputError, ShapeError
from regkit.utils.files import atomic_path
from regkit.volume import Volume

__all__ = ["NiftiFile", "load_labels", "load_nifti", "read_nifti_file", "save_nifti"]

PathLike = str | os.PathLike[str]

# What nibabel, gzip and zlib raise on a file that is not NIfTI, truncated or corrupt.
_READ_ERRORS = (ImageFileError, HeaderDataError, EOFError, zlib.error, OSError)

# A label grid matches the image grid when their affines agree to this, mm (and exactly in shape).
_COPY_PLANES = 16   # planes of the middle axis per slab in _c_order
_GRID_TOLERANCE_MM = 1e-4

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, eq=False)
class NiftiFile:
    """A NIfTI file's bytes, read and checked but not yet parsed: see :func:`read_nifti_file`.

    ``raw`` is the decompressed file of a gzip NIfTI, None for an uncompressed one (nibabel
    reads that itself when it is loaded).
    """

    source: Path
    raw: bytes | None


def read_nifti_file(path: PathLike) -> NiftiFile:
    """Read a NIfTI file's bytes, decompressed and their integrity checked; parse nothing yet.

    The slow part of reading a ``.nii.gz`` (zlib's inflate and its CRC: 0.4 s of the 0.55 s
    for a 35 MB CT), made with no import and no change to the warnings filters (nibabel sets
    some while it scales voxels, and they are process-wide), so it can run on a thread while
    the caller imports. Give the result to :func:`load_nifti` or :func:`load_labels`.

    A gzip file is decompressed whole, so that its CRC and length are verified: nibabel alone
    reads only the bytes it needs and would return damaged voxels from a corrupt stream.

    Raises:
        FileFormatError: the file is missing, or its gzip stream is truncated or corrupt.
    """
    source = Path(path)
    if not source.is_file():
        raise FileFormatError("no such file", source=source)
    with source.open("rb") as stream:
        compressed = stream.read(2) == _GZIP_MAGIC
    if not compressed:
        return NiftiFile(source, None)
    try:
        return NiftiFile(source, gzip.decompress(source.read_bytes()))
    except (EOFError, zlib.error, OSError) as exc:
        raise FileFormatError(f"truncated or corrupt gzip data ({exc})", source=source) from exc


def _open_image(file: NiftiFile) -> nib.Nifti1Pair:
    """A NIfTI file as a nibabel image (the file read and checked by :func:`read_nifti_file`)."""
    source, raw = file.source, file.raw
    if raw is not None:
        for image_class in (nib.Nifti2Image, nib.Nifti1Image):
            header_class = image_class.header_class
            if header_class.may_contain_header(raw[:header_class.sizeof_hdr]):
                try:
                    return image_class.from_bytes(raw)
                except _READ_ERRORS as exc:
                    raise FileFormatError(f"not a readable NIfTI file ({exc})",
                                          source=source) from exc
        raise FileFormatError("is gzip-compressed but holds no NIfTI header", source=source)
    try:
        image = nib.load(source, mmap=False)
    except _READ_ERRORS as exc:
        raise FileFormatError(f"not a readable NIfTI file ({exc})", source=source) from exc
    if not isinstance(image, nib.Nifti1Pair):  # Nifti1Image, Nifti2Image and pairs derive from it
        raise FileFormatError(f"is a {type(image).__name__}, not a NIfTI image", source=source)
    return image


def _as_file(path: PathLike | NiftiFile) -> NiftiFile:
    """``path`` read by :func:`read_nifti_file`, unless it was already."""
    return path if isinstance(path, NiftiFile) else read_nifti_file(path)


_UNITS_TAG = "regkit units="
"""How :func:`save_nifti` records a volume's units in the header's ``descrip`` field (80 bytes of
free text that NIfTI tools keep and show), so that a μ volume is not read back as HU."""


def _units_of(image: nib.Nifti1Pair) -> str:
    """The units :func:`save_nifti` recorded in the header, else ``"HU"`` (a CT's)."""
    try:
        text = bytes(image.header["descrip"].item()).decode("ascii", "replace")
    except (KeyError, ValueError, AttributeError):
        return "HU"
    for word in text.split(";"):
        word = word.strip()
        if word.startswith(_UNITS_TAG) and word[len(_UNITS_TAG):] in ("HU", "mu", "other"):
            return word[len(_UNITS_TAG):]
    return "HU"


def _read(file: NiftiFile) -> tuple[np.ndarray, NDArray[np.float64], str]:
    """A NIfTI file in memory: its (I, J, K) array, scaling applied, its affine (4, 4) and units.

    Raises:
        FileFormatError: the file is not NIfTI, damaged, not 3-D, or holds non-real data.
    """
    source = file.source
    image = _open_image(file)
    try:
        # asanyarray applies scl_slope / scl_inter; without scaling the stored dtype is kept.
        data = np.asanyarray(image.dataobj)
    except _READ_ERRORS as exc:
        raise FileFormatError(f"truncated or corrupt voxel data ({exc})", source=source) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise FileFormatError(f"expected a 3-D image (or 4-D with one volume), got shape "
                              f"{data.shape}", source=source)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise FileFormatError(f"voxels must be real numbers, got dtype {data.dtype}",
                              source=source)
    if np.issubdtype(data.dtype, np.floating):
        n_nan = int(np.count_nonzero(np.isnan(data)))
        n_inf = int(np.count_nonzero(np.isinf(data)))
        if n_nan or n_inf:
            raise FileFormatError(f"holds {n_nan} NaN and {n_inf} infinite voxel(s); every voxel "
                                  "needs a finite value", source=source)
    # NIfTI stores i fastest, so nibabel hands back a Fortran-ordered array; everything
    # downstream (texture uploads, crops, label boxes) walks (I, J, K) in C order and is several
    # times slower on strided data, so the one copy is made here.
    return _c_order(data), np.asarray(image.affine, dtype=np.float64), _units_of(image)


def _c_order(data: np.ndarray) -> np.ndarray:
    """``data`` as a C-ordered array: itself if it is one, else a copy.

    A Fortran-ordered 3-D array is copied slab by slab along its middle axis, 16 planes at a
    time, so that the strided reads of a slab stay in cache: 0.16-0.18 s for the 512 × 512 ×
    133 int16 chest CT, where ``np.ascontiguousarray``'s single transposing pass took 0.3-0.5 s.
    """
    if data.flags.c_contiguous:
        return data
    if data.ndim != 3 or not data.flags.f_contiguous:
        return np.ascontiguousarray(data)
    out = np.empty(data.shape, dtype=data.dtype)
    for j in range(0, data.shape[1], _COPY_PLANES):
        out[:, j:j + _COPY_PLANES] = data[:, j:j + _COPY_PLANES]
    return out


def _as_labels(data: np.ndarray, source: Path) -> np.ndarray:
    """Label values as an integer array; float files holding whole numbers are converted."""
    if np.issubdtype(data.dtype, np.integer):
        return data
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise FileFormatError(f"a label map must hold whole numbers, found fractional values "
                              f"(dtype {data.dtype})", source=source)
    lo, hi = (int(rounded.min()), int(rounded.max())) if rounded.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return rounded.astype(dtype)
    raise FileFormatError(f"label values {lo}..{hi} do not fit a 64-bit integer", source=source)


def _check_same_grid(labels_shape: tuple[int, ...], labels_affine: NDArray[np.float64],
                     like: Volume, source: Path) -> None:
    """Refuse a label grid that differs from ``like``'s in shape or, beyond 1e-4 mm, in affine."""
    if labels_shape != like.shape:
        raise FileFormatError(f"label grid {labels_shape} does not match the image grid "
                              f"{like.shape}", source=source)
    difference = float(np.max(np.abs(labels_affine - like.world_from_index)))
    if difference > _GRID_TOLERANCE_MM:
        raise FileFormatError(
            f"label affine differs from the image affine by up to {difference:.3g} (tolerance "
            f"{_GRID_TOLERANCE_MM:g}): label affine {labels_affine.tolist()}, image affine "
            f"{like.world_from_index.tolist()}", source=source)


def load_labels(path: PathLike | NiftiFile, like: Volume | None = None) -> np.ndarray:
    """Read an integer label map (I, J, K) from a NIfTI file.

    Float files are accepted when every value is a whole number (many tools store labels as
    float32); they are converted to the smallest of uint8, int16, int32, int64 that holds them.

    Args:
        path: The ``.nii`` / ``.nii.gz`` file, or what :func:`read_nifti_file` read of it.
        like: When given, the label grid must match this volume's: same shape and the same affine
            to 1e-4 (mm).

    Returns:
        Integer array (I, J, K) in the file's index order.

    Raises:
        FileFormatError: unreadable file, fractional values, or a grid that does not match.
    """
    file = _as_file(path)
    source = file.source
    data, affine, _ = _read(file)
    labels = _as_labels(data, source)
    if like is not None:
        _check_same_grid(labels.shape, affine, like, source)
    return labels


def load_nifti(path: PathLike | NiftiFile, *, labels: PathLike | NiftiFile | None = None
               ) -> Volume:
    """Read a NIfTI volume, in any orientation, with an optional label map on the same grid.

    Args:
        path: The ``.nii`` / ``.nii.gz`` file, 3-D or 4-D with a single volume, or what
            :func:`read_nifti_file` read of it.
        labels: Optional label file (or what :func:`read_nifti_file` read of it); its grid
            must match the image's (shape exactly, affine to 1e-4 mm).

    Returns:
        A :class:`Volume` with ``world_from_index = img.affine`` (RAS+, mm), integer data kept
        integer (float when the header scales the values), and the units :func:`save_nifti`
        recorded in the header's description (``regkit units=mu``), else ``"HU"``.

    Raises:
        FileFormatError: a file is missing, not NIfTI, truncated or corrupt, not 3-D, holds NaN
            voxels, or the label grid differs from the image grid.
    """
    file = _as_file(path)
    source = file.source
    data, affine, units = _read(file)
    try:
        volume = Volume(data, affine, units=units)  # type: ignore[arg-type]
    except (InputError, ShapeError) as exc:
        raise FileFormatError(str(exc), source=source) from exc
    if labels is None:
        return volume
    return volume.with_labels(load_labels(labels, like=volume))


def _storable(array: np.ndarray) -> np.ndarray:
    """``array`` in a dtype every NIfTI reader handles, with the same values.

    64-bit integers go to the smallest of uint8, int16, int32 that holds their range (nibabel
    refuses them without an explicit dtype, and many tools cannot read them); float16, which NIfTI
    has no code for, goes to float32. Everything else is stored as it is.
    """
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        for dtype in (np.uint8, np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return array.astype(dtype)
    return array


def _write(array: np.ndarray, affine: NDArray[np.float64], path: Path,
           units: str | None = None) -> None:
    """Write one array with ``affine`` as sform and qform (scanner), atomically.

    ``units`` (an image's, not a label map's) goes into the header's description.
    """
    data = _storable(array)
    image = nib.Nifti1Image(data, affine, dtype=data.dtype)
    if units is not None:
        image.header["descrip"] = f"{_UNITS_TAG}{units}".encode("ascii")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units(xyz="mm")
    with atomic_path(path) as tmp:
        image.to_filename(tmp)


def _check_suffix(path: Path, key: str) -> None:
    """Refuse an output name that nibabel would not write as NIfTI."""
    if not path.name.lower().endswith(_NIFTI_SUFFIXES):
        raise InputError(f"a NIfTI file name must end with .nii or .nii.gz, got '{path.name}'",
                         key=key)


def save_nifti(volume: Volume, path: PathLike, *, labels_path: PathLike | None = None) -> None:
    """Write a volume (and optionally its labels) as NIfTI-1, each file atomically.

    Args:
        volume: The volume; its ``world_from_index`` becomes sform and qform (code 1), its
            units the header's description (``regkit units=mu``), which :func:`load_nifti`
            reads back (a μ volume is not taken for HU).
        path: Output ``.nii`` or ``.nii.gz`` (gzip by suffix).
        labels_path: Where to write ``volume.labels``, on the same grid; ``None`` writes no labels.

    Raises:
        InputError: a name without a NIfTI suffix, ``labels_path`` given for a volume without
            labels, or ``labels_path`` naming the image's own file.
    """
    target = Path(path)
    _check_suffix(target, "path")
    labels_target = None if labels_path is None else Path(labels_path)
    if labels_target is not None:
        _check_suffix(labels_target, "labels_path")
        if volume.labels is None:
            raise InputError("the volume has no labels to write", key="labels_path")
        if labels_target.resolve() == target.resolve() or (
                target.exists() and labels_target.exists()
                and os.path.samefile(target, labels_target)):
            raise InputError(f"is the image's own file {target}: the labels would replace the "
                             "image", key="labels_path")
    affine = np.array(volume.world_from_index)
    _write(volume.data, affine, target, units=volume.units)
    if labels_target is not None and volume.labels is not None:
        _write(volume.labels, affine, labels_target)
