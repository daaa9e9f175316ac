"""``reconstruct`` end to end: the command's outputs, bad input, cameras and biplane refinement."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pytest
from regkit_recon.data import demo_hand
from regkit_recon.net.model import BoneNet, NetConfig, save_model
from regkit_recon.reconstruct import (
    RECONSTRUCTION_FILES,
    HandReconstructor,
    Reconstruction,
    Reconstructor,
    View,
    load_view,
    reconstructors,
    standard_camera,
)
from regkit_recon.reconstruct.backproject import backproject
from regkit_recon.reconstruct.base import Progress
from regkit_recon.reconstruct.evaluate import surface_errors
from regkit_recon.reconstruct.mesh import Mesh, read_stl
from regkit_recon.reconstruct.refine import RefineView, refine
from scipy import ndimage

from regkit.cli.main import main
from regkit.errors import InputError
from regkit.geometry.camera import Camera, save_cameras

DEMO = demo_hand() / "samples"


def _sample(i: int) -> dict:
    with np.load(DEMO / f"{i:06d}.npz") as z:
        return {k: z[k] for k in z.files}


def _two_views(files: Path) -> list[View]:
    """The demo's PA and oblique radiographs with their cameras, from ``files``."""
    return [View(np.load(files / f"x{i}.npy").astype(np.float64),
                 Camera.from_dict(json.loads((files / f"c{i}.json").read_text())))
            for i in (0, 1)]


def _exact_first_view(names: dict[int, str], camera: Camera) -> dict[str, Mesh]:
    """The first view's exact depths back-projected: the truth these tests measure against."""
    first = _sample(0)
    return {s.name: s.mesh() for s in backproject(
        first["front"], first["back"], first["hit"], camera,
        bones=[int(b) for b in first["bones"]], names=[names[int(b)] for b in first["bones"]])}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("views")
    for i in (0, 1):
        s = _sample(i)
        np.save(root / f"x{i}.npy", s["image"])
        (root / f"c{i}.json").write_text(str(s["camera"]))
    return root


