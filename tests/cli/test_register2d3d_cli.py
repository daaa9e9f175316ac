"""``regkit register-2d3d`` end to end: result file, report, progress, and bad input (exit 2)."""

from __future__ import annotations

import json
import threading
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regkit.cli.main import main
from regkit.data import chest_ct_crop
from regkit.geometry.camera import Camera, save_cameras
from regkit.geometry.transforms import rigid_from_params
from regkit.io.nifti import load_nifti
from regkit.registration.radiograph_registration import mean_target_error_2d3d
from regkit.registration.results import load_result_2d3d
from regkit.render.base import Views
from regkit.render.select import make_renderer
from regkit.testing.cameras import bench_carm

SIZE = 80


@cache
def _case() -> tuple[list[Camera], list[Camera], list[np.ndarray], np.ndarray]:
    """True and perturbed biplane cameras of the shipped crop, radiographs and bone points.

    The radiographs are noisy ones of the true cameras; the bone points are in world mm.
    """
    paths = chest_ct_crop()
    ct = load_nifti(paths["ct"], labels=paths["bones"])
    true = [bench_carm(SIZE, ct.center_world, a) for a in (0.0, np.pi / 2)]
    with torch.no_grad():
        drr = make_renderer(ct).drr(Views.from_cameras(true)).numpy()
    rng = np.random.default_rng(0)
    images = [(-np.log(np.maximum(rng.poisson(1e4 * np.exp(-d)), 1) / 1e4)).astype(np.float32)
              for d in drr]
    e = np.asarray(rigid_from_params(np.array([0.1, -0.08, 0.05, 8.0, -10.0, 6.0]),
                                     ct.center_world))
    start = [c.with_pose(c.camera_from_world @ e) for c in true]
    assert ct.labels is not None
    points = ct.index_to_world(np.argwhere(ct.labels > 0)[::9].astype(np.float64))
    return true, start, images, points


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    _, start, images, _ = _case()
    paths = chest_ct_crop()
    out = {"ct": paths["ct"], "labels": paths["bones"], "camera": tmp_path / "init.json",
           "x1": tmp_path / "ap.npy", "x2": tmp_path / "lat.npy"}
    save_cameras(out["camera"], start)
    np.save(out["x1"], images[0])
    np.save(out["x2"], images[1])
    return out


