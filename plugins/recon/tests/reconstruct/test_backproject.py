"""Back-projection, meshes and STL: exact depth maps give back the bone they came from."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from regkit_recon.data import demo_hand as demo_hand_folder
from regkit_recon.groundtruth.sample import SampleRenderer
from regkit_recon.reconstruct.backproject import (
    DEPTH_WEIGHT,
    BoneSolid,
    FusedSolid,
    _sample_field,
    backproject,
    backproject_bone,
    fuse_views,
    label_volume,
)
from regkit_recon.reconstruct.mesh import (
    STL_HEADER,
    Mesh,
    extract_mesh,
    read_stl,
    surface_distances,
    write_stl,
)

from regkit import Volume
from regkit.errors import InputError, ShapeError
from regkit.geometry.camera import Camera
from regkit.geometry.carm import camera_from_carm

DEMO = demo_hand_folder() / "samples"


def _ellipsoid_volume(radii: tuple[float, float, float], centre: tuple[float, float, float],
                      voxel: float = 0.5) -> tuple[Volume, np.ndarray]:
    """A labelled ellipsoid (label 3) in HU on a grid around ``centre``."""
    half = np.array(radii) + 4.0
    n = np.ceil(2 * half / voxel).astype(int)
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = np.array(centre) - half
    index = np.indices(tuple(n)).reshape(3, -1).T
    world = index * voxel + affine[:3, 3]
    inside = (((world - centre) / radii) ** 2).sum(axis=1) <= 1.0
    labels = np.zeros(n, dtype=np.uint8)
    labels[tuple(index[inside].T)] = 3
    hu = np.where(labels > 0, 1200, -1000).astype(np.int16)
    return Volume(hu, affine, labels=labels), affine


def _ellipsoid_distance(points: np.ndarray, radii: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """First-order distance to an ellipsoid's surface: |g| / |∇g| for g = Σ(x/r)² − 1.

    Exact to well under 0.01 mm for points within a millimetre of it.
    """
    q = (points - centre) / radii
    g = (q ** 2).sum(axis=1) - 1.0
    grad = 2 * q / radii
    return np.abs(g) / np.linalg.norm(grad, axis=1)


def _camera(width: int = 96, spacing: float = 0.8) -> Camera:
    return camera_from_carm(source_to_detector_mm=1000.0, source_to_isocenter_mm=950.0,
                            width=width, height=width, pixel_spacing_mm=spacing)


def test_mesh_basics_and_stl_round_trip(tmp_path: Path) -> None:
    field = np.fromfunction(lambda i, j, k: 6.0 - np.sqrt((i - 8) ** 2 + (j - 9) ** 2
                                                           + (k - 10) ** 2), (17, 19, 21))
    mesh = extract_mesh(field)
    assert mesh.is_closed
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 6 ** 3, rel=0.03)
    # touching the grid's edge still closes
    assert extract_mesh(np.ones((4, 4, 4))).is_closed
    path = tmp_path / "bone.stl"
    write_stl(path, mesh)
    data = path.read_bytes()
    assert data.startswith(STL_HEADER)
    assert len(data) == 84 + 50 * len(mesh.faces)
    back = read_stl(path)
    assert back.is_closed
    assert len(back.faces) == len(mesh.faces)
    assert back.volume == pytest.approx(mesh.volume, rel=1e-5)
    # the file is LPS: a RAS vertex (x, y, z) is stored as (-x, -y, z)
    raw = np.frombuffer(data, offset=84 + 12, count=3, dtype="<f4")
    first = mesh.vertices[mesh.faces[0, 0]]
    assert raw == pytest.approx([-first[0], -first[1], first[2]], abs=1e-4)
    # a truncated file is refused with its size
    (tmp_path / "cut.stl").write_bytes(data[:-7])
    with pytest.raises(InputError, match="needs"):
        read_stl(tmp_path / "cut.stl")
    with pytest.raises(InputError, match="no surface"):
        extract_mesh(-np.ones((4, 4, 4)))


def test_open_mesh_is_not_closed_and_distances_are_exact() -> None:
    square = Mesh(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float),
                  np.array([[0, 1, 2], [0, 2, 3]]))
    assert not square.is_closed
    d = surface_distances(np.array([[0.5, 0.5, 2.0], [3.0, 0.5, 0.0], [-1.0, -1.0, 1.0]]),
                          square)
    assert d == pytest.approx([2.0, 2.0, np.sqrt(3.0)])
    with pytest.raises(ShapeError):
        Mesh(np.zeros((3, 3)), np.array([[0, 1, 5]]))


def test_exact_depths_of_an_ellipsoid_give_it_back() -> None:
    radii, centre = np.array([9.0, 5.0, 14.0]), np.array([3.0, -2.0, 4.0])
    volume, _ = _ellipsoid_volume(tuple(radii), tuple(centre))
    camera = _camera()
    renderer = SampleRenderer(volume, [3], backend="torch")
    try:
        maps = renderer.depth(camera, layers=2)
    finally:
        renderer.close()
    solid = backproject_bone(maps["front"][0], maps["back"][0], maps["hit"][0], camera,
                             label=3, name="ellipsoid")
    assert solid is not None
    mesh = solid.mesh()
    assert mesh.is_closed
    distance = _ellipsoid_distance(mesh.vertices, radii, centre)
    # the detector pixel is 0.76 mm at the ellipsoid; the renderer's surface is the voxels'
    # trilinear level set (0.5 mm voxels)
    assert distance.mean() < 0.15
    assert np.percentile(distance, 99) < 0.6
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * radii.prod(), rel=0.04)
    # the label volume holds the same solid
    lv = label_volume([solid], [mesh], voxel_mm=0.5)
    index = np.argwhere(lv.labels == 3)
    world = index * 0.5 + lv.world_from_index[:3, 3]
    assert (((world - centre) / (radii + 0.6)) ** 2).sum(axis=1).max() <= 1.0
    assert len(index) * 0.125 == pytest.approx(mesh.volume, rel=0.05)


def test_silhouette_closes_a_slab_that_stays_thick_to_its_outline() -> None:
    """A network may give a full thickness right up to the outline: the solid still closes."""
    camera = _camera(64, 1.0)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 25:35] = True
    front = np.where(mask, 940.0, np.nan)[None]
    back = np.where(mask, 950.0, np.nan)[None]
    spike = front.copy()
    spike[0, 30, 30] = 800.0                      # one wild pixel
    solid = backproject_bone(spike, back, mask, camera, label=1, name="box")
    assert solid is not None
    mesh = solid.mesh()
    assert mesh.is_closed
    t = np.linalg.norm(mesh.vertices - camera.source_world, axis=1)
    # no spike towards the source
    assert t.min() > 939.0
    assert t.max() < 951.0
    # a bone that is not seen gives nothing
    assert backproject_bone(front, back, np.zeros((64, 64)), camera, label=1, name="x") is None
    with pytest.raises(ShapeError, match="detector"):
        backproject_bone(front[:, :10], back, mask, camera, label=1, name="box")


@pytest.fixture(scope="module")
def demo_hand() -> tuple[dict[str, Any], Any]:
    from regkit_recon.groundtruth.sample import phantom_of

    with np.load(DEMO / "000000.npz") as z:
        sample = {k: z[k] for k in z.files}
    phantom = phantom_of(sample)
    # the rebuilt phantom is the one the sample was rendered from
    assert [d["bone"] for d in phantom.to_json()["deformities"]] == \
        [d["bone"] for d in json.loads(str(sample["meta"]))["deformities"]]
    return sample, phantom


@pytest.mark.slow
def test_exact_depths_of_a_phantom_hand_give_back_every_bone(
        demo_hand: tuple[dict[str, Any], Any]) -> None:
    sample, phantom = demo_hand
    camera = Camera.from_dict(json.loads(str(sample["camera"])))
    names = dict(phantom.bone_table)
    bones = [int(b) for b in sample["bones"]]
    solids = backproject(sample["front"], sample["back"], sample["hit"], camera, bones=bones,
                         names=[names[b] for b in bones])
    assert len(solids) == 29
    labels = np.asarray(phantom.labels)
    affine = np.asarray(phantom.volume.world_from_index)
    rng = np.random.default_rng(0)
    assd = []
    for solid in solids[::4]:                                   # every fourth bone: time
        mesh = solid.mesh()
        assert mesh.is_closed, solid.name
        idx = np.argwhere(labels == solid.label)
        lo, hi = idx.min(axis=0) - 2, idx.max(axis=0) + 3
        box = (labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == solid.label).astype(float)
        grid = extract_mesh(box, 0.5)
        truth = Mesh((grid.vertices + lo) @ affine[:3, :3].T + affine[:3, 3], grid.faces)
        a = surface_distances(mesh.sample(2.0, rng), truth)
        b = surface_distances(truth.sample(2.0, rng), mesh)
        assd.append(0.5 * (a.mean() + b.mean()))
    # 1.2 mm detector pixels, 0.4 mm phantom voxels: well under a voxel
    assert np.median(assd) < 0.2, assd
    assert max(assd) < 0.3, assd


def test_a_hole_in_the_silhouette_is_filled_and_a_thin_bone_still_closes() -> None:
    camera = _camera(64, 1.0)
    prob = np.zeros((64, 64))
    prob[20:40, 20:40] = 0.9
    prob[29:31, 29:31] = 0.2                       # a hole the clean-up fills
    front = np.where(prob > 0, 940.0, np.nan)[None]
    back = np.where(prob > 0, 946.0, np.nan)[None]
    solid = backproject_bone(front, back, prob, camera, label=1, name="plate")
    assert solid is not None
    assert solid.inside.min() < 0 < solid.inside[solid.inside.shape[0] // 2,
                                                 solid.inside.shape[1] // 2]
    mesh = solid.mesh()
    assert mesh.is_closed
    # one closed surface: no tunnel through the filled hole (Euler characteristic of a sphere)
    edges = {tuple(sorted(e)) for f in mesh.faces for e in ((f[0], f[1]), (f[1], f[2]),
                                                            (f[2], f[0]))}
    assert len(mesh.vertices) - len(edges) + len(mesh.faces) == 2
    thin = backproject_bone(front, front + 0.05, prob, camera, label=1, name="thin")
    assert thin is not None
    assert thin.mesh().is_closed


def test_labels_hold_the_solid_of_a_bone_tilted_towards_the_beam() -> None:
    """Depth changing fast across the image (a steep field) must not lose voxels."""
    camera = _camera(64, 0.3)
    v, u = np.mgrid[0:64, 0:64] + 0.5
    mask = ((u - 32) ** 2 / 14 ** 2 + (v - 32) ** 2 / 6 ** 2) <= 1.0
    mid = 950.0 + 2.5 * (u - 32)                        # 2.5 mm deeper per pixel
    half = 2.0 * np.sqrt(np.clip(1.0 - ((u - 32) / 14) ** 2 - ((v - 32) / 6) ** 2, 0, 1))
    front = np.where(mask, mid - half - 0.5, np.nan)[None]
    back = np.where(mask, mid + half + 0.5, np.nan)[None]
    solid = backproject_bone(front, back, mask, camera, label=2, name="tilted", spike_mm=50.0)
    assert solid is not None
    mesh = solid.mesh()
    lv = label_volume([solid], [mesh], voxel_mm=0.25)
    index = np.argwhere(np.ones(lv.labels.shape, bool))
    world = index * 0.25 + lv.world_from_index[:3, 3]
    value = solid.field(world).reshape(lv.labels.shape)
    assert ((value > 0) == (lv.labels == 2)).all()


def _ellipsoid_views(angles: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, list[Camera],
                                                         list[dict[str, np.ndarray]]]:
    """An ellipsoid's exact depth maps in C-arm views at ``angles`` (radians) about its centre."""
    radii, centre = np.array([9.0, 5.0, 14.0]), np.array([3.0, -2.0, 4.0])
    volume, _ = _ellipsoid_volume(tuple(radii), tuple(centre))
    cams = [camera_from_carm(source_to_detector_mm=1000.0, source_to_isocenter_mm=950.0,
                             width=96, height=96, pixel_spacing_mm=0.8, primary_angle=a)
            for a in angles]
    renderer = SampleRenderer(volume, [3], backend="torch")
    try:
        maps = [renderer.depth(c, layers=1) for c in cams]
    finally:
        renderer.close()
    return radii, centre, cams, maps


