"""The reconstructor contract, its registry, the radiograph views and the :class:`Reconstruction`.

A reconstructor turns one or more radiographs of the same anatomy (each with its camera) into
bones: a label volume, one closed mesh per bone, depth maps and measurements. Another anatomy or
model plugs in by subclassing :class:`Reconstructor` and registering it (``@reconstructors.
register("name")``, or the entry-point group ``regkit_recon.reconstructors``); the command line
takes any registered name through ``--reconstructor``.

Folder written by :meth:`Reconstruction.save` (see the conventions): ``labels.nii.gz`` (uint8,
world RAS+ mm), ``labels.csv`` (``label,name``), ``meshes/NAME.stl`` (binary STL in **LPS** mm, as
3D Slicer reads STL), ``depth.npz`` (the prediction-file layout, its bones moved as
refinement and the views' triangulation moved them),
``measurements.json``, ``result.json`` and ``report.png``. The folder is built beside the
target and appears by one rename, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.registry import Registry
from regkit.utils.files import atomic_dir

from .mesh import Mesh, write_stl

__all__ = ["RECONSTRUCTION_FILES", "Reconstruction", "Reconstructor", "View", "check_views",
           "reconstructors"]

RECONSTRUCTION_FILES = ("labels.nii.gz", "labels.csv", "meshes", "depth.npz",
                        "measurements.json", "result.json", "report.png")
"""What :meth:`Reconstruction.save` writes."""


@dataclass(frozen=True)
class View:
    """One radiograph to reconstruct from.

    Attributes:
        image: ``(H, W)`` line integrals (bone bright).
        camera: Its camera (``W × H``, with ``pixel_spacing_mm``).
        camera_source: Where the camera came from (``"camera file"``, ``"DICOM geometry"``,
            ``"standard hand geometry (...)"``), for the record.
        name: The image's file name or a label, for the record.
    """

    image: NDArray[np.float64]
    camera: Camera
    camera_source: str = "camera file"
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.camera, Camera):
            raise InputError(f"must be a regkit Camera (Camera.from_dict, load_cameras), got "
                             f"{type(self.camera).__name__}", key="camera")
        if isinstance(self.image, (str, os.PathLike)):
            raise InputError("is a path: read it with load_view(path, camera_path)", key="image")
        given = np.asarray(self.image)
        if given.dtype.kind not in "iuf":     # a mask (bool), complex numbers, text, objects
            raise InputError(f"a radiograph holds real numbers, got dtype {given.dtype}",
                             key="image")
        image = given.astype(np.float64)
        if image.ndim != 2:
            raise InputError(f"a radiograph must be 2-D, got shape {image.shape}", key="image")
        if (self.camera.width, self.camera.height) != (image.shape[1], image.shape[0]):
            raise InputError(f"the camera is {self.camera.width} x {self.camera.height} pixels "
                             f"but the image {self.name or ''} is {image.shape[1]} x "
                             f"{image.shape[0]}", key="camera")
        if self.camera.pixel_spacing_mm is None:
            raise InputError("the camera has no pixel_spacing_mm, so depths in mm are unknown",
                             key="pixel_spacing_mm")
        if not np.isfinite(image).all():
            raise InputError("the radiograph holds NaN or infinite values", key="image")
        if float(image.max() - image.min()) <= 0:
            raise InputError("the radiograph is flat (every pixel the same)", key="image")
        object.__setattr__(self, "image", image)


@dataclass
class Reconstruction:
    """Bones reconstructed from radiographs.

    Attributes:
        labels: uint8 ``(I, J, K)`` label volume.
        world_from_index: Its 4×4 affine (RAS+ mm).
        names: Label value → bone name (the reconstructor's bone table).
        meshes: Bone name → closed mesh (world RAS+ mm).
        depth: The prediction-file arrays (``bones``, ``hit``, ``prob``, ``front``, ``back``) of
            the first view, its bones moved as refinement and the views' triangulation moved
            them (the fused meshes' shapes are not in it).
        measurements: ``{"frame": ..., "bones": {NAME: {FIELD: value}}}``.
        result: The record written as ``result.json``.
        views: The radiographs.
        overlays: Report panels: name → RGB ``(H, W, 3)`` uint8 images.
    """

    labels: NDArray[np.uint8]
    world_from_index: NDArray[np.float64]
    names: dict[int, str]
    meshes: dict[str, Mesh]
    depth: dict[str, NDArray[Any]]
    measurements: dict[str, Any]
    result: dict[str, Any]
    views: list[View] = field(default_factory=list)
    overlays: dict[str, NDArray[np.uint8]] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the folder (see the module notes); returns it.

        With ``overwrite``, the old folder is moved aside, the new one renamed into place, and
        the old one then removed; if that rename fails the old folder is put back and the error
        raised, and if putting it back fails too an :class:`InputError` says where it is kept.

        Raises:
            InputError: ``directory`` exists (and ``overwrite`` is False) or is a file; or the
                replacement and the restore both failed (the message names the kept folder).
            OSError: the folder could not be written or replaced (the old one is back).
        """
        import nibabel as nib

        from .report import write_report

        target = Path(directory)
        if target.exists() and (not target.is_dir() or not overwrite):
            raise InputError("exists already (pass overwrite to replace it)"
                             if target.is_dir() else "exists and is not a directory",
                             source=target, key="out")
        with atomic_dir(target, key="out") as staging:
            image = nib.Nifti1Image(self.labels.astype(np.uint8), self.world_from_index)
            image.header.set_xyzt_units("mm")
            nib.save(image, staging / "labels.nii.gz")
            (staging / "labels.csv").write_text(
                "label,name\n" + "".join(f"{k},{v}\n" for k, v in sorted(self.names.items())))
            (staging / "meshes").mkdir()
            for name, mesh in self.meshes.items():
                write_stl(staging / "meshes" / f"{name}.stl", mesh)
            with open(staging / "depth.npz", "wb") as stream:
                arrays: dict[str, Any] = dict(self.depth)
                np.savez_compressed(stream, **arrays)
            (staging / "measurements.json").write_text(
                json.dumps(self.measurements, indent=2) + "\n")
            (staging / "result.json").write_text(json.dumps(self.result, indent=2) + "\n")
            write_report(staging / "report.png", self)
        return target


Progress = Callable[[str], None]


class Reconstructor(ABC):
    """Turns radiographs of one anatomy into a :class:`Reconstruction`.

    Subclasses take their options (model file, device, voxel size...) in the constructor and
    implement :meth:`reconstruct`. :attr:`bone_names` is the bone table they reconstruct.
    """

    name: str = ""

    @property
    @abstractmethod
    def bone_names(self) -> dict[int, str]:
        """Label value → bone name of what this reconstructor makes."""

    @abstractmethod
    def reconstruct(self, views: Sequence[View], *, refine: bool | None = None,
                    progress: Progress | None = None) -> Reconstruction:
        """Reconstruct from ``views`` (the first is the main view).

        All show the same anatomy with known cameras. ``refine`` None applies the reconstructor's
        default.
        """


def check_views(views: Any) -> list[View]:
    """``views`` as a list of at least one :class:`View` (any iterable of them).

    Raises:
        InputError: no view, or an item that is not a :class:`View` (key ``views``).
    """
    if isinstance(views, View):
        views = [views]
    try:
        out = list(views)
    except TypeError:
        raise InputError(f"must be radiographs (regkit_recon.reconstruct.View, see load_view), "
                         f"got {type(views).__name__}", key="views") from None
    if not out:
        raise InputError("needs at least one radiograph", key="views")
    for i, view in enumerate(out):
        if not isinstance(view, View):
            raise InputError(f"item {i} is a {type(view).__name__}, not a "
                             "regkit_recon.reconstruct.View (an image with its camera: "
                             "View(image, camera) or load_view(path, camera_path))", key="views")
    return out


reconstructors: Registry[type[Reconstructor]] = Registry("reconstructor",
                                                         "regkit_recon.reconstructors")
"""Registered reconstructors (``hand`` is built in)."""
