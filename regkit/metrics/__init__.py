"""Image similarity metrics for 2D–3D (DRR vs radiograph) and 3D–3D registration.

Every metric follows :class:`~regkit.metrics.base.Metric`: ``metric(fixed, moving, mask=None)``
scores a batch ``moving`` ``(B, *S)`` against ``fixed`` ``(*S)`` or ``(B, *S)`` and returns
``(B,)``; ``metric.loss(...)`` is the value to minimise. Build one by name with
:func:`get_metric`; the built-in names are ``ncc``, ``masked_ncc``, ``lncc``, ``gc``, ``gncc``,
``nmi``, ``mattes_mi`` and ``ssd``, and plugins add theirs through the ``regkit.metrics``
entry-point group.
"""

from __future__ import annotations

from regkit.metrics.base import Metric, get_metric, metrics, register
from regkit.metrics.gradient import GC, GNCC
from regkit.metrics.mi import NMI, MattesMI
from regkit.metrics.ncc import LNCC, NCC, MaskedNCC
from regkit.metrics.ssd import SSD

__all__ = [
    "GC",
    "GNCC",
    "LNCC",
    "NCC",
    "NMI",
    "SSD",
    "MaskedNCC",
    "MattesMI",
    "Metric",
    "get_metric",
    "metrics",
    "register",
]
