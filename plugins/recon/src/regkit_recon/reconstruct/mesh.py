"""Triangle meshes of bones: extraction from a field, closedness, binary STL and surface distance.

Convention:
    A :class:`Mesh` holds world RAS+ millimetres, like everything inside regkit. The STL files are
    written in **LPS** millimetres, as 3D Slicer reads STL (x and y negated), and say so in their
    80-byte header; :func:`read_stl` turns them back into RAS+. Triangles are wound so that their
    normals point out of the bone (counter-clockwise seen from outside).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from regkit.errors import InputError, ShapeError
from regkit.geometry.frames import LPS_FROM_RAS

__all__ = ["STL_HEADER", "Mesh", "SurfaceIndex", "extract_mesh", "read_stl", "surface_distances",
           "write_stl"]

STL_HEADER = b"regkit-recon bone mesh; binary STL; LPS mm (3D Slicer reads STL as LPS)"
"""The first bytes of every STL header this module writes (padded with spaces to 80)."""

_LPS_FROM_RAS = np.diag(LPS_FROM_RAS)[:3]


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh in world RAS+ mm.

    Attributes:
        vertices: float64 ``(V, 3)``.
        faces: int64 ``(F, 3)`` vertex indices, wound outwards.
    """

    vertices: NDArray[np.float64]
    faces: NDArray[np.int64]

    def __post_init__(self) -> None:
        v = np.asarray(self.vertices, dtype=np.float64)
        f = np.asarray(self.faces, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ShapeError(f"mesh vertices must be (V, 3), got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3:
            raise ShapeError(f"mesh faces must be (F, 3), got {f.shape}")
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise ShapeError("mesh faces index vertices that do not exist")
        object.__setattr__(self, "vertices", v)
        object.__setattr__(self, "faces", f)

    @property
    def triangles(self) -> NDArray[np.float64]:
        """``(F, 3, 3)``: each face's three corners."""
        return self.vertices[self.faces]

    @property
    def areas(self) -> NDArray[np.float64]:
        """``(F,)`` face areas, mm²."""
        t = self.triangles
        return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)

    @property
    def volume(self) -> float:
        """Signed enclosed volume, mm³ (positive when the faces are wound outwards)."""
        t = self.triangles
        return float(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0)

    @property
    def is_closed(self) -> bool:
        """True when every edge is shared by exactly two faces, in opposite directions."""
        if not len(self.faces):
            return False
        f = self.faces
        directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        n = len(self.vertices)
        forward = directed[:, 0] * n + directed[:, 1]
        backward = directed[:, 1] * n + directed[:, 0]
        unique, counts = np.unique(forward, return_counts=True)
        if (counts != 1).any():
            return False
        return bool(np.isin(backward, unique).all())

    def transformed(self, matrix: NDArray[np.float64]) -> Mesh:
        """The mesh under a 4×4 affine (faces re-wound when it mirrors)."""
        m = np.asarray(matrix, dtype=np.float64)
        v = self.vertices @ m[:3, :3].T + m[:3, 3]
        faces = self.faces if np.linalg.det(m[:3, :3]) > 0 else self.faces[:, ::-1]
        return Mesh(v, faces.copy())

    def sample(self, density_per_mm2: float, rng: np.random.Generator) -> NDArray[np.float64]:
        """Points spread uniformly over the surface, about ``density_per_mm2`` per mm²."""
        areas = self.areas
        count = max(round(float(areas.sum()) * density_per_mm2), 1)
        pick = rng.choice(len(areas), size=count, p=areas / areas.sum())
        r = rng.random((count, 2))
        flip = r.sum(axis=1) > 1.0
        r[flip] = 1.0 - r[flip]
        t = self.triangles[pick]
        return t[:, 0] + r[:, :1] * (t[:, 1] - t[:, 0]) + r[:, 1:] * (t[:, 2] - t[:, 0])


def extract_mesh(field: NDArray[np.floating], level: float = 0.0) -> Mesh:
    """The closed surface where ``field`` crosses ``level``, in the field's index coordinates.

    ``field`` is larger than ``level`` inside the object. The field is padded with one layer of
    "outside" on every side first, so the surface closes where the object touches the grid's edge
    (the vertices are given in the unpadded indices). The faces are wound outwards.

    Raises:
        InputError: the field never crosses ``level``.
    """
    from skimage.measure import marching_cubes

    f = np.asarray(field, dtype=np.float64)
    if f.ndim != 3:
        raise ShapeError(f"the field must be 3-D, got shape {f.shape}")
    if not (f > level).any():
        raise InputError("the field has no surface at the level given", key="field")
    outside = min(float(np.nanmin(f)), level) - 1.0
    padded = np.pad(np.nan_to_num(f, nan=outside), 1, constant_values=outside)
    vertices, faces, _, _ = marching_cubes(padded, level=level, allow_degenerate=False)
    mesh = Mesh(vertices.astype(np.float64) - 1.0, faces.astype(np.int64))
    if mesh.volume < 0:
        mesh = Mesh(mesh.vertices, mesh.faces[:, ::-1].copy())
    return mesh


def _stl_bytes(mesh: Mesh) -> bytes:
    v = mesh.vertices * _LPS_FROM_RAS        # negating x and y is a rotation: no re-winding
    t = v[mesh.faces]
    normals = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.divide(normals, length, out=np.zeros_like(normals), where=length > 0)
    record = np.zeros(len(mesh.faces), dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)),
                                                       ("attr", "<u2")]))
    record["n"] = normals
    record["v"] = t
    header = STL_HEADER.ljust(80, b" ")[:80]
    return header + struct.pack("<I", len(mesh.faces)) + record.tobytes()


