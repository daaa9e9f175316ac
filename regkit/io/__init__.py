"""Reading and writing images: NIfTI and DICOM volumes, radiographs.

Every conversion from a file's conventions (DICOM's LPS frame, degrees, photometric
interpretation) to regkit's (RAS+ world in mm, radians, line integrals) happens in this package.

Importing ``regkit.io`` is light: nibabel, pydicom and Pillow load only when a name that needs them
is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regkit.lazy import lazy_exports

if TYPE_CHECKING:
    from regkit.io.dicom import load_dicom_series, save_dicom_series
    from regkit.io.nifti import load_labels, load_nifti, save_nifti
    from regkit.io.radiograph import (
        ImageKind,
        Radiograph,
        load_radiograph,
        to_line_integral,
    )

__all__ = [
    "ImageKind",
    "Radiograph",
    "load_dicom_series",
    "load_labels",
    "load_nifti",
    "load_radiograph",
    "save_dicom_series",
    "save_nifti",
    "to_line_integral",
]

_LAZY = {
    "load_dicom_series": "regkit.io.dicom",
    "save_dicom_series": "regkit.io.dicom",
    "load_labels": "regkit.io.nifti",
    "load_nifti": "regkit.io.nifti",
    "save_nifti": "regkit.io.nifti",
    "ImageKind": "regkit.io.radiograph",
    "Radiograph": "regkit.io.radiograph",
    "load_radiograph": "regkit.io.radiograph",
    "to_line_integral": "regkit.io.radiograph",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