@pytest.fixture(scope="module")
def single(files: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rec") / "one"
    code = main(["recon", "reconstruct", "--image", str(files / "x0.npy"), "--camera",
                 str(files / "c0.json"), "--out", str(out)])
    assert code == 0
    return out


@pytest.mark.slow
def test_the_command_writes_every_output(single: Path, files: Path) -> None:
    for name in RECONSTRUCTION_FILES:
        assert (single / name).exists(), name
    result = json.loads((single / "result.json").read_text())
    assert result["refined"] is False
    assert result["tta"] is True
    assert result["offset_method"]
    assert result["views"][0]["camera_source"] == "camera file"
    assert set(result["timings"]) >= {"predict_s", "backproject_s", "labels_s", "total_s"}
    image = cast(nib.Nifti1Image, nib.load(single / "labels.nii.gz"))
    labels = np.asarray(image.dataobj)
    assert labels.dtype == np.uint8
    spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
    assert spacing.max() <= 0.5 + 1e-6
    table = (single / "labels.csv").read_text().splitlines()
    assert table[0] == "label,name"
    assert table[1] == "1,radius"
    assert len(table) == 30
    names = dict(line.split(",") for line in table[1:])
    stls = sorted((single / "meshes").glob("*.stl"))
    assert len(stls) == result["bones"]
    for path in stls[:5]:
        assert path.read_bytes().startswith(b"regkit-recon bone mesh; binary STL; LPS")
        mesh = read_stl(path)
        assert mesh.is_closed
        assert mesh.volume > 0
        # the mesh lies where its label lies (the labels in RAS, the STL read back to RAS)
        label = int(next(k for k, v in names.items() if v == path.stem))
        world = np.argwhere(labels == label) @ image.affine[:3, :3].T + image.affine[:3, 3]
        assert len(world) > 0
        lo, hi = mesh.vertices.min(axis=0) - 1.0, mesh.vertices.max(axis=0) + 1.0
        assert ((world >= lo) & (world <= hi)).all()
    with np.load(single / "depth.npz") as z:
        # the conventions' keys, and the shipped model's last exit beside them
        assert set(z.files) == {"bones", "hit", "prob", "front", "back", "last"}
        assert z["front"].shape[2:] == (256, 256)
        assert z["last"].shape == (z["front"].shape[0], 256, 256)
        hit = z["hit"]
        assert np.array_equal(np.isfinite(z["last"]), hit)
        assert (z["last"][hit] >= z["back"][:, 0][hit] - 1e-3).all()
    measurements = json.loads((single / "measurements.json").read_text())
    assert "bones" in measurements
    # the camera projects each bone's mesh onto where the network saw it
    cam = Camera.from_dict(json.loads((files / "c0.json").read_text()))
    with np.load(single / "depth.npz") as z:
        hit = z["hit"][0]
    # (the outline's vertices project onto the mask's edge: within a pixel of it)
    near = ndimage.binary_dilation(hit, iterations=1)
    uv = cam.project(read_stl(single / "meshes" / "radius.stl").vertices)
    inside = near[np.clip(uv[:, 1].astype(int), 0, 255), np.clip(uv[:, 0].astype(int), 0, 255)]
    assert inside.mean() > 0.98


def test_bad_input_exits_2_with_one_message(files: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    base = ["recon", "reconstruct", "--image", str(files / "x0.npy")]
    cam = Camera.from_dict(json.loads((files / "c0.json").read_text()))
    save_cameras(tmp_path / "small.json", cam.crop(0, 0, 128, 128))
    assert main([*base, "--camera", str(tmp_path / "small.json"), "--out",
                 str(tmp_path / "a")]) == 2
    assert "camera is 128 x 128" in capsys.readouterr().err
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    assert main(["recon", "reconstruct", "--image", str(tmp_path / "bad.npy"), "--camera",
                 str(files / "c0.json"), "--out", str(tmp_path / "b")]) == 2
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "c")]) == 2
    assert "geometry is unknown" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    save_model(other, BoneNet(NetConfig(bones=(1, 2), bone_names=("femur", "tibia"), size=32,
                                        widths=(8, 16), stem=8)))
    assert main([*base, "--camera", str(files / "c0.json"), "--model", str(other), "--out",
                 str(tmp_path / "d")]) == 2
    assert "not the hand's" in capsys.readouterr().err
    for name in "abcd":
        assert not (tmp_path / name).exists()
    with pytest.raises(InputError, match="flat"):
        View(np.ones((256, 256)), cam)
    from regkit_recon.reconstruct import reconstruct

    image = np.load(files / "x0.npy")
    for args, message in (((image > 1, cam), "got dtype bool"),
                          ((image.astype(np.complex128), cam), "got dtype complex128"),
                          (("pa.npy", cam), "is a path: read it with load_view"),
                          ((image, None), "must be a regkit Camera .*, got NoneType")):
        with pytest.raises(InputError, match=message):
            View(*args)
    for views, message in (([], "at least one radiograph"), (iter([]), "at least one"),
                           ([image], "item 0 is a ndarray, not a regkit_recon.reconstruct.View"),
                           (image.shape[0], "must be radiographs")):
        with pytest.raises(InputError, match=message) as caught:
            reconstruct(views)  # type: ignore[arg-type]
        assert caught.value.key == "views"
    with pytest.raises(InputError, match="'options': reconstructor 'hand' does not take"):
        reconstruct([View(image, cam)], voxel=0.5)


