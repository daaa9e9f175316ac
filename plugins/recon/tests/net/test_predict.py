"""``regkit recon predict`` and ``evaluate``.

The prediction file, bad input, equivariance under flips and turns, the camera turns, height ↔
depth, and the evaluation's figures.

Fast on purpose: a tiny untrained network (32² input), a 48 × 40 detector (resampled to fit) and
synthetic ground-truth samples written by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from regkit_recon.groundtruth.sample import write_sample
from regkit_recon.net import evaluate as ev
from regkit_recon.net import predict as pr
from regkit_recon.net.geometry import cos_theta, depth_to_height, height_to_depth
from regkit_recon.net.model import BoneNet, NetConfig, load_model, save_model
from regkit_recon.net.predict import (
    PREDICTION_KEYS,
    Prediction,
    load_prediction,
    predict,
    predict_file,
    predict_with_plain,
    turn_array,
    turn_camera,
)

from regkit.cli.main import main
from regkit.errors import FileFormatError, InputError
from regkit.geometry.camera import Camera, save_cameras
from regkit.geometry.carm import camera_from_carm

BONES = (1, 2, 3)
NAMES = ("alpha", "beta", "gamma")
W, H = 48, 40
TURNS = [(k, m) for m in (False, True) for k in range(4)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _camera(**kw: Any) -> Camera:
    args: dict[str, Any] = {"source_to_detector_mm": 1000.0, "source_to_isocenter_mm": 950.0,
                            "pixel_spacing_mm": (0.5, 0.55), "width": W, "height": H,
                            "principal_offset_mm": (3.0, -2.0), "primary_angle": 0.3,
                            "secondary_angle": -0.1}
    args.update(kw)
    return camera_from_carm(**args)


def _net(bones: tuple[int, ...] = BONES, names: tuple[str, ...] = NAMES) -> BoneNet:
    torch.manual_seed(0)
    net = BoneNet(NetConfig(bones=bones, bone_names=names, size=32, widths=(8, 16), stem=8))
    with torch.no_grad():  # an untrained net with some pixels on each side of 0.5
        bias = net.seg.bias
        assert bias is not None
        bias.zero_()
        net.seg.weight.mul_(4.0)
    return net.eval()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(path, _net())
    return path


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = 0.2 * rng.random((H, W))
    yy, xx = np.mgrid[0:H, 0:W]
    img += 2.0 * (((xx - 20) / 9.0) ** 2 + ((yy - 18) / 6.0) ** 2 < 1)
    img += 1.0 * ((xx > 28) & (xx < 40) & (yy > 8) & (yy < 34))
    return img.astype(np.float32)


# ------------------------------------------------------------------------------ file contract


def test_prediction_file_contract(tmp_path: Path, model_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", _image())
    save_cameras(tmp_path / "cam.json", _camera())
    parser = argparse.ArgumentParser()
    pr.add_predict_arguments(parser)
    args = parser.parse_args(["--image", str(tmp_path / "x.npy"), "--camera",
                              str(tmp_path / "cam.json"), "--model", str(model_path), "--out",
                              str(tmp_path / "out" / "pred.npz")])
    assert pr.run_predict(args) == 0
    line = capsys.readouterr().err.strip()
    assert line.startswith("regkit recon predict:")
    assert "bones seen" in line
    with np.load(tmp_path / "out" / "pred.npz") as data:
        assert sorted(data.files) == sorted(PREDICTION_KEYS)
        arrays = {k: data[k] for k in data.files}
    assert arrays["bones"].dtype == np.int32
    assert arrays["bones"].tolist() == list(BONES)
    assert arrays["hit"].dtype == np.bool_
    assert arrays["hit"].shape == (3, H, W)
    assert arrays["prob"].dtype == np.float32
    assert arrays["prob"].shape == (3, H, W)
    for key in ("front", "back"):
        assert arrays[key].dtype == np.float32
        assert arrays[key].shape == (3, 1, H, W)
    hit, prob, front, back = arrays["hit"], arrays["prob"], arrays["front"][:, 0], \
        arrays["back"][:, 0]
    assert hit.any()
    assert (~hit).any()
    assert ((prob >= 0) & (prob <= 1)).all()
    assert np.array_equal(hit, prob > 0.5)
    assert np.array_equal(np.isfinite(front), hit)
    assert np.array_equal(np.isfinite(back), hit)
    assert (front[hit] <= back[hit]).all()
    # mm from the source, near SDD
    assert np.nanmin(front) > 800
    assert np.nanmax(back) < 1100
    again = load_prediction(tmp_path / "out" / "pred.npz")
    assert all(np.array_equal(again[k], arrays[k], equal_nan=k in ("front", "back"))
               for k in PREDICTION_KEYS)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pred.npz"]  # no temp left


def test_load_prediction_names_what_is_wrong(tmp_path: Path) -> None:
    missing = tmp_path / "missing.npz"
    np.savez(missing, bones=np.zeros(2, np.int32), hit=np.zeros((2, 4, 4), bool))
    with pytest.raises(FileFormatError, match="not a prediction file: missing prob, front, back") \
            as err:
        load_prediction(missing)
    assert "readable" not in str(err.value)  # said once, not wrapped in a read error
    assert err.value.key == "prob"
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(FileFormatError, match=r"not a readable \.npz file"):
        load_prediction(garbage)
    with pytest.raises(FileFormatError, match="no such prediction file"):
        load_prediction(tmp_path / "absent.npz")
    n, h, w = 2, 4, 4
    bad = tmp_path / "bad.npz"
    np.savez(bad, bones=np.zeros(n, np.int32), hit=np.zeros((n, h, w), bool),
             prob=np.zeros((n, h, w), np.float32), front=np.zeros((n, 1, h, w + 1), np.float32),
             back=np.zeros((n, 1, h, w + 1), np.float32))
    with pytest.raises(FileFormatError, match="inconsistent shapes"):
        load_prediction(bad)


def test_prediction_object(model_path: Path) -> None:
    cam = _camera()
    pred = predict(_image(), cam, model=model_path)
    assert isinstance(pred, Prediction)
    assert pred.camera is cam
    assert pred.bone_names == NAMES
    assert pred.model == str(model_path)
    assert pred.offset_method == pr.OFFSET_PRIOR
    assert pred.front_all is not None
    assert pred.back_all is not None
    assert np.isfinite(pred.front_all).all()
    assert (pred.front_all <= pred.back_all).all()
    assert np.array_equal(pred.front[:, 0][pred.hit], pred.front_all[pred.hit])
    assert set(pred.to_arrays()) == set(PREDICTION_KEYS)
    # a transmitted image is the same radiograph once converted
    transmitted = 1000.0 * np.exp(-_image().astype(np.float64))
    same = predict(transmitted, cam, model=model_path, image_kind="transmitted", i0=1000.0)
    np.testing.assert_allclose(same.prob, pred.prob, atol=1e-5)
    # the threshold moves the masks only
    low = predict(_image(), cam, model=model_path, threshold=0.1)
    assert low.hit.sum() >= pred.hit.sum()
    np.testing.assert_array_equal(low.prob, pred.prob)


def test_a_model_with_the_last_exit_predicts_and_writes_it(tmp_path: Path) -> None:
    """``last``: at or beyond ``back``, NaN where not hit.

    In the file beside the conventions' keys, equivariant under TTA, and the reconstruction's
    extent; without it, the extent is the first layer.
    """
    torch.manual_seed(0)
    net = BoneNet(NetConfig(bones=BONES, bone_names=NAMES, size=32, widths=(8, 16), stem=8,
                            last=True))
    with torch.no_grad():
        net.seg.weight.mul_(4.0)
        assert net.seg.bias is not None
        net.seg.bias.zero_()
        assert net.depth_out.bias is not None
        net.depth_out.bias[6:].fill_(0.5)   # a gap of ~1 height unit: tens of mm here
    net.eval()
    cam, img = _camera(), _image()
    pred = predict(img, cam, model=net)
    assert pred.last is not None
    assert pred.last.shape == pred.prob.shape
    assert np.isnan(pred.last[~pred.hit]).all()
    assert (pred.last[pred.hit] >= pred.back[:, 0][pred.hit]).all()
    assert float(np.nanmedian(pred.last - pred.back[:, 0])) > 1.0
    assert pred.last_all is not None
    np.testing.assert_array_equal(pred.last_all[pred.hit], pred.last[pred.hit])
    assert np.isfinite(pred.last_all).all()
    front, back = pred.extent
    assert front is pred.front
    np.testing.assert_array_equal(back[:, 0], pred.last)
    out = tmp_path / "pred.npz"
    pred.save(out)
    with np.load(out) as data:
        assert set(data.files) == {*PREDICTION_KEYS, "last"}
        np.testing.assert_array_equal(data["last"], pred.last)
    assert set(load_prediction(out)) == set(PREDICTION_KEYS)   # the conventions' reader
    base = predict(img, cam, model=net, tta=True)
    turned = predict(turn_array(img, 1, True), turn_camera(cam, 1, True), model=net, tta=True)
    assert base.last is not None
    assert turned.last is not None
    hit = turn_array(base.hit, 1, True) & turned.hit
    assert _relative(turned.last[hit], turn_array(base.last, 1, True)[hit]) < 1e-4
    plain = predict(img, cam, model=_net())
    assert plain.last is None
    assert plain.extent == (plain.front, plain.back)
    assert "last" not in plain.to_arrays()


# ------------------------------------------------------------------------------ bad input


def test_bad_input_is_refused(tmp_path: Path, model_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    cam, img = _camera(), _image()
    with pytest.raises(InputError, match="camera is 48 x 40 pixels but the image is 40 x 48"):
        predict(img.T, cam, model=model_path)
    with pytest.raises(FileFormatError, match="no such model file"):
        predict(img, cam, model=tmp_path / "missing.pt")
    monkeypatch.setattr(pr, "DEFAULT_MODEL", tmp_path / "models" / "hand_v6.pt")
    with pytest.raises(FileFormatError, match=r"shipped with regkit-recon is missing.*--model"):
        predict(img, cam)
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(FileFormatError, match="not a readable model file"):
        predict(img, cam, model=tmp_path / "corrupt.pt")
    bare = Camera(cam.intrinsic, cam.camera_from_world, W, H, None)
    with pytest.raises(InputError, match="pixel_spacing_mm"):
        predict(img, bare, model=model_path)
    nan = img.copy()
    nan[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        predict(nan, cam, model=model_path)
    with pytest.raises(InputError, match="flat"):
        predict(np.full((H, W), 0.7, np.float32), cam, model=model_path)
    with pytest.raises(InputError, match="threshold"):
        predict(img, cam, model=model_path, threshold=1.0)
    with pytest.raises(InputError, match="threshold"):                 # a string was read
        predict(img, cam, model=model_path, threshold="0.5")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="image_kind"):
        predict(img, cam, model=model_path, image_kind="log")
    # files: several cameras, a camera of another size, an unreadable image
    np.save(tmp_path / "x.npy", img)
    save_cameras(tmp_path / "two.json", [cam, cam])
    with pytest.raises(InputError, match="holds 2 cameras"):
        predict_file(tmp_path / "x.npy", tmp_path / "two.json", model=model_path)
    save_cameras(tmp_path / "small.json", _camera(width=40, height=40))
    with pytest.raises(InputError, match=r"small\.json.*camera is 40 x 40"):
        predict_file(tmp_path / "x.npy", tmp_path / "small.json", model=model_path)
    save_cameras(tmp_path / "cam.json", cam)
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(FileFormatError):
        predict_file(tmp_path / "bad.npy", tmp_path / "cam.json", model=model_path)
    assert not (tmp_path / "pred.npz").exists()


def test_model_for_other_bones_is_refused() -> None:
    net = _net((1, 2, 3, 4), (*NAMES, "delta"))
    with pytest.raises(InputError, match=r"bones \[1, 2, 3\].*bones \[1, 2, 3, 4\]"):
        pr.check_bones(net, np.array([1, 2, 3], np.int32))
    pr.check_bones(net, [1, 2, 3, 4])


# ------------------------------------------------------------------------------ turns


@pytest.mark.parametrize(("k", "mirror"), TURNS)
def test_turned_camera_sees_points_where_the_turned_image_shows_them(k: int,
                                                                     mirror: bool) -> None:
    cam = _camera()
    turned = turn_camera(cam, k, mirror)
    assert (turned.width, turned.height) == ((H, W) if k % 2 else (W, H))
    rng = np.random.default_rng(k + 4 * mirror)
    # world points that project inside the detector: along random pixel rays
    origin, dirs = cam.rays()
    rows, cols = rng.integers(0, H, 20), rng.integers(0, W, 20)
    points = origin + rng.uniform(900, 1000, (20, 1)) * dirs[rows, cols]
    uv = cam.project(points)
    seen = points * np.array([-1.0, 1.0, 1.0]) if mirror else points
    uv2 = turned.project(seen)
    for (u, v), (u2, v2) in zip(uv, uv2, strict=True):
        image = np.zeros((H, W))
        image[int(v), int(u)] = 1.0
        r, c = np.argwhere(turn_array(image, k, mirror) == 1.0)[0]
        assert (int(np.floor(v2)), int(np.floor(u2))) == (r, c)
    # the same distances from the source (depths do not change)
    d1 = np.linalg.norm((cam.camera_from_world[:3, :3] @ points.T).T
                        + cam.camera_from_world[:3, 3], axis=1)
    d2 = np.linalg.norm((turned.camera_from_world[:3, :3] @ seen.T).T
                        + turned.camera_from_world[:3, 3], axis=1)
    np.testing.assert_allclose(d1, d2, rtol=1e-12)
    np.testing.assert_allclose(cos_theta(turned), turn_array(cos_theta(cam), k, mirror),
                               rtol=1e-12)
    assert turned.source_to_detector_mm == pytest.approx(cam.source_to_detector_mm)


def test_mirror_and_half_turn_formulas() -> None:
    cam = _camera()
    (cx, cy), c = cam.principal_point, cam.camera_from_world
    mirrored = turn_camera(cam, 0, True)
    assert mirrored.principal_point == pytest.approx((W - cx, cy))
    m = np.diag([-1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(mirrored.camera_from_world, m @ c @ m, atol=1e-12)
    half = turn_camera(cam, 2, False)
    assert half.principal_point == pytest.approx((W - cx, H - cy))
    np.testing.assert_allclose(half.camera_from_world, np.diag([-1.0, -1.0, 1.0, 1.0]) @ c,
                               atol=1e-12)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a / b - 1.0)))


@pytest.mark.parametrize(("k", "mirror"), [(0, True), (2, False), (1, False), (3, True)])
def test_tta_is_equivariant(model_path: Path, k: int, mirror: bool) -> None:
    cam, img = _camera(), _image()
    base = predict(img, cam, model=model_path, tta=True)
    turned = predict(turn_array(img, k, mirror), turn_camera(cam, k, mirror), model=model_path,
                     tta=True)
    assert base.front_all is not None
    assert turned.front_all is not None
    assert base.back_all is not None
    assert turned.back_all is not None
    np.testing.assert_allclose(turned.prob, turn_array(base.prob, k, mirror), atol=1e-6)
    assert _relative(turned.front_all, turn_array(base.front_all, k, mirror)) < 1e-4
    assert _relative(turned.back_all, turn_array(base.back_all, k, mirror)) < 1e-4


def test_without_tta_a_mirror_changes_the_output(model_path: Path) -> None:
    cam, img = _camera(), _image()
    base = predict(img, cam, model=model_path)
    mirrored = predict(turn_array(img, 0, True), turn_camera(cam, 0, True), model=model_path)
    assert np.abs(mirrored.prob - turn_array(base.prob, 0, True)).max() > 1e-4


def test_tta_keeps_the_plain_prediction_of_its_identity_member(model_path: Path) -> None:
    cam, img = _camera(), _image()
    mean, plain = predict_with_plain(img, cam, model=model_path, tta=True)
    alone = predict(img, cam, model=model_path)
    averaged = predict(img, cam, model=model_path, tta=True)
    np.testing.assert_array_equal(mean.prob, averaged.prob)
    np.testing.assert_allclose(plain.prob, alone.prob, atol=1e-6)
    assert plain.front_all is not None
    assert alone.front_all is not None
    assert _relative(plain.front_all, alone.front_all) < 1e-5
    assert np.abs(plain.prob - mean.prob).max() > 1e-4       # it is not the average
    same, again = predict_with_plain(img, cam, model=model_path)
    assert same is again
    np.testing.assert_array_equal(same.prob, alone.prob)


def _conv_weight(net: torch.nn.Module) -> torch.Tensor:
    """A convolution's weight with more than one input channel (whose layout can differ)."""
    return next(p for p in net.parameters() if p.ndim == 4 and p.shape[1] > 1)


