"""Numerical kernels of the PyTorch renderer: plane marching, trilinear sampling, resampling.

Private to :mod:`regkit.render.torch_backend`, which documents the sampling model; every function
here states its shapes, units and frames. Index space is the volume's voxel index ``(i, j, k)``
(voxel centres at whole numbers); a ray is ``x(t) = o + t·d`` in index space where ``t`` is the
distance in mm from the X-ray source along the world ray (``d`` is in voxels per mm).

Plane marching:
    A group of rays is marched across the planes perpendicular to one index axis ``a`` (the one
    the rays run most along). The voxel-edge extent ``[−½, n_a − ½]`` of that axis is cut into
    ``m · n_a`` equal cells (``m`` cells per voxel); cell ``p`` covers the cell coordinate
    ``q ∈ [p, p + 1]`` with ``q = (x_a + ½)·m``, and is sampled on its mid-plane
    ``x_a = (p + ½)/m − ½``. On that plane trilinear interpolation is bilinear interpolation in a
    slice (itself a linear blend of the two nearest voxel slices), done for all rays at once by
    :func:`torch.nn.functional.grid_sample` on a batch of slices. The integral over a ray is
    ``Σ_p μ(mid-plane p) · |[p, p + 1] ∩ [q_in, q_out]| · cell_mm``: the midpoint rule on the
    cells, with the two end cells weighted by the part of them that lies inside the box. A ray
    that enters and leaves through the two faces perpendicular to ``a`` (a "clean" ray, nearly
    every ray of a typical view) uses every cell whole, so its sum over a block of planes is a
    plain sum; only the blocks holding another ray's end cells are summed with weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from regkit.render.sampling import TINY_DIRECTION, choose_axes

__all__ = [
    "PlaneRays",
    "choose_axes",
    "corner_labels",
    "march_crossings",
    "march_integrals",
    "pack_quads",
    "plane_rays",
    "resample_affine",
    "trilinear_zero",
]


@dataclass
class PlaneRays:
    """R rays set up for marching across the planes perpendicular to index axis ``axis``.

    Attributes:
        axis: The marching axis ``a`` (0, 1 or 2).
        n_cells: The number of cells over the voxel-edge extent ``[−½, n_a − ½]``.
        m: Cells per voxel along ``a``, ``n_cells / n_a`` (not necessarily whole).
        hit: ``(R,)`` bool, rays that cross the voxel-edge box in front of the source.
        clean: ``(R,)`` bool, hit rays that enter and leave through the two faces
            perpendicular to ``a`` (every cell is then whole and inside the box).
        q_lo, q_hi: ``(R,)`` cell coordinates (compute dtype) where the ray enters and leaves the
            box, ordered so that ``q_lo ≤ q_hi``; both 0 on a miss.
        cell_mm: ``(R,)`` length of one cell along the ray, mm.
        grid0, grid1: ``(R, 2)`` normalised ``grid_sample`` coordinates ``(x, y)`` of the ray on
            mid-plane 0, and their change per cell; x runs along the slice's last axis.
        first, last: ``(R,)`` int64, the cells holding the entry and exit (``floor(q)``).
        o, d: ``(R, 3)`` float64 ray origins (index) and directions (voxels per mm), detached.
    """

    axis: int
    n_cells: int
    m: float
    hit: torch.Tensor
    clean: torch.Tensor
    q_lo: torch.Tensor
    q_hi: torch.Tensor
    cell_mm: torch.Tensor
    grid0: torch.Tensor
    grid1: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor
    o: torch.Tensor
    d: torch.Tensor

    def t_of_q(self, q: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
        """Distance from the source (mm) of cell coordinate ``q`` (float64) on rays ``rays``."""
        a = self.axis
        return ((q / self.m - 0.5) - self.o[rays, a]) / self.d[rays, a]


def plane_rays(o: torch.Tensor, d: torch.Tensor, shape: tuple[int, int, int], axis: int,
               n_cells: int, dtype: torch.dtype) -> PlaneRays:
    """Clip rays to the voxel-edge box and set them up for marching along ``axis``.

    Args:
        o: ``(R, 3)`` float64 ray origins in index space (may carry gradients).
        d: ``(R, 3)`` float64 directions, voxels per mm (may carry gradients); ``|d_axis| > 0``.
        shape: Volume shape ``(I, J, K)``.
        axis: Marching axis (0, 1 or 2), from :func:`choose_axes`.
        n_cells: Number of cells along ``axis`` over the volume's extent, from
            :func:`choose_axes`.
        dtype: Compute dtype of the returned per-ray tensors.

    Returns:
        The :class:`PlaneRays`; differentiable with respect to ``o`` and ``d`` where hit.
    """
    n = torch.tensor(shape, dtype=o.dtype, device=o.device)
    d_safe = torch.where(d.abs() < TINY_DIRECTION, torch.full_like(d, TINY_DIRECTION), d)
    t1 = (-0.5 - o) / d_safe
    t2 = (n - 0.5 - o) / d_safe
    t_min = torch.minimum(t1, t2)
    t_max = torch.maximum(t1, t2)
    t_near_raw, enter_axis = t_min.max(dim=-1)
    t_far, exit_axis = t_max.min(dim=-1)
    t_near = t_near_raw.clamp(min=0.0)
    hit = t_far > t_near
    a = axis
    clean = (hit & (enter_axis == a) & (exit_axis == a) & (t_near_raw > 0)).detach()
    u, v = [x for x in range(3) if x != a]
    m = n_cells / shape[a]
    da = d_safe[:, a]
    q_near = (o[:, a] + t_near * da + 0.5) * m
    q_far = (o[:, a] + t_far * da + 0.5) * m
    zero = torch.zeros_like(q_near)
    q_lo = torch.where(hit, torch.minimum(q_near, q_far), zero).clamp(0.0, float(n_cells))
    q_hi = torch.where(hit, torch.maximum(q_near, q_far), zero).clamp(0.0, float(n_cells))
    q_hi = torch.maximum(q_hi, q_lo)
    # A clean ray crosses the whole extent: its cells are exactly 0 … n_cells − 1.
    q_lo = torch.where(clean, zero, q_lo)
    q_hi = torch.where(clean, torch.full_like(q_hi, float(n_cells)), q_hi)
    cell_mm = 1.0 / (m * da.abs())
    # Position on mid-plane p: x_a = s0 + p/m, reached at t = (x_a − o_a)/d_a.
    s0 = 0.5 / m - 0.5
    ratio_u = d[:, u] / da
    ratio_v = d[:, v] / da
    # An in-plane axis of length 1 is sampled in a slice padded with zeros to length 3
    # (see plane_slices), so that the field still falls off beyond the voxel.
    su = 2.0 / (shape[u] - 1) if shape[u] > 1 else 1.0
    sv = 2.0 / (shape[v] - 1) if shape[v] > 1 else 1.0
    u0 = o[:, u] + (s0 - o[:, a]) * ratio_u + (1.0 if shape[u] == 1 else 0.0)
    v0 = o[:, v] + (s0 - o[:, a]) * ratio_v + (1.0 if shape[v] == 1 else 0.0)
    grid0 = torch.stack([v0 * sv - 1.0, u0 * su - 1.0], dim=-1)
    grid1 = torch.stack([ratio_v * (sv / m), ratio_u * (su / m)], dim=-1)
    q_lo_c = q_lo.detach()
    q_hi_c = q_hi.detach()
    first = q_lo_c.floor().clamp(0, n_cells - 1).long()
    last = q_hi_c.floor().clamp(0, n_cells - 1).long()
    return PlaneRays(
        axis=a, n_cells=n_cells, m=m, hit=hit.detach(), clean=clean,
        q_lo=q_lo.to(dtype), q_hi=q_hi.to(dtype), cell_mm=cell_mm.to(dtype),
        grid0=grid0.to(dtype).contiguous(), grid1=grid1.to(dtype).contiguous(),
        first=first, last=last, o=o.detach(), d=d_safe.detach())


def plane_slices(vol: torch.Tensor, axis: int, n_cells: int, p0: int, p1: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """The trilinear field on mid-planes ``p0 … p1 − 1`` along ``axis``, zero beyond the volume.

    Mid-plane ``p`` lies at ``x_a = (p + ½)·n_a / n_cells − ½``, a blend of the two voxel slices
    around it. An in-plane axis of length 1 comes back padded with a zero voxel on each side.

    Args:
        vol: ``(I, J, K)`` values (any real dtype; may carry gradients).
        axis: Marching axis (0, 1 or 2).
        n_cells: Number of cells along ``axis`` over the volume's extent.
        p0: First cell (mid-plane) of the range; may lie before the volume (slices there are 0).
        p1: End of the cell range, exclusive; may lie past the volume (slices there are 0).
        dtype: Output dtype.

    Returns:
        ``(p1 − p0, 1, n_u, n_v)`` contiguous slices, ``u < v`` the two other axes in order.
    """
    out = _plane_slices(vol, axis, n_cells, p0, p1, dtype)
    if out.shape[2] == 1 or out.shape[3] == 1:
        out = F.pad(out, (int(out.shape[3] == 1),) * 2 + (int(out.shape[2] == 1),) * 2)
    return out


def _plane_slices(vol: torch.Tensor, axis: int, n_cells: int, p0: int, p1: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """:func:`plane_slices` before an in-plane axis of length 1 is padded.

    ``(p1 − p0, 1, n_u, n_v)`` slices, not necessarily contiguous.
    """
    n_a = vol.shape[axis]
    slices = vol.movedim(axis, 0)
    if n_cells == n_a and p0 >= 0 and p1 <= n_a:
        out = slices[p0:p1]
        if axis != 0 or out.dtype != dtype:
            # A contiguous copy: sampling a strided slice (rows far apart) is several times slower.
            out = out.to(dtype).contiguous()
        return out.unsqueeze(1)
    x = (np.arange(p0, p1, dtype=np.float64) + 0.5) * (n_a / n_cells) - 0.5
    k0 = np.floor(x).astype(np.int64)
    f = x - k0
    if slices.requires_grad and torch.is_grad_enabled():
        planes = [_blend(slices, int(k), float(w), dtype) for k, w in zip(k0, f, strict=True)]
        return torch.stack(planes).unsqueeze(1)
    out = torch.empty((p1 - p0, *slices.shape[1:]), dtype=dtype, device=vol.device)
    for i, (k, w) in enumerate(zip(k0.tolist(), f.tolist(), strict=True)):
        _blend(slices, k, w, dtype, out=out[i])
    return out.unsqueeze(1)


def _blend(slices: torch.Tensor, k: int, w: float, dtype: torch.dtype,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """``(1 − w)·slices[k] + w·slices[k + 1]`` with zero slices beyond the volume."""
    n_a = slices.shape[0]
    lo = slices[k].to(dtype) if 0 <= k < n_a else None
    hi = slices[k + 1].to(dtype) if 0 <= k + 1 < n_a and w != 0.0 else None
    if lo is not None and hi is not None:
        return torch.lerp(lo, hi, w, out=out) if out is not None else torch.lerp(lo, hi, w)
    if lo is not None:
        res = lo * (1.0 - w)
    elif hi is not None:
        res = hi * w
    else:
        res = torch.zeros(slices.shape[1:], dtype=dtype, device=slices.device)
    if out is not None:
        out.copy_(res)
        return out
    return res


def _ray_chunks(rays: PlaneRays, chunk: int) -> list[tuple[int, int, int, int]]:
    """``[(r0, r1, first, last)]``: ray blocks and the cell range their hit rays span."""
    n = rays.hit.shape[0]
    out = []
    n_blocks = (n + chunk - 1) // chunk
    pad = n_blocks * chunk - n
    big = rays.n_cells + 1
    first = torch.where(rays.hit, rays.first, torch.full_like(rays.first, big))
    last = torch.where(rays.hit, rays.last, torch.full_like(rays.last, -1))
    if pad:
        first = F.pad(first, (0, pad), value=big)
        last = F.pad(last, (0, pad), value=-1)
    lo = first.view(n_blocks, chunk).amin(dim=1).tolist()
    hi = last.view(n_blocks, chunk).amax(dim=1).tolist()
    for b in range(n_blocks):
        if hi[b] >= 0:
            out.append((b * chunk, min(n, (b + 1) * chunk), int(lo[b]), int(hi[b])))
    return out


def _plane_blocks(p_lo: int, p_hi: int, size: int) -> Iterator[tuple[int, int]]:
    for p0 in range(p_lo, p_hi + 1, size):
        yield p0, min(p0 + size, p_hi + 1)


def _sample_block(slices: torch.Tensor, rays: PlaneRays, p0: int, p1: int, r0: int,
                  r1: int) -> torch.Tensor:
    """``(p1 − p0, r1 − r0)``: the field at mid-planes ``p0 … p1 − 1`` of rays ``r0 … r1 − 1``."""
    pv = torch.arange(p0, p1, device=slices.device, dtype=slices.dtype)
    grid = torch.addcmul(rays.grid0[None, r0:r1], pv[:, None, None], rays.grid1[None, r0:r1])
    val = F.grid_sample(slices, grid.unsqueeze(1), mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return val.view(p1 - p0, r1 - r0)


def march_integrals(vol: torch.Tensor, rays: PlaneRays, *, samples_per_block: int,
                    rays_per_block: int) -> torch.Tensor:
    """Line integrals ``∫ f dl`` (mm × units of ``vol``) of the zero-padded trilinear field.

    Args:
        vol: ``(I, J, K)`` values (may carry gradients).
        rays: From :func:`plane_rays`.
        samples_per_block: Mid-plane samples evaluated at once (bounds the memory).
        rays_per_block: Rays evaluated at once.

    Returns:
        ``(R,)`` integrals in the compute dtype of ``rays``; 0 for rays that miss.
    """
    dtype = rays.q_lo.dtype
    n = rays.hit.shape[0]
    out = torch.zeros(n, dtype=dtype, device=vol.device)
    chunk = max(1, min(rays_per_block, n))
    blocks = _ray_chunks(rays, chunk)
    if not blocks:
        return out
    p_lo = min(b[2] for b in blocks)
    p_hi = max(b[3] for b in blocks)
    per_block = max(1, samples_per_block // chunk)
    first, last, hit = rays.first, rays.last, rays.hit
    unclean = hit & ~rays.clean
    q_lo, q_hi = rays.q_lo, rays.q_hi
    # Weights of the two end cells: the part of [first, first + 1] and [last, last + 1] inside.
    w_first = torch.minimum(first.to(dtype) + 1.0, q_hi) - q_lo
    w_last = torch.where(last > first, q_hi - last.to(dtype), torch.zeros_like(q_hi))
    for p0, p1 in _plane_blocks(p_lo, p_hi, per_block):
        slices = plane_slices(vol, rays.axis, rays.n_cells, p0, p1, dtype)
        for r0, r1, lo, hi in blocks:
            if hi < p0 or lo >= p1:
                continue
            val = _sample_block(slices, rays, p0, p1, r0, r1)
            total = val.sum(dim=0)
            # A clean ray uses every cell whole. Other rays: none of this block where their cells
            # lie wholly outside it, per-cell weights where it holds one of their end cells (at
            # most two blocks per ray), a plain sum where their cells cover it.
            f, la = first[r0:r1], last[r0:r1]
            away = (la < p0) | (f >= p1)
            redo = unclean[r0:r1] & ~away & ((f + 1 > p0) | (la < p1))
            total = torch.where(away, torch.zeros_like(total), total)
            idx = redo.nonzero()[:, 0]
            if idx.numel():
                pv = torch.arange(p0, p1, device=vol.device)[:, None]
                fi, li = f[idx][None], la[idx][None]
                w = ((pv > fi) & (pv < li)).to(dtype)
                w = torch.where(pv == fi, w_first[r0:r1][idx][None], w)
                w = torch.where(pv == li, w_last[r0:r1][idx][None] + (li == fi).to(dtype)
                                * w, w)
                part = (val.index_select(1, idx) * w).sum(dim=0)
                total = total.index_copy(0, idx, part)
            out[r0:r1] += total
    return torch.where(hit, out, torch.zeros_like(out)) * rays.cell_mm


def restrict_to_box(rays: PlaneRays, lo: tuple[int, int, int],
                    hi: tuple[int, int, int]) -> PlaneRays:
    """The same rays, marched only where they cross the index box ``[lo − ½, hi − ½]``.

    The planes, and so every sample point, are those of the whole volume: only each ray's range
    of cells ``[q_lo, q_hi]`` shrinks (and ``hit`` is cleared for rays that miss the box). For a
    field that is below 0.5 outside the box, such as a bone mask cropped with a margin of a voxel
    or more, :func:`march_crossings` then finds exactly the crossings it finds on the whole ray.
    """
    o, d = rays.o, rays.d
    box_lo = torch.tensor(lo, dtype=o.dtype, device=o.device) - 0.5
    box_hi = torch.tensor(hi, dtype=o.dtype, device=o.device) - 0.5
    t1 = (box_lo - o) / d
    t2 = (box_hi - o) / d
    t_near = torch.minimum(t1, t2).max(dim=-1).values.clamp(min=0.0)
    t_far = torch.maximum(t1, t2).min(dim=-1).values
    a = rays.axis
    qa = (o[:, a] + t_near * d[:, a] + 0.5) * rays.m
    qb = (o[:, a] + t_far * d[:, a] + 0.5) * rays.m
    q_lo = torch.maximum(rays.q_lo.to(o.dtype), torch.minimum(qa, qb))
    q_hi = torch.minimum(rays.q_hi.to(o.dtype), torch.maximum(qa, qb))
    hit = rays.hit & (t_far > t_near) & (q_hi >= q_lo)
    zero = torch.zeros_like(q_lo)
    q_lo = torch.where(hit, q_lo, zero)
    q_hi = torch.where(hit, q_hi, zero)
    last_cell = rays.n_cells - 1
    return replace(
        rays, hit=hit, clean=rays.clean & hit & (q_lo == 0) & (q_hi == rays.n_cells),
        q_lo=q_lo.to(rays.q_lo.dtype), q_hi=q_hi.to(rays.q_hi.dtype),
        first=q_lo.floor().clamp(0, last_cell).long(),
        last=q_hi.floor().clamp(0, last_cell).long())


def march_crossings(mask: torch.Tensor, rays: PlaneRays, *, samples_per_block: int,
                    rays_per_block: int,
                    bisections: int = 24) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where rays cross the 0.5 level set of the zero-padded trilinear interpolation of ``mask``.

    The field is sampled on every mid-plane (at most one step apart); each change of side between
    two neighbouring samples is refined by bisection on the exact trilinear field (float64) to
    ``2**-bisections`` of a cell. Outside the voxel-edge box the field counts as 0.

    Args:
        mask: ``(I, J, K)`` binary mask (uint8 or bool).
        rays: From :func:`plane_rays`.
        samples_per_block: Mid-plane samples evaluated at once (bounds the memory), as in
            :func:`march_integrals`.
        rays_per_block: Rays evaluated at once, as in :func:`march_integrals`.
        bisections: Bisection steps per crossing.

    Returns:
        ``ray`` ``(N,)`` int64, ``t`` ``(N,)`` float64 distance from the source in mm, and
        ``entry`` ``(N,)`` bool (True where the ray goes into the mask), in no particular order.
    """
    dev = mask.device
    dtype = rays.q_lo.dtype
    n = rays.hit.shape[0]
    chunk = max(1, min(rays_per_block, n))
    blocks = _ray_chunks(rays, chunk)
    empty_l = torch.zeros(0, dtype=torch.long, device=dev)
    if not blocks:
        return empty_l, torch.zeros(0, dtype=torch.float64, device=dev), \
            torch.zeros(0, dtype=torch.bool, device=dev)
    p_lo = min(b[2] for b in blocks)
    p_hi = max(b[3] for b in blocks) + 1  # one cell past the last exit: the ray is out again
    per_block = max(1, samples_per_block // chunk)
    state = torch.zeros(n, dtype=torch.bool, device=dev)
    found_p, found_r, found_up = [], [], []
    hit = rays.hit
    for p0, p1 in _plane_blocks(p_lo, p_hi, per_block):
        slices = plane_slices(mask, rays.axis, rays.n_cells, p0, p1, dtype)
        centre = torch.arange(p0, p1, device=dev, dtype=dtype)[:, None] + 0.5
        for r0, r1, lo, hi in blocks:
            if hi + 1 < p0 or lo >= p1:
                continue
            val = _sample_block(slices, rays, p0, p1, r0, r1)
            inside = (val >= 0.5) & (centre >= rays.q_lo[None, r0:r1]) \
                & (centre <= rays.q_hi[None, r0:r1]) & hit[None, r0:r1]
            prev = torch.cat([state[None, r0:r1], inside], dim=0)
            change = (prev[1:] != prev[:-1]).nonzero()
            if change.shape[0]:
                found_p.append(change[:, 0] + p0)
                found_r.append(change[:, 1] + r0)
                found_up.append(inside[change[:, 0], change[:, 1]])
            state[r0:r1] = inside[-1]
    if not found_p:
        return empty_l, torch.zeros(0, dtype=torch.float64, device=dev), \
            torch.zeros(0, dtype=torch.bool, device=dev)
    p = torch.cat(found_p)
    r = torch.cat(found_r)
    up = torch.cat(found_up)
    # Bisection in the cell coordinate q between the samples at p − ½ and p + ½.
    q_lo = rays.q_lo.to(torch.float64)[r]
    q_hi = rays.q_hi.to(torch.float64)[r]
    below = p.to(torch.float64) - 0.5  # side: not up
    above = p.to(torch.float64) + 0.5  # side: up
    for _ in range(bisections):
        mid = 0.5 * (below + above)
        pts = rays.o[r] + rays.t_of_q(mid, r)[:, None] * rays.d[r]
        side = (trilinear_zero(mask, pts) >= 0.5) & (mid >= q_lo) & (mid <= q_hi)
        go_up = side == up
        above = torch.where(go_up, mid, above)
        below = torch.where(go_up, below, mid)
    q = 0.5 * (below + above)
    t = rays.t_of_q(q, r)
    entry = up == (rays.d[r, rays.axis] > 0)
    return r, t, entry


_CORNERS = ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0),
            (1, 1, 1))


