"""``regkit register-3d3d`` end to end: every output, progress, and bad input (exit 2)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from regkit.cli.main import main
from regkit.data import chest_ct_crop
from regkit.geometry.transforms import rigid_from_params
from regkit.io.itk import read_itk_transform
from regkit.io.nifti import load_nifti, save_nifti
from regkit.registration.results import load_result_3d3d
from regkit.registration.volume_registration import mean_target_error
from regkit.volume import Volume


@cache
def _volumes() -> tuple[Volume, Volume, np.ndarray, np.ndarray]:
    """The shipped crop at 2.5 mm, a moved noisy copy on another grid, the truth, bone targets.

    The bone targets are in the moving world.
    """
    paths = chest_ct_crop()
    ct = load_nifti(paths["ct"], labels=paths["bones"])
    fixed = ct.resample(2.5).with_labels(None)
    true = np.asarray(rigid_from_params(np.array([0.06, -0.08, 0.1, 5.0, -3.0, 4.0]),
                                        ct.center_world))
    shape = (40, 48, 56)
    grid = np.diag([2.4, 2.6, 2.5, 1.0])
    grid[:3, 3] = (np.linalg.inv(true) @ np.append(ct.center_world, 1.0))[:3] \
        - grid[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    data = ct.resample_to_grid(shape, true @ grid, fill=-1024.0).data
    noisy = data + np.random.default_rng(0).normal(0, 15, data.shape)
    assert ct.labels is not None
    bones = ct.index_to_world(np.argwhere(ct.labels > 0)[::11].astype(np.float64))
    points = (np.linalg.inv(true) @ np.c_[bones, np.ones(len(bones))].T).T[:, :3]
    return fixed, Volume(noisy.astype(np.float32), grid), true, points


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    fixed, moving, _, _ = _volumes()
    paths = {"fixed": tmp_path / "fixed.nii.gz", "moving": tmp_path / "moving.nii.gz"}
    save_nifti(fixed, paths["fixed"])
    save_nifti(moving, paths["moving"])
    return paths


def test_end_to_end_writes_every_output(files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    status = main(["register-3d3d", "--fixed", str(files["fixed"]), "--moving",
                   str(files["moving"]), "--out", str(out), "--seed", "7",
                   "--resampled", str(tmp_path / "resampled.nii.gz"),
                   "--itk-transform", str(tmp_path / "t.tfm"),
                   "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert status == 0, err
    # The result file follows the conventions and recovers the truth.
    obj = json.loads(out.read_text())
    assert {"fixed_from_moving", "metric", "final_score", "seconds", "evaluations"} <= set(obj)
    assert obj["metric"] == "ncc"
    assert obj["seed"] == 7
    _, _, true, points = _volumes()
    result = load_result_3d3d(out)
    assert mean_target_error(result.fixed_from_moving, true, points) < 1.0
    # The ITK file holds the same transform.
    np.testing.assert_allclose(read_itk_transform(tmp_path / "t.tfm"),
                               result.fixed_from_moving, atol=1e-9)
    # The resampled moving image lies on the fixed grid and matches the fixed image.
    fixed = load_nifti(files["fixed"])
    resampled = load_nifti(tmp_path / "resampled.nii.gz")
    assert resampled.shape == fixed.shape
    np.testing.assert_allclose(resampled.world_from_index, fixed.world_from_index, atol=1e-4)
    inside = resampled.data > -1000
    corr = np.corrcoef(resampled.data[inside], fixed.data[inside])[0, 1]
    assert corr > 0.95
    # The report: three planes and the convergence curve, as real PNGs.
    names = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert names == ["axial.png", "convergence.png", "coronal.png", "sagittal.png"]
    for name in names:
        with Image.open(tmp_path / "report" / name) as im:
            assert im.format == "PNG"
            assert min(im.size) > 20
    # Progress on stderr: level, evaluations, best score, at a modest rate.
    progress = [line for line in err.splitlines() if "level" in line]
    assert any("level 1/3" in line for line in progress)
    assert any("level 3/3" in line for line in progress)
    assert all("evaluations" in line and "best ncc" in line for line in progress)
    assert len(progress) < 60
    assert "-> " + str(out) in err


@pytest.mark.slow
def test_affine_with_masks_and_metric(files: dict[str, Path], tmp_path: Path) -> None:
    fixed, moving, true, points = _volumes()
    mask = np.ones(moving.shape, dtype=np.uint8)
    mask[:3] = 0
    save_nifti(Volume(mask, moving.world_from_index), tmp_path / "mm.nii.gz")
    fmask = np.ones(fixed.shape, dtype=np.uint8)
    save_nifti(Volume(fmask, fixed.world_from_index), tmp_path / "fm.nii.gz")
    out = tmp_path / "r.json"
    status = main(["register-3d3d", "--fixed", str(files["fixed"]), "--moving",
                   str(files["moving"]), "--out", str(out), "--transform", "affine",
                   "--metric", "nmi", "--moving-mask", str(tmp_path / "mm.nii.gz"),
                   "--fixed-mask", str(tmp_path / "fm.nii.gz"), "--seed", "1",
                   "--init", "moments"])
    assert status == 0
    result = load_result_3d3d(out)
    assert result.metric == "nmi"
    assert result.extras["transform"] == "affine"
    assert mean_target_error(result.fixed_from_moving, true, points) < 1.5


def _error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    return err


def test_bad_inputs_exit_2(files: dict[str, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    _, moving, _, _ = _volumes()

    def argv(moving_path: Path = files["moving"], out: Path = tmp_path / "r.json") -> list[str]:
        return ["register-3d3d", "--fixed", str(files["fixed"]), "--moving", str(moving_path),
                "--out", str(out)]

    base = argv()
    # A mask on another grid.
    save_nifti(Volume(np.ones((5, 5, 5), np.uint8), np.eye(4)), tmp_path / "m.nii.gz")
    err = _error_of([*base, "--fixed-mask", str(tmp_path / "m.nii.gz")], capsys)
    assert "label grid" in err
    # A zero-variance image.
    save_nifti(Volume(np.full(moving.shape, 5, np.int16), moving.world_from_index),
               tmp_path / "flat.nii.gz")
    err = _error_of(argv(tmp_path / "flat.nii.gz"), capsys)
    assert "zero-variance" in err
    # NaN voxels.
    nan = np.array(moving.data)
    nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(nan, moving.world_from_index), tmp_path / "nan.nii.gz")
    err = _error_of(argv(tmp_path / "nan.nii.gz"), capsys)
    assert "NaN" in err
    # Volumes whose world coordinates never meet.
    far = np.array(moving.world_from_index)
    far[:3, 3] += [800.0, 0.0, 0.0]
    save_nifti(Volume(moving.data, far), tmp_path / "far.nii.gz")
    err = _error_of([*argv(tmp_path / "far.nii.gz"), "--init", "identity"], capsys)
    assert "do not overlap" in err
    # An unknown metric, named with the known ones.
    err = _error_of([*base, "--metric", "nmii"], capsys)
    assert "nmi" in err
    # Corrupt volumes (read on a thread): named, the fixed before the moving, and after the
    # metric's check.
    (tmp_path / "cut.nii.gz").write_bytes(files["moving"].read_bytes()[:3000])
    err = _error_of(argv(tmp_path / "cut.nii.gz"), capsys)
    assert "cut.nii.gz" in err
    both = ["register-3d3d", "--fixed", str(tmp_path / "absent.nii.gz"), "--moving",
            str(tmp_path / "cut.nii.gz"), "--out", str(tmp_path / "r.json")]
    err = _error_of(both, capsys)
    assert "absent.nii.gz" in err
    assert "cut.nii.gz" not in err
    err = _error_of([*both, "--metric", "nmii"], capsys)
    assert "nmi" in err
    assert "absent.nii.gz" not in err
    # Unknown choices and wrong output names.
    _error_of([*base, "--transform", "bspline"], capsys)
    err = _error_of(argv(out=tmp_path / "r.txt"), capsys)
    assert ".json" in err
    assert not (tmp_path / "r.json").exists()
