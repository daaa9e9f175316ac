"""Patient frames: regkit's world is RAS+ in mm; DICOM, ITK and STL files (for 3D Slicer) use LPS+.

The two frames differ by a half turn about the superior axis: x and y change sign. The map is its
own inverse, so one matrix serves both directions; the two names only make each use read right.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["LPS_FROM_RAS", "RAS_FROM_LPS"]

LPS_FROM_RAS: NDArray[np.float64] = np.diag([-1.0, -1.0, 1.0, 1.0])
"""(4, 4) map of RAS+ coordinates to LPS+ (negates x and y; a rotation, so handedness stays)."""
LPS_FROM_RAS.flags.writeable = False

RAS_FROM_LPS: NDArray[np.float64] = LPS_FROM_RAS
"""(4, 4) map of LPS+ coordinates to RAS+: the same matrix as :data:`LPS_FROM_RAS`."""