def _solid(maps: dict[str, np.ndarray], camera: Camera, shift_mm: float = 0.0,
           thicken_mm: float = 0.0) -> Any:
    """The view's solid from its depths moved along the rays and thickened.

    ``shift_mm`` along the rays; ``thicken_mm`` in all, about its mid-depth.
    """
    solid = backproject_bone(maps["front"][0] + shift_mm - 0.5 * thicken_mm,
                             maps["back"][0] + shift_mm + 0.5 * thicken_mm, maps["hit"][0], camera,
                             label=3, name="ellipsoid")
    assert solid is not None
    return solid


def test_two_views_fused_correct_one_view_s_depth_error() -> None:
    """A second view at 50° pulls the first view's too-thick solid back to the ellipsoid.

    The second view's own unknown depth offset is taken out first.
    """
    radii, centre, cams, maps = _ellipsoid_views((0.0, np.radians(50.0)))

    def error(mesh: Mesh) -> float:
        return float(_ellipsoid_distance(mesh.vertices, radii, centre).mean())

    # exact views: the fusion gives the ellipsoid back, even with the second view 25 mm off
    exact = fuse_views([_solid(maps[0], cams[0])], [[_solid(maps[1], cams[1], 25.0)]])
    assert isinstance(exact[0], FusedSolid)
    mesh = exact[0].mesh()
    assert mesh.is_closed
    assert error(mesh) < 0.2
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * radii.prod(), rel=0.05)
    # the second view's solid was moved back along its own rays, onto the first's centre
    moved = exact[0].parts[1]
    assert np.linalg.norm(moved.centroid() - exact[0].parts[0].centroid()) < 0.3
    along = np.asarray(moved.shift_mm) / np.linalg.norm(moved.shift_mm)
    assert abs(along @ cams[1].view_direction_world) > 0.999
    assert np.linalg.norm(moved.shift_mm) == pytest.approx(25.0, abs=0.5)

    # the first view 4 mm too thick along its rays: the plain mean halves the surface error or
    # better; weighing depths less than outlines (the default) does nearly as well here, where
    # the other view's depths are exact (its rims' walls count more), and better where both
    # views' depths are noisy (test_fusion_trusts_noisy_depths_less_than_outlines)
    thick = _solid(maps[0], cams[0], thicken_mm=4.0)
    alone = error(thick.mesh())
    second = _solid(maps[1], cams[1], -10.0)
    assert alone > 0.8
    assert error(fuse_views([thick], [[second]], depth_weight=1.0)[0].mesh()) < 0.5 * alone
    assert error(fuse_views([thick], [[second]])[0].mesh()) < 0.55 * alone
    # and placed 2 mm too deep as well: the second view follows that placement, and the fusion
    # still takes off a fifth or more
    deep = _solid(maps[0], cams[0], shift_mm=2.0, thicken_mm=4.0)
    alone = error(deep.mesh())
    assert error(fuse_views([deep], [[_solid(maps[1], cams[1])]])[0].mesh()) < 0.8 * alone

    # the fused field: inside the ellipsoid positive, outside negative, -inf outside a window
    rng = np.random.default_rng(1)
    points = centre + rng.normal(scale=8.0, size=(400, 3))
    q = ((points - centre) / radii) ** 2
    value = exact[0].field(points)
    deep_in, well_out = q.sum(axis=1) < 0.6, (q.sum(axis=1) > 1.6) & np.isfinite(value)
    assert deep_in.sum() > 20
    assert well_out.sum() > 20
    assert (value[deep_in] > 0).all()
    assert (value[well_out] < 0).all()
    beyond = exact[0].parts[1].field(points) == -np.inf
    assert beyond.any()
    assert (value[beyond] == -np.inf).all()
    # the label volume takes a fused solid like any other
    lv = label_volume(exact, [mesh], voxel_mm=0.5)
    assert len(np.argwhere(lv.labels == 3)) * 0.125 == pytest.approx(mesh.volume, rel=0.05)


