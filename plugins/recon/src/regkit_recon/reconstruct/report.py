"""``report.png``: what a reconstruction saw and made, for a person to look at.

One row of tiles per radiograph: the radiograph with each bone's outline (the network's), the
depth where the rays enter the nearest bone and leave the farthest (first view; the last exit
where the model predicts it), the meshes shaded from the view's direction
and from the side, and the re-projection of the reconstructed bones over the radiograph before and
after the views' fusion and any refinement (green: before, magenta: after; white where they
agree).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from regkit.geometry.camera import Camera
from regkit.io.png import montage, to_uint8, write_png

from .mesh import Mesh

if TYPE_CHECKING:
    from .base import Reconstruction

__all__ = ["before_after_overlay", "near_far", "outline_overlay", "project_silhouette",
           "shaded_meshes", "write_report"]

_TILE = 256
_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                     [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                     [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255]],
                    dtype=np.uint8)


def _rgb(gray: NDArray[np.uint8]) -> NDArray[np.uint8]:
    return np.repeat(gray[..., None], 3, axis=2)


def _fit(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Nearest-neighbour resize of an RGB tile to ``_TILE × _TILE`` (aspect kept, padded)."""
    h, w = image.shape[:2]
    scale = _TILE / max(h, w)
    rows = np.minimum((np.arange(round(h * scale)) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(round(w * scale)) / scale).astype(int), w - 1)
    small = image[rows][:, cols]
    out = np.zeros((_TILE, _TILE, 3), dtype=np.uint8)
    out[:small.shape[0], :small.shape[1]] = small
    return out


def project_silhouette(meshes: dict[str, Mesh], camera: Camera, *, density: float = 3.0,
                       seed: int = 0) -> dict[str, NDArray[np.bool_]]:
    """Each mesh's silhouette in ``camera``: its surface points projected, splatted and closed."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, mesh in meshes.items():
        uv = camera.project(mesh.sample(density, rng))
        ok = np.isfinite(uv).all(axis=1)
        cols = np.floor(uv[ok, 0]).astype(int)
        rows = np.floor(uv[ok, 1]).astype(int)
        keep = (cols >= 0) & (cols < camera.width) & (rows >= 0) & (rows < camera.height)
        mask = np.zeros((camera.height, camera.width), dtype=bool)
        mask[rows[keep], cols[keep]] = True
        mask = ndimage.binary_closing(mask, iterations=2, border_value=0)
        out[name] = np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)
    return out


def outline_overlay(image: NDArray[np.float64], masks: list[NDArray[np.bool_]],
                    colours: list[tuple[int, int, int]] | None = None) -> NDArray[np.uint8]:
    """The radiograph (gray) with each mask's outline drawn in its colour."""
    rgb = _rgb(_gray(image, masks))
    for i, mask in enumerate(masks):
        edge = mask & ~ndimage.binary_erosion(mask)
        colour = colours[i] if colours is not None else tuple(_PALETTE[i % len(_PALETTE)])
        rgb[edge] = colour
    return rgb


def _gray(image: NDArray[np.float64], masks: list[NDArray[np.bool_]]) -> NDArray[np.uint8]:
    """The radiograph windowed on the anatomy (the collimator's shadow is left to saturate)."""
    inside = np.zeros(image.shape, bool)
    for m in masks:
        inside |= m
    lo = float(np.percentile(image, 5.0))
    hi = float(np.percentile(image[inside], 99.5)) if inside.sum() > 20 \
        else float(np.percentile(image, 99.5))
    return to_uint8(image, (lo, hi) if hi > lo else None)


def before_after_overlay(image: NDArray[np.float64], before: dict[str, NDArray[np.bool_]],
                         after: dict[str, NDArray[np.bool_]]) -> NDArray[np.uint8]:
    """The radiograph with the bones' re-projected outlines before and after fusion or refinement.

    Before is green, after magenta, white where they agree.
    """
    rgb = _rgb(_gray(image, list(before.values())))
    edge_b = np.zeros(image.shape, bool)
    edge_a = np.zeros(image.shape, bool)
    for m in before.values():
        edge_b |= m & ~ndimage.binary_erosion(m)
    for m in after.values():
        edge_a |= m & ~ndimage.binary_erosion(m)
    rgb[edge_b & ~edge_a] = (60, 220, 60)
    rgb[edge_a & ~edge_b] = (230, 40, 230)
    rgb[edge_a & edge_b] = (255, 255, 255)
    return rgb