def write_stl(path: str | os.PathLike[str], mesh: Mesh) -> None:
    """Write ``mesh`` as a binary STL in LPS mm, atomically."""
    from regkit.utils.files import atomic_write_bytes

    atomic_write_bytes(path, _stl_bytes(mesh))


def read_stl(path: str | os.PathLike[str]) -> Mesh:
    """Read a binary STL written in LPS mm back into a RAS+ :class:`Mesh` (vertices merged).

    Raises:
        InputError: the file is not a complete binary STL.
    """
    with open(path, "rb") as stream:
        data = stream.read()
    if len(data) < 84:
        raise InputError(f"{os.fspath(path)}: not a binary STL (only {len(data)} bytes)",
                         key="path")
    (count,) = struct.unpack("<I", data[80:84])
    if len(data) != 84 + 50 * count:
        raise InputError(f"{os.fspath(path)}: a binary STL of {count} triangles needs "
                         f"{84 + 50 * count} bytes, the file has {len(data)}", key="path")
    record = np.frombuffer(data, offset=84, count=count,
                           dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")]))
    corners = record["v"].reshape(-1, 3).astype(np.float64)
    unique, inverse = np.unique(corners, axis=0, return_inverse=True)
    return Mesh(unique * _LPS_FROM_RAS, inverse.reshape(-1, 3).astype(np.int64))


def _point_triangle_distance(p: NDArray[np.float64], a: NDArray[np.float64],
                             b: NDArray[np.float64], c: NDArray[np.float64]) -> NDArray[np.float64]:
    """Distances from points ``p`` ``(N, 3)`` to triangles ``(a, b, c)`` ``(N, 3)`` each (row-wise).

    The closest point is found by clamping barycentric coordinates region by region (Ericson,
    *Real-Time Collision Detection*, 5.1.5), vectorised.
    """
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = np.einsum("ij,ij->i", ab, ap), np.einsum("ij,ij->i", ac, ap)
    bp = p - b
    d3, d4 = np.einsum("ij,ij->i", ab, bp), np.einsum("ij,ij->i", ac, bp)
    cp = p - c
    d5, d6 = np.einsum("ij,ij->i", ab, cp), np.einsum("ij,ij->i", ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    denom = va + vb + vc
    with np.errstate(divide="ignore", invalid="ignore"):
        v = vb / denom
        w = vc / denom
        closest = a + v[:, None] * ab + w[:, None] * ac            # inside the face
        # Edges (only used where their region applies).
        t_ab = np.clip(d1 / (d1 - d3), 0.0, 1.0)
        t_ac = np.clip(d2 / (d2 - d6), 0.0, 1.0)
        t_bc = np.clip((d4 - d3) / ((d4 - d3) + (d5 - d6)), 0.0, 1.0)
    on_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    on_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    on_bc = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
    closest = np.where(on_bc[:, None], b + t_bc[:, None] * (c - b), closest)
    closest = np.where(on_ac[:, None], a + t_ac[:, None] * ac, closest)
    closest = np.where(on_ab[:, None], a + t_ab[:, None] * ab, closest)
    closest = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, closest)
    closest = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, closest)
    closest = np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, closest)
    closest = np.where(np.isfinite(closest), closest, a)
    return np.linalg.norm(p - closest, axis=1)


class SurfaceIndex:
    """A mesh's faces indexed once for many distance queries (see :func:`surface_distances`).

    The index is a k-d tree of the face centroids; a search that asks the same mesh about many
    point sets (an alignment's offsets) builds it once.

    Raises:
        InputError: a mesh without faces.
    """

    def __init__(self, mesh: Mesh, *, candidates: int = 12) -> None:
        self.triangles = mesh.triangles
        if not len(self.triangles):
            raise InputError("the mesh has no faces", key="mesh")
        self.candidates = min(candidates, len(self.triangles))
        self._tree = cKDTree(self.triangles.mean(axis=1))

    def distances(self, points: NDArray[np.float64]) -> NDArray[np.float64]:
        """Distance (mm) from each point ``(N, 3)`` to the surface."""
        p = _points(points)
        k, t = self.candidates, self.triangles
        _, near = self._tree.query(p, k=k)
        near = np.asarray(near).reshape(len(p), k)
        best = np.full(len(p), np.inf)
        for j in range(k):
            tri = t[near[:, j]]
            best = np.minimum(best, _point_triangle_distance(p, tri[:, 0], tri[:, 1], tri[:, 2]))
        return best

    def centroid_distances(self, points: NDArray[np.float64], cap_mm: float = np.inf
                           ) -> NDArray[np.float64]:
        """Distance (mm) from each point to the nearest face centroid, at most ``cap_mm``.

        A cheap stand-in for :meth:`distances`: it exceeds the surface distance by at most a
        face's size, and a finite cap spares the search for points farther away (most of a
        query's time goes to them).
        """
        found = self._tree.query(_points(points), k=1, distance_upper_bound=cap_mm)[0]
        return np.minimum(np.asarray(found, dtype=np.float64), cap_mm)


def _points(points: NDArray[np.float64]) -> NDArray[np.float64]:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ShapeError(f"points must be (N, 3), got {p.shape}")
    return p


def surface_distances(points: NDArray[np.float64], mesh: Mesh, *, candidates: int = 12
                      ) -> NDArray[np.float64]:
    """Distance (mm) from each point ``(N, 3)`` to the surface of ``mesh``.

    Each point is tested against the ``candidates`` faces whose centroids lie nearest: exact
    unless the nearest face is not among them, which on marching-cubes meshes (faces a fraction
    of a millimetre, roughly equal) errs by at most about a face's size.

    Raises:
        InputError: a mesh without faces.
    """
    return SurfaceIndex(mesh, candidates=candidates).distances(points)