def test_fusion_trusts_noisy_depths_less_than_outlines() -> None:
    """Both views' depths off by smooth noise of 1.5 mm, their outlines exact (as a network's).

    Weighing each view's depths less than its outline (the default, ``DEPTH_WEIGHT``) brings the
    fused surface nearer to the ellipsoid than the plain mean does; the field stays a weighted
    mean of the views' fields, under its upper bound, and a weight outside (0, 1] is refused.
    """
    from scipy import ndimage

    radii, centre, cams, maps = _ellipsoid_views((0.0, np.radians(50.0)))

    def noisy(view: int, seed: int) -> BoneSolid:
        rng = np.random.default_rng(seed)
        m = maps[view]
        noise = [ndimage.gaussian_filter(rng.normal(size=m["front"][0].shape), 2.0)
                 for _ in range(2)]
        front, back = (m[k][0] + 1.5 * n / n.std() for k, n in zip(("front", "back"), noise,
                                                                    strict=True))
        solid = backproject_bone(front, back, m["hit"][0], cams[view], label=3, name="e")
        assert solid is not None
        return solid

    def error(solid: BoneSolid | FusedSolid) -> float:
        return float(_ellipsoid_distance(solid.mesh().vertices, radii, centre).mean())

    plain, weighted = [], []
    for seed in (0, 1, 2):
        first, second = noisy(0, seed), noisy(1, seed + 10)
        fused = {w: fuse_views([first], [[second]], depth_weight=w)[0]
                 for w in (1.0, DEPTH_WEIGHT)}
        assert all(isinstance(f, FusedSolid) for f in fused.values())
        plain.append(error(fused[1.0]))
        weighted.append(error(fused[DEPTH_WEIGHT]))
        assert error(first) > plain[-1]
    assert sum(weighted) < 0.96 * sum(plain)

    # the field: a weighted mean of the views' (floored) fields, never above the upper bound
    solid = cast(FusedSolid, fused[DEPTH_WEIGHT])
    assert cast(FusedSolid, fuse_views([first], [[second]])[0]).depth_weight == DEPTH_WEIGHT
    rng = np.random.default_rng(3)
    points = centre + rng.normal(scale=6.0, size=(500, 3))
    value = solid.field(points)
    parts = np.stack([np.maximum(p.field(points), -20.0) for p in solid.parts])
    ok = np.isfinite(value)
    assert ok.sum() > 300
    assert (value[ok] >= parts[:, ok].min(axis=0) - 1e-9).all()
    assert (value[ok] <= solid.upper_bound(points)[ok] + 1e-9).all()
    np.testing.assert_allclose(solid.upper_bound(points)[ok], parts[:, ok].max(axis=0))
    # each view weighs 1 where its outline term is in force, DEPTH_WEIGHT where its depth term is
    terms = [p.terms(points) for p in solid.parts]
    weights = np.stack([np.where(s <= d, 1.0, DEPTH_WEIGHT) for s, d in terms])
    assert (weights[:, ok] == 1.0).any()
    assert (weights[:, ok] == DEPTH_WEIGHT).any()
    np.testing.assert_allclose(value[ok], (weights * parts)[:, ok].sum(axis=0)
                               / weights[:, ok].sum(axis=0))
    # with equal weights it is the plain mean
    even = replace(solid, depth_weight=1.0).field(points)
    np.testing.assert_allclose(even[ok], parts[:, ok].mean(axis=0))
    # the weights jump, yet skipping empty blocks (on the upper bound) loses no voxel near the
    # surface: the sampled field equals the field evaluated everywhere wherever either is > −1 mm
    lo, hi = solid.bounds()
    shape = np.ceil((hi - lo) / solid.voxel_mm).astype(np.int64) + 1
    sampled = _sample_field(solid, np.zeros(3, np.int64), shape, lo, solid.voxel_mm)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    everywhere = solid.field(grid.reshape(-1, 3) * solid.voxel_mm + lo).reshape(sampled.shape)
    near = (everywhere > -1.0) | (sampled > -1.0)
    assert (everywhere > 0).sum() > 1000
    np.testing.assert_allclose(sampled[near], everywhere[near], rtol=1e-5, atol=1e-5)
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(InputError, match="depth_weight"):
            replace(solid, depth_weight=bad)
        with pytest.raises(InputError, match="depth_weight"):
            fuse_views([first], [[second]], depth_weight=bad)


