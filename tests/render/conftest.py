"""Shared fixtures of the renderer tests: analytic ellipsoids, their voxelisations, and cameras.

Ground truth is closed form. An ellipsoid is ``{x : |A (x − c)| ≤ 1}`` with
``A = diag(1/r) · Rᵀ`` (``R`` turns the body axes into world axes, ``r`` the semi-axes in mm). A ray
``x(t) = s + t·d`` (world mm, ``|d| = 1``, ``t`` in mm from the source) meets it where
``|p + t·q|² = 1`` with ``p = A (s − c)`` and ``q = A d``: a quadratic in ``t`` whose two roots are
the entry and the exit, and whose difference is the chord length.

The volumes live on a deliberately awkward grid: anisotropic spacing, index axes turned against the
world axes and an origin away from zero, so that every frame conversion is exercised.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from regkit.errors import BackendUnavailableError
from regkit.geometry.camera import Camera
from regkit.geometry.transforms import rotvec_to_matrix
from regkit.render.base import Renderer, Views, renderers
from regkit.volume import Volume

MU = 0.03  # 1/mm inside the analytic solids


# ------------------------------------------------------------------------------- analytic solids


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in world mm: centre ``(3,)``, semi-axes ``(3,)`` and ``world_from_body``."""

    center: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray

    @property
    def matrix(self) -> np.ndarray:
        """``A = diag(1/r) Rᵀ``: world offsets from the centre to the unit ball."""
        return np.diag(1.0 / self.radii) @ self.rotation.T

    def level(self, points: np.ndarray) -> np.ndarray:
        """``|A (x − c)|`` for points ``(..., 3)``: below 1 inside, 1 on the surface."""
        return np.linalg.norm((points - self.center) @ self.matrix.T, axis=-1)

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Entry and exit distances (mm) of rays ``s + t·d`` (``(..., 3)`` each); NaN on a miss."""
        p = (origins - self.center) @ self.matrix.T
        q = dirs @ self.matrix.T
        a = np.sum(q * q, axis=-1)
        b = 2.0 * np.sum(p * q, axis=-1)
        c = np.sum(p * p, axis=-1) - 1.0
        disc = b * b - 4.0 * a * c
        root = np.sqrt(np.where(disc > 0, disc, np.nan))
        return (-b - root) / (2.0 * a), (-b + root) / (2.0 * a)

    def chord(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Length (mm) of each ray inside the ellipsoid; 0 on a miss."""
        t_in, t_out = self.intersect(origins, dirs)
        return np.nan_to_num(np.clip(t_out, 0, None) - np.clip(t_in, 0, None), nan=0.0)


def grid_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float],
                rotvec: tuple[float, float, float], center: tuple[float, float, float]
                ) -> np.ndarray:
    """``world_from_index`` of a grid with the given spacing and turn, centred on ``center``."""
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(rotvec_to_matrix(np.asarray(rotvec, float))) @ np.diag(spacing)
    mid = (np.asarray(shape, float) - 1.0) / 2.0
    aff[:3, 3] = np.asarray(center, float) - aff[:3, :3] @ mid
    return aff


