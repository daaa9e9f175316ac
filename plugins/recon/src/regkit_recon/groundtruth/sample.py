"""One ground-truth sample: a DRR and per-bone depth layers in one camera, and its file.

Per-bone depth is the cost that matters (29 bones of a hand at 256²). :class:`SampleRenderer`
makes it cheap through the public renderer API alone: each bone gets its own renderer bound to a
crop of the CT around that bone (2 voxels of margin: the trilinear 0.5 level set of a bone's mask
lies within one voxel of its voxels, so the crop holds the whole surface and the same field), and
each bone's depth is rendered only on the detector window its crop projects into (the camera's
``crop``); everything outside that window is a miss by construction. The DRR is rendered by one
renderer bound to the whole CT.

Sample file (``.npz``, see the plugin README): ``image``, ``image_clean`` float32 ``[H, W]`` line
integrals; ``camera`` the camera file JSON; ``bones`` int32 ``[NB]``; ``hit`` bool ``[NB, H, W]``;
``front``, ``back`` float32 ``[NB, L, H, W]`` mm from the source (NaN: no such crossing);
``layers`` uint8 ``[NB, H, W]`` crossings per ray (may exceed L); ``source`` and ``meta`` JSON.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.render import Views, make_renderer
from regkit.utils.files import atomic_path

__all__ = ["SAMPLE_KEYS", "SampleRenderer", "read_sample", "write_sample"]

SAMPLE_KEYS = ("image", "image_clean", "camera", "bones", "hit", "front", "back", "layers",
               "source", "meta")
"""The arrays every sample file holds."""

_MARGIN_VOXELS = 2


class SampleRenderer:
    """Renders the clean DRR and the per-bone depth layers of one CT in any camera.

    Args:
        volume: The CT (:class:`regkit.Volume`, HU or μ) with its label map.
        bones: The label values to render (each must occur in the label map).
        backend: Renderer backend (None: :func:`regkit.render.make_renderer`'s choice).
        step_mm: DRR step along the ray, mm (default: the renderer's, half a voxel).
    """

    def __init__(self, volume: Any, bones: Sequence[int], *, backend: str | None = None,
                 step_mm: float | None = None) -> None:
        if volume.labels is None:
            raise InputError("the CT has no label map", key="labels")
        labels = np.asarray(volume.labels)
        self.bones = tuple(int(b) for b in bones)
        from scipy import ndimage

        top = int(max(self.bones))
        boxes = ndimage.find_objects(labels, max_label=top) if labels.max() >= 1 else []
        missing = [b for b in self.bones if b > len(boxes) or boxes[b - 1] is None]
        if missing:
            present = sorted(int(v) for v in np.unique(labels) if v)
            shown = ", ".join(str(v) for v in present[:30]) + (" ..." if len(present) > 30
                                                               else "")
            raise InputError(f"label(s) {missing} do not occur in the label map (present: "
                             f"{shown or 'none'})", key="bones")
        self.backend = backend
        self._drr = make_renderer(volume, backend=backend, step_mm=step_mm)
        self._bone: list[tuple[Any, np.ndarray]] = []
        for b in self.bones:
            box = boxes[b - 1]
            lo = [s.start - _MARGIN_VOXELS for s in box]
            hi = [s.stop + _MARGIN_VOXELS for s in box]
            crop = volume.crop(lo, hi)
            n = np.array(crop.shape, dtype=np.float64)
            corners = np.array([[x, y, z] for x in (-0.5, n[0] - 0.5) for y in (-0.5, n[1] - 0.5)
                                for z in (-0.5, n[2] - 0.5)])
            self._bone.append((make_renderer(crop, backend=backend),
                               np.asarray(crop.index_to_world(corners))))

    def close(self) -> None:
        """Release the renderers (GL objects) now."""
        for r in [self._drr, *(r for r, _ in self._bone)]:
            close = getattr(r, "close", None)
            if close is not None:
                close()
        self._bone = []

    def drr(self, camera: Camera) -> np.ndarray:
        """The clean DRR ``(H, W)`` float32 line integrals."""
        out = self._drr.drr(Views.from_cameras(camera))
        return np.ascontiguousarray(out[0].detach().cpu().numpy(), dtype=np.float32)

    def depth(self, camera: Camera, layers: int) -> dict[str, np.ndarray]:
        """Per-bone ``hit`` ``[NB, H, W]``, ``front``/``back`` ``[NB, L, H, W]``, ``layers``."""
        h, w, nb = camera.height, camera.width, len(self.bones)
        front = np.full((nb, layers, h, w), np.nan, dtype=np.float32)
        back = np.full_like(front, np.nan)
        count = np.zeros((nb, h, w), dtype=np.uint8)
        for i, (renderer, corners) in enumerate(self._bone):
            uv = camera.project(corners)
            if not np.isfinite(uv).all():
                raise InputError("a bone lies behind the X-ray source of this view",
                                 key="camera")
            u0 = max(int(np.floor(uv[:, 0].min())), 0)
            v0 = max(int(np.floor(uv[:, 1].min())), 0)
            u1 = min(int(np.ceil(uv[:, 0].max())), w)
            v1 = min(int(np.ceil(uv[:, 1].max())), h)
            if u1 <= u0 or v1 <= v0:
                continue  # the bone projects off the detector
            window = camera.crop(u0, v0, u1 - u0, v1 - v0)
            maps = renderer.depth(Views.from_cameras(window), [self.bones[i]], layers=layers)
            front[i, :, v0:v1, u0:u1] = maps.front[0].cpu().numpy()
            back[i, :, v0:v1, u0:u1] = maps.back[0].cpu().numpy()
            count[i, v0:v1, u0:u1] = maps.layers[0].cpu().numpy()
        return {"hit": count > 0, "front": front, "back": back, "layers": count}


def write_sample(path: str | os.PathLike[str], arrays: Mapping[str, Any]) -> None:
    """Write one sample ``.npz`` atomically (temp file + rename), deflate level 1.

    JSON strings (``camera``, ``source``, ``meta``) are stored as 0-d unicode arrays.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                                                    compresslevel=1) as zf:
        for key, value in arrays.items():
            arr = np.asarray(value)
            with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)


def read_sample(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a sample file: arrays as numpy, ``camera``/``source``/``meta`` as str.

    Raises:
        InputError: the file misses a key of :data:`SAMPLE_KEYS`.
    """
    source = Path(path)
    with np.load(source, allow_pickle=False) as data:
        missing = [k for k in SAMPLE_KEYS if k not in data.files]
        if missing:
            raise InputError(f"not a ground-truth sample: missing {', '.join(missing)}",
                             source=source, key=missing[0])
        out: dict[str, Any] = {k: data[k] for k in data.files}
    for key in ("camera", "source", "meta"):
        out[key] = str(out[key])
    return out


def camera_of(sample: Mapping[str, Any]) -> Camera:
    """The :class:`Camera` of a read sample."""
    return Camera.from_dict(json.loads(sample["camera"]))
