"""The :class:`Volume` value object: a 3-D image on a voxel grid placed in the RAS+ world.

Convention:
    ``world_from_index`` is a 4×4 affine acting on column vectors. It maps a voxel index
    ``(i, j, k)`` (the index order of the array, as in a NIfTI file) to RAS+ world coordinates in
    millimetres: x grows towards the patient's Right, y towards Anterior, z towards Superior.
    Voxel centres sit at whole indices, so voxel ``(i, j, k)`` covers the index box
    ``[i − ½, i + ½] × [j − ½, j + ½] × [k − ½, k + ½]``.

    Worked example: with ``world_from_index = [[0.5, 0, 0, -10], [0, 0.5, 0, 20], [0, 0, 2, 30],
    [0, 0, 0, 1]]`` the centre of voxel ``(2, 0, 1)`` lies at world ``(-9, 20, 32)``: 9 mm to the
    left of the world origin, 20 mm anterior and 32 mm superior to it. The voxel spacing is
    ``(0.5, 0.5, 2.0)`` mm.

A volume never changes: every operation (:meth:`Volume.crop`, :meth:`Volume.resample`,
:meth:`Volume.downsample`, ...) returns a new one, and an optional integer label map rides along on
the same grid through all of them.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import product
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray

from regkit.errors import InputError, ShapeError
from regkit.utils.blocks import block_reduce
from regkit.utils.checks import refuse_gradients

__all__ = ["MU_WATER_PER_MM", "Units", "Volume", "hu_to_mu"]

MU_WATER_PER_MM = 0.02
"""Linear attenuation of water in 1/mm used by :func:`hu_to_mu` unless the caller gives another."""

Units = Literal["HU", "mu", "other"]
"""What a volume's values mean: Hounsfield units, attenuation μ in 1/mm, or anything else."""

_KNOWN_UNITS: tuple[str, ...] = get_args(Units)

# Voxels handled per call of scipy.ndimage.map_coordinates in resampling: bounds the memory of the
# coordinate arrays (3 float64 per voxel) to about 50 MB whatever the volume size.
_RESAMPLE_CHUNK_VOXELS = 1 << 21
# Blocks handled per step of the label majority vote in downsampling.
_MODE_CHUNK_BLOCKS = 1 << 18
# Slack, in index units, for deciding that a sample point lies inside the voxel-edge box.
_INSIDE_TOLERANCE = 1e-6


def hu_to_mu(hu: ArrayLike, mu_water: float = MU_WATER_PER_MM) -> NDArray[np.float32]:
    """Convert Hounsfield units to attenuation: ``μ = μ_water · (1 + HU / 1000)``, clamped at 0.

    Args:
        hu: CT values in Hounsfield units, any shape.
        mu_water: Attenuation of water, 1/mm (positive, finite).

    Returns:
        float32 array of the same shape: μ in 1/mm, never negative (air and below map to 0).

    Raises:
        InputError: ``mu_water`` is not a positive finite number, or ``hu`` holds NaN or
            infinite values (clamping would pass NaN on as attenuation).
    """
    if not (math.isfinite(mu_water) and mu_water > 0):
        raise InputError(f"must be a positive finite attenuation in 1/mm, got {mu_water!r}",
                         key="mu_water")
    with np.errstate(over="ignore"):     # a value beyond float32 becomes inf: refused below
        values = np.asarray(hu, dtype=np.float32)
    if not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise InputError(f"holds {bad} NaN or infinite value(s) as float32; Hounsfield units "
                         "must be finite", key="hu")
    mu = values * np.float32(mu_water / 1000.0)
    mu += np.float32(mu_water)
    np.maximum(mu, np.float32(0.0), out=mu)
    return mu