@pytest.mark.slow
def test_an_image_that_is_no_hand_is_refused_and_few_bones_warned_of(
        files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = np.load(files / "x0.npy").astype(np.float64)
    cam = Camera.from_dict(json.loads((files / "c0.json").read_text()))
    # noise: the network saw 22 bones in pieces, and a minute later a plausible-looking hand
    # of 24 meshes came out
    noise = np.random.default_rng(0).random(image.shape) * image.max()
    np.save(tmp_path / "noise.npy", noise)
    assert main(["recon", "reconstruct", "--image", str(tmp_path / "noise.npy"), "--camera",
                 str(files / "c0.json"), "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert "noise.npy: the network finds its bones only in scattered pieces" in err
    assert "does not look like a hand radiograph" in err
    assert not (tmp_path / "n").exists()
    # smoothed noise: with TTA (the default) its masks were whole enough to pass; the check
    # reads the plain network's, on which its threshold was set
    smooth = ndimage.gaussian_filter(np.random.default_rng(0).random(image.shape), 4)
    with pytest.raises(InputError, match="scattered pieces"):
        HandReconstructor().reconstruct([View(smooth * image.max(), cam)])
    with pytest.raises(InputError, match="'tta': must be True or False"):
        HandReconstructor(tta="no")  # type: ignore[arg-type]
    # few bones seen (an inverted image, or not a whole hand): said, and kept in result.json
    from types import SimpleNamespace

    from regkit_recon.reconstruct.hand import _check_predictions

    hit = np.zeros((29, 32, 32), bool)
    hit[:7, 8:20, 8:20] = True
    said: list[str] = []
    _check_predictions([View(image, cam, name="pa.npy")],
                       [SimpleNamespace(hit=hit, seen=[f"b{i}" for i in range(7)],
                                        bone_names=[f"b{i}" for i in range(29)])], said.append)
    assert len(said) == 1
    assert "pa.npy: the network sees only 7 of 29 bones" in said[0]
    assert "--image-kind" in said[0]
    hit[:15, 8:20, 8:20] = True
    _check_predictions([View(image, cam)], [SimpleNamespace(
        hit=hit, seen=[f"b{i}" for i in range(15)], bone_names=[f"b{i}" for i in range(29)])],
        said.append)
    assert len(said) == 1
    # enough bones, each in two pieces of 8 and 4 rows (largest 67 %): whole enough to pass,
    # broken enough to be said (an inverted image can look so)
    pieces = np.zeros_like(hit)
    pieces[:15, 4:12, 8:20] = True
    pieces[:15, 16:20, 8:20] = True
    _check_predictions([View(image, cam, name="inv.npy")], [SimpleNamespace(
        hit=pieces, seen=[f"b{i}" for i in range(15)], bone_names=[f"b{i}" for i in range(29)])],
        said.append)
    assert len(said) == 2
    assert "inv.npy: the network finds its bones in pieces" in said[1]
    assert "median 67%" in said[1]
    assert "--image-kind" in said[1]
    hit[:15, ::2] = False          # every bone in 6 strips: refused
    with pytest.raises(InputError, match="radiograph 1: the network finds its bones only in "
                                         "scattered pieces"):
        _check_predictions([View(image, cam)], [SimpleNamespace(
            hit=hit, seen=[f"b{i}" for i in range(15)], bone_names=[f"b{i}" for i in range(29)])],
            said.append)
    # the first view's camera given for the oblique image too: no bone triangulates
    oblique = np.load(files / "x1.npy").astype(np.float64)
    rec = HandReconstructor().reconstruct([View(image, cam), View(oblique, cam)])
    assert rec.result["fused_bones"] < rec.result["bones"] / 2
    assert any("check that each camera belongs to its image" in w
               for w in rec.result["warnings"])
    assert HandReconstructor().reconstruct([View(image, cam)]).result["warnings"] == []


def test_existing_output_is_not_overwritten_unless_asked(single: Path, files: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    before = (single / "result.json").read_text()
    assert main(["recon", "reconstruct", "--image", str(files / "x0.npy"), "--camera",
                 str(files / "c0.json"), "--out", str(single)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (single / "result.json").read_text() == before


def test_tta_reaches_the_reconstructor(files: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import regkit_recon.reconstruct.api as api

    seen: dict[str, object] = {}

    def fake(_views: object, **options: object) -> None:
        seen.update(options)
        raise InputError("stop here")

    monkeypatch.setattr(api, "reconstruct", fake)
    for flag, want in (([], True), (["--no-tta"], False)):
        assert main(["recon", "reconstruct", "--image", str(files / "x0.npy"), "--camera",
                     str(files / "c0.json"), "--out", str(tmp_path / "r"), *flag]) == 2
        assert seen["tta"] is want


def test_cameras_from_the_standard_geometry(files: Path) -> None:
    view = load_view(files / "x0.npy", pixel_spacing_mm=1.2)
    assert view.camera_source.startswith("standard hand geometry")
    assert view.camera.source_to_detector_mm == pytest.approx(1000.0)
    cam = standard_camera(256, 200, pixel_spacing_mm=0.5, sdd_mm=1100.0)
    # the detector's centre is on the central ray, the hand 15 mm above the detector
    centre = cam.source_world + cam.view_direction_world * (1100.0 - 15.0)
    assert cam.project(centre[None])[0] == pytest.approx([128.0, 100.0], abs=1e-6)
    with pytest.raises(InputError, match="pixel-spacing"):
        standard_camera(256, 256, pixel_spacing_mm=0.0)


@pytest.mark.slow
def test_measure_command(tmp_path: Path, single: Path, capsys: pytest.CaptureFixture[str]  # noqa: ARG001 - fixtures for side effects
                         ) -> None:
    from regkit_recon import make_hand_phantom

    phantom = make_hand_phantom(4, deformity="bone=metacarpal_2,angulation_deg=20",
                                voxel_mm=0.5)
    phantom.save(tmp_path / "ph")
    assert main(["recon", "measure", "--labels", str(tmp_path / "ph" / "labels.nii.gz"),
                 "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["bones"]["metacarpal_2"]["angulation_deg"] == pytest.approx(20.0, abs=3.0)
    assert "warning" not in capsys.readouterr().err
    # a misspelt name leaves its bone unmeasured, and says so
    table = tmp_path / "ph" / "labels.csv"
    text = table.read_text()
    table.write_text(text.replace(",ulna", ",Ulna") + "99,clavicle_left\n")
    assert main(["recon", "measure", "--labels", str(tmp_path / "ph" / "labels.nii.gz"),
                 "--out", str(tmp_path / "m2.json")]) == 0
    assert "ulna" not in json.loads((tmp_path / "m2.json").read_text())["bones"]
    err = capsys.readouterr().err
    assert "warning" in err
    assert "names 2 label(s) that are not bones of the hand's table" in err
    assert "'Ulna' (did you mean 'ulna'?), 'clavicle_left'" in err
    # a misspelt bone the hand's frame needs: the refusal names the likely cause
    table.write_text(text.replace(",radius", ",Radius"))
    assert main(["recon", "measure", "--labels", str(tmp_path / "ph" / "labels.nii.gz"),
                 "--out", str(tmp_path / "m3.json")]) == 2
    err = capsys.readouterr().err
    assert "the hand's frame needs the radius" in err
    assert "'Radius' (did you mean 'radius'?)" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["recon", "measure", "--labels", str(tmp_path / "missing.nii.gz"), "--out",
                 str(tmp_path / "n.json")]) == 2
    assert not (tmp_path / "n.json").exists()


def test_registry_knows_the_hand_and_a_plugin_can_add_one() -> None:
    assert reconstructors.get("hand") is HandReconstructor
    with pytest.raises(Exception, match="hand"):
        reconstructors.get("hnd")

    class Nothing(Reconstructor):
        @property
        def bone_names(self) -> dict[int, str]:
            return {}

        # the signature of Reconstructor.reconstruct, whose arguments this one ignores
        def reconstruct(self, views: Sequence[View], *, refine: bool | None = None,  # noqa: ARG002
                        progress: Progress | None = None) -> Reconstruction:  # noqa: ARG002
            raise InputError("nothing to do", key="image")

    reconstructors.add("nothing-test", Nothing)
    assert "nothing-test" in reconstructors.names()


@pytest.mark.slow
def test_biplane_refinement_finds_the_depth_a_single_view_cannot() -> None:
    """Exact depths shifted 10 mm along the rays: the second view puts the bones back."""
    first, second = _sample(0), _sample(1)
    cams = [Camera.from_dict(json.loads(str(s["camera"]))) for s in (first, second)]
    keep = [0, 1, 10, 12, 16]                    # radius, ulna, metacarpals 1 and 3, a phalanx
    bones = [int(first["bones"][i]) for i in keep]
    names = ["radius", "ulna", "metacarpal_1", "metacarpal_3", "proximal_phalanx_2"]
    solids = backproject(first["front"][keep] + 10.0, first["back"][keep] + 10.0,
                         first["hit"][keep], cams[0], bones=bones, names=names)
    meshes = [s.mesh() for s in solids]
    views = [RefineView(s["image"].astype(float), c, s["hit"][keep].astype(float),
                        tuple(bones)) for s, c in zip((first, second), cams, strict=True)]
    refined = refine(solids, meshes, views, seed=0, placement=True)
    assert refined.offset_mm == pytest.approx(-10.0, abs=1.5)
    assert refined.after["silhouette_dice"][1] > refined.before["silhouette_dice"][1] + 0.3
    # against the truth: the reconstruction's own truth is its unshifted back-projection
    exact = backproject(first["front"][keep], first["back"][keep], first["hit"][keep], cams[0],
                        bones=bones, names=names)
    truth = {s.name: s.mesh() for s in exact}
    before = surface_errors({s.name: m for s, m in zip(solids, meshes, strict=True)}, truth,
                            cams[0].view_direction_world)
    after = surface_errors({s.name: s.mesh() for s in refined.solids}, truth,
                           cams[0].view_direction_world)
    assert before["median_assd_mm"] > 4.0
    assert after["median_assd_mm"] < 1.0
    # the common offset alone (refine()'s default) does most of it: one offset fits every bone here
    offset_only = refine(solids, meshes, views, seed=0)
    assert offset_only.offset_mm == pytest.approx(refined.offset_mm)
    assert not any(np.any(np.asarray(v) - offset_only.shifts["radius"])
                   for v in offset_only.shifts.values())
    # one view: depth is not observable, the placement is skipped
    alone = refine(solids, meshes, views[:1], seed=0)
    assert alone.offset_mm == 0.0
    assert not any(np.any(v) for v in alone.shifts.values())
    with pytest.raises(InputError):
        refine([], [], views)


@pytest.mark.slow
def test_camera_from_dicom_geometry_and_labels_round_trip(files: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import regkit.io.radiograph as rio

    cam = Camera.from_dict(json.loads((files / "c0.json").read_text()))
    image = np.load(files / "x0.npy").astype(np.float64)
    # A DICOM radiograph whose geometry fields gave a camera (regkit.io reads those fields).
    monkeypatch.setattr(rio, "load_radiograph",
                        lambda *_a, **_k: rio.Radiograph(image, camera=cam))
    view = load_view(tmp_path / "view.dcm")
    assert view.camera_source == "DICOM geometry"
    rec = HandReconstructor().reconstruct([view], refine=False)
    assert rec.result["views"][0]["camera_source"] == "DICOM geometry"
    out = rec.save(tmp_path / "rec")
    saved = cast(nib.Nifti1Image, nib.load(out / "labels.nii.gz"))
    np.testing.assert_array_equal(np.asarray(saved.dataobj), rec.labels)
    np.testing.assert_allclose(saved.affine, rec.world_from_index)
    for name, mesh in list(rec.meshes.items())[:3]:
        back = read_stl(out / "meshes" / f"{name}.stl")
        assert back.volume == pytest.approx(mesh.volume, rel=1e-4)


def _tiny_reconstruction(value: int) -> Reconstruction:
    return Reconstruction(labels=np.full((2, 2, 2), value, np.uint8), world_from_index=np.eye(4),
                          names={1: "radius"}, meshes={}, depth={}, measurements={},
                          result={"value": value})


def test_save_replaces_a_folder_and_never_loses_the_previous_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import regkit_recon.reconstruct.report as report

    monkeypatch.setattr(report, "write_report", lambda path, _rec: Path(path).write_bytes(b"png"))
    target = tmp_path / "rec"
    _tiny_reconstruction(1).save(target)
    _tiny_reconstruction(2).save(target, overwrite=True)
    assert json.loads((target / "result.json").read_text()) == {"value": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]      # no staging left behind

    # The swap fails and so does putting the old folder back: it must survive, and be named.
    real = os.rename

    def failing(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst) == target:
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(InputError, match="previous folder is kept at") as caught:
        _tiny_reconstruction(3).save(target, overwrite=True)
    assert isinstance(caught.value.__cause__, OSError)
    kept = list(tmp_path.glob(".rec.*.old/previous"))
    assert len(kept) == 1
    assert str(kept[0]) in str(caught.value)
    assert json.loads((kept[0] / "result.json").read_text()) == {"value": 2}
    assert not target.exists()


def test_save_puts_the_previous_folder_back_when_the_swap_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import regkit_recon.reconstruct.report as report

    monkeypatch.setattr(report, "write_report", lambda path, _rec: Path(path).write_bytes(b"png"))
    target = tmp_path / "rec"
    _tiny_reconstruction(1).save(target)
    real = os.rename
    calls = {"n": 0}

    def failing_once(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls["n"] += 1
        if Path(dst) == target and calls["n"] == 2:        # the new folder's rename
            raise OSError("disk busy")
        real(src, dst)

    monkeypatch.setattr(os, "rename", failing_once)
    with pytest.raises(OSError, match="disk busy"):
        _tiny_reconstruction(2).save(target, overwrite=True)
    assert json.loads((target / "result.json").read_text()) == {"value": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]   # nothing parked or staged


@pytest.mark.parametrize(("option", "flag"), [("refine_placement", "--no-refine-placement"),
                                            ("fuse_views", "--no-fuse-views")])
def test_reconstructor_switches_are_on_by_default_and_can_be_turned_off(
        monkeypatch: pytest.MonkeyPatch, files: Path, tmp_path: Path, option: str,
        flag: str) -> None:
    """Per-bone placement and view fusion are on by default, in the command and reconstructor.

    The command's ``--no-...`` flag reaches the reconstructor as False.
    """
    import inspect

    import regkit_recon.reconstruct.api as api

    assert inspect.signature(HandReconstructor).parameters[option].default is True
    seen: list[object] = []

    def fake(views: Sequence[object], **kw: object) -> object:
        assert views
        seen.append(kw[option])
        raise InputError("stop here", key="test")

    monkeypatch.setattr(api, "reconstruct", fake)
    args = ["recon", "reconstruct", "--image", str(files / "x0.npy"),
            "--camera", str(files / "c0.json")]
    assert main([*args, "--out", str(tmp_path / "a")]) != 0
    assert main([*args, "--out", str(tmp_path / "b"), flag]) != 0
    assert seen == [True, False]


@pytest.mark.slow
def test_two_views_are_fused_bone_by_bone(files: Path) -> None:
    """Two radiographs: each bone seen in both is triangulated and fused.

    Without fusion the first view's solids are kept as they are.
    """
    views = _two_views(files)
    rec = HandReconstructor()
    fused = rec.reconstruct(views)              # the defaults: fused, not refined
    plain = HandReconstructor(rec.loaded, fuse_views=False).reconstruct(views)
    assert fused.result["refined"] is False
    assert plain.result["refined"] is False
    assert fused.result["fused_bones"] >= 0.8 * fused.result["bones"]
    assert plain.result["fused_bones"] == 0
    assert "fuse_s" in fused.result["timings"]
    assert "fuse_s" not in plain.result["timings"]
    # every bone of the first view, and those only the second sees
    assert set(fused.meshes) == set(plain.meshes) | set(fused.result["bones_from_other_views"])
    assert not set(plain.meshes) & set(fused.result["bones_from_other_views"])
    assert all(m.is_closed for m in fused.meshes.values())
    # against the truth (the exact depths' back-projection, 0.14 mm from the phantom): one view
    # leaves the hand's distance to the network's prior, two views triangulate every bone
    truth = _exact_first_view(fused.names, views[0].camera)
    direction = views[0].camera.view_direction_world
    one = surface_errors(plain.meshes, truth, direction)
    two = surface_errors(fused.meshes, truth, direction)
    assert two["median_assd_mm"] < 3.0
    assert two["median_assd_mm"] < 0.5 * one["median_assd_mm"]
    assert two["median_aligned_assd_mm"] < one["median_aligned_assd_mm"]
    # the depth maps written follow the first view's bones as they were moved
    moved = fused.depth["front"] - plain.depth["front"]
    assert np.nanmax(np.abs(moved)) > 1.0
    # the label volume holds the fused solids: as much bone as the fused meshes enclose (a voxel
    # two bones claim counts once)
    labelled = float((fused.labels > 0).sum()) * 0.5 ** 3
    enclosed = sum(m.volume for m in fused.meshes.values())
    assert 0.85 * enclosed < labelled < 1.05 * enclosed


@pytest.mark.slow
def test_a_bone_the_first_view_misses_comes_from_the_second(files: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The network misses the radius in the first radiograph: the second view's is placed.

    No view triangulates it (the first has none), so it moves with the second view's other
    bones, and lands where the truth is: its absolute surface error is its shape's alone
    (measured 1.37 mm, 1.35 mm with the offset along the first view removed; fused from both
    views 1.24 mm).
    """
    from regkit_recon.net import predict as predict_module

    real = predict_module.predict_with_plain
    calls: list[int] = []

    def first_misses(image: np.ndarray, camera: Camera, **kwargs: object) -> object:
        pred, plain = real(image, camera, **kwargs)  # type: ignore[arg-type]
        calls.append(1)
        if len(calls) == 1:
            i = list(pred.bone_names).index("radius")
            pred.prob[i] = 0.0
            pred.hit[i] = False
            pred.front[i] = np.nan
            pred.back[i] = np.nan
        return pred, plain

    monkeypatch.setattr(predict_module, "predict_with_plain", first_misses)
    views = _two_views(files)
    rec = HandReconstructor().reconstruct(views)
    assert rec.result["bones_from_other_views"] == ["radius"]
    assert "radius" in rec.meshes
    assert rec.meshes["radius"].is_closed
    label = next(k for k, n in rec.names.items() if n == "radius")
    assert (rec.labels == label).sum() > 1000
    # the first view's depth maps have no such bone, and get none
    i = [rec.names[int(b)] for b in rec.depth["bones"]].index("radius")
    assert np.isnan(rec.depth["front"][i]).all()
    # against the truth: placed where the second view's rays and its other bones put it
    truth = _exact_first_view(rec.names, views[0].camera)
    errors = surface_errors({"radius": rec.meshes["radius"]},
                            {"radius": truth["radius"]},
                            views[0].camera.view_direction_world)
    assert errors["median_assd_mm"] < 2.0
    assert errors["median_assd_mm"] - errors["median_aligned_assd_mm"] < 0.3


def test_outputs_that_would_destroy_an_input_and_impossible_settings_are_refused(
        files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("x0.npy", "c0.json"):
        (inputs / name).write_bytes((files / name).read_bytes())
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    image, camera = str(inputs / "x0.npy"), str(inputs / "c0.json")
    assert main(["recon", "predict", "--image", image, "--camera", camera,
                 "--out", image]) == 2
    assert "would destroy the input" in capsys.readouterr().err
    assert main(["recon", "reconstruct", "--image", image, "--camera", camera,
                 "--out", str(inputs), "--overwrite"]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert main(["recon", "reconstruct", "--image", image, "--camera", camera,
                 "--out", str(tmp_path / "fine"), "--voxel-mm", "0.05"]) == 2
    assert "voxel_mm" in capsys.readouterr().err
    tiny = json.loads((files / "c0.json").read_text())
    tiny["pixel_spacing_mm"] = [1e-9, 1e-9]
    (tmp_path / "tiny.json").write_text(json.dumps(tiny))
    assert main(["recon", "predict", "--image", image, "--camera", str(tmp_path / "tiny.json"),
                 "--out", str(tmp_path / "p.npz")]) == 2
    assert "source-to-detector distance" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before
    assert not any((tmp_path / n).exists() for n in ("fine", "p.npz"))


@pytest.mark.parametrize(("table", "message"), [
    ("label,bone\n1,radius\n2,radius\n", "gives the name 'radius' again"),
    ("label,bone\n1,radius\n1,ulna\n", "gives label 1 again"),
    ("label,bone\n1,radius\nabc,def\n", "row 3 is 'abc,def'"),
    ("label,bone\n1,radius\n-3,foo\n", "row 3"),
    ("label,bone\n", "holds no 'label,name' row"),
    (b"label,bone\n1,rad\xffius\n", "not UTF-8"),
])
def test_measure_refuses_a_bad_table_beside_the_labels(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str | bytes,
        message: str) -> None:
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "labels.nii.gz")
    csv = tmp_path / "labels.csv"
    csv.write_bytes(table if isinstance(table, bytes) else table.encode())
    assert main(["recon", "measure", "--labels", str(tmp_path / "labels.nii.gz"), "--out",
                 str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "labels.csv" in err
    assert "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("table", [b"\xef\xbb\xbf1,radius\r\n2,ulna\r\n",
                                   b"label,name\n1,radius\n\n2,ulna\n",
                                   b"label,name,voxels\n1,radius,100\n2,ulna,50\n",
                                   b"\nlabel,bone\n0,background\n1,radius,\n2,ulna,\n"])
def test_measure_reads_a_table_with_a_bom_crlf_or_blank_lines(tmp_path: Path,
                                                                table: bytes) -> None:
    from regkit_recon.measure_hand import _names_beside

    (tmp_path / "labels.csv").write_bytes(table)
    assert _names_beside(tmp_path / "labels.nii.gz") == {1: "radius", 2: "ulna"}


def test_measure_refuses_its_own_input_as_output_a_singular_affine_and_no_bone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = np.zeros((6, 6, 6), np.uint8)
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    before = path.read_bytes()
    for out in (path, tmp_path / "labels.csv"):
        (tmp_path / "labels.csv").write_text("label,bone\n1,radius\n")
        assert main(["recon", "measure", "--labels", str(path), "--out", str(out)]) == 2
        assert "would destroy the input" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert main(["recon", "measure", "--labels", str(path), "--out",
                 str(tmp_path / "m.json")]) == 2
    assert "holds none of the 1 bones named" in capsys.readouterr().err
    flat = nib.Nifti1Image(labels, np.eye(4))
    flat.set_qform(None, code=0)
    flat.set_sform(np.diag([0.0, 0.0, 0.0, 1.0]), code=1)     # every voxel at one point
    nib.save(flat, tmp_path / "flat.nii.gz")
    assert main(["recon", "measure", "--labels", str(tmp_path / "flat.nii.gz"), "--out",
                 str(tmp_path / "m.json")]) == 2
    assert "affine" in capsys.readouterr().err


def test_refined_depths_move_the_last_exit_with_the_bone() -> None:
    """A bone moved along the rays and thickened: its first layer and its last exit move.

    As its solid did: about the middle of the first entry and the last exit (of the first layer
    without the last exit); other bones are left as they were.
    """
    from regkit_recon.reconstruct.backproject import BoneSolid
    from regkit_recon.reconstruct.hand import _refined_depths

    from regkit.geometry.carm import camera_from_carm

    cam = camera_from_carm(source_to_detector_mm=1000.0, source_to_isocenter_mm=950.0,
                           pixel_spacing_mm=1.0, width=6, height=5)
    front = np.full((2, 1, 5, 6), 900.0, np.float32)
    back = np.full((2, 1, 5, 6), 910.0, np.float32)
    last = np.full((2, 5, 6), 920.0, np.float32)
    depth = {"front": front, "back": back, "last": last}
    shift = 4.0 * np.asarray(cam.view_direction_world)
    solid = cast(BoneSolid, type("S", (), {"name": "b"})())
    moved = _refined_depths(depth, [solid], {"b": list(shift)}, {"b": 2.0}, ["a", "b"],
                            View(np.arange(30.0).reshape(5, 6), cam))
    _, rays = cam.rays()
    along = rays @ shift                                    # ~4 mm, the rays nearly parallel
    # the solid spanned 900-920 mm about 910; twice as thick about it: 890-930, back at 910
    np.testing.assert_allclose(moved["front"][1, 0], 890.0 + along, atol=1e-3)
    np.testing.assert_allclose(moved["back"][1, 0], 910.0 + along, atol=1e-3)
    np.testing.assert_allclose(moved["last"][1], 930.0 + along, atol=1e-3)
    solid_like = BoneSolid(label=2, name="b", camera=cam, origin=(0, 0), upsample=1,
                           inside=np.ones((5, 6)), mid=np.full((1, 5, 6), 910.0),
                           half=np.full((1, 5, 6), 10.0), depth_range=(880.0, 940.0),
                           step_mm=0.25).moved(shift, thickness_scale=2.0)
    assert float(solid_like.half[0, 0, 0]) == 20.0     # the solid's own move, for comparison
    np.testing.assert_allclose(solid_like.mid[0] - solid_like.half[0],
                               moved["front"][1, 0] - along, atol=1e-3)
    for key in ("front", "back", "last"):
        np.testing.assert_array_equal(moved[key][0], depth[key][0])
    assert depth["last"][1, 0, 0] == 920.0                  # the input is not modified
    plain = _refined_depths({"front": front, "back": back}, [solid], {"b": list(shift)},
                            {"b": 2.0}, ["a", "b"], View(np.arange(30.0).reshape(5, 6), cam))
    assert "last" not in plain
    np.testing.assert_allclose(plain["front"][1, 0], 895.0 + along, atol=1e-3)
    np.testing.assert_allclose(plain["back"][1, 0], 915.0 + along, atol=1e-3)


def test_the_reconstruction_fills_each_ray_to_the_last_exit() -> None:
    """With the last exit in a prediction, a bone's solid spans from the first entry to it.

    Without it, the first layer.
    """
    from dataclasses import replace

    from regkit_recon.net.predict import Prediction

    from regkit.geometry.carm import camera_from_carm

    cam = camera_from_carm(source_to_detector_mm=1000.0, source_to_isocenter_mm=950.0,
                           pixel_spacing_mm=1.0, width=40, height=30)
    yy, xx = np.mgrid[0:30, 0:40]
    hit = (((xx - 20) / 9.0) ** 2 + ((yy - 15) / 6.0) ** 2 < 1)[None]
    nan = np.float32(np.nan)
    front = np.where(hit, np.float32(900.0), nan)[:, None]
    pred = Prediction(bones=np.array([1], np.int32), bone_names=("radius",), hit=hit,
                      prob=hit.astype(np.float32), front=front, back=front + 5.0, camera=cam,
                      last=np.where(hit, np.float32(920.0), nan))
    rec = HandReconstructor()
    (filled,) = rec._solids(pred, cam, 3)
    (first,) = rec._solids(replace(pred, last=None), cam, 3)
    inside = filled.inside > 0
    np.testing.assert_allclose(filled.mid[0][inside], 910.0, atol=1e-6)
    np.testing.assert_allclose(filled.half[0][inside], 10.0, atol=1e-6)
    np.testing.assert_allclose(first.mid[0][inside], 902.5, atol=1e-6)
    np.testing.assert_allclose(first.half[0][inside], 2.5, atol=1e-6)