def _stencil(shape: tuple[int, ...], pts: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 8 voxels around each point: flat indices (clamped), validity, trilinear weights.

    Args:
        shape: Volume shape ``(I, J, K)``.
        pts: ``(N, 3)`` float64 index coordinates.

    Returns:
        ``idx`` ``(N, 8)`` int64, ``inside`` ``(N, 8)`` bool, ``weights`` ``(N, 8)`` float64.
    """
    dev = pts.device
    offs = torch.tensor(_CORNERS, device=dev)                           # (8, 3)
    base = torch.floor(pts)
    frac = pts - base
    corner = base.long()[:, None, :] + offs[None]                       # (N, 8, 3)
    size = torch.tensor(shape, device=dev)
    inside = ((corner >= 0) & (corner < size)).all(dim=-1)
    corner = torch.minimum(corner.clamp(min=0), size - 1)
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=dev)
    idx = (corner * strides).sum(dim=-1)
    weights = torch.where(offs[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(-1)
    return idx, inside, weights


def trilinear_zero(vol: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation with zero padding at index-space points, in float64.

    Args:
        vol: ``(I, J, K)`` values (any real dtype).
        pts: ``(N, 3)`` float64 index coordinates.

    Returns:
        ``(N,)`` float64; 0 at and beyond one voxel outside the edge voxel centres.
    """
    idx, inside, weights = _stencil(tuple(vol.shape), pts)
    values = vol.reshape(-1)[idx].to(torch.float64)
    return (weights * torch.where(inside, values, torch.zeros_like(values))).sum(dim=1)


def corner_labels(labels: torch.Tensor,
                  pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and trilinear weights of the 8 voxels around each point (label 0 outside).

    Args:
        labels: ``(I, J, K)`` integer label map.
        pts: ``(N, 3)`` float64 index coordinates.

    Returns:
        ``labels`` ``(N, 8)`` int64 and ``weights`` ``(N, 8)`` float64.
    """
    idx, inside, weights = _stencil(tuple(labels.shape), pts)
    labs = labels.reshape(-1)[idx].long()
    return torch.where(inside, labs, torch.zeros_like(labs)), weights


# ------------------------------------------------------------------------------ resampling


def pack_quads(vol: torch.Tensor) -> torch.Tensor:
    """``vol`` edge-padded by one voxel on every side, as 4 rows of neighbouring voxels.

    The rows hold the voxels ``(j, k)``, ``(j, k + 1)``, ``(j + 1, k)`` and ``(j + 1, k + 1)`` of
    each padded ``(i, j, k)``.

    Returns:
        ``(4, (I + 2)·(J + 2)·(K + 2))`` (indices past the padding clamped). Two gathers of
        columns then fetch the whole trilinear stencil, laid out so that the blends that follow
        run on contiguous rows, and no coordinate inside the voxel-centre box (or its slack)
        needs clamping. 4 times the volume's memory.
    """
    padded = F.pad(vol[None, None], (1, 1, 1, 1, 1, 1), mode="replicate")[0, 0]
    nk = torch.cat([padded[:, :, 1:], padded[:, :, -1:]], dim=2)
    nj = torch.cat([padded[:, 1:], padded[:, -1:]], dim=1)
    njk = torch.cat([nk[:, 1:], nk[:, -1:]], dim=1)
    return torch.stack([padded, nk, nj, njk]).reshape(4, -1).contiguous()


@dataclass
class _Tiles:
    """How the fixed grid is swept: tiles of ``ti × tj × tk`` voxels, k fastest."""

    ti: int
    tj: int
    tk: int

    @classmethod
    def for_grid(cls, shape: tuple[int, int, int], points: int) -> _Tiles:
        tk = min(shape[2], 64)
        tj = min(shape[1], 32)
        return cls(max(1, min(shape[0], points // (tj * tk))), tj, tk)

    def __call__(self, shape: tuple[int, int, int]) -> Iterator[tuple[slice, slice, slice]]:
        for i0 in range(0, shape[0], self.ti):
            for j0 in range(0, shape[1], self.tj):
                for k0 in range(0, shape[2], self.tk):
                    yield (slice(i0, min(shape[0], i0 + self.ti)),
                           slice(j0, min(shape[1], j0 + self.tj)),
                           slice(k0, min(shape[2], k0 + self.tk)))


def resample_affine(vol: torch.Tensor, quads: torch.Tensor | None, index_map: torch.Tensor,
                    fixed_shape: tuple[int, int, int], *, fill: float, tolerance: float,
                    points_per_block: int, out_values: torch.Tensor,
                    out_mask: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``vol`` at ``index_map · (i, j, k, 1)`` for every fixed voxel.

    Inside the slack of the voxel-centre box the coordinate is clamped to the box. The fixed grid
    is swept in 3-D tiles, so that the part of the moving volume a tile reads stays in cache.

    Args:
        vol: ``(I, J, K)`` moving values, compute dtype (may carry gradients).
        quads: :func:`pack_quads` of ``vol`` for the gradient-free fast path, or None.
        index_map: ``(3, 4)`` moving index from fixed index (compute dtype; may carry gradients).
        fixed_shape: ``(I_f, J_f, K_f)``.
        fill: Value where the point falls outside ``[−tol, n − 1 + tol]`` on some axis.
        tolerance: Slack of the voxel-centre box, voxels (below 1).
        points_per_block: Fixed voxels handled at once.
        out_values: ``fixed_shape`` tensor written in place on the fast path.
        out_mask: ``fixed_shape`` bool tensor, written in place (True inside).

    Returns:
        The values, ``fixed_shape`` (``out_values`` itself on the fast path).
    """
    dev, dtype = vol.device, vol.dtype
    shape = (int(vol.shape[0]), int(vol.shape[1]), int(vol.shape[2]))
    m64 = index_map.detach().to(torch.float64)
    axes64 = [torch.arange(n, device=dev, dtype=torch.float64) for n in fixed_shape]
    axes = [a.to(dtype) for a in axes64]
    lo_k, hi_k = _resample_rows(m64, axes64[0], axes64[1], shape, tolerance)
    fill_t = torch.tensor(fill, device=dev, dtype=dtype)
    tiles = _Tiles.for_grid(fixed_shape, points_per_block)
    if quads is not None:
        # Padded index: x + 1 lies in [1 − tol, n + tol] inside the box, so its floor and the
        # next voxel are both in the padded grid; other points only need a valid address.
        strides = (float((shape[1] + 2) * (shape[2] + 2)), float(shape[2] + 2))
        exact = quads.shape[1] < (1 << 24) or dtype == torch.float64
        last = quads.shape[1] - 1 - int(strides[0])
        offset = index_map.detach().clone()
        offset[:, 3] += 1.0
        for ts in tiles(fixed_shape):
            lo, hi = lo_k[ts[0], ts[1]], hi_k[ts[0], ts[1]]
            k_first, k_last = float(ts[2].start), float(ts[2].stop - 1)
            if float((torch.minimum(hi, torch.full_like(hi, k_last))
                      - torch.maximum(lo, torch.full_like(lo, k_first))).max()) < 0:
                out_mask[ts] = False   # the whole tile lies outside
                out_values[ts] = fill
                continue
            whole = float(lo.max()) <= k_first and float(hi.min()) >= k_last
            mask = None if whole else _tile_mask(lo_k, hi_k, axes64[2], ts)
            out_mask[ts] = True if mask is None else mask
            x = _tile_coords(offset, axes, ts)
            base = x.floor()
            w = x.sub_(base)
            if exact:
                idx = torch.addcmul(base[2], base[1], torch.tensor(strides[1], device=dev,
                                                                   dtype=dtype))
                idx = torch.addcmul(idx, base[0], torch.tensor(strides[0], device=dev,
                                                               dtype=dtype))
            else:
                idx = base[0].double() * strides[0] + base[1].double() * strides[1] \
                    + base[2].double()
            if mask is not None:  # outside points only need a valid address
                idx = idx.clamp_(0, last)
            idx = idx.to(torch.int32 if exact else torch.int64).view(-1)
            w = w.view(3, -1)
            lo = quads.index_select(1, idx)                                     # (4, P)
            hi = quads.index_select(1, idx + int(strides[0]))
            face = torch.lerp(lo, hi, w[0])                                     # over i
            edge = torch.lerp(face[0::2], face[1::2], w[2])                     # over k
            val = torch.lerp(edge[0], edge[1], w[1])                            # over j
            if mask is None:
                out_values[ts] = val.view(out_values[ts].shape)
            else:
                torch.where(mask, val.view(mask.shape), fill_t, out=out_values[ts])
        return out_values
    # Differentiable path: 8 gathers from the volume itself, coordinates clamped to the box.
    n_i, n_j, n_k = shape
    upper = torch.tensor([n_i - 1.0, n_j - 1.0, n_k - 1.0], device=dev,
                         dtype=dtype).view(3, 1, 1, 1)
    upper_floor = torch.tensor([max(n_i - 2, 0), max(n_j - 2, 0), max(n_k - 2, 0)],
                               device=dev, dtype=dtype).view(3, 1, 1, 1)
    steps = (n_j * n_k if n_i > 1 else 0, n_k if n_j > 1 else 0, 1 if n_k > 1 else 0)
    flat = vol.reshape(-1)
    out = torch.empty(fixed_shape, dtype=dtype, device=dev)
    pieces = []
    for ts in tiles(fixed_shape):
        mask = _tile_mask(lo_k, hi_k, axes64[2], ts)
        out_mask[ts] = mask
        x = torch.clamp(_tile_coords(index_map, axes, ts), torch.zeros_like(upper), upper)
        base = torch.minimum(x.detach().floor(), upper_floor)
        w = x - base
        idx = (base[0].double() * (n_j * n_k) + base[1].double() * n_k + base[2].double()).long()
        val = _lerp_flat(flat, idx, w, *steps)
        pieces.append((ts, torch.where(mask, val, fill_t)))
    if not any(v.requires_grad for _, v in pieces):
        for ts, v in pieces:
            out[ts] = v
        return out
    return _assemble(pieces, fixed_shape, tiles)


def _assemble(pieces: list[tuple[tuple[slice, slice, slice], torch.Tensor]],
              shape: tuple[int, int, int], tiles: _Tiles) -> torch.Tensor:
    """Concatenate tiles (in sweep order) into one differentiable ``shape`` tensor."""
    n_j = -(-shape[1] // tiles.tj)
    n_k = -(-shape[2] // tiles.tk)
    values = [v for _, v in pieces]
    planes = []
    for a in range(0, len(values), n_j * n_k):
        rows = [torch.cat(values[a + b:a + b + n_k], dim=2) for b in range(0, n_j * n_k, n_k)]
        planes.append(torch.cat(rows, dim=1))
    return torch.cat(planes, dim=0)


def _tile_coords(index_map: torch.Tensor, axes: list[torch.Tensor],
                 ts: tuple[slice, slice, slice]) -> torch.Tensor:
    """``(3, ni, nj, nk)`` moving index of the fixed voxels of a tile."""
    ii, jj, kk = axes[0][ts[0]], axes[1][ts[1]], axes[2][ts[2]]
    row = index_map[:, 3, None, None] + ii[None, :, None] * index_map[:, 0, None, None] \
        + jj[None, None, :] * index_map[:, 1, None, None]                # (3, ni, nj)
    return row[..., None] + kk * index_map[:, 2, None, None, None]


def _tile_mask(lo_k: torch.Tensor, hi_k: torch.Tensor, kk: torch.Tensor,
               ts: tuple[slice, slice, slice]) -> torch.Tensor:
    k = kk[ts[2]]
    return (k >= lo_k[ts[0], ts[1], None]) & (k <= hi_k[ts[0], ts[1], None])


def _resample_rows(m: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor,
                   shape: tuple[int, int, int], tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For each fixed row (i, j): the interval ``[lo, hi]`` of k that lands in the moving grid.

    That is, of k whose moving index lies in ``[−tol, n − 1 + tol]`` on every axis; ``(ni, nj)``
    float64 each (empty when lo > hi).
    """
    lo_k = torch.full((ii.shape[0], jj.shape[0]), -math.inf, dtype=torch.float64,
                      device=ii.device)
    hi_k = torch.full_like(lo_k, math.inf)
    for a in range(3):
        start = m[a, 3] + ii[:, None] * m[a, 0] + jj[None, :] * m[a, 1]
        step = float(m[a, 2])
        lo_b, hi_b = -tol, shape[a] - 1.0 + tol
        if step > 0:
            lo_k = torch.maximum(lo_k, (lo_b - start) / step)
            hi_k = torch.minimum(hi_k, (hi_b - start) / step)
        elif step < 0:
            lo_k = torch.maximum(lo_k, (hi_b - start) / step)
            hi_k = torch.minimum(hi_k, (lo_b - start) / step)
        else:
            outside = (start < lo_b) | (start > hi_b)
            hi_k = torch.where(outside, torch.full_like(hi_k, -math.inf), hi_k)
    return lo_k, hi_k


def _lerp_flat(flat: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, step_i: int, step_j: int,
               step_k: int) -> torch.Tensor:
    """Trilinear blend of the 8 voxels at ``idx + {0, step_i} + {0, step_j} + {0, step_k}``.

    ``idx`` has the shape of the result, ``w`` is ``(3, *idx.shape)``.
    """
    wi, wj, wk = w[0], w[1], w[2]
    c = [torch.lerp(flat.take(idx + oi + oj), flat.take(idx + oi + oj + step_k), wk)
         for oi in (0, step_i) for oj in (0, step_j)]
    return torch.lerp(torch.lerp(c[0], c[1], wj), torch.lerp(c[2], c[3], wj), wi)