def _readonly(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array``; the caller's array object itself is left untouched."""
    view = array.view()
    view.flags.writeable = False
    return view


def _translation(offset_index: ArrayLike) -> NDArray[np.float64]:
    """4×4 matrix that shifts an index by ``offset_index`` (3,)."""
    matrix = np.eye(4)
    matrix[:3, 3] = np.asarray(offset_index, dtype=np.float64)
    return matrix


def _as_points(points: ArrayLike, name: str) -> NDArray[np.float64]:
    """``points`` as a float64 array of shape (..., 3), or a :class:`ShapeError`."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 0 or array.shape[-1] != 3:
        raise ShapeError(f"{name} must have shape (..., 3), got {array.shape}")
    return array


def _index_triple(values: Sequence[int] | NDArray[np.integer], name: str) -> tuple[int, int, int]:
    """Three whole numbers from a sequence; refuses anything else with an :class:`InputError`."""
    items = list(values)
    if len(items) != 3:
        raise InputError(f"must hold 3 indices (i, j, k), got {len(items)}", key=name)
    try:
        return (operator.index(items[0]), operator.index(items[1]), operator.index(items[2]))
    except TypeError as exc:
        raise InputError(f"must hold whole numbers, got {items!r}", key=name) from exc


def _spacing_triple(spacing_mm: ArrayLike) -> NDArray[np.float64]:
    """A positive finite spacing per axis (3,), from one number or three."""
    values = np.asarray(spacing_mm, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(3, float(values))
    if values.shape != (3,):
        raise InputError(f"must be one number or three, got shape {values.shape}",
                         key="spacing_mm")
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise InputError(f"must be positive and finite, got {values.tolist()}", key="spacing_mm")
    return values


def _validated_affine(value: ArrayLike) -> NDArray[np.float64]:
    """``value`` as a (4, 4) float64 grid affine, or an error saying what is wrong with it."""
    affine = np.asarray(value, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ShapeError(f"world_from_index must be a 4x4 matrix, got shape {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise InputError("holds non-finite values", key="world_from_index")
    if not np.allclose(affine[3], (0.0, 0.0, 0.0, 1.0), rtol=0.0, atol=1e-9):
        raise InputError(f"last row must be [0, 0, 0, 1], got {affine[3].tolist()}",
                         key="world_from_index")
    linear = affine[:3, :3]
    column_norms = np.linalg.norm(linear, axis=0)
    # Determinant of the 3x3 with unit columns: 0 for a degenerate grid, ±1 for an orthogonal one.
    if np.any(column_norms == 0) or abs(np.linalg.det(linear / column_norms)) < 1e-6:
        raise InputError(f"3x3 part is not invertible (columns {linear.T.tolist()}): the voxel "
                         "axes must have non-zero length and span 3-D space",
                         key="world_from_index")
    return affine


def _float_dtype(dtype: np.dtype) -> type[np.floating]:
    """float64 for float64 data, else float32 (interpolated values are fractional)."""
    return np.float64 if dtype == np.float64 else np.float32


def _block_mode(blocks: NDArray[np.integer]) -> NDArray[np.integer]:
    """Most frequent value in each row of ``blocks`` (N, M); ties go to the smallest value."""
    result = np.empty(blocks.shape[0], dtype=blocks.dtype)
    width = blocks.shape[1]
    positions = np.arange(width, dtype=np.int32)
    for start in range(0, blocks.shape[0], _MODE_CHUNK_BLOCKS):
        chunk = np.sort(blocks[start:start + _MODE_CHUNK_BLOCKS], axis=1)
        new_run = np.ones(chunk.shape, dtype=bool)
        new_run[:, 1:] = chunk[:, 1:] != chunk[:, :-1]
        run_start = np.maximum.accumulate(np.where(new_run, positions, 0), axis=1)
        run_length = positions - run_start + 1
        # argmax returns the first position reaching the longest run: in a sorted row that is the
        # run of the smallest value among those tied for most frequent.
        best = np.argmax(run_length, axis=1)
        result[start:start + chunk.shape[0]] = chunk[np.arange(chunk.shape[0]), best]
    return result


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D image, its placement in the RAS+ world, and an optional label map on the same grid.

    The arrays are stored as read-only views: a volume never changes, and building one never
    modifies the caller's arrays, nor copies them (only an affine that is not float64 is
    converted). A caller who later writes into its own array sees the volume change too, so hand
    over arrays you no longer write to.

    Attributes:
        data: (I, J, K) real array (integer or floating point), indexed in the order of the NIfTI
            array. NaN and infinite values are refused.
        world_from_index: (4, 4) affine mapping voxel index (i, j, k) to RAS+ world, mm. Voxel
            centres sit at whole indices. Its 3×3 part must be invertible and its last row
            ``[0, 0, 0, 1]``.
        labels: Optional (I, J, K) integer label map on the same grid (0 is background by
            convention); carried through every operation.
        units: What ``data`` holds: ``"HU"`` (Hounsfield units), ``"mu"`` (attenuation, 1/mm) or
            ``"other"``.

    Raises:
        ShapeError: ``data``, ``labels`` or ``world_from_index`` has the wrong shape or dtype.
        InputError: non-finite values, a singular or malformed affine, or unknown ``units``.
    """

    data: np.ndarray
    world_from_index: np.ndarray
    labels: np.ndarray | None = None
    units: Units = "HU"

    def __post_init__(self) -> None:
        refuse_gradients(self.data, "data", "a Volume")
        refuse_gradients(self.world_from_index, "world_from_index", "a Volume")
        data = np.asarray(self.data)
        if data.ndim != 3:
            raise ShapeError(f"Volume data must be 3-D (I, J, K), got shape {data.shape}")
        if 0 in data.shape:
            raise ShapeError(f"Volume data must hold at least one voxel along each axis, got "
                             f"shape {data.shape}")
        if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
            raise ShapeError(f"Volume data must be real numbers (integer or float), "
                             f"got dtype {data.dtype}")
        if np.issubdtype(data.dtype, np.floating):
            finite = np.isfinite(data)
            if not finite.all():
                bad = np.argwhere(~finite)
                n_nan = int(np.count_nonzero(np.isnan(data)))
                n_inf = bad.shape[0] - n_nan
                raise InputError(
                    f"holds {n_nan} NaN and {n_inf} infinite voxel(s) (first at index "
                    f"{tuple(int(v) for v in bad[0])}); a volume needs a finite value in every "
                    "voxel", key="data")

        affine = _validated_affine(self.world_from_index)

        labels = None
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != data.shape:
                raise ShapeError(f"labels must be on the data grid {data.shape}, got shape "
                                 f"{labels.shape}")
            if not np.issubdtype(labels.dtype, np.integer):
                raise ShapeError(f"labels must have an integer dtype, got {labels.dtype} "
                                 "(convert a boolean mask with .astype(np.uint8))")
            labels = _readonly(labels)

        if self.units not in _KNOWN_UNITS:
            raise InputError(f"must be one of {', '.join(_KNOWN_UNITS)}; got {self.units!r}",
                             key="units")

        object.__setattr__(self, "data", _readonly(data))
        object.__setattr__(self, "world_from_index", _readonly(affine))
        object.__setattr__(self, "labels", labels)

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        labels = "None" if self.labels is None else str(self.labels.dtype)
        return (f"Volume(shape={self.shape}, spacing_mm=({spacing}), dtype={self.data.dtype}, "
                f"units={self.units!r}, labels={labels})")

    # ----------------------------------------------------------------------------------- geometry

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid size (I, J, K) in voxels."""
        i, j, k = self.data.shape
        return (int(i), int(j), int(k))

    @property
    def spacing(self) -> NDArray[np.float64]:
        """Voxel size along each index axis (3,), mm: the column norms of the affine's 3×3 part."""
        return np.linalg.norm(self.world_from_index[:3, :3], axis=0)

    @property
    def index_from_world(self) -> NDArray[np.float64]:
        """(4, 4) inverse of ``world_from_index``: RAS+ world mm to voxel index."""
        return np.linalg.inv(self.world_from_index)

    def index_to_world(self, points_index: ArrayLike) -> NDArray[np.float64]:
        """Map voxel indices (..., 3) (fractional allowed) to RAS+ world points (..., 3), mm."""
        points = _as_points(points_index, "points_index")
        affine = self.world_from_index
        return points @ affine[:3, :3].T + affine[:3, 3]

    def world_to_index(self, points_world: ArrayLike) -> NDArray[np.float64]:
        """Map RAS+ world points (..., 3), mm, to fractional voxel indices (..., 3)."""
        points = _as_points(points_world, "points_world")
        inverse = self.index_from_world
        return points @ inverse[:3, :3].T + inverse[:3, 3]

    @property
    def center_world(self) -> NDArray[np.float64]:
        """Centre of the voxel grid (3,), RAS+ world mm: index ``((I−1)/2, (J−1)/2, (K−1)/2)``."""
        return self.index_to_world((np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0)

    @property
    def bounds_world(self) -> NDArray[np.float64]:
        """The 8 corners (8, 3), RAS+ world mm, of the box enclosing every voxel (voxel edges).

        Corner ``n`` is index ``(a, b, c)`` from ``itertools.product((−½, I−½), (−½, J−½),
        (−½, K−½))``: the k bound varies fastest, the i bound slowest.
        """
        corners = np.array(list(product(*[(-0.5, n - 0.5) for n in self.shape])))
        return self.index_to_world(corners)

    # ------------------------------------------------------------------------------------- values

    def to_mu(self, mu_water: float = MU_WATER_PER_MM) -> Volume:
        """This volume in attenuation units (1/mm) by :func:`hu_to_mu`; labels ride along.

        Args:
            mu_water: Attenuation of water, 1/mm.

        Returns:
            A float32 volume with ``units="mu"``; ``self`` when it already is in μ.

        Raises:
            InputError: the volume's units are ``"other"`` (their meaning is unknown).
        """
        if self.units == "mu":
            return self
        if self.units != "HU":
            raise InputError(f"cannot convert units {self.units!r} to attenuation; only a volume "
                             "in Hounsfield units ('HU') can be", key="units")
        return replace(self, data=hu_to_mu(self.data, mu_water), units="mu")

    def with_labels(self, labels: ArrayLike | None) -> Volume:
        """The same image with ``labels`` (I, J, K) integer map attached (``None`` removes them)."""
        return replace(self, labels=None if labels is None else np.asarray(labels))

    def with_data(self, data: ArrayLike, units: Units | None = None) -> Volume:
        """The same grid and labels with new ``data`` (I, J, K); ``units`` default to the old.

        Raises:
            ShapeError: ``data`` not on this volume's grid.
        """
        array = np.asarray(data)
        if array.shape != self.shape:
            raise ShapeError(f"new data must be on the volume's grid {self.shape}, got shape "
                             f"{array.shape}")
        return replace(self, data=array, units=self.units if units is None else units)

    # ---------------------------------------------------------------------------- grid operations

    def crop(self, lo: Sequence[int] | NDArray[np.integer],
             hi: Sequence[int] | NDArray[np.integer]) -> Volume:
        """The sub-volume of voxels with index in ``[lo, hi)`` on every axis.

        The box is clipped to the grid first (negative values clip to 0, they do not wrap around
        as Python slices do). The affine is translated so that every kept voxel stays at the same
        place in the world. Data and labels are copied, so the crop does not keep the full volume
        alive.

        Args:
            lo: First voxel index kept on each axis (i, j, k).
            hi: One past the last voxel index kept on each axis (i, j, k).

        Raises:
            InputError: the clipped box holds no voxel.
        """
        lo_i = np.clip(np.array(_index_triple(lo, "lo")), 0, self.shape)
        hi_i = np.clip(np.array(_index_triple(hi, "hi")), 0, self.shape)
        if np.any(hi_i <= lo_i):
            raise InputError(f"crop box [{list(lo)}, {list(hi)}) holds no voxel of the grid "
                             f"{self.shape} (after clipping: [{lo_i.tolist()}, {hi_i.tolist()}))",
                             key="lo/hi")
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo_i, hi_i, strict=True))
        labels = None if self.labels is None else self.labels[box].copy()
        return Volume(self.data[box].copy(), self.world_from_index @ _translation(lo_i), labels,
                      self.units)

    def crop_to_labels(self, values: int | Iterable[int], *, margin_mm: float = 0.0) -> Volume:
        """Crop to the bounding box of the voxels labelled with any of ``values``, plus a margin.

        Args:
            values: One label value or several.
            margin_mm: Extra border kept on every side, mm; rounded up to whole voxels per axis
                and clipped to the grid.

        Raises:
            InputError: the volume has no labels, ``margin_mm`` is negative, or no voxel carries
                any of ``values``.
        """
        if self.labels is None:
            raise InputError("this volume has no label map to crop to", key="labels")
        if not (math.isfinite(margin_mm) and margin_mm >= 0):
            raise InputError(f"must be a non-negative number of mm, got {margin_mm!r}",
                             key="margin_mm")
        wanted = [operator.index(values)] if isinstance(values, int | np.integer) else \
            [operator.index(v) for v in values]
        mask = np.isin(self.labels, wanted)
        if not mask.any():
            present = np.unique(self.labels).tolist()
            raise InputError(f"no voxel carries label {wanted}; labels present: {present}",
                             key="values")
        margin = np.ceil(margin_mm / self.spacing - 1e-9).astype(int)
        lo, hi = [], []
        for axis in range(3):
            others = tuple(a for a in range(3) if a != axis)
            hits = np.flatnonzero(mask.any(axis=others))
            lo.append(int(hits[0]) - int(margin[axis]))
            hi.append(int(hits[-1]) + 1 + int(margin[axis]))
        return self.crop(lo, hi)

    def resample_to_grid(self, shape: Sequence[int], world_from_index: ArrayLike, *,
                         fill: float = 0.0) -> Volume:
        """Sample this volume on another grid placed in the same world.

        Data are interpolated trilinearly (``scipy.ndimage.map_coordinates``, order 1, or axis by
        axis when the two grids' index axes are parallel); labels take the value of the nearest
        voxel (ties round up). A target voxel centre counts as inside when
        it lies in this volume's voxel-edge box; inside points within half a voxel of the border
        take the border value, points outside get ``fill`` (data) and 0 (labels).

        Args:
            shape: Target grid size (I, J, K), each at least 1.
            world_from_index: (4, 4) target affine, index to RAS+ world mm.
            fill: Data value for target voxels outside this volume.

        Returns:
            A volume on the target grid: float64 data when this one is float64, float32 otherwise;
            same units; labels of the same dtype.
        """
        target_shape = _index_triple(shape, "shape")
        if min(target_shape) < 1:
            raise InputError(f"every axis needs at least one voxel, got {target_shape}",
                             key="shape")
        if not math.isfinite(fill):
            raise InputError(f"must be finite, got {fill!r}", key="fill")
        target_affine = _validated_affine(world_from_index)
        return self._sample(target_shape, self.index_from_world @ target_affine, target_affine,
                            fill)

    def _sample(self, target_shape: tuple[int, int, int], source_from_target: NDArray[np.float64],
                target_affine: NDArray[np.float64], fill: float) -> Volume:
        """Resample onto a grid given by its index map into this volume's index space (4, 4).

        When the target's index axes run along this volume's (a diagonal 3×3, up to 1e-12
        relative, as in :meth:`resample`), trilinear interpolation is a product of 1-D linear
        interpolations and is done axis by axis, several times faster than sampling every voxel
        with ``map_coordinates``; it gives the same values.
        """
        linear = source_from_target[:3, :3]
        diagonal = np.diag(np.diag(linear))
        if np.max(np.abs(linear - diagonal)) <= 1e-12 * np.max(np.abs(diagonal)):
            axis_aligned = np.array(source_from_target)
            axis_aligned[:3, :3] = diagonal
            return self._sample_axis_aligned(target_shape, axis_aligned, target_affine, fill)
        from scipy.ndimage import map_coordinates  # here: keeps `import regkit.volume` light

        dtype = _float_dtype(self.data.dtype)
        data = np.empty(target_shape, dtype=dtype)
        labels = None if self.labels is None else np.zeros(target_shape, dtype=self.labels.dtype)
        upper = np.asarray(self.shape, dtype=np.float64) - 1.0
        # Source index of target voxel (i, j, k) = offset + i·c0 + j·c1 + k·c2, with c the columns.
        columns, offset = source_from_target[:3, :3].T, source_from_target[:3, 3]
        j_part = np.arange(target_shape[1], dtype=np.float64)[:, None, None] * columns[1]
        k_part = np.arange(target_shape[2], dtype=np.float64)[None, :, None] * columns[2]
        plane = j_part + k_part + offset  # (J, K, 3): source indices of the target's i = 0 plane
        rows_per_chunk = max(1, _RESAMPLE_CHUNK_VOXELS // (target_shape[1] * target_shape[2]))
        for start in range(0, target_shape[0], rows_per_chunk):
            stop = min(start + rows_per_chunk, target_shape[0])
            rows = np.arange(start, stop, dtype=np.float64)[:, None, None, None]
            source = plane[None] + rows * columns[0]  # (n, J, K, 3) fractional source indices
            inside = np.all((source >= -0.5 - _INSIDE_TOLERANCE)
                            & (source <= upper + 0.5 + _INSIDE_TOLERANCE), axis=-1)
            clipped = np.clip(source, 0.0, upper)
            coords = np.moveaxis(clipped, -1, 0)
            block = map_coordinates(self.data, coords, order=1, mode="nearest",
                                            output=dtype)
            block[~inside] = fill
            data[start:stop] = block
            if labels is not None and self.labels is not None:
                nearest = np.floor(clipped + 0.5).astype(np.intp)
                picked = self.labels[nearest[..., 0], nearest[..., 1], nearest[..., 2]]
                labels[start:stop] = np.where(inside, picked, 0)
        return Volume(data, target_affine, labels, self.units)

    def _sample_axis_aligned(self, target_shape: tuple[int, int, int],
                             source_from_target: NDArray[np.float64],
                             target_affine: NDArray[np.float64], fill: float) -> Volume:
        """:meth:`_sample` for a diagonal ``source_from_target``: one 1-D pass per axis.

        Axes that shrink are done first (the later passes then handle fewer voxels), and axes
        that the target shares with the source are skipped. Each pass gathers the two
        neighbouring planes along its axis in place (``np.take``): no transposed copy.
        """
        dtype = _float_dtype(self.data.dtype)
        coords, outside = [], []
        for axis in range(3):
            raw = source_from_target[axis, 3] + source_from_target[axis, axis] * \
                np.arange(target_shape[axis], dtype=np.float64)
            outside.append((raw < -0.5 - _INSIDE_TOLERANCE)
                           | (raw > self.shape[axis] - 0.5 + _INSIDE_TOLERANCE))
            coords.append(np.clip(raw, 0.0, self.shape[axis] - 1.0))

        data: np.ndarray = self.data
        for axis in sorted(range(3), key=lambda a: target_shape[a] / self.shape[a]):
            n_source = self.shape[axis]
            if target_shape[axis] == n_source and np.array_equal(coords[axis],
                                                                 np.arange(n_source)):
                continue
            below = np.minimum(np.floor(coords[axis]).astype(np.intp), max(n_source - 2, 0))
            above = np.minimum(below + 1, n_source - 1)
            shape = [1, 1, 1]
            shape[axis] = -1
            weight = (coords[axis] - below).astype(dtype).reshape(shape)
            result = np.take(data, below, axis=axis).astype(dtype, copy=False)   # a fresh copy
            result *= 1 - weight
            upper = np.take(data, above, axis=axis).astype(dtype, copy=False)
            upper *= weight
            result += upper
            data = result
        data = np.ascontiguousarray(data, dtype=dtype)

        labels = None
        if self.labels is not None:
            nearest = [np.minimum(np.floor(c + 0.5).astype(np.intp), n - 1)
                       for c, n in zip(coords, self.shape, strict=True)]
            labels = self.labels[np.ix_(*nearest)]
        for axis in range(3):
            if outside[axis].any():
                np.moveaxis(data, axis, 0)[outside[axis]] = fill
                if labels is not None:
                    np.moveaxis(labels, axis, 0)[outside[axis]] = 0
        return Volume(data, target_affine, labels, self.units)

    def resample(self, spacing_mm: ArrayLike, *, fill: float = 0.0) -> Volume:
        """Resample to a new voxel spacing, keeping the orientation and the physical extent.

        The new grid has the same axis directions and the same centre; along each axis it has
        ``ceil(extent / spacing)`` voxels, so it covers at least the old voxel-edge box
        (``extent = voxels × old spacing``) and overhangs it by less than half a new voxel on
        each side. Resampling at the current spacing returns the same grid and values.
        Interpolation as in :meth:`resample_to_grid` (trilinear data, nearest labels).

        Args:
            spacing_mm: New voxel size, mm: one number for all axes or one per axis (i, j, k).
            fill: Data value for new voxel centres outside the old voxel box (with the grid chosen
                here every new centre lies inside it, so ``fill`` only matters for consistency
                with :meth:`resample_to_grid`).
        """
        new_spacing = _spacing_triple(spacing_mm)
        old_shape = np.asarray(self.shape, dtype=np.float64)
        ratio = new_spacing / self.spacing  # new voxel size in old index units
        new_shape = np.maximum(1, np.ceil(old_shape / ratio - 1e-6)).astype(int)
        first_centre = (old_shape - 1.0) / 2.0 - (new_shape - 1.0) / 2.0 * ratio
        old_from_new = np.diag(np.append(ratio, 1.0))
        old_from_new[:3, 3] = first_centre
        if not math.isfinite(fill):
            raise InputError(f"must be finite, got {fill!r}", key="fill")
        i, j, k = (int(n) for n in new_shape)
        return self._sample((i, j, k), old_from_new, self.world_from_index @ old_from_new, fill)

    def downsample(self, factor: int) -> Volume:
        """One pyramid level down: average the data over ``factor``³ blocks of voxels.

        Voxels past the last whole block on an axis are dropped. The affine is adjusted so that
        each new voxel centre is the centre of its block (spacing × ``factor``). Labels take the
        majority value of each block; when several values tie, the smallest wins (so background 0
        wins a tie against a bone).

        Args:
            factor: Block size in voxels per axis, a whole number ≥ 1 (1 returns ``self``).

        Returns:
            A volume of shape ``shape // factor``: float64 data when this one is float64, float32
            otherwise; same units; labels of the same dtype.

        Raises:
            InputError: ``factor`` is not a whole number ≥ 1, or an axis has fewer voxels than it.
        """
        try:
            if isinstance(factor, bool):      # operator.index(True) is 1
                raise TypeError(factor)
            f = operator.index(factor)
        except TypeError as exc:
            raise InputError(f"must be a whole number, got {factor!r}", key="factor") from exc
        if f < 1:
            raise InputError(f"must be at least 1, got {f}", key="factor")
        if f == 1:
            return self
        new_shape = tuple(n // f for n in self.shape)
        if min(new_shape) == 0:
            raise InputError(f"grid {self.shape} has an axis shorter than the block size {f}",
                             key="factor")
        box = tuple(slice(0, n * f) for n in new_shape)
        blocked_shape = (new_shape[0], f, new_shape[1], f, new_shape[2], f)
        dtype = _float_dtype(self.data.dtype)
        # summed in the output dtype: exact for integer CTs (sums of f³ int16 values)
        data = block_reduce(self.data, (f, f, f), "mean", dtype)
        labels = None
        if self.labels is not None:
            blocks = self.labels[box].reshape(blocked_shape).transpose(0, 2, 4, 1, 3, 5)
            labels = _block_mode(blocks.reshape(-1, f ** 3)).reshape(new_shape)
        old_from_new = np.diag([float(f)] * 3 + [1.0])
        old_from_new[:3, 3] = (f - 1) / 2.0
        return Volume(data.astype(dtype, copy=False), self.world_from_index @ old_from_new,
                      labels, self.units)
