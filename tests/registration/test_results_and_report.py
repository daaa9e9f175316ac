"""Result files (the conventions' contracts) and PNG reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit.geometry.carm import camera_from_carm
from regkit.geometry.transforms import rigid_from_params
from regkit.registration.report import checkerboard, convergence_plot, edge_overlay, edges
from regkit.registration.results import (
    ConvergencePoint,
    Registration2D3DResult,
    Registration3D3DResult,
    cameras_from_correction,
    load_result_2d3d,
    load_result_3d3d,
)


def _camera(angle: float = 0.0) -> Camera:
    return camera_from_carm(source_to_detector_mm=1020, source_to_isocenter_mm=850,
                            pixel_spacing_mm=0.8, width=64, height=48, primary_angle=angle)


def test_2d3d_result_round_trip_and_contract(tmp_path: Path) -> None:
    corr = np.asarray(rigid_from_params(np.array([0.01, -0.02, 0.03, 1.0, 2.0, -3.0])))
    inputs = [_camera(0.0), _camera(0.5)]
    refined = cameras_from_correction(inputs, corr)
    res = Registration2D3DResult(refined, corr, "gncc", 0.93, 4.2, 4800,
                                 extras={"seed": 3, "stop_reasons": [{"tolfun": 1e-11}]})
    res.save(tmp_path / "r.json")
    obj = json.loads((tmp_path / "r.json").read_text())
    assert set(obj) >= {"cameras", "world_correction", "metric", "final_score", "seconds",
                        "evaluations"}
    # The contract: refined = input @ world_correction, for every view.
    for cam_in, cam_obj in zip(inputs, obj["cameras"], strict=True):
        np.testing.assert_allclose(np.array(cam_obj["camera_from_world"]),
                                   cam_in.camera_from_world @ corr, atol=1e-12)
    back = load_result_2d3d(tmp_path / "r.json")
    np.testing.assert_array_equal(back.world_correction, corr)
    assert back.metric == "gncc"
    assert back.evaluations == 4800
    assert back.extras["seed"] == 3


def test_3d3d_result_round_trip(tmp_path: Path) -> None:
    m = np.diag([1.1, 0.9, 1.0, 1.0])  # affine is allowed
    m[:3, 3] = [1, 2, 3]
    Registration3D3DResult(m, "nmi", 0.41, 3.1, 2600).save(tmp_path / "r.json")
    back = load_result_3d3d(tmp_path / "r.json")
    np.testing.assert_array_equal(back.fixed_from_moving, m)


def test_bad_result_files(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"fixed_from_moving": [[1, 0, 0]], "metric": "nmi",
                             "final_score": 1, "seconds": 1, "evaluations": 1}))
    with pytest.raises(InputError, match="fixed_from_moving"):
        load_result_3d3d(p)
    p.write_text(json.dumps({"metric": "nmi", "final_score": 1, "seconds": 1}))
    with pytest.raises(InputError, match="evaluations"):
        load_result_3d3d(p)
    good = Registration2D3DResult((_camera(),), np.eye(4), "ncc", 1.0, 1.0, 1).to_dict()
    good["world_correction"] = np.diag([2.0, 1, 1, 1]).tolist()
    p.write_text(json.dumps(good))
    with pytest.raises(InputError, match="world_correction"):
        load_result_2d3d(p)
    with pytest.raises(InputError, match="final_score"):
        Registration3D3DResult(np.eye(4), "nmi", float("nan"), 1.0, 1).save(tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_edges_and_overlays() -> None:
    img = np.zeros((32, 32))
    img[8:24, 8:24] = 1.0
    e = edges(img)
    # border found, flat inside not
    assert e[8:24, 7:9].any()
    assert not e[14:18, 14:18].any()
    ov = edge_overlay(img, img)
    assert ov.shape == (32, 32, 3)
    assert (ov[e] == [0, 230, 0]).all()
    cb = checkerboard(np.zeros((16, 16)), np.ones((16, 16)) * 5, tiles=2)
    # each image windowed on its own: constant -> 0
    assert cb[0, 0] == 0
    assert cb[0, 15] == 0
    ramp = np.tile(np.arange(16.0), (16, 1))
    cb = checkerboard(ramp, -ramp, tiles=2)  # tiles: fixed at top-left and bottom-right
    # right column: fixed bright, moving dark
    assert cb[8, 15] > 200
    assert cb[0, 15] < 50
    # left column: moving bright, fixed dark
    assert cb[8, 0] > 200
    assert cb[0, 0] < 50


def test_convergence_plot_writes_png(tmp_path: Path) -> None:
    hist = [ConvergencePoint(10 * i, 1 - 0.5 ** i, 1 - 0.6 ** i, level=i // 5) for i in range(12)]
    convergence_plot(tmp_path / "c.png", hist, title="ncc")
    im = np.asarray(Image.open(tmp_path / "c.png"))
    assert im.shape == (400, 640, 3)
    red = (im[..., 0] > 150) & (im[..., 1] < 80) & (im[..., 2] < 80)
    assert red.sum() > 100  # the best-so-far line was drawn
    with pytest.raises(InputError):
        convergence_plot(tmp_path / "d.png", [])