def test_sampling_skips_blocks_by_the_upper_bound_not_the_field() -> None:
    """Blocks are kept or skipped by the solid's upper bound, not by its field.

    The field here jumps (as a weighted mean may): it is low at every block's centre, yet inside a
    sphere at the voxel centres.
    """
    voxel, radius = 0.5, 3.0

    class Jumpy:
        label, name = 1, "jumpy"

        def field(self, points: np.ndarray) -> np.ndarray:
            on_voxel = np.abs(points / voxel - np.round(points / voxel)).max(axis=1) < 1e-6
            return np.where(on_voxel, radius - np.linalg.norm(points, axis=1), -20.0)

        def upper_bound(self, points: np.ndarray) -> np.ndarray:
            return radius - np.linalg.norm(points, axis=1)

        def max_slope(self) -> float:
            return 1.0

    lo = np.full(3, -5.0)
    shape = np.full(3, 21, dtype=np.int64)
    sampled = _sample_field(cast(Any, Jumpy()), np.zeros(3, np.int64), shape, lo, voxel)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    inside = radius - np.linalg.norm(grid * voxel + lo, axis=-1) > 0
    assert inside.sum() > 800
    assert ((sampled > 0) == inside).all()


def test_fusion_keeps_bones_only_the_first_view_sees_and_refuses_mixed_bones() -> None:
    _, _, cams, maps = _ellipsoid_views((0.0, np.radians(50.0)))
    first = _solid(maps[0], cams[0])
    # the other view sees another bone only: the first view's solid stays as it is
    other = replace(_solid(maps[1], cams[1]), label=4, name="other")
    assert fuse_views([first], [[other]]) == [first]
    assert fuse_views([first], []) == [first]
    with pytest.raises(InputError, match="different bones"):
        FusedSolid((first, other))
    with pytest.raises(InputError, match="at least one"):
        FusedSolid(())
    # views whose grids do not meet cannot be fused
    far = first.moved(np.array([500.0, 0.0, 0.0]))
    with pytest.raises(InputError, match="do not overlap"):
        FusedSolid((first, far)).mesh()