def index_centres_world(shape: tuple[int, int, int], world_from_index: np.ndarray) -> np.ndarray:
    """World positions ``(I, J, K, 3)`` of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    return idx @ world_from_index[:3, :3].T + world_from_index[:3, 3]


def partial_volume(solid: Ellipsoid, shape: tuple[int, int, int], world_from_index: np.ndarray,
                   sub: int = 6) -> np.ndarray:
    """Fraction of each voxel inside ``solid``, by ``sub³`` sub-samples per boundary voxel.

    Voxels whose centre lies farther from the surface than their half-diagonal (bounded through
    the Lipschitz constant ``1 / r_min`` of the level function) are wholly in or out.
    """
    centres = index_centres_world(shape, world_from_index)
    level = solid.level(centres)
    corners = np.array(list(product((-0.5, 0.5), repeat=3)))
    half_diag = np.max(np.linalg.norm(corners @ world_from_index[:3, :3].T, axis=1))
    margin = half_diag / float(np.min(solid.radii))
    frac = (level < 1.0 - margin).astype(np.float64)
    edge = np.abs(level - 1.0) <= margin
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    sub_idx = np.stack(np.meshgrid(offs, offs, offs, indexing="ij"), -1).reshape(-1, 3)
    sub_world = sub_idx @ world_from_index[:3, :3].T                   # (S, 3)
    pts = centres[edge][:, None, :] + sub_world[None]                 # (N, S, 3)
    frac[edge] = np.mean(solid.level(pts) <= 1.0, axis=1)
    return frac


def binary_mask(solid: Ellipsoid, shape: tuple[int, int, int],
                world_from_index: np.ndarray) -> np.ndarray:
    """uint8 mask: 1 where the voxel centre lies inside ``solid``."""
    return (solid.level(index_centres_world(shape, world_from_index)) <= 1.0).astype(np.uint8)


# ------------------------------------------------------------------------------- cameras and rays


def look_at(source: np.ndarray, target: np.ndarray, *, focal: float, width: int, height: int,
            up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> Camera:
    """A camera at ``source`` (world mm) whose central ray passes through ``target``."""
    z = np.asarray(target, float) - np.asarray(source, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    if np.linalg.norm(x) < 1e-6:
        x = np.cross(z, np.array([0.0, 1.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z])
    pose[:3, 3] = -pose[:3, :3] @ np.asarray(source, float)
    k = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
    return Camera(k, pose, width, height)


def camera_rays(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Source ``(3,)`` and unit directions ``(H, W, 3)`` of a camera, in world mm (numpy)."""
    return camera.rays()


