"""``regkit render``: outputs in the conventions' layouts, both backends, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from regkit.cli.main import main
from regkit.data import chest_ct_crop
from regkit.geometry.camera import save_cameras
from regkit.geometry.carm import camera_from_carm
from regkit.io.nifti import load_nifti

T8 = 36


@pytest.fixture(scope="module")
def camera_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ct = load_nifti(chest_ct_crop()["ct"])
    cams = [camera_from_carm(source_to_detector_mm=1020, source_to_isocenter_mm=850,
                             pixel_spacing_mm=3.2, width=48, height=40,
                             primary_angle=np.deg2rad(a), isocenter_world=ct.center_world)
            for a in (0.0, 40.0)]
    path = tmp_path_factory.mktemp("cams") / "cams.json"
    save_cameras(path, cams)
    return path


@pytest.mark.parametrize("backend", ["torch", pytest.param("gl", marks=pytest.mark.gl)])
def test_render_writes_drr_depth_and_preview(tmp_path: Path, camera_file: Path,
                                              backend: str) -> None:
    paths = chest_ct_crop()
    out, depth, png = tmp_path / "drr.npy", tmp_path / "depth.npz", tmp_path / "p.png"
    status = main(["render", "--volume", str(paths["ct"]), "--camera", str(camera_file),
                   "--out", str(out), "--backend", backend, "--labels", str(paths["bones"]),
                   "--bones", str(T8), "--layers", "3", "--depth-out", str(depth),
                   "--png", str(png)])
    assert status == 0
    drr = np.load(out)
    assert drr.dtype == np.float32
    assert drr.shape == (2, 40, 48)
    # bone and soft tissue along the rays
    assert np.isfinite(drr).all()
    assert drr.max() > 1.0
    with np.load(depth) as z:
        assert z["front"].shape == z["back"].shape == (2, 3, 40, 48)
        assert z["front"].dtype == np.float32
        assert z["layers"].dtype == np.uint8
        hit = z["layers"] > 0
        # one vertebra covers part of the detector
        assert hit.any()
        assert not hit.all()
        f0, b0 = z["front"][:, 0], z["back"][:, 0]
        assert np.isfinite(f0[hit]).all()
        assert np.isnan(f0[~hit]).all()
        assert (b0[hit] > f0[hit]).all()
        # The vertebra lies near the isocentre, 850 mm from the source.
        assert 780 < np.nanmedian(f0) < 900
    assert png.stat().st_size > 0


def test_render_units_mu_reads_values_as_given(tmp_path: Path, camera_file: Path) -> None:
    paths = chest_ct_crop()
    hu, mu = tmp_path / "hu.npy", tmp_path / "mu.npy"
    assert main(["render", "--volume", str(paths["ct"]), "--camera", str(camera_file),
                 "--out", str(hu), "--backend", "torch"]) == 0
    assert main(["render", "--volume", str(paths["ct"]), "--camera", str(camera_file),
                 "--out", str(mu), "--backend", "torch", "--units", "mu"]) == 0
    # Reading HU as mu makes air (-1000) strongly negative: the two must differ a lot.
    assert np.abs(np.load(hu) - np.load(mu)).max() > 10


def test_a_mu_volume_saved_by_regkit_renders_as_mu(tmp_path: Path, camera_file: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from regkit.io.nifti import save_nifti

    ct = load_nifti(chest_ct_crop()["ct"])
    assert ct.units == "HU"
    save_nifti(ct.to_mu(), tmp_path / "mu.nii.gz")
    again = load_nifti(tmp_path / "mu.nii.gz")
    assert again.units == "mu"      # was read back as HU: the DRR of μ read as HU is ~empty
    out = {name: tmp_path / f"{name}.npy" for name in ("hu", "mu")}
    assert main(["render", "--volume", str(chest_ct_crop()["ct"]), "--camera",
                 str(camera_file), "--out", str(out["hu"]), "--backend", "torch"]) == 0
    assert main(["render", "--volume", str(tmp_path / "mu.nii.gz"), "--camera",
                 str(camera_file), "--out", str(out["mu"]), "--backend", "torch"]) == 0
    np.testing.assert_allclose(np.load(out["mu"]), np.load(out["hu"]), rtol=1e-4, atol=1e-4)
    # said on the command line, the units win over the header (a tag another tool kept after
    # changing the values cannot trap the file), with a warning
    capsys.readouterr()
    assert main(["render", "--volume", str(tmp_path / "mu.nii.gz"), "--camera",
                 str(camera_file), "--out", str(tmp_path / "x.npy"), "--units", "hu",
                 "--backend", "torch"]) == 0
    assert "header says its values are mu" in capsys.readouterr().err
    # μ read as HU: every voxel near water's μ, the bones gone
    assert np.abs(np.load(tmp_path / "x.npy") - np.load(out["hu"])).max() > 0.5
    # values tagged "other" (a DICOM series rescaled to US) need --units, which then applies
    save_nifti(ct.with_data(np.asarray(ct.data), "other"), tmp_path / "other.nii.gz")
    assert main(["render", "--volume", str(tmp_path / "other.nii.gz"), "--camera",
                 str(camera_file), "--out", str(tmp_path / "y.npy")]) == 2
    assert "say which with --units hu or --units mu" in capsys.readouterr().err
    assert main(["render", "--volume", str(tmp_path / "other.nii.gz"), "--camera",
                 str(camera_file), "--out", str(tmp_path / "y.npy"), "--units", "hu",
                 "--backend", "torch"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.load(out["hu"]), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize(("extra", "needle"), [
    (["--bones", "36"], "--bones needs --labels"),
    (["--depth-out", "d.npz"], "--depth-out needs --labels"),
    (["--labels", "LABELS", "--bones", "36,999", "--depth-out", "d.npz"], "999"),
    (["--labels", "LABELS", "--bones", "x", "--depth-out", "d.npz"], "not a label"),
    (["--step-mm", "-1"], "--step-mm"),
    (["--backend", "vulkan"], "known: gl, torch"),
    (["--backend", "torh"], "did you mean 'torch'"),
])
def test_render_bad_input_exits_2(tmp_path: Path, camera_file: Path,
                                  capsys: pytest.CaptureFixture[str], extra: list[str],
                                  needle: str) -> None:
    paths = chest_ct_crop()
    extra = [str(paths["bones"]) if x == "LABELS" else x for x in extra]
    extra = [str(tmp_path / x) if x == "d.npz" else x for x in extra]
    out = tmp_path / "drr.npy"
    assert main(["render", "--volume", str(paths["ct"]), "--camera", str(camera_file),
                 "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err
    assert not out.exists()


def test_render_refuses_mixed_detector_sizes(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    paths = chest_ct_crop()
    cams = [camera_from_carm(source_to_detector_mm=1020, source_to_isocenter_mm=850,
                             pixel_spacing_mm=3.2, width=w, height=32) for w in (32, 48)]
    cam_path = tmp_path / "cams.json"
    cam_path.write_text(json.dumps([c.to_dict() for c in cams]))
    assert main(["render", "--volume", str(paths["ct"]), "--camera", str(cam_path),
                 "--out", str(tmp_path / "d.npy")]) == 2
    assert "detector size" in capsys.readouterr().err


def test_render_truncated_volume_exits_2(tmp_path: Path, camera_file: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "ct.nii.gz"
    bad.write_bytes(chest_ct_crop()["ct"].read_bytes()[:5000])
    assert main(["render", "--volume", str(bad), "--camera", str(camera_file),
                 "--out", str(tmp_path / "d.npy")]) == 2
    assert str(bad) in capsys.readouterr().err
