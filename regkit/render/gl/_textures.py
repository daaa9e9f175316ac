"""The 3-D textures of one volume for the OpenGL renderer: upload, bone crops, and their caches.

The whole volume's μ is uploaded once with a margin of zero voxels; the values as stored (for
resampling) on first use; for each set of bones, its union mask, labels and masked μ, cropped to
the bones' bounding box, on first use, the last :data:`MAX_BONE_SETS` sets kept. Every texture
is owned by the renderer's :class:`GLObjects`, which releases them together. See
:mod:`regkit.render.gl.backend` for the sampling model these textures serve.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from regkit.render._checks import label_boxes, volume_mu

__all__ = ["CROP_BRICK", "MAX_BONE_SETS", "TEXTURE_FORMATS", "Block", "BoneSet", "GLObjects",
           "VolumeTextures"]

CROP_BRICK = 8          # occupancy brick of bone crops, cells per axis
MAX_BONE_SETS = 4       # bone sets whose crops are kept (least recently used dropped)
TEXTURE_FORMATS = ("unorm16", "float32")


class GLObjects:
    """The GL objects one renderer owns, in the list its finalizer releases.

    Args:
        objects: That list (kept, not copied, so that the finalizer sees what is added later).
    """

    def __init__(self, objects: list[Any]):
        self.objects = objects

    def own(self, obj: Any) -> Any:
        self.objects.append(obj)
        return obj

    def drop(self, objs: list[Any]) -> None:
        """Release objects this renderer owns (inside a session)."""
        for obj in objs:
            if obj is None:
                continue
            self.objects[:] = [o for o in self.objects if o is not obj]
            obj.release()


@dataclass
class Block:
    """A 3-D texture holding a block of voxels, with its occupancy grid and support box.

    Attributes:
        texture: The value (or mask) texture; texel ``t`` is voxel ``origin + t``.
        bricks: R8UI occupancy texture, one texel per brick (None where not needed).
        n_bricks: Brick counts ``(i, j, k)``.
        origin: Volume index of texel (0, 0, 0).
        size: Texture size ``(i, j, k)``.
        support_lo, support_hi: Index-space box outside which the block's field is 0.
        value_scale: A texel ``t`` read by the sampler means the value ``value_scale · t`` (1
            for float textures; see :func:`_encode_unorm16`).
        texel_format: The texture's moderngl dtype: ``"f4"``, ``"f2"`` (masks) or ``"nu2"``.
    """

    texture: Any
    bricks: Any
    n_bricks: tuple[int, int, int]
    origin: np.ndarray
    size: tuple[int, int, int]
    support_lo: np.ndarray
    support_hi: np.ndarray
    value_scale: float = 1.0
    texel_format: str = "f4"

    def release(self) -> list[Any]:
        objs = [self.texture, self.bricks]
        self.texture = self.bricks = None
        return objs


@dataclass
class BoneSet:
    """The crops of one set of bones: union mask, labels (bone_index), masked μ (DRRs)."""

    bones: tuple[int, ...]
    lo: np.ndarray      # first voxel index of the bones' bounding box
    hi: np.ndarray      # one past the last
    mask: Block | None = None
    labels: Any = None
    mu: Block | None = None

    def release(self) -> list[Any]:
        objs: list[Any] = []
        for block in (self.mask, self.mu):
            if block is not None:
                objs += block.release()
        objs.append(self.labels)
        self.mask = self.mu = self.labels = None
        return objs


class VolumeTextures:
    """The textures of one volume, uploaded on first use and cached (call inside a session).

    Args:
        volume: The renderer's :class:`~regkit.volume.Volume`.
        owned: The renderer's GL objects; every texture made here joins them.
        mu_water: Attenuation of water in 1/mm, for HU volumes.
        texture_format: ``"unorm16"`` or ``"float32"``: how μ blocks are stored (see
            :meth:`upload`).
    """

    def __init__(self, volume: Any, owned: GLObjects, *, mu_water: float, texture_format: str):
        self.volume = volume
        self.shape: tuple[int, int, int] = volume.shape
        self.owned = owned
        self.mu_water = mu_water
        self.texture_format = texture_format
        self.labels: np.ndarray | None = None if volume.labels is None \
            else np.asarray(volume.labels)
        self._label_boxes: dict[int, tuple[np.ndarray, np.ndarray]] | None = None
        self.bone_sets: OrderedDict[tuple[int, ...], BoneSet] = OrderedDict()
        self._data_block: Block | None = None

    def clear(self) -> None:
        """Forget the cached blocks (their GL objects are released by their owner)."""
        self.bone_sets.clear()
        self._data_block = None

    def upload(self, ctx: Any, values: np.ndarray, *, origin: np.ndarray, brick: int,
               support_lo: np.ndarray, support_hi: np.ndarray, encode: bool = False) -> Block:
        """Upload ``values`` and, unless ``brick`` is 0, its occupancy grid.

        ``values`` is a zero-margined block, (i, j, k) C order.

        float16 values (0/1 masks) go up as R16F. Other values go up as R32F, or, with
        ``encode`` and ``texture_format="unorm16"``, as 16-bit fixed point over their range
        (:func:`_encode_unorm16`; a block with negative values stays R32F).
        """
        import moderngl

        size = values.shape
        scale = 1.0
        if values.dtype == np.float16:
            data, fmt = np.ascontiguousarray(values), "f2"
        else:
            encoded = _encode_unorm16(values) if encode and self.texture_format == "unorm16" \
                else None
            if encoded is None:
                data, fmt = np.ascontiguousarray(values, dtype=np.float32), "f4"
            else:
                (data, scale), fmt = encoded, "nu2"
        own = self.owned.own
        tex = own(ctx.texture3d((size[2], size[1], size[0]), 1, data, dtype=fmt))
        tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
        tex.repeat_x = tex.repeat_y = tex.repeat_z = False
        bricks, n_bricks = None, (0, 0, 0)
        if brick:
            occ = _occupancy(values != 0, brick)
            if values.dtype == np.float16:  # a 0/1 mask: mark the bricks that are all 1 as 2
                occ += _occupancy(values == 1, brick, every=True)
            bricks = own(ctx.texture3d((occ.shape[2], occ.shape[1], occ.shape[0]), 1, occ,
                                       dtype="u1"))
            bricks.filter = (moderngl.NEAREST, moderngl.NEAREST)
            n_bricks = (int(occ.shape[0]), int(occ.shape[1]), int(occ.shape[2]))
        return Block(tex, bricks, n_bricks, np.asarray(origin, np.float64),
                     (int(size[0]), int(size[1]), int(size[2])),
                     np.asarray(support_lo, np.float64), np.asarray(support_hi, np.float64),
                     value_scale=scale, texel_format=fmt)

    # ------------------------------------------------------------------ whole volume
    def volume_mu(self, ctx: Any) -> Block:
        """Upload the whole volume's μ: the texture of full-volume DRRs.

        HU converted with ``mu_water``, other units as given; zero-margined, without an occupancy
        grid.
        """
        mu = volume_mu(self.volume, self.mu_water)
        n = np.asarray(self.shape, dtype=np.float64)
        return self.upload(ctx, _padded(mu), origin=np.full(3, -1.0), brick=0,
                           support_lo=np.full(3, -0.5), support_hi=n - 0.5, encode=True)

    def data(self, ctx: Any) -> Block:
        """The volume's values as stored (float32), for resampling; uploaded on first use."""
        if self._data_block is None:
            data = np.asarray(self.volume.data, dtype=np.float32)
            n = np.asarray(self.shape, dtype=np.float64)
            self._data_block = self.upload(
                ctx, _padded(data), origin=np.full(3, -1.0), brick=0,
                support_lo=np.zeros(3), support_hi=n - 1.0)
        return self._data_block

    # ------------------------------------------------------------------ bones
    def boxes(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Bounding box ``[lo, hi)`` of every positive label present (computed once)."""
        if self._label_boxes is None:
            assert self.labels is not None
            self._label_boxes = label_boxes(self.labels)
        return self._label_boxes

    def bone_set(self, key: tuple[int, ...]) -> BoneSet:
        """The (cached) crops for ``key``: sorted distinct labels the label map holds.

        The renderer contract (:meth:`regkit.render.base.Renderer._bones`) has checked them.
        """
        found = self.bone_sets.get(key)
        if found is not None:
            self.bone_sets.move_to_end(key)
            return found
        known = self.boxes()
        lo = np.min([known[b][0] for b in key], axis=0)
        hi = np.max([known[b][1] for b in key], axis=0)
        entry = BoneSet(key, lo, hi)
        self.bone_sets[key] = entry
        while len(self.bone_sets) > MAX_BONE_SETS:
            _, old = self.bone_sets.popitem(last=False)
            self.owned.drop(old.release())
        return entry

    def _crop(self, entry: BoneSet) -> tuple[np.ndarray, tuple[slice, ...], tuple[slice, ...]]:
        """Which voxels of the bones' box plus a one-voxel margin carry a chosen label.

        Returns:
            ``keep`` (bool, the box plus margin, False outside the volume), and the slices of the
            volume and of ``keep`` that overlap.
        """
        assert self.labels is not None
        size = tuple(int(s) for s in entry.hi - entry.lo + 2)
        src, dst = self.margin_slices(entry.lo, entry.hi)
        keep = np.zeros(size, dtype=bool)
        keep[dst] = np.isin(self.labels[src], entry.bones)
        return keep, src, dst

    def margin_slices(self, lo: np.ndarray, hi: np.ndarray
                      ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """The box ``[lo, hi)`` plus a one-voxel margin, as two tuples of slices.

        The slices of the volume it covers and where they land in a block of that box
        (``hi - lo + 2`` per axis).
        """
        src, dst = [], []
        for axis in range(3):
            a = int(lo[axis]) - 1
            b = int(hi[axis]) + 1
            a_in, b_in = max(a, 0), min(b, self.shape[axis])
            src.append(slice(a_in, b_in))
            dst.append(slice(a_in - a, b_in - a))
        return tuple(src), tuple(dst)

    @staticmethod
    def _support(entry: BoneSet) -> dict[str, Any]:
        return {"origin": entry.lo - 1.0, "support_lo": entry.lo - 1.0,
                "support_hi": entry.hi.astype(np.float64)}

    def mask(self, ctx: Any, entry: BoneSet) -> Block:
        """The union mask of the set's bones (R16F 0/1, with occupancy grid)."""
        if entry.mask is None:
            keep, _, _ = self._crop(entry)
            entry.mask = self.upload(ctx, keep.astype(np.float16), brick=CROP_BRICK,
                                     **self._support(entry))
        return entry.mask

    def label_texture(self, ctx: Any, entry: BoneSet) -> Any:
        """The set's labels, 0 elsewhere (R8UI, R16UI or R32UI, nearest filtering)."""
        if entry.labels is None:
            import moderngl

            assert self.labels is not None
            keep, src, dst = self._crop(entry)
            top = max(entry.bones)
            dtype, code = (np.uint8, "u1") if top < 256 else \
                ((np.uint16, "u2") if top < 65536 else (np.uint32, "u4"))
            labels = np.zeros(keep.shape, dtype=dtype)
            labels[dst] = np.where(keep[dst], self.labels[src], 0)
            n_i, n_j, n_k = keep.shape
            entry.labels = self.owned.own(ctx.texture3d((n_k, n_j, n_i), 1, labels, dtype=code))
            entry.labels.filter = (moderngl.NEAREST, moderngl.NEAREST)
        return entry.labels

    def bone_mu(self, ctx: Any, entry: BoneSet) -> Block:
        """μ · 1[label ∈ the set's bones], cropped, with occupancy grid (for ``bones=`` DRRs)."""
        if entry.mu is None:
            from regkit.volume import hu_to_mu

            keep, src, dst = self._crop(entry)
            data = np.asarray(self.volume.data)[src]
            data = hu_to_mu(data, self.mu_water) if self.volume.units == "HU" \
                else data.astype(np.float32)
            mu = np.zeros(keep.shape, dtype=np.float32)
            mu[dst] = np.where(keep[dst], data, np.float32(0.0))
            entry.mu = self.upload(ctx, mu, brick=CROP_BRICK, encode=True,
                                   **self._support(entry))
        return entry.mu


def _padded(values: np.ndarray) -> np.ndarray:
    """``values`` with one voxel of zeros on every side, float32."""
    out = np.zeros(tuple(s + 2 for s in values.shape), dtype=np.float32)
    out[1:-1, 1:-1, 1:-1] = values
    return out


def _encode_unorm16(values: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Non-negative ``values`` as uint16 texels, with the scale that reads them back.

    The sampler returns ``t / 65535`` in [0, 1] for a texel ``t``; ``value ≈ scale · sample``
    with ``scale`` the block's maximum, so 0 stays exactly 0 (the zero margin and empty space)
    and rounding to nearest bounds the error by ``scale / 131070``. None when the values cannot
    be encoded so (negative or non-finite ones): they stay float32.
    """
    v = np.asarray(values, dtype=np.float32)
    if v.size == 0:
        return None
    lo, hi = float(v.min()), float(v.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0:
        return None
    if hi == 0.0:
        return np.zeros(v.shape, dtype=np.uint16), 1.0
    t = np.empty(v.shape, dtype=np.uint16)
    np.rint(v * np.float32(65535.0 / hi), out=t, casting="unsafe")
    return t, hi


def _occupancy(flags: np.ndarray, brick: int, every: bool = False) -> np.ndarray:
    """uint8 per brick of ``brick`` cells per axis: 1 where any texel it interpolates is set.

    With ``every``: where all of them are, texels past the block's end counting as unset.

    Cell ``c`` interpolates texels ``c`` and ``c + 1``, so brick ``b`` reads texels
    ``[b·brick, (b + 1)·brick]``, one shared with the next brick.
    """
    occ = flags
    for axis in range(3):
        size = occ.shape[axis]
        n_b = max(1, math.ceil((size - 1) / brick))
        pad = n_b * brick + 1 - size
        if pad > 0:
            widths = [(0, 0)] * 3
            widths[axis] = (0, pad)
            occ = np.pad(occ, widths)
        body = np.moveaxis(occ, axis, 0)
        shaped = body[: n_b * brick].reshape(n_b, brick, *body.shape[1:])
        if every:
            blocks = shaped.all(axis=1) & body[brick:: brick][:n_b]
        else:
            blocks = shaped.any(axis=1) | body[brick:: brick][:n_b]
        occ = np.moveaxis(blocks, 0, axis)
    return np.ascontiguousarray(occ, dtype=np.uint8)
