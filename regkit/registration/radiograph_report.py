"""The PNG report of a 2D–3D registration.

Per view, the DRR's edges over the radiograph before and after, and the convergence curve (drawn by
:mod:`regkit.registration.report`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from regkit.geometry.camera import Camera
from regkit.registration._radiograph_inputs import (
    check_bones,
    check_cameras,
    check_images,
    check_volume,
)
from regkit.registration._report_files import radiograph_report_files
from regkit.registration.results import Registration2D3DResult
from regkit.render.base import Views
from regkit.volume import MU_WATER_PER_MM, Volume

__all__ = ["save_report"]


def save_report(directory: str | os.PathLike[str], volume: Volume, cameras: Sequence[Camera],
                images: Sequence[Any], result: Registration2D3DResult, *,
                image_kind: str = "line-integral", bones: Sequence[int] | None = None,
                backend: str | None = None) -> list[Path]:
    """PNGs showing a 2D–3D registration: per view, the DRR's edges over the radiograph.

    ``view_<i>.png``: the radiograph in grey with the edges of the DRR at the input cameras in
    magenta (left) and at the refined cameras in green (right). ``convergence.png``: the best
    score per level against evaluations.

    Args:
        directory: Created if missing.
        volume: As given to :func:`~regkit.registration.radiograph_registration.register_2d3d`.
        cameras: As given to :func:`~regkit.registration.radiograph_registration.register_2d3d`.
        images: As given to :func:`~regkit.registration.radiograph_registration.register_2d3d`.
        image_kind: As given to
            :func:`~regkit.registration.radiograph_registration.register_2d3d`.
        bones: As given to :func:`~regkit.registration.radiograph_registration.register_2d3d`.
        result: Its result.
        backend: Renderer backend for the DRRs (None: the default rule).

    Returns:
        The files written.
    """
    from regkit.registration.report import (
        GREEN,
        MAGENTA,
        edge_overlay,
        save_convergence,
        save_side_by_side,
    )
    from regkit.render.select import make_renderer

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    mu = check_volume(volume, MU_WATER_PER_MM)
    cams = check_cameras(cameras)
    imgs = check_images(images, cams, image_kind)
    labels = check_bones(bones, mu)
    renderer = make_renderer(mu, backend=backend)
    written = []
    files = radiograph_report_files(out, len(cams))
    for i, (cam, img) in enumerate(zip(cams, imgs, strict=True)):
        panels = []
        for pose, color in ((cam.camera_from_world, MAGENTA),
                            (result.cameras[i].camera_from_world, GREEN)):
            with torch.no_grad():
                drr = renderer.drr(Views.from_cameras(cam.with_pose(pose)), bones=labels)[0]
            panels.append(edge_overlay(img, drr.cpu().numpy(), color))
        save_side_by_side(files[i], panels)
        written.append(files[i])
    written += save_convergence(out, result)
    return written