def shaded_meshes(meshes: dict[str, Mesh], direction: NDArray[np.float64],
                  up: NDArray[np.float64], size: int = _TILE) -> NDArray[np.uint8]:
    """The meshes seen along ``direction``.

    Orthographic, z-buffered, Lambert-shaded faces, one colour per bone.
    """
    d = np.asarray(direction, float)
    d /= np.linalg.norm(d)
    u = np.asarray(up, float) - (np.asarray(up, float) @ d) * d
    u /= np.linalg.norm(u)
    r = np.cross(d, u)                       # image right, as the camera's x = y × z
    if not meshes:
        return np.zeros((size, size, 3), np.uint8)
    allv = np.concatenate([m.vertices for m in meshes.values()])
    x_all, y_all = allv @ r, allv @ u
    span = max(float(np.ptp(x_all)), float(np.ptp(y_all)), 1e-6) * 1.05
    cx, cy = 0.5 * (x_all.max() + x_all.min()), 0.5 * (y_all.max() + y_all.min())
    depth = np.full((size, size), np.inf)
    out = np.zeros((size, size, 3), dtype=np.float64)
    for i, mesh in enumerate(meshes.values()):
        t = mesh.triangles
        centre = t.mean(axis=1)
        normal = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        shade = np.clip(-(normal @ d), 0.0, 1.0) * 0.8 + 0.2
        # splat each face at its centre and corners (faces are ~0.5 mm, pixels ~1 mm)
        pts = np.concatenate([centre, t[:, 0], t[:, 1], t[:, 2]])
        sh = np.tile(shade, 4)
        col = ((pts @ r - cx) / span + 0.5) * (size - 1)
        row = (0.5 - (pts @ u - cy) / span) * (size - 1)
        z = pts @ d
        ci, ri = np.rint(col).astype(int), np.rint(row).astype(int)
        ok = (ci >= 0) & (ci < size) & (ri >= 0) & (ri < size)
        order = np.argsort(-z[ok])               # far first: near ones overwrite
        ri, ci, z, sh = ri[ok][order], ci[ok][order], z[ok][order], sh[ok][order]
        nearer = z < depth[ri, ci]
        ri, ci, z, sh = ri[nearer], ci[nearer], z[nearer], sh[nearer]
        depth[ri, ci] = z
        out[ri, ci] = sh[:, None] * _PALETTE[i % len(_PALETTE)]
    return np.clip(out, 0, 255).astype(np.uint8)


def _depth_tile(depth: NDArray[np.float64]) -> NDArray[np.uint8]:
    return _rgb(to_uint8(np.where(np.isfinite(depth), depth, np.nan)))


def near_far(depth: Mapping[str, NDArray[Any]]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per pixel, the depth where the ray enters the nearest bone and where it leaves the farthest.

    ``depth`` is in the ``predict`` layout. The exit is the last exit where the model gives it
    (the solid reaches there), else the first layer's back; NaN where no bone is hit.
    """
    hit = np.asarray(depth["hit"], bool)
    front = np.asarray(depth["front"], float)[:, 0]
    exit_ = np.asarray(depth["last"], float) if "last" in depth else \
        np.asarray(depth["back"], float)[:, 0]
    # fmin / fmax skip NaN and give NaN only where every bone misses the ray: no empty-slice
    # warnings to silence, no mask of hit pixels to keep beside them
    near = np.fmin.reduce(np.where(hit, front, np.nan), axis=0)
    far = np.fmax.reduce(np.where(hit, exit_, np.nan), axis=0)
    return near, far


def write_report(path: str | os.PathLike[str], rec: Reconstruction) -> None:
    """Write ``report.png`` for ``rec`` (see the module notes)."""
    tiles: list[NDArray[np.uint8]] = []
    hit = np.asarray(rec.depth["hit"], bool)
    near, far = near_far(rec.depth)
    first = rec.views[0]
    direction = first.camera.view_direction_world
    up = -np.asarray(first.camera.world_from_camera[:3, 1])       # image rows run down
    side = np.cross(direction, up)
    for v, view in enumerate(rec.views):
        seen = rec.overlays.get(f"seen_{v}")
        row = [seen if seen is not None else
               outline_overlay(view.image, [m for m in hit if m.any()] if v == 0 else [])]
        if v == 0:
            row += [_depth_tile(near), _depth_tile(far), shaded_meshes(rec.meshes, direction, up),
                    shaded_meshes(rec.meshes, side, up)]
        else:
            row += [np.zeros((8, 8, 3), np.uint8)] * 4
        reprojection = rec.overlays.get(f"reprojection_{v}")
        if reprojection is not None:
            row.append(reprojection)
        tiles += [_fit(t) for t in row]
    columns = max(len(tiles) // max(len(rec.views), 1), 1)
    write_png(path, montage(tiles, columns=columns))