def test_views_that_disagree_or_look_alike_are_not_fused() -> None:
    """Rays that miss each other, or a view too close to the first, do not triangulate."""
    _, _, cams, maps = _ellipsoid_views((0.0, np.radians(50.0), np.radians(4.0)))
    first, second, near = (_solid(m, c) for m, c in zip(maps, cams, strict=True))
    # the second view's solid moved 14 mm across both views' rays: the rays pass 14 mm apart,
    # 7 mm from their midpoint, beyond the default 6 mm
    across = np.cross(cams[0].view_direction_world, cams[1].view_direction_world)
    across /= np.linalg.norm(across)
    astray = second.moved(14.0 * across)
    assert fuse_views([first], [[astray]]) == [first]
    assert isinstance(fuse_views([first], [[astray]], max_miss_mm=7.5)[0], FusedSolid)
    assert fuse_views([first], [[second.moved(8.0 * across)]], max_miss_mm=3.0) == [first]
    # a view 4° from the first is left out of the triangulation; alone it fuses nothing
    assert fuse_views([first], [[near]]) == [first]
    both = fuse_views([first], [[near], [second]])[0]
    assert isinstance(both, FusedSolid)
    assert len(both.parts) == 2
    assert both.parts[1].camera is cams[1]


def test_a_bone_the_views_cannot_triangulate_moves_with_the_others() -> None:
    """A bone the other view does not see follows the others by their median correction.

    The first view's solids are 10 mm too deep; the triangulated one comes back.
    """
    _, centre, cams, maps = _ellipsoid_views((0.0, np.radians(50.0)))
    deep = _solid(maps[0], cams[0], shift_mm=10.0)
    twin = replace(deep, label=4, name="twin")          # the same solid, unseen in view two
    out = fuse_views([deep, twin], [[_solid(maps[1], cams[1])]])
    assert isinstance(out[0], FusedSolid)
    moved = out[1]
    assert isinstance(moved, BoneSolid)
    correction = np.asarray(out[0].parts[0].shift_mm) - np.asarray(deep.shift_mm)
    assert np.linalg.norm(correction) == pytest.approx(10.0, abs=0.5)
    assert np.asarray(moved.shift_mm) == pytest.approx(correction, abs=0.2)
    assert np.linalg.norm(moved.centroid() - centre) < 0.3


