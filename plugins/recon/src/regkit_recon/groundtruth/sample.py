"""One ground-truth sample: a DRR and per-bone depth layers in one camera, and its file.

Per-bone depth is the cost that matters (29 bones of a hand at 256²). :class:`SampleRenderer`
makes it cheap through the public renderer API alone: one renderer bound to the CT's label map
renders every bone's depth layers in one call (:meth:`regkit.render.Renderer.depth_stack`, in
which every backend marches each bone only within its own bounding box, on the pixels whose rays
cross it), the same call on every backend.

The DRR is rendered by one renderer bound to the whole CT, optionally block-averaged over
``drr_factor``³ voxels first (:func:`drr_volume`): a detector pixel integrates the beam over its
area, and a point-sampled ray through voxels much finer than the pixel footprint aliases;
averaging the volume to about the footprint both anti-aliases the DRR and makes it several times
cheaper.

Sample file (``.npz``, see the plugin README): ``image``, ``image_clean`` float32 ``[H, W]`` line
integrals; ``camera`` the camera file JSON; ``bones`` int32 ``[NB]``; ``hit`` bool ``[NB, H, W]``;
``front``, ``back`` float32 ``[NB, L, H, W]`` mm from the source (NaN: no such crossing);
``layers`` uint8 ``[NB, H, W]`` crossings per ray (may exceed L); ``source`` and ``meta`` JSON.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from regkit.errors import FileFormatError, InputError
from regkit.geometry.camera import Camera
from regkit.render import Views, make_renderer

__all__ = ["SAMPLE_KEYS", "SampleRenderer", "auto_drr_factor", "camera_of", "drr_volume",
           "phantom_of", "read_sample", "sample_intact", "write_sample"]

SAMPLE_KEYS = ("image", "image_clean", "camera", "bones", "hit", "front", "back", "layers",
               "source", "meta")
"""The arrays every sample file holds."""

_AIR_HU = -1000.0


def drr_volume(volume: Any, factor: int) -> Any:
    """``volume`` block-averaged over ``factor``³ voxels, for DRRs (labels dropped).

    The grid is first padded at its far ends with what lies outside it for a renderer (air:
    -1000 HU, or μ = 0) up to a multiple of ``factor``, so the averaged volume covers the whole
    original extent. μ is linear in HU, so averaging HU averages μ. ``factor`` 1 returns the
    volume without its labels.
    """
    from regkit import Volume

    f = int(factor)
    if f < 1:
        raise InputError(f"must be a whole number >= 1, got {factor!r}", key="drr_factor")
    data = np.asarray(volume.data)
    pad = [(0, (-n) % f) for n in volume.shape]
    if any(p for _, p in pad):
        outside = _AIR_HU if volume.units == "HU" else 0.0
        if data.dtype.kind not in "fi":  # unsigned values cannot hold air's -1000 HU
            data = data.astype(np.float32)
        data = np.pad(data, pad, constant_values=outside)
    bare = Volume(data, np.asarray(volume.world_from_index), None, volume.units)
    return bare.downsample(f)


def auto_drr_factor(volume: Any, corners_world: np.ndarray, size: int,
                    fill_max: float) -> int:
    """The DRR block size for ``size``² views of the anatomy box ``corners_world``.

    The finest pixel footprint the views can draw, at the anatomy, is about the box's longest
    side over ``fill_max · size`` pixels (views fit the box's projection to ``fill`` of the
    detector). The block is the largest whole number of voxels (of the coarsest spacing) no
    larger than 3/4 of that footprint, at least 1: blocks stay finer than the pixels, so the DRR
    keeps the detector's resolution.
    """
    extent = float(np.max(np.ptp(np.asarray(corners_world, np.float64), axis=0)))
    footprint = extent / (float(fill_max) * int(size))
    coarsest = float(np.max(np.asarray(volume.spacing, np.float64)))
    return max(1, math.floor(0.75 * footprint / coarsest + 1e-9))


class SampleRenderer:
    """Renders the clean DRR and the per-bone depth layers of one CT in any camera.

    Args:
        volume: The CT (:class:`regkit.Volume`, HU or μ) with its label map.
        bones: The label values to render (each must occur in the label map).
        backend: Renderer backend (None: :func:`regkit.render.make_renderer`'s choice).
        step_mm: DRR step along the ray, mm (default: one DRR voxel when ``drr_factor`` > 1,
            else the renderer's, half a voxel).
        drr_factor: Block-average the CT over this many voxels per axis for the DRR
            (:func:`drr_volume`); depths always come from the full-resolution labels.
        boxes: The bones' boxes (:func:`~regkit_recon.groundtruth.views.bone_boxes`) when
            already known: then the labels are not searched again to refuse bones that do not
            occur (the renderer finds its own boxes).

    Raises:
        InputError: no label map, or a bone that does not occur in it.
    """

    def __init__(self, volume: Any, bones: Sequence[int], *, backend: str | None = None,
                 step_mm: float | None = None, drr_factor: int = 1,
                 boxes: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        from regkit_recon.groundtruth.views import bone_boxes

        if volume.labels is None:
            raise InputError("the CT has no label map", key="labels")
        labels = np.asarray(volume.labels)
        self.bones = tuple(int(b) for b in bones)
        if boxes is None or any(b not in boxes for b in self.bones):
            bone_boxes(labels, self.bones)  # refuses labels that do not occur, before any work
        self.drr_factor = int(drr_factor)
        coarse = drr_volume(volume, self.drr_factor)
        if step_mm is None and self.drr_factor > 1:
            # the averaged CT is smooth at the scale of its voxels: one sample per voxel adds
            # under 0.1 % (mean) to a 0.05 mm-step DRR of it, a tenth of what averaging changes
            step_mm = float(np.min(coarse.spacing))
        self.drr_step_mm = step_mm
        self._drr = make_renderer(coarse, backend=backend, step_mm=step_mm)
        self.backend = self._drr.backend
        from regkit import Volume

        # depths read only the labels: no need to convert (and, on gl, upload) the CT again
        shell = Volume(np.zeros(volume.shape, dtype=np.float32),
                       np.asarray(volume.world_from_index), labels, "mu")
        self._depth: Any = make_renderer(shell, backend=self.backend)

    def close(self) -> None:
        """Release the renderers (GL objects, cached tensors) now; idempotent."""
        self._drr.close()
        self._depth.close()

    def drr(self, camera: Camera) -> np.ndarray:
        """The clean DRR ``(H, W)`` float32 line integrals."""
        out = self._drr.drr(Views.from_cameras(camera))
        return np.ascontiguousarray(out[0].detach().cpu().numpy(), dtype=np.float32)

    def depth(self, camera: Camera, layers: int) -> dict[str, np.ndarray]:
        """Per-bone depth maps of one view, as arrays.

        ``hit`` ``[NB, H, W]``, ``front``/``back`` ``[NB, L, H, W]`` float32 mm from the source
        (NaN: no such crossing), ``layers`` uint8 ``[NB, H, W]``.
        """
        maps = self._depth.depth_stack(Views.from_cameras(camera), self.bones, layers=layers)
        arrays = {name: value[0] for name, value in maps.to_numpy().items()}   # the one view
        return {"hit": arrays["layers"] > 0, **arrays}


def write_sample(path: str | os.PathLike[str], arrays: Mapping[str, Any]) -> None:
    """Write one sample ``.npz`` atomically (temp file + rename), DEFLATE level 1.

    The writer (:func:`~regkit_recon.groundtruth.npzwrite.write_npz`) hands zlib only what lies
    between long runs of one value (the NaN of ``front``/``back`` outside each bone, the zeros
    of ``hit``), which makes it 2-3× faster than ``zipfile``; any ``numpy.load`` reads the file.
    JSON strings (``camera``, ``source``, ``meta``) are stored as 0-d unicode arrays.
    """
    from regkit_recon.groundtruth.npzwrite import write_npz

    write_npz(path, arrays, level=1, min_run_bytes=4096)


def read_sample(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a sample file: arrays as numpy, ``camera``/``source``/``meta`` as str.

    Raises:
        InputError: the file misses a key of :data:`SAMPLE_KEYS`.
        FileFormatError: a truncated or corrupt file.
    """
    source = Path(path)
    try:
        with np.load(source, allow_pickle=False) as data:
            missing = [k for k in SAMPLE_KEYS if k not in data.files]
            if missing:
                raise InputError(f"not a ground-truth sample: missing {', '.join(missing)}",
                                 source=source, key=missing[0])
            out: dict[str, Any] = {k: data[k] for k in data.files}
    except InputError:                                   # a missing key, said above
        raise
    except (FileNotFoundError, PermissionError) as err:
        raise FileFormatError(f"cannot read the sample file ({err.strerror})",
                              source=source) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError) as err:
        raise FileFormatError(f"truncated or corrupt sample file ({type(err).__name__}: "
                              f"{err}); remake it (regkit recon generate resumes)",
                              source=source) from None
    for key in ("camera", "source", "meta"):
        out[key] = str(out[key])
    return out


def sample_intact(path: str | os.PathLike[str], *, checksums: bool = False) -> bool:
    """Whether a sample file is whole: a zip holding every key of :data:`SAMPLE_KEYS`.

    A truncated or empty file fails (its zip directory, at the end, is gone). With
    ``checksums`` every member is read and its CRC checked too (30 ms a 256² sample on a core,
    against 0.3 ms without).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if any(f"{k}.npy" not in names for k in SAMPLE_KEYS):
                return False
            return not checksums or archive.testzip() is None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError):
        return False


def camera_of(sample: Mapping[str, Any]) -> Camera:
    """The :class:`Camera` of a read sample."""
    return Camera.from_dict(json.loads(str(sample["camera"])))


def phantom_of(sample: Mapping[str, Any]) -> Any:
    """The hand phantom a phantom sample was rendered from.

    Rebuilt from its seed and the malunions its ``meta`` records (the same arrays, byte for byte).

    Raises:
        InputError: the sample was rendered from a CT, not a phantom.
    """
    from regkit_recon.phantom import make_hand_phantom
    from regkit_recon.phantom.deformity import RADIUS_FIELDS, SHAFT_FIELDS

    source = json.loads(str(sample["source"]))
    if source.get("kind") != "phantom":
        raise InputError("the sample was not rendered from a phantom", key="source")
    fields = {"bone", *SHAFT_FIELDS, *RADIUS_FIELDS}
    records = json.loads(str(sample["meta"])).get("deformities", [])
    spec = [{k: v for k, v in d.items() if k in fields and v is not None} for d in records]
    return make_hand_phantom(int(source["seed"]), deformity=spec or None,
                             voxel_mm=float(source["voxel_mm"]))