@pytest.mark.slow
def test_end_to_end_biplane_with_report(files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    status = main(["register-2d3d", "--volume", str(files["ct"]), "--camera",
                   str(files["camera"]), "--image", str(files["x1"]), "--image",
                   str(files["x2"]), "--out", str(out), "--seed", "5",
                   "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert status == 0, err
    obj = json.loads(out.read_text())
    assert {"cameras", "world_correction", "metric", "final_score", "seconds",
            "evaluations"} <= set(obj)
    assert obj["metric"] == "gncc"
    assert obj["seed"] == 5
    assert len(obj["cameras"]) == 2
    true, start, _, points = _case()
    result = load_result_2d3d(out)
    for before, after in zip(start, result.cameras, strict=True):
        np.testing.assert_allclose(after.camera_from_world,
                                   before.camera_from_world @ result.world_correction,
                                   atol=1e-9)
    est = np.stack([c.camera_from_world for c in result.cameras])
    assert mean_target_error_2d3d(est, np.stack([c.camera_from_world for c in true]),
                                  points) < 2.0
    names = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert names == ["convergence.png", "view_0.png", "view_1.png"]
    with Image.open(tmp_path / "report" / "view_0.png") as im:
        assert im.format == "PNG"
        assert im.size[0] > 2 * SIZE
    progress = [line for line in err.splitlines() if "level" in line]
    # two views: the scatter removal runs the last of the 3 levels again, then a second pass
    assert any("level 1/5" in line for line in progress)
    assert any("level 5/5" in line for line in progress)
    assert all("evaluations" in line and "best gncc" in line for line in progress)
    assert "-> " + str(out) in err


@pytest.mark.parametrize(("extra", "message"), [
    (["--image-only-one"], None),
    (["--bones", "35"], "--labels"),
    (["--bones", "3x", "--labels", "LABELS"], "comma-separated"),
    (["--labels", "LABELS", "--bones", "7"], "do not occur in the label map"),
    (["--metric", "nope"], "nope"),
    (["--optimizer", "nope"], "nope"),
    (["--seed", "-1"], "--seed"),
    (["--out-txt"], ".json"),
    (["--nan"], "NaN"),
    (["--wrong-size"], "detector is 80 x 80"),
    (["--detector-blur", "soft"], "--detector-blur"),
    (["--detector-blur", "11"], "--detector-blur"),
    (["--corrupt-ct"], "bad.nii.gz"),
    (["--corrupt-ct", "--no-camera"], "absent.json"),    # in order: the camera before the CT
    (["--corrupt-ct", "--metric", "nope"], "nope"),       # and the metric
    (["--corrupt-labels"], "cut_labels.nii.gz"),
    (["--corrupt-ct", "--corrupt-labels"], "bad.nii.gz"),  # the CT before its label map
    (["--other-units"], "say which with --units hu or --units mu"),
])
def test_bad_input_exits_2_with_one_line(files: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], extra: list[str],
                                         message: str | None) -> None:
    images = [str(files["x1"]), str(files["x2"])]
    out = str(tmp_path / "r.json")
    args = [a.replace("LABELS", str(files["labels"])) for a in extra]
    if extra == ["--image-only-one"]:
        images, args, message = images[:1], [], "1 --image for 2 camera"
    elif extra == ["--out-txt"]:
        out, args = str(tmp_path / "r.txt"), []
    elif extra == ["--nan"]:
        bad = np.load(files["x2"])
        bad[2, 2] = np.nan
        np.save(tmp_path / "nan.npy", bad)
        images[1], args = str(tmp_path / "nan.npy"), []
    elif extra == ["--other-units"]:     # a CT whose header says neither HU nor μ
        from regkit.io.nifti import load_nifti, save_nifti

        ct_other = load_nifti(files["ct"])
        save_nifti(ct_other.with_data(np.asarray(ct_other.data), "other"),
                   tmp_path / "other.nii.gz")
        files = {**files, "ct": tmp_path / "other.nii.gz"}
        args = []
    elif extra == ["--wrong-size"]:
        np.save(tmp_path / "small.npy", np.load(files["x2"])[:, :70])
        images[1], args = str(tmp_path / "small.npy"), []
    ct, camera = files["ct"], files["camera"]
    if "--corrupt-ct" in extra:   # read on a thread; its error waits for the checks before it
        ct = tmp_path / "bad.nii.gz"
        ct.write_bytes(files["ct"].read_bytes()[:5000])
        args = [a for a in args if a not in ("--corrupt-ct", "--no-camera")]
    if "--no-camera" in extra:
        camera = tmp_path / "absent.json"
    if "--corrupt-labels" in extra:
        cut = tmp_path / "cut_labels.nii.gz"
        cut.write_bytes(files["labels"].read_bytes()[:3000])
        args = [a for a in args if a not in ("--corrupt-ct", "--corrupt-labels")]
        args += ["--labels", str(cut)]
    argv = ["register-2d3d", "--volume", str(ct), "--camera", str(camera), "--out", out, *args]
    for image in images:
        argv += ["--image", image]
    status = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1
    assert err[0].startswith("regkit: error:")
    assert message is not None
    assert message in err[0]
    assert not Path(out).exists()
    assert not [t for t in threading.enumerate() if t.name == "regkit-read"]   # none left


def _options_reaching_the_registration(files: dict[str, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       extra: list[str]) -> list[dict | None]:
    """The ``options`` each ``register_2d3d`` call got from ``register-2d3d ... extra``."""
    from regkit.errors import InputError
    from regkit.registration import radiograph_registration

    seen: list[dict | None] = []

    def capture(*_args: object, options: dict | None = None, **_kwargs: object) -> None:
        seen.append(options)
        raise InputError("stop here", key="test")

    monkeypatch.setattr(radiograph_registration, "register_2d3d", capture)
    argv = ["register-2d3d", "--volume", str(files["ct"]), "--camera", str(files["camera"]),
            "--image", str(files["x1"]), "--image", str(files["x2"]),
            "--out", str(tmp_path / "r.json"), *extra]
    assert main(argv) == 2
    return seen


@pytest.mark.parametrize(("value", "expected"), [("estimate", "estimate"), ("1.25", 1.25),
                                                  (None, None)])
def test_detector_blur_reaches_the_registration(files: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                value: str | None, expected: object) -> None:
    extra = [] if value is None else ["--detector-blur", value]
    seen = _options_reaching_the_registration(files, tmp_path, monkeypatch, extra)
    assert [None if o is None else o.get("detector_blur_px") for o in seen] == [expected]


@pytest.mark.parametrize("flag", [True, False])
def test_full_detector_reaches_the_registration(files: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                flag: bool) -> None:
    extra = ["--full-detector"] if flag else []
    seen = _options_reaching_the_registration(files, tmp_path, monkeypatch, extra)
    assert [None if o is None else o.get("full_detector") for o in seen] \
        == [True if flag else None]
