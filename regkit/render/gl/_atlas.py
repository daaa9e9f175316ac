"""Per-bone mask atlases and bone windows, for the OpenGL renderer's ``depth_stack``.

An atlas packs several bones' own 0/1 mask crops into one texture, so that one dispatch marches
every bone; a bone window is the detector rectangle its crop projects into, the only pixels whose
rays can cross that bone. Atlases are cached per bone set, the last :data:`MAX_BONE_SETS` kept.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from regkit.render.gl._textures import CROP_BRICK, MAX_BONE_SETS, Block, VolumeTextures

__all__ = ["ATLAS_GAP", "Atlas", "atlas_set", "bone_windows"]

ATLAS_GAP = 2           # zero texels between two bones' crops in a depth atlas


@dataclass
class Atlas:
    """Several bones' own masks packed into one texture, for :meth:`GLRenderer.depth_per_bone`.

    Attributes:
        bones: The labels, in the order of ``boxes``.
        block: The atlas texture and its occupancy grid (``origin`` and support unused).
        boxes: ``(N, 3, 4)`` float32 per bone: the volume index of the atlas's texel (0, 0, 0)
            for that bone, and its support box ``lo``, ``hi`` (index space).
        lo, hi: ``(N, 3)`` each bone's voxel bounding box ``[lo, hi)``.
    """

    bones: tuple[int, ...]
    block: Block
    boxes: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def release(self) -> list[Any]:
        return self.block.release()


def atlas_set(ctx: Any, textures: VolumeTextures,
              cache: OrderedDict[tuple[int, ...], list[Atlas]], bones: tuple[int, ...],
              tex_limit: int) -> list[Atlas]:
    """The (cached) atlases of ``bones``' own masks.

    One, or more when one texture cannot hold them all.

    Args:
        ctx: The context (inside a session).
        textures: The volume's textures (label map, and owner of the atlas textures).
        cache: The renderer's atlases by bone set; updated here.
        bones: Sorted distinct labels the label map holds (the renderer contract checked them).
        tex_limit: Largest 3-D texture size per axis, texels.
    """
    found = cache.get(bones)
    if found is not None:
        cache.move_to_end(bones)
        return found
    known = textures.boxes()
    lo = np.array([known[b][0] for b in bones], dtype=np.int64)
    hi = np.array([known[b][1] for b in bones], dtype=np.int64)
    sizes = hi - lo + 2                                                  # crop + margins
    # pack along the axis that wastes least: total = sum along it × max across the others
    cost = [float((sizes[:, a] + ATLAS_GAP).sum()) * float(np.prod(
        [sizes[:, o].max() for o in range(3) if o != a])) for a in range(3)]
    axis = int(np.argmin(cost))
    groups: list[list[int]] = [[]]
    length = 0
    for i in range(len(bones)):
        need = int(sizes[i, axis]) + ATLAS_GAP
        if groups[-1] and length + need > tex_limit:
            groups.append([])
            length = 0
        groups[-1].append(i)
        length += need
    atlases = []
    for group in groups:
        atlases.append(_pack_atlas(ctx, textures, [bones[i] for i in group], lo[group],
                                   hi[group], axis))
    cache[bones] = atlases
    while len(cache) > MAX_BONE_SETS:
        _, old = cache.popitem(last=False)
        for atlas in old:
            textures.owned.drop(atlas.release())
    return atlases


def _pack_atlas(ctx: Any, textures: VolumeTextures, bones: list[int], lo: np.ndarray,
                hi: np.ndarray, axis: int) -> Atlas:
    """Upload the masks of ``bones`` side by side along ``axis``, ``ATLAS_GAP`` zero texels apart.

    The gap comes on top of each crop's own zero margin, so that no crop's interpolation reaches
    another.
    """
    labels = textures.labels
    assert labels is not None
    sizes = hi - lo + 2
    shape = [int(sizes[:, a].max()) for a in range(3)]
    shape[axis] = int((sizes[:, axis] + ATLAS_GAP).sum())
    values = np.zeros(shape, dtype=np.float16)
    boxes = np.zeros((len(bones), 3, 4), dtype=np.float32)
    at = 0
    for i, b in enumerate(bones):
        src, dst = textures.margin_slices(lo[i], hi[i])
        placed = tuple(slice(d.start + at, d.stop + at) if a == axis else d
                       for a, d in enumerate(dst))
        values[placed] = labels[src] == b
        offset = np.zeros(3)
        offset[axis] = at
        boxes[i, 0, :3] = lo[i] - 1.0 - offset
        boxes[i, 1, :3] = lo[i] - 1.0
        boxes[i, 2, :3] = hi[i]
        at += int(sizes[i, axis]) + ATLAS_GAP
    block = textures.upload(ctx, values, origin=np.zeros(3), brick=CROP_BRICK,
                            support_lo=np.zeros(3), support_hi=np.zeros(3))
    return Atlas(tuple(bones), block, boxes, lo, hi)


def bone_windows(intrinsic: np.ndarray, camera_from_world: np.ndarray, width: int, height: int,
                 world_from_index: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(B, N, 4)`` int ``(u0, v0, w, h)``: the pixels whose rays can cross each bone.

    A bone's field is 0 outside the box ``[lo - 1, hi]`` (index space) of its crop, so only
    rays through that box can cross its surface: its window is every pixel whose centre lies
    in the bounding rectangle of the box's projected corners, grown by a pixel for rounding,
    clipped to the detector (empty when it falls off it). The whole detector when a corner
    lies at or behind the source plane.

    Args:
        intrinsic: ``(B, 3, 3)`` float64 K of each view, pixels.
        camera_from_world: ``(B, 4, 4)`` float64 pose of each view, mm.
        width: Detector width, pixels.
        height: Detector height, pixels.
        world_from_index: The volume's 4×4 affine, mm per voxel.
        lo: ``(N, 3)`` each bone's voxel bounding box start (inclusive), voxel indices.
        hi: ``(N, 3)`` each bone's voxel bounding box end (exclusive), voxel indices.
    """
    k, t = intrinsic, camera_from_world
    wfi = np.asarray(world_from_index, dtype=np.float64)
    sel = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=bool)
    box_lo = np.asarray(lo, np.float64) - 1.0
    box_hi = np.asarray(hi, np.float64)
    corners = np.where(sel[None], box_hi[:, None, :], box_lo[:, None, :])  # (N, 8, 3)
    world = corners @ wfi[:3, :3].T + wfi[:3, 3]
    cam = np.einsum("bij,nkj->bnki", t[:, :3, :3], world) + t[:, None, None, :3, 3]
    z = cam[..., 2]
    front_of_source = (z > 1e-9).all(axis=-1)                          # (B, N)
    zs = np.where(z > 1e-9, z, 1.0)
    u = k[:, None, None, 0, 0] * cam[..., 0] / zs + k[:, None, None, 0, 2]
    v = k[:, None, None, 1, 1] * cam[..., 1] / zs + k[:, None, None, 1, 2]
    u0 = np.clip(np.ceil(u.min(axis=-1) - 0.5) - 1, 0, width)
    u1 = np.clip(np.floor(u.max(axis=-1) - 0.5) + 2, 0, width)
    v0 = np.clip(np.ceil(v.min(axis=-1) - 0.5) - 1, 0, height)
    v1 = np.clip(np.floor(v.max(axis=-1) - 0.5) + 2, 0, height)
    out = np.stack([u0, v0, np.maximum(u1 - u0, 0), np.maximum(v1 - v0, 0)], axis=-1)
    out[~front_of_source] = (0, 0, width, height)
    return out.astype(np.int64)
