"""regkit: medical image registration (2D-3D, 3D-3D) and single-radiograph bone reconstruction.

``import regkit`` is light: it loads neither torch nor moderngl until a name that needs them is
used. Frames, units and file contracts are those of ``docs/CONVENTIONS.md``.
"""

from __future__ import annotations

from regkit.lazy import lazy_exports

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "Camera",
    "FileFormatError",
    "FrameError",
    "InputError",
    "Radiograph",
    "RegkitError",
    "ShapeError",
    "Volume",
    "__version__",
    "camera_from_carm",
    "hu_to_mu",
    "load_cameras",
    "load_dicom_series",
    "load_nifti",
    "load_radiograph",
    "save_cameras",
    "save_nifti",
]

_LAZY = {
    "BackendUnavailableError": "regkit.errors",
    "FileFormatError": "regkit.errors",
    "FrameError": "regkit.errors",
    "InputError": "regkit.errors",
    "RegkitError": "regkit.errors",
    "ShapeError": "regkit.errors",
    "Camera": "regkit.geometry.camera",
    "load_cameras": "regkit.geometry.camera",
    "save_cameras": "regkit.geometry.camera",
    "camera_from_carm": "regkit.geometry.carm",
    "Volume": "regkit.volume",
    "hu_to_mu": "regkit.volume",
    "load_nifti": "regkit.io.nifti",
    "save_nifti": "regkit.io.nifti",
    "load_dicom_series": "regkit.io.dicom",
    "Radiograph": "regkit.io.radiograph",
    "load_radiograph": "regkit.io.radiograph",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
