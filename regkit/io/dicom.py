"""DICOM CT series read and written with pydicom; the LPS ↔ RAS conversion lives here and only here.

Convention:
    DICOM places images in the patient frame LPS+ (x to the patient's Left, y Posterior,
    z Superior); regkit's world is RAS+. Names in this module carry ``_lps`` or ``_ras`` for the
    frame they are in, and ``ras_from_lps = diag(−1, −1, 1, 1)`` is applied at the edge.

    Index convention of a loaded series: ``i`` = image column, ``j`` = image row, ``k`` = slice,
    with slices sorted by position along the slice normal ``n = row direction × column direction``
    (``ImageOrientationPatient[:3] × ImageOrientationPatient[3:]``), so that
    ``data[i, j, k] == slice_k.pixel_array[j, i]``. Stepping ``i`` moves along
    ``ImageOrientationPatient[:3]`` by ``PixelSpacing[1]`` (the column spacing), stepping ``j``
    along ``ImageOrientationPatient[3:]`` by ``PixelSpacing[0]`` (the row spacing), and stepping
    ``k`` from one ``ImagePositionPatient`` to the next.

    Worked example: ``ImageOrientationPatient = [1, 0, 0, 0, 1, 0]`` (an axial slice),
    ``PixelSpacing = [0.8, 0.5]`` and first ``ImagePositionPatient = [-100, -120, 30]`` give
    ``world_from_index_lps`` columns ``(0.5, 0, 0)``, ``(0, 0.8, 0)`` and translation
    ``(-100, -120, 30)``; in RAS the first voxel centre is at ``(100, 120, 30)``: 100 mm to the
    right of the origin, 120 mm anterior, 30 mm superior.

Because a loaded series always steps ``k`` along the slice normal, its index frame is right-handed.
A volume whose index frame is left-handed (negative determinant of the 3×3, e.g. a NIfTI stored LAS)
therefore comes back from :func:`save_dicom_series` / :func:`load_dicom_series` with its ``k`` axis
reversed: the same image in the world, indexed the other way along ``k``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from regkit.errors import FileFormatError, InputError
from regkit.geometry.frames import LPS_FROM_RAS, RAS_FROM_LPS
from regkit.volume import Units, Volume

__all__ = [
    "DICOM_READ_ERRORS",
    "load_dicom_series",
    "read_dataset",
    "read_number",
    "read_numbers",
    "rescale",
    "save_dicom_series",
    "stored_pixels",
]

PathLike = str | os.PathLike[str]

DICOM_READ_ERRORS: tuple[type[Exception], ...] = (
    InvalidDicomError, BytesLengthException, OSError, EOFError, ValueError, KeyError, IndexError,
    TypeError, struct.error, NotImplementedError, RuntimeError, AttributeError)
"""What pydicom raises on a damaged file or pixel data it cannot decode."""

# Slices of one series must agree on their orientation cosines to this.
_ORIENTATION_TOLERANCE = 1e-4
# Two slices closer than this along the normal, mm, are duplicates.
_DUPLICATE_MM = 1e-3
# Relative tolerance on even slice gaps, on slice positions lying on one line, and on pixel spacing.
_GAP_TOLERANCE = 1e-3
_SPACING_TOLERANCE = 1e-5
# |cos| of the angle between the row and column directions above which they are not perpendicular,
# and how far from 1 their lengths may be (they are normalised after this check).
_PERPENDICULAR_TOLERANCE = 1e-3
_UNIT_TOLERANCE = 1e-2

_INT16 = np.iinfo(np.int16)


# ---------------------------------------------------------------------------------- file reading

def _dcmread(path: Path, *, stop_before_pixels: bool) -> Dataset | None:
    """``path`` read by pydicom; ``None`` when it is not DICOM at all (no 'DICM' signature).

    Raises:
        FileFormatError: the file has the DICOM signature but is damaged.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        return None
    except DICOM_READ_ERRORS as exc:
        raise FileFormatError(f"damaged DICOM file ({exc})", source=path) from exc