def trilinear_profile(volume: np.ndarray, world_from_index: np.ndarray, origin: np.ndarray,
                      dirs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Zero-padded trilinear interpolation of ``volume`` at ``origin + t·dirs`` (scipy).

    Args:
        volume: ``(I, J, K)`` voxel values.
        world_from_index: ``(4, 4)`` index → world affine, mm.
        origin: ``(3,)`` ray origin in world coordinates, mm.
        dirs: ``(N, 3)`` unit world directions.
        t: ``(N, S)`` or ``(S,)`` distances along the rays, mm.

    Returns:
        ``(N, S)`` values.
    """
    index_from_world = np.linalg.inv(world_from_index)
    t = np.broadcast_to(t, (dirs.shape[0], np.shape(t)[-1]))
    pts = origin + t[..., None] * dirs[:, None, :]
    idx = pts @ index_from_world[:3, :3].T + index_from_world[:3, 3]
    out = ndimage.map_coordinates(volume.astype(np.float64), idx.reshape(-1, 3).T, order=1,
                                  mode="grid-constant", cval=0.0)
    return out.reshape(t.shape)


# ------------------------------------------------------------------------------- fixtures

GRID_SHAPE = (40, 36, 30)
GRID_SPACING = (1.0, 1.25, 1.5)
GRID_ROTVEC = (0.15, -0.25, 0.3)
GRID_CENTER = (5.0, -3.0, 2.0)


@pytest.fixture(scope="session")
def grid() -> tuple[tuple[int, int, int], np.ndarray]:
    """The test grid: shape and ``world_from_index``."""
    return GRID_SHAPE, grid_affine(GRID_SHAPE, GRID_SPACING, GRID_ROTVEC, GRID_CENTER)


@pytest.fixture(scope="session")
def ellipsoid() -> Ellipsoid:
    """A rotated ellipsoid, off the grid's centre."""
    rot = np.asarray(rotvec_to_matrix(np.array([0.4, 0.9, -0.5])))
    return Ellipsoid(np.array([7.0, -4.5, 3.0]), np.array([12.0, 8.5, 6.5]), rot)


@pytest.fixture(scope="session")
def ellipsoid_volume(grid: tuple[tuple[int, int, int], np.ndarray],
                     ellipsoid: Ellipsoid) -> Volume:
    """μ = MU inside the ellipsoid by exact partial volume (6³ sub-samples), in units ``"mu"``.

    Label 1 at voxel centres inside.
    """
    shape, aff = grid
    mu = (MU * partial_volume(ellipsoid, shape, aff)).astype(np.float32)
    return Volume(mu, aff, labels=binary_mask(ellipsoid, shape, aff), units="mu")


def _view_directions() -> list[np.ndarray]:
    dirs = [np.array(v, float) for v in ((0.3, 1.0, -0.2), (1.0, -0.4, 0.35),
                                           (-0.2, 0.25, 1.0), (0.6, 0.6, 0.55))]
    return [d / np.linalg.norm(d) for d in dirs]


@pytest.fixture(scope="session")
def cameras(ellipsoid: Ellipsoid) -> list[Camera]:
    """Four oblique views of the ellipsoid from 250 mm (40 × 36 pixels, f = 400 px)."""
    out = []
    for d in _view_directions():
        out.append(look_at(ellipsoid.center - 250.0 * d, ellipsoid.center + np.array([0.6, -0.4,
                                                                                         0.3]),
                           focal=400.0, width=40, height=36))
    return out


# ------------------------------------------------------------------------------- backends


def backend_names() -> list[str]:
    """Every registered renderer backend (the built-in ones imported first)."""
    for module in ("regkit.render.torch_backend", "regkit.render.gl"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    return renderers.names()


def views_of(cameras: Camera | list[Camera]) -> Views:
    """A :class:`Views` batch of cameras."""
    return Views.from_cameras(cameras)


def _backend_params() -> list[Any]:
    params: list[Any] = []
    for name in backend_names():
        if name == "gl":
            # also with trilinear samples computed from the texels (as on GPUs whose texture
            # units weigh texels in fixed point), which llvmpipe would not choose by itself
            params += [pytest.param("gl", marks=pytest.mark.gl),
                       pytest.param("gl-exact", marks=pytest.mark.gl)]
        else:
            params.append(name)
    return params


@pytest.fixture(params=_backend_params())
def make(request: pytest.FixtureRequest) -> Callable[..., Renderer]:
    """Build each registered backend in turn on a volume; skip one that cannot run here.

    ``gl-exact`` is the OpenGL backend with ``filtering="exact"``.
    """
    exact = request.param == "gl-exact"
    cls = renderers.get("gl" if exact else request.param)

    def build(volume: Volume, **options: Any) -> Renderer:
        if exact:
            options.setdefault("filtering", "exact")
        try:
            return cls(volume, **options)
        except BackendUnavailableError as err:
            pytest.skip(f"backend {request.param!r} unavailable: {err}")

    return build


def box_interval(shape: tuple[int, int, int], world_from_index: np.ndarray, origin: np.ndarray,
                 dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where rays (world, ``(N, 3)`` unit dirs) enter and leave the voxel-edge box (mm, t ≥ 0)."""
    index_from_world = np.linalg.inv(world_from_index)
    o = index_from_world[:3, :3] @ origin + index_from_world[:3, 3]
    d = dirs @ index_from_world[:3, :3].T
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-0.5 - o) / d
        t2 = (np.asarray(shape, float) - 0.5 - o) / d
    t_near = np.clip(np.nanmax(np.minimum(t1, t2), axis=1), 0, None)
    t_far = np.nanmin(np.maximum(t1, t2), axis=1)
    return t_near, t_far


def reference_crossings(mask: np.ndarray, world_from_index: np.ndarray, origin: np.ndarray,
                        dirs: np.ndarray, *, step: float = 0.05,
                        bisections: int = 40) -> list[tuple[list[float], list[float]]]:
    """Entries and exits of the 0.5 level set of the zero-padded trilinear ``mask`` per ray.

    Independent of the renderers: dense sampling with scipy's ``map_coordinates`` (order 1) every
    ``step`` mm inside the voxel-edge box, then bisection (on the same interpolation, all
    crossings at once) to ``step · 2⁻⁴⁰`` on each change of side.

    Returns:
        Per ray ``(entries, exits)``, distances from the source in mm, nearest first.
    """
    t_near, t_far = box_interval(mask.shape, world_from_index, origin, dirs)
    hit = t_far > t_near
    lo = float(np.min(t_near[hit])) if hit.any() else 0.0
    hi = float(np.max(t_far[hit])) if hit.any() else 0.0
    t = np.arange(lo - step, hi + 2 * step, step)
    prof = trilinear_profile(mask, world_from_index, origin, dirs, t)
    inside = (prof >= 0.5) & (t[None] >= t_near[:, None]) & (t[None] <= t_far[:, None])
    ray, i = np.nonzero(inside[:, 1:] != inside[:, :-1])
    up = inside[ray, i + 1]
    a, b = t[i], t[i + 1]  # side(a) = not up, side(b) = up
    for _ in range(bisections):
        mid = 0.5 * (a + b)
        val = _trilinear_points(mask, world_from_index, origin + mid[:, None] * dirs[ray])
        side = (val >= 0.5) & (mid >= t_near[ray]) & (mid <= t_far[ray])
        move = side == up
        b = np.where(move, mid, b)
        a = np.where(move, a, mid)
    root = 0.5 * (a + b)
    out: list[tuple[list[float], list[float]]] = [([], []) for _ in range(dirs.shape[0])]
    for n, r, u in zip(ray.tolist(), root.tolist(), up.tolist(), strict=True):
        out[n][0 if u else 1].append(r)
    return out


def _trilinear_points(values: np.ndarray, world_from_index: np.ndarray,
                      points: np.ndarray) -> np.ndarray:
    """Zero-padded trilinear interpolation of ``values`` at world points ``(N, 3)`` (scipy)."""
    index_from_world = np.linalg.inv(world_from_index)
    idx = points @ index_from_world[:3, :3].T + index_from_world[:3, 3]
    return ndimage.map_coordinates(values.astype(np.float64), idx.T, order=1,
                                   mode="grid-constant", cval=0.0)


def reference_drr(values: np.ndarray, world_from_index: np.ndarray, origin: np.ndarray,
                  dirs: np.ndarray, *, samples: int = 1500) -> np.ndarray:
    """``∫ f dl`` of the zero-padded trilinear ``values`` over the voxel-edge box, per ray.

    Independent of the renderers: the midpoint rule with ``samples`` points per ray (scipy's
    ``map_coordinates``, order 1).
    """
    t_near, t_far = box_interval(values.shape, world_from_index, origin, dirs)
    length = np.clip(t_far - t_near, 0, None)
    frac = (np.arange(samples) + 0.5) / samples
    t = t_near[:, None] + frac[None] * length[:, None]
    prof = trilinear_profile(values, world_from_index, origin, dirs, t)
    return prof.mean(axis=1) * length


def level_min(solid: Ellipsoid, origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Smallest ``|A (x − c)|`` along each ray (a line).

    Below 1 for rays through ``solid``; about 0 for rays through its centre.
    """
    p = (origin - solid.center) @ solid.matrix.T
    q = dirs @ solid.matrix.T
    return np.sqrt(np.maximum(p @ p - (q @ p) ** 2 / np.sum(q * q, axis=1), 0.0))


BIG_SHAPE = (92, 80, 72)
BIG_SPACING = (0.9, 1.0, 1.1)


@pytest.fixture(scope="session")
def big_ellipsoid() -> Ellipsoid:
    """An ellipsoid some 50 voxels across, turned and off the grid's centre."""
    rot = np.asarray(rotvec_to_matrix(np.array([0.4, 0.9, -0.5])))
    return Ellipsoid(np.array([2.3, -1.7, 1.1]), np.array([36.0, 30.0, 26.0]), rot)


@pytest.fixture(scope="session")
def big_ellipsoid_volume(big_ellipsoid: Ellipsoid) -> Volume:
    """μ = MU in :func:`big_ellipsoid` by exact partial volume (4³ sub-samples), units mu."""
    aff = grid_affine(BIG_SHAPE, BIG_SPACING, GRID_ROTVEC, (0.0, 0.0, 0.0))
    mu = (MU * partial_volume(big_ellipsoid, BIG_SHAPE, aff, sub=4)).astype(np.float32)
    return Volume(mu, aff, units="mu")


@pytest.fixture(scope="session")
def big_cameras(big_ellipsoid: Ellipsoid) -> list[Camera]:
    """Four oblique views of :func:`big_ellipsoid` from 300 mm (48 × 40 pixels, f = 250 px)."""
    target = big_ellipsoid.center + np.array([0.6, -0.4, 0.3])
    return [look_at(big_ellipsoid.center - 300.0 * d, target, focal=250.0, width=48, height=40)
            for d in _view_directions()]


@pytest.fixture(scope="session")
def shell() -> tuple[Ellipsoid, Ellipsoid]:
    """Outer and inner surfaces of a hollow ellipsoidal shell (a concave solid)."""
    rot = np.asarray(rotvec_to_matrix(np.array([0.2, -0.3, 0.25])))
    centre = np.array([5.5, -2.5, 2.5])
    return (Ellipsoid(centre, np.array([15.0, 13.0, 12.0]), rot),
            Ellipsoid(centre, np.array([8.0, 7.0, 6.5]), rot))


@pytest.fixture(scope="session")
def shell_volume(grid: tuple[tuple[int, int, int], np.ndarray],
                 shell: tuple[Ellipsoid, Ellipsoid]) -> Volume:
    """Label 3 in the shell's voxels (centres inside the outer and outside the inner surface)."""
    shape, aff = grid
    outer, inner = shell
    labels = (binary_mask(outer, shape, aff) & (1 - binary_mask(inner, shape, aff))).astype(
        np.uint8) * 3
    return Volume(MU * (labels > 0).astype(np.float32), aff, labels=labels, units="mu")


@pytest.fixture(scope="session")
def two_bones() -> tuple[Ellipsoid, Ellipsoid]:
    """Two disjoint ellipsoids, labelled 1 and 2 in :func:`two_bones_volume`."""
    rot = np.asarray(rotvec_to_matrix(np.array([0.1, 0.2, 0.3])))
    return (Ellipsoid(np.array([-3.0, -6.0, 0.5]), np.array([7.0, 6.0, 5.5]), rot),
            Ellipsoid(np.array([12.0, 2.0, 3.0]), np.array([6.0, 7.5, 5.0]), rot.T))


@pytest.fixture(scope="session")
def two_bones_volume(grid: tuple[tuple[int, int, int], np.ndarray],
                     two_bones: tuple[Ellipsoid, Ellipsoid]) -> Volume:
    """HU volume: 1000 HU (μ = 0.04) in bone 1, 500 HU in bone 2, −1000 HU (μ = 0) elsewhere."""
    shape, aff = grid
    m1 = binary_mask(two_bones[0], shape, aff)
    m2 = binary_mask(two_bones[1], shape, aff)
    labels = (m1 + 2 * m2).astype(np.int16)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[m1 > 0] = 1000.0
    hu[m2 > 0] = 500.0
    return Volume(hu, aff, labels=labels, units="HU")


class References:
    """Scipy references, computed once per session and shared by every backend's tests.

    ``get(key, fn, *args)`` returns ``fn(*args)``, cached under ``key``.
    """

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def get(self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = fn(*args, **kwargs)
        return self._cache[key]


@pytest.fixture(scope="session")
def refs() -> References:
    """The session's cache of reference computations."""
    return References()


@pytest.fixture(scope="session")
def tools() -> SimpleNamespace:
    """The analytic helpers of this file, for the test modules."""
    return SimpleNamespace(
        MU=MU, Ellipsoid=Ellipsoid, grid_affine=grid_affine,
        index_centres_world=index_centres_world, partial_volume=partial_volume,
        binary_mask=binary_mask, look_at=look_at, trilinear_profile=trilinear_profile,
        box_interval=box_interval, reference_crossings=reference_crossings,
        reference_drr=reference_drr, level_min=level_min, views_of=views_of,
        backend_names=backend_names)