def test_bones_only_the_other_views_see_are_added() -> None:
    """A bone the first view misses is triangulated from the others, or moved with its view.

    The other views' depths are off (10 mm too deep, 6 mm too shallow); the bones they share
    with the first view fix those offsets.
    """
    _, centre, cams, maps = _ellipsoid_views((0.0, np.radians(50.0), np.radians(100.0)))
    first = _solid(maps[0], cams[0])
    second = _solid(maps[1], cams[1], 10.0)
    third = _solid(maps[2], cams[2], -6.0)
    hidden = [replace(s, label=4, name="hidden") for s in (second, third)]
    out = fuse_views([first], [[second, hidden[0]], [hidden[1], third]])
    assert [s.name for s in out] == ["ellipsoid", "hidden"]
    extra = out[1]
    assert isinstance(extra, FusedSolid)
    assert [p.camera for p in extra.parts] == [cams[1], cams[2]]
    assert np.linalg.norm(extra.parts[0].centroid() - centre) < 0.3
    assert np.linalg.norm(extra.parts[1].centroid() - centre) < 0.3
    # seen by the second view alone: moved by that view's correction of the bones it shares
    lone = replace(second, label=5, name="lone")
    out = fuse_views([first], [[lone, second]])
    assert [s.name for s in out] == ["ellipsoid", "lone"]
    assert isinstance(out[1], BoneSolid)
    assert out[1].camera is cams[1]
    assert np.linalg.norm(out[1].centroid() - centre) < 0.3
    assert np.linalg.norm(lone.centroid() - centre) > 9.0        # the input is not touched
    # not asked for: the first view's bones only
    assert [s.name for s in fuse_views([first], [[lone, second]], others_only=False)] \
        == ["ellipsoid"]
    # a view that triangulated nothing cannot place its own bones: left out
    assert fuse_views([first], [[lone]]) == [first]
    # seen by two views whose rays miss each other (one of them astray by 30 mm): the first of
    # them that triangulated other bones places it (here the third view; the second shares none)
    astray = replace(second, label=5, name="lone").moved(np.array([0.0, 0.0, 30.0]))
    out = fuse_views([first], [[astray], [replace(third, label=5, name="lone"), third]])
    assert [s.name for s in out] == ["ellipsoid", "lone"]
    assert isinstance(out[1], BoneSolid)
    assert out[1].camera is cams[2]
    assert np.linalg.norm(out[1].centroid() - centre) < 0.3