def test_a_model_file_runs_channels_last_and_one_member_at_a_time_to_the_same_answer(
        model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cam, img = _camera(), _image()
    loaded = pr.resolve_model(model_path)
    assert _conv_weight(loaded.net).is_contiguous(memory_format=torch.channels_last)
    assert not _conv_weight(loaded.net).is_contiguous()
    one_by_one = predict(img, cam, model=loaded, tta=True)
    # the same weights as a network passed in keep their layout, and with the batch of 8
    passed = load_model(model_path).net
    assert _conv_weight(passed).is_contiguous()
    monkeypatch.setattr(pr, "_CPU_BATCH", 8)
    together = predict(img, cam, model=passed, tta=True)
    assert _conv_weight(passed).is_contiguous()
    np.testing.assert_allclose(one_by_one.prob, together.prob, atol=1e-4)   # float rounding
    assert one_by_one.front_all is not None
    assert together.front_all is not None
    assert _relative(one_by_one.front_all, together.front_all) < 1e-4


# ------------------------------------------------------------------------------ geometry


def test_height_to_depth_against_the_pixel_rays() -> None:
    cam = _camera(principal_offset_mm=(20.0, -15.0))
    sdd = cam.source_to_detector_mm
    assert sdd is not None
    heights = np.random.default_rng(1).uniform(0, 80, (2, H, W))
    origin, dirs = cam.rays()
    z_axis = cam.view_direction_world           # camera +z in world
    cos = dirs @ z_axis                          # per pixel, by brute force
    np.testing.assert_allclose(cos, cos_theta(cam), rtol=1e-12)
    brute = (sdd - heights) / cos                # a point at height h lies at z = SDD − h
    depth = height_to_depth(heights, cam)
    np.testing.assert_allclose(depth, brute, rtol=1e-12)
    points = origin + depth[0, ..., None] * dirs
    z = (cam.camera_from_world[:3, :3] @ points.reshape(-1, 3).T)[2] + \
        cam.camera_from_world[2, 3]
    np.testing.assert_allclose(sdd - z.reshape(H, W), heights[0], atol=1e-9)
    np.testing.assert_allclose(depth_to_height(depth, cam), heights, atol=1e-9)


# ------------------------------------------------------------------------------ evaluate

HEIGHTS_FRONT = (30.0, 24.0, 16.0)
HEIGHTS_BACK = (20.0, 15.0, 9.0)
KINDS = ("pa", "oblique", "lateral")


def _truth_masks() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([((xx - 18) / 10.0) ** 2 + ((yy - 20) / 7.0) ** 2 < 1,
                     (xx > 22) & (xx < 38) & (yy > 10) & (yy < 30),
                     ((xx - 30) / 6.0) ** 2 + ((yy - 28) / 8.0) ** 2 < 1])


def _encode(hit: np.ndarray) -> np.ndarray:
    """A radiograph that encodes the masks: 1 + Σ_b hit_b · 2^b."""
    return (1.0 + sum(hit[b] * 2.0 ** b for b in range(hit.shape[0]))).astype(np.float32)


def _decode(image: np.ndarray) -> np.ndarray:
    bits = np.round(np.asarray(image) - 1.0).astype(int)
    return np.stack([(bits >> b) & 1 for b in range(len(BONES))]).astype(bool)


@pytest.fixture(scope="module")
def truth_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("truth")
    (root / "samples").mkdir()
    samples = []
    for i, kind in enumerate(KINDS):
        cam = _camera(primary_angle=0.3 + 0.2 * i)
        hit = _truth_masks()
        if i == 2:
            hit[0] = False  # a bone out of this view
        front = np.full((3, 2, H, W), np.nan, np.float32)
        back = np.full_like(front, np.nan)
        for b in range(3):
            front[b, 0] = np.where(hit[b], height_to_depth(np.full((H, W), HEIGHTS_FRONT[b]),
                                                           cam), np.nan)
            back[b, 0] = np.where(hit[b], height_to_depth(np.full((H, W), HEIGHTS_BACK[b]),
                                                          cam), np.nan)
        image = _encode(hit)
        meta = {"index": i, "view_index": i, "view": {"kind": kind}}
        name = f"samples/{i:06d}.npz"
        write_sample(root / name, {
            "image": image, "image_clean": image, "camera": cam.to_json(indent=None),
            "bones": np.asarray(BONES, np.int32), "hit": hit, "front": front, "back": back,
            "layers": hit.astype(np.uint8), "source": json.dumps({"kind": "synthetic"}),
            "meta": json.dumps(meta)})
        samples.append({"index": i, "file": name, "view": kind})
    manifest = {"format": "regkit-recon ground truth", "format_version": 3,
                "parameters": {"synthetic": True},
                "sources": [{"id": "synthetic", "bones": list(BONES),
                             "bone_names": {str(b): n for b, n in zip(BONES, NAMES,
                                                                       strict=True)}}],
                "samples": samples, "complete": True}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _oracle(shift_mm: float = 0.0) -> Any:
    """A stand-in for predict that reads the truth out of the encoded radiograph.

    Its heights are moved by ``shift_mm`` (towards the source).
    """

    def fake(image: np.ndarray, camera: Camera, **_kw: Any) -> Prediction:
        hit = _decode(image)
        front = np.stack([height_to_depth(np.full(hit.shape[1:], h + shift_mm), camera)
                          for h in HEIGHTS_FRONT]).astype(np.float32)
        back = np.stack([height_to_depth(np.full(hit.shape[1:], h + shift_mm), camera)
                         for h in HEIGHTS_BACK]).astype(np.float32)
        return Prediction(bones=np.asarray(BONES, np.int32), bone_names=NAMES, hit=hit,
                          prob=hit.astype(np.float32),
                          front=np.where(hit, front, np.nan)[:, None],
                          back=np.where(hit, back, np.nan)[:, None], camera=camera,
                          front_all=front, back_all=back)

    return fake


def _figure(report: dict[str, Any], quantity: str, kind: str, region: str = "true_mask",
            how: str = "median") -> float:
    return float(report["overall"]["errors"][quantity][region][kind][how])


def test_perfect_prediction_scores_dice_1_and_no_error(
        truth_folder: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pr, "predict", _oracle())
    report = ev.evaluate(model_path, [truth_folder], variants=tuple(ev.VARIANTS))
    assert report["samples"] == 3
    assert len(report["per_case"]) == 12
    assert report["overall"]["dice"]["mean"] == pytest.approx(1.0)
    assert report["overall"]["dice"]["min"] == pytest.approx(1.0)
    for q in ("front", "back", "thickness"):
        for region in ("true_mask", "pred_mask"):
            for kind in ("absolute", "aligned"):
                assert _figure(report, q, kind, region) < 1e-3
                assert _figure(report, q, kind, region, "mean") < 1e-3
    assert set(report["by_view"]) == set(KINDS)
    assert set(report["by_hand"]) == {"right", "left"}
    assert set(report["by_orientation"]) == {"fingers_down", "fingers_up"}
    lateral = [c for c in report["per_case"] if c["view"] == "lateral"]
    assert all(c["dice"][0] is None for c in lateral)  # the bone out of view is skipped
    json.dumps(report, allow_nan=False)


def test_a_shifted_prediction_is_wrong_but_aligned(
        truth_folder: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pr, "predict", _oracle(shift_mm=6.0))
    report = ev.evaluate(model_path, [truth_folder], variants=("right", "left-up"))
    for q in ("front", "back"):
        assert _figure(report, q, "absolute") == pytest.approx(6.0, rel=0.02)
        assert _figure(report, q, "aligned") < 1e-3
    assert _figure(report, "thickness", "absolute") < 1e-3
    assert report["overall"]["offset_mm"]["median"] == pytest.approx(-6.0, abs=1e-3)
    per_bone = report["overall"]["per_bone"]["beta"]
    assert per_bone["front_absolute"] == pytest.approx(6.0, rel=0.02)
    assert per_bone["front_aligned"] < 1e-3


def test_score_case_regions() -> None:
    cam = _camera()
    truth = _truth_masks()
    tf = height_to_depth(np.full((3, H, W), 20.0), cam)
    tb = tf + 5.0
    pred_hit = truth.copy()
    pred_hit[1, :, :33] = False                   # most of bone 1 missed
    pf = tf + np.where(pred_hit, 0.0, 10.0)       # wrong only where the bone was missed
    score = ev.score_case(truth, np.where(truth, tf, np.nan), np.where(truth, tb, np.nan),
                          pred_hit, pf, tb, cos_theta(cam))
    assert score["dice"][0] == pytest.approx(1.0)
    assert score["dice"][1] < 1.0
    assert score["errors"]["front"]["pred_mask"]["absolute"] == pytest.approx(0.0, abs=1e-9)
    assert score["per_bone"]["front"]["absolute"][1] == pytest.approx(10.0)
    assert score["per_bone"]["front"]["absolute"][0] == pytest.approx(0.0, abs=1e-9)
    assert score["errors"]["thickness"]["pred_mask"]["absolute"] == pytest.approx(0.0, abs=1e-9)
    assert score["per_bone"]["thickness"]["absolute"][1] == pytest.approx(10.0)


def test_thickness_by_rim_splits_the_error_by_distance_from_the_outline() -> None:
    cam = _camera()
    yy, xx = np.mgrid[0:H, 0:W]
    truth = np.zeros((3, H, W), dtype=bool)
    truth[0, 6:34, 8:34] = True                   # a 28 × 26 block: rings 1 to 6+ (up to 13)
    truth[1, :, 40:] = True                       # at the image's right edge: the border is outside
    tf = height_to_depth(np.full((3, H, W), 20.0), cam)
    tb = tf + 5.0
    dist_to_edge = np.minimum.reduce([yy - 6 + 1, 33 - yy + 1, xx - 8 + 1, 33 - xx + 1])
    # the block's thickness 2 mm too thick on its outermost ring and 1 mm too thin inside it
    error = np.where(dist_to_edge == 1, 2.0, -1.0) * truth[0]
    pb = tb + error[None] * np.array([1.0, 0.0, 0.0])[:, None, None]
    score = ev.score_case(truth, np.where(truth, tf, np.nan), np.where(truth, tb, np.nan),
                          truth, tf, pb, cos_theta(cam))
    rim = score["thickness_by_rim"]
    assert set(rim) == set(ev.RIM_RINGS)
    # ring 1: the block's 104 outer pixels (+2 mm) and bone 1's border column and edges (0 mm)
    ring1_block = 2 * 28 + 2 * 26 - 4
    d1 = ev._rim_distance(truth)[1]
    ring1_bone1 = int(((d1 > 0) & (d1 <= 1.5)).sum())
    assert rim["1"]["pixels"] == ring1_block + ring1_bone1
    expected_1 = np.median(np.r_[np.full(ring1_block, 2.0), np.zeros(ring1_bone1)])
    assert rim["1"]["bias"] == pytest.approx(expected_1)
    # bone 1 is 8 columns wide against the border: its pixels lie in rings 1 to 4-5 only
    assert d1[20, W - 1] == pytest.approx(1.0)    # the image's border counts as outside
    assert d1[20, 40] == pytest.approx(1.0)
    assert d1.max() == pytest.approx(4.0)
    assert rim["6+"]["bias"] == pytest.approx(-1.0)  # the block alone reaches ring 6+
    assert rim["6+"]["abs"] == pytest.approx(1.0)
    assert rim["6+"]["pixels"] == int((dist_to_edge[6:34, 8:34] >= 6).sum())
    # the rings partition the true mask
    assert sum(r["pixels"] for r in rim.values()) == int(truth.sum())
    # groups: the median over cases of each case's figure, and the pixels summed
    exact = ev.score_case(truth, np.where(truth, tf, np.nan), np.where(truth, tb, np.nan),
                          truth, tf, tb, cos_theta(cam))
    assert exact["thickness_by_rim"]["1"]["bias"] == 0.0
    group = ev.summarise([score, exact, exact], list(NAMES))["thickness_by_rim"]
    assert group["6+"]["bias"] == pytest.approx(0.0)
    assert group["6+"]["pixels"] == 3 * rim["6+"]["pixels"]
    group = ev.summarise([score, score, exact], list(NAMES))["thickness_by_rim"]
    assert group["6+"]["bias"] == pytest.approx(-1.0)
    # a ring no pixel falls in reports NaN, not 0
    small = np.zeros_like(truth)
    small[0, 10:13, 10:13] = True
    none = ev.score_case(small, np.where(small, tf, np.nan), np.where(small, tb, np.nan),
                         small, tf, tb, cos_theta(cam))["thickness_by_rim"]
    assert none["1"]["pixels"] == 8
    assert none["2"]["pixels"] == 1
    assert np.isnan(none["3"]["bias"])
    assert none["3"]["pixels"] == 0


def test_the_report_figure_draws_the_ring_bias_with_its_sign() -> None:
    rim = {ring: {"bias": -3.0, "abs": 3.0, "pixels": 10} for ring in ev.RIM_RINGS}
    rim["1"]["bias"] = 3.0
    overall: dict[str, Any] = {
        "cases": 1, "dice": {"mean": 0.5, "per_bone": dict.fromkeys(NAMES, 0.5)},
        "thickness_by_rim": rim}
    report: dict[str, Any] = {"bone_names": list(NAMES), "overall": overall}

    def colour_count(image: Any, too_thick: bool) -> int:
        rgb = np.asarray(image.convert("RGB")).reshape(-1, 3)
        return int((rgb == np.array(ev.RIM_COLOURS[too_thick])).all(axis=1).sum())

    with_rim = ev._figure(report, [])
    thin_only = ev._figure({**report, "overall": {**overall, "thickness_by_rim": {
        ring: {**v, "bias": -3.0} for ring, v in rim.items()}}}, [])
    without = ev._figure({**report, "overall": {k: v for k, v in overall.items()
                                                if k != "thickness_by_rim"}}, [])
    assert with_rim.size[1] > without.size[1]
    assert colour_count(without, True) == colour_count(without, False) == 0
    # one ring too thick, four too thin, each bar 3/4 of its half: four times the thin colour
    assert colour_count(with_rim, True) > 0
    assert colour_count(with_rim, False) == pytest.approx(4 * colour_count(with_rim, True),
                                                          rel=0.05)
    assert colour_count(thin_only, True) == 0
    empty = ev._figure({**report, "overall": {**overall, "thickness_by_rim": {
        ring: {"bias": float("nan"), "abs": float("nan"), "pixels": 0} for ring in rim}}}, [])
    assert colour_count(empty, True) == colour_count(empty, False) == 0   # no pixels, no bar


def test_evaluate_runs_the_network_and_writes_the_report(
        tmp_path: Path, truth_folder: Path, model_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    ev.add_evaluate_arguments(parser)
    args = parser.parse_args(["--model", str(model_path), "--data", str(truth_folder),
                              "--out", str(tmp_path / "rep"), "--limit", "2",
                              "--all-variants", "--examples", "3"])
    assert ev.run_evaluate(args) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0].startswith("group")
    assert "by distance from the true outline" in out.out
    assert "view=pa" in out.out
    assert "evaluate: 6/6" in out.err
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["format"] == ev.REPORT_FORMAT
    assert report["variants"] == list(ev.ALL_VARIANTS)
    assert report["samples"] == 2
    assert len(report["per_case"]) == 6
    assert 0.0 <= report["overall"]["dice"]["mean"] <= 1.0
    from PIL import Image

    with Image.open(tmp_path / "rep" / "report.png") as im:
        assert im.mode == "RGB"
        assert im.size[0] >= 640
        assert im.size[1] > 3 * 128


def test_evaluate_refuses_bad_input(tmp_path: Path, truth_folder: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.pt"
    save_model(other, _net((1, 2, 3, 4), (*NAMES, "delta")))
    with pytest.raises(InputError, match=r"bones \[1, 2, 3\].*\[1, 2, 3, 4\]"):
        ev.evaluate(other, [truth_folder])
    with pytest.raises(InputError, match="unknown variant 'down'"):
        ev.parse_variants("right,down")
    with pytest.raises(InputError, match="not a ground-truth folder"):
        ev.evaluate(other, [tmp_path / "nowhere"])
    (tmp_path / "afile").write_text("x")               # refused before any sample is scored
    assert main(["recon", "evaluate", "--model", str(other), "--data", str(truth_folder),
                 "--out", str(tmp_path / "afile")]) == 2
    assert "'--out': is a file" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"