def read_dataset(path: PathLike) -> Dataset:
    """Read one DICOM file, pixel data included.

    Raises:
        FileFormatError: the file is missing, is not DICOM, or is damaged.
    """
    source = Path(path)
    if not source.is_file():
        raise FileFormatError("no such file", source=source)
    dataset = _dcmread(source, stop_before_pixels=False)
    if dataset is None:
        raise FileFormatError("not a DICOM file (no 'DICM' prefix after the 128-byte preamble)",
                              source=source)
    return dataset


def stored_pixels(dataset: Dataset, source: PathLike) -> np.ndarray:
    """The stored values (rows, columns) of a single-frame grayscale image, before rescaling.

    Raises:
        FileFormatError: no pixel data, colour or multi-frame data, or pixel data that cannot be
            decoded (truncated, or compressed with a codec that is not installed).
    """
    if "PixelData" not in dataset:
        raise FileFormatError("holds no pixel data", source=source, key="PixelData")
    samples = int(read_number(dataset, "SamplesPerPixel", source, default=1))
    if samples != 1:
        raise FileFormatError(f"has {samples} samples per pixel; only grayscale is supported",
                              source=source, key="SamplesPerPixel")
    frames = int(read_number(dataset, "NumberOfFrames", source, default=1))
    if frames != 1:
        raise FileFormatError(f"is a multi-frame image ({frames} frames); only single-frame "
                              "images are supported", source=source, key="NumberOfFrames")
    try:
        pixels = dataset.pixel_array
    except DICOM_READ_ERRORS as exc:
        raise FileFormatError(f"cannot decode the pixel data ({exc})", source=source,
                              key="PixelData") from exc
    if pixels.ndim != 2:
        raise FileFormatError(f"pixel data has shape {pixels.shape}; expected one 2-D image",
                              source=source, key="PixelData")
    return np.asarray(pixels)


def read_number(dataset: Dataset, keyword: str, source: PathLike,
                default: float | None = None) -> float:
    """One finite number from element ``keyword``; ``default`` when absent (an error if None).

    Raises:
        FileFormatError: the element is absent without a default, not numeric, or not finite.
    """
    values = read_numbers(dataset, keyword, 1, source,
                          default=None if default is None else [default])
    return float(values[0])


def read_numbers(dataset: Dataset, keyword: str, count: int, source: PathLike,
             default: Sequence[float] | None = None) -> NDArray[np.float64]:
    """``count`` finite numbers (count,) from a (multi-valued) element; ``default`` when absent.

    Raises:
        FileFormatError: the element is absent without a default, not numeric, not finite, or
            holds another number of values.
    """
    raw = dataset.get(keyword)
    items = list(raw) if isinstance(raw, Sequence) and not isinstance(raw, str | bytes) else [raw]
    if raw is None or raw == "" or not items:
        if default is not None:
            return np.asarray(default, dtype=np.float64)
        raise FileFormatError("is missing", source=source, key=keyword)
    try:
        values = np.asarray([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"must hold numbers, got {raw!r}", source=source,
                              key=keyword) from exc
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise FileFormatError(f"must hold {count} finite number(s), got {items!r}", source=source,
                              key=keyword)
    return values


def rescale(dataset: Dataset, source: PathLike) -> tuple[float, float]:
    """``(RescaleSlope, RescaleIntercept)``, 1 and 0 where absent: value = slope·stored + intercept.

    Raises:
        FileFormatError: a non-numeric or non-finite value, or a zero slope.
    """
    slope = read_number(dataset, "RescaleSlope", source, default=1.0)
    intercept = read_number(dataset, "RescaleIntercept", source, default=0.0)
    if slope == 0.0:
        raise FileFormatError("is 0, which would erase the image", source=source,
                              key="RescaleSlope")
    return slope, intercept


# ---------------------------------------------------------------------------------- series reading

@dataclass(frozen=True, eq=False)
class _Slice:
    """What the geometry of a series needs from one slice header."""

    path: Path
    position_lps: NDArray[np.float64]  # (3,) ImagePositionPatient, mm
    orientation_lps: NDArray[np.float64]  # (6,) ImageOrientationPatient
    pixel_spacing: NDArray[np.float64]  # (2,) [row spacing, column spacing], mm
    rows: int
    columns: int


def _slice_header(path: Path, dataset: Dataset) -> _Slice:
    return _Slice(
        path=path,
        position_lps=read_numbers(dataset, "ImagePositionPatient", 3, path),
        orientation_lps=read_numbers(dataset, "ImageOrientationPatient", 6, path),
        pixel_spacing=read_numbers(dataset, "PixelSpacing", 2, path),
        rows=int(dataset.Rows),
        columns=int(dataset.Columns),
    )


def _choose_series(series: dict[str, list[tuple[Path, Dataset]]], series_uid: str | None,
                   folder: Path) -> list[tuple[Path, Dataset]]:
    """The files of the requested series, or of the only one; refuses an ambiguous folder."""
    def listing() -> str:
        lines = []
        for uid, files in sorted(series.items()):
            description = str(files[0][1].get("SeriesDescription", "")).strip()
            lines.append(f"  {uid or '(no SeriesInstanceUID)'}: "
                         f"{description or 'no description'}, {len(files)} file(s)")
        return "\n".join(lines)

    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"no series with SeriesInstanceUID {series_uid} here; series "
                             f"present:\n{listing()}", source=folder, key="series_uid")
        return series[series_uid]
    if len(series) > 1:
        raise InputError(f"mixed series: the folder holds {len(series)} series; pick one with "
                         f"series_uid=...\n{listing()}", source=folder, key="series_uid")
    return next(iter(series.values()))


def _check_consistent(slices: list[_Slice], folder: Path) -> None:
    """Refuse slices that do not share one orientation, matrix size and pixel spacing."""
    first = slices[0]
    for other in slices[1:]:
        if np.max(np.abs(other.orientation_lps - first.orientation_lps)) > _ORIENTATION_TOLERANCE:
            raise FileFormatError(
                f"inconsistent orientation: {first.orientation_lps.tolist()} in "
                f"{first.path.name} but {other.orientation_lps.tolist()} in {other.path.name}",
                source=folder, key="ImageOrientationPatient")
        if (other.rows, other.columns) != (first.rows, first.columns):
            raise FileFormatError(
                f"inconsistent image size: {first.rows}x{first.columns} in {first.path.name} but "
                f"{other.rows}x{other.columns} in {other.path.name}", source=folder,
                key="Rows/Columns")
        if not np.allclose(other.pixel_spacing, first.pixel_spacing, rtol=_SPACING_TOLERANCE,
                           atol=0.0):
            raise FileFormatError(
                f"inconsistent pixel spacing: {first.pixel_spacing.tolist()} in "
                f"{first.path.name} but {other.pixel_spacing.tolist()} in {other.path.name}",
                source=folder, key="PixelSpacing")


def _in_plane_directions(orientation: NDArray[np.float64], source: PathLike
                         ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Unit row direction (i axis) and column direction (j axis) from ImageOrientationPatient."""
    row_dir, col_dir = orientation[:3], orientation[3:]
    row_norm, col_norm = float(np.linalg.norm(row_dir)), float(np.linalg.norm(col_dir))
    if abs(row_norm - 1.0) > _UNIT_TOLERANCE or abs(col_norm - 1.0) > _UNIT_TOLERANCE:
        raise FileFormatError(f"direction cosines {orientation.tolist()} are not unit vectors",
                              source=source, key="ImageOrientationPatient")
    row_dir, col_dir = row_dir / row_norm, col_dir / col_norm
    if abs(float(row_dir @ col_dir)) > _PERPENDICULAR_TOLERANCE:
        raise FileFormatError(f"row and column directions {orientation.tolist()} are not "
                              "perpendicular", source=source, key="ImageOrientationPatient")
    return row_dir, col_dir


def _slice_step_lps(ordered: list[_Slice], normal: NDArray[np.float64],
                    heights: NDArray[np.float64], first_dataset: Dataset, folder: Path
                    ) -> NDArray[np.float64]:
    """The LPS vector (3,), mm, from one slice position to the next, after checking the gaps."""
    if len(ordered) == 1:
        thickness = read_number(first_dataset, "SliceThickness", ordered[0].path, default=0.0)
        spacing_mm = read_number(first_dataset, "SpacingBetweenSlices", ordered[0].path,
                                 default=thickness)
        if spacing_mm <= 0:
            raise FileFormatError("a single-slice series needs a positive SpacingBetweenSlices "
                                  "or SliceThickness to give its voxels a depth",
                                  source=ordered[0].path, key="SliceThickness")
        return normal * spacing_mm

    gaps = np.diff(heights)
    for n, gap in enumerate(gaps):
        if gap < _DUPLICATE_MM:
            raise FileFormatError(
                f"duplicate slice position: {ordered[n].path.name} and {ordered[n + 1].path.name} "
                f"are both at {heights[n]:.4f} mm along the slice normal", source=folder,
                key="ImagePositionPatient")
    typical = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - typical)))
    if abs(gaps[worst] - typical) > _GAP_TOLERANCE * typical:
        raise FileFormatError(
            f"uneven slice gaps (missing or extra slices?): {gaps[worst]:.4f} mm between "
            f"{ordered[worst].path.name} and {ordered[worst + 1].path.name}, while the typical gap "
            f"is {typical:.4f} mm", source=folder, key="ImagePositionPatient")

    positions = np.stack([s.position_lps for s in ordered])
    step = (positions[-1] - positions[0]) / (len(ordered) - 1)
    expected = positions[0] + np.arange(len(ordered))[:, None] * step
    drift = np.linalg.norm(positions - expected, axis=1)
    if float(drift.max()) > _GAP_TOLERANCE * float(np.linalg.norm(step)):
        worst = int(np.argmax(drift))
        raise FileFormatError(
            f"slice positions do not lie on one straight line: {ordered[worst].path.name} is "
            f"{drift[worst]:.4f} mm off it", source=folder, key="ImagePositionPatient")
    return step


def _series_pixels(ordered: list[_Slice]) -> tuple[np.ndarray, Units]:
    """Rescaled voxels (I, J, K) = (columns, rows, slices) and the units they are in.

    The result is integer (int16, or int32 when needed; float64 beyond that) when every slice's
    slope and intercept are whole numbers, float32 otherwise.
    """
    stored: list[np.ndarray] = []
    factors: list[tuple[float, float]] = []
    units: Units = "other"
    for n, item in enumerate(ordered):
        dataset = read_dataset(item.path)
        pixels = stored_pixels(dataset, item.path)
        if pixels.shape != (item.rows, item.columns):
            raise FileFormatError(f"pixel data has shape {pixels.shape} but Rows/Columns say "
                                  f"{(item.rows, item.columns)}", source=item.path,
                                  key="PixelData")
        stored.append(pixels)
        factors.append(rescale(dataset, item.path))
        if n == 0:
            rescale_type = str(dataset.get("RescaleType", "")).strip().upper()
            if str(dataset.get("Modality", "")).upper() == "CT" and rescale_type in ("", "HU"):
                units = "HU"

    integral = all(float(s).is_integer() and float(b).is_integer() for s, b in factors)
    if integral:
        ends = [(int(p.min()) * int(s) + int(b), int(p.max()) * int(s) + int(b))
                for p, (s, b) in zip(stored, factors, strict=True)]
        lo, hi = min(min(e) for e in ends), max(max(e) for e in ends)
        dtype: type[np.number] = next(
            (t for t in (np.int16, np.int32) if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max),
            np.float64)
    else:
        dtype = np.float32
    volume = np.empty((ordered[0].columns, ordered[0].rows, len(ordered)), dtype=dtype)
    for k, (pixels, (slope, intercept)) in enumerate(zip(stored, factors, strict=True)):
        if integral:
            volume[:, :, k] = (pixels.astype(np.int64) * int(slope) + int(intercept)).T
        else:
            volume[:, :, k] = (pixels.astype(np.float64) * slope + intercept).T
    return volume, units


def load_dicom_series(folder: PathLike, *, series_uid: str | None = None) -> Volume:
    """Read a CT (or other cross-sectional) DICOM series from the files of one folder.

    Every regular file in ``folder`` is tried (sub-folders are not searched); files that are not
    DICOM, and DICOM objects that are not images (no Rows/Columns, e.g. a DICOMDIR), are skipped.
    Slices are sorted along the slice normal by ``ImagePositionPatient``, so file names and order
    do not matter. Values are rescaled with each slice's RescaleSlope / RescaleIntercept.

    Args:
        folder: The folder holding the series' files.
        series_uid: The SeriesInstanceUID to read when the folder holds several series.

    Returns:
        A :class:`Volume` with ``data[i, j, k] = slice_k.pixel_array[j, i]`` (rescaled; integer
        when the rescale is whole numbers, float32 otherwise), ``world_from_index`` in RAS+ mm, and
        ``units="HU"`` for CT (RescaleType absent or HU), ``"other"`` otherwise.

    Raises:
        FileFormatError: the folder is missing or holds no DICOM image; a damaged file; missing
            or inconsistent ImageOrientationPatient, Rows/Columns or PixelSpacing; duplicate
            positions; uneven gaps (a missing slice); slices off a straight line.
        InputError: several series and no ``series_uid``, or a ``series_uid`` not present.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileFormatError("no such folder", source=root)
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        dataset = _dcmread(path, stop_before_pixels=True)
        if dataset is None or "Rows" not in dataset or "Columns" not in dataset:
            continue
        series.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append((path, dataset))
    if not series:
        raise FileFormatError("holds no DICOM image file", source=root)
    chosen = _choose_series(series, series_uid, root)

    slices = [_slice_header(path, dataset) for path, dataset in chosen]
    _check_consistent(slices, root)
    row_dir_lps, col_dir_lps = _in_plane_directions(slices[0].orientation_lps, slices[0].path)
    normal_lps = np.cross(row_dir_lps, col_dir_lps)
    heights = np.array([float(s.position_lps @ normal_lps) for s in slices])
    order = np.argsort(heights, kind="stable")
    ordered = [slices[n] for n in order]
    first_dataset = chosen[int(order[0])][1]
    step_lps = _slice_step_lps(ordered, normal_lps, heights[order], first_dataset, root)

    row_spacing, column_spacing = ordered[0].pixel_spacing
    world_from_index_lps = np.eye(4)
    world_from_index_lps[:3, 0] = row_dir_lps * column_spacing
    world_from_index_lps[:3, 1] = col_dir_lps * row_spacing
    world_from_index_lps[:3, 2] = step_lps
    world_from_index_lps[:3, 3] = ordered[0].position_lps
    world_from_index_ras = RAS_FROM_LPS @ world_from_index_lps

    data, units = _series_pixels(ordered)
    return Volume(data, world_from_index_ras, units=units)


# ---------------------------------------------------------------------------------- series writing

def _ds(value: float) -> str:
    """``value`` as a DICOM decimal string (at most 16 characters)."""
    return str(format_number_as_ds(float(value)))


def _int16_encoding(data: np.ndarray) -> tuple[np.ndarray, str, str]:
    """Stored int16 values (I, J, K) and the (slope, intercept) decimal strings that decode them.

    Whole numbers within the int16 range are stored exactly with slope 1 and intercept 0; anything
    else is spread over the int16 range (lossy, error at most half a slope step).
    """
    lo, hi = float(data.min()), float(data.max())
    whole = np.issubdtype(data.dtype, np.integer) or bool(np.all(data == np.rint(data)))
    if whole and _INT16.min <= lo and hi <= _INT16.max:
        return data.astype(np.int16), "1", "0"
    intercept_text = _ds((lo + hi) / 2.0)
    slope_text = _ds((hi - lo) / (2.0 * _INT16.max)) if hi > lo else "1"
    intercept, slope = float(intercept_text), float(slope_text)
    stored = np.clip(np.rint((data.astype(np.float64) - intercept) / slope), _INT16.min,
                     _INT16.max)
    return stored.astype(np.int16), slope_text, intercept_text


@contextlib.contextmanager
def _atomic_folder(target: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it takes ``target``'s place.

    The folder appears whole or not at all: files are written into a hidden sibling, which is
    renamed onto ``target`` at the end. An existing non-empty ``target`` is replaced only with
    ``overwrite``; it is moved aside first and deleted once the new folder is in place.
    """
    if target.exists() and not target.is_dir():
        raise InputError("exists and is not a folder", source=target)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InputError("folder exists and is not empty; pass overwrite=True to replace it",
                         source=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not tempfile.mkdtemp, which makes the folder private) so the result gets the
    # permissions of any folder the user creates.
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    staging.mkdir()
    try:
        yield staging
        if target.exists():
            retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
            os.rename(target, retired)
            try:
                os.rename(staging, target)
            except OSError:
                os.rename(retired, target)
                raise
            shutil.rmtree(retired)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_dicom_series(volume: Volume, folder: PathLike, *, series_uid: str | None = None,
                      study_uid: str | None = None, series_description: str = "regkit export",
                      series_number: int = 1, patient_name: str = "Anonymous",
                      patient_id: str = "regkit", overwrite: bool = False) -> str:
    """Write a volume as a CT image series, one file per ``k`` slice, into a new folder.

    Slice ``k`` holds ``data[:, :, k]`` transposed (rows = ``j``, columns = ``i``), so that
    :func:`load_dicom_series` reads the same voxels back (see the module note on left-handed
    grids). Values are stored as int16: exactly, with RescaleSlope 1 and RescaleIntercept 0, when
    they are whole numbers in the int16 range, otherwise with a slope and intercept spanning their
    range (lossy). RescaleType is ``HU`` for a volume in HU and ``US`` (unspecified) otherwise.
    Labels are not written (save them with :func:`regkit.io.nifti.save_nifti`). Files use Explicit
    VR Little Endian with full file meta information.

    The folder is written atomically: into a hidden sibling folder renamed into place at the end.

    Args:
        volume: The volume to write. Its ``i`` and ``j`` axes must be perpendicular (DICOM has no
            in-plane shear); the ``k`` axis may be tilted (gantry tilt).
        folder: Output folder; must not exist or be empty, unless ``overwrite``.
        series_uid: SeriesInstanceUID; a new one from :func:`pydicom.uid.generate_uid` if omitted.
        study_uid: StudyInstanceUID; new if omitted.
        series_description: SeriesDescription.
        series_number: SeriesNumber.
        patient_name: PatientName.
        patient_id: PatientID.
        overwrite: Replace an existing non-empty folder.

    Returns:
        The SeriesInstanceUID written.

    Raises:
        InputError: the ``i`` and ``j`` axes are not perpendicular, or ``folder`` is taken.
    """
    world_from_index_lps = LPS_FROM_RAS @ volume.world_from_index
    column_step_lps, row_step_lps = world_from_index_lps[:3, 0], world_from_index_lps[:3, 1]
    column_spacing = float(np.linalg.norm(column_step_lps))
    row_spacing = float(np.linalg.norm(row_step_lps))
    row_dir_lps, col_dir_lps = column_step_lps / column_spacing, row_step_lps / row_spacing
    if abs(float(row_dir_lps @ col_dir_lps)) > 1e-6:
        raise InputError("the volume's i and j axes are not perpendicular; a DICOM image plane "
                         "cannot hold that shear", key="world_from_index")
    slice_step_lps = world_from_index_lps[:3, 2]
    origin_lps = world_from_index_lps[:3, 3]
    thickness = abs(float(slice_step_lps @ np.cross(row_dir_lps, col_dir_lps)))

    stored, slope_text, intercept_text = _int16_encoding(volume.data)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    orientation = [_ds(v) for v in (*row_dir_lps, *col_dir_lps)]
    n_slices = volume.shape[2]
    width = max(4, len(str(n_slices)))

    with _atomic_folder(Path(os.path.abspath(folder)), overwrite=overwrite) as staging:
        for k in range(n_slices):
            instance_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = instance_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = instance_uid
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.Modality = "CT"
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.StudyInstanceUID = study_uid
            ds.StudyDate = ""
            ds.StudyTime = ""
            ds.StudyID = ""
            ds.AccessionNumber = ""
            ds.ReferringPhysicianName = ""
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = series_number
            ds.SeriesDescription = series_description
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.Manufacturer = "regkit"
            ds.InstanceNumber = k + 1
            ds.AcquisitionNumber = 1
            ds.KVP = ""
            ds.ImageOrientationPatient = orientation
            ds.ImagePositionPatient = [_ds(v) for v in origin_lps + k * slice_step_lps]
            ds.PixelSpacing = [_ds(row_spacing), _ds(column_spacing)]
            ds.SliceThickness = _ds(thickness)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = volume.shape[1]
            ds.Columns = volume.shape[0]
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = intercept_text
            ds.RescaleSlope = slope_text
            ds.RescaleType = "HU" if volume.units == "HU" else "US"
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T, dtype="<i2").tobytes()
            pydicom.dcmwrite(staging / f"slice_{k:0{width}d}.dcm", ds, enforce_file_format=True)
    return series_uid
