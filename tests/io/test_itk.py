"""ITK .tfm export: checked against SimpleITK's own resampling; round trips; malformed files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from regkit.errors import FileFormatError, InputError, ShapeError
from regkit.geometry.transforms import rigid_from_params
from regkit.io.itk import LPS_FROM_RAS, read_itk_transform, write_itk_transform
from regkit.io.nifti import save_nifti
from regkit.registration.volume_registration import affine_from_params
from regkit.render.torch_backend import TorchRenderer
from regkit.volume import Volume

sitk = pytest.importorskip("SimpleITK")


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], rotvec: list[float],
          centre: list[float]) -> np.ndarray:
    """An oblique grid affine (index -> RAS mm) centred on ``centre``."""
    affine = np.asarray(rigid_from_params(np.array([*rotvec, 0.0, 0.0, 0.0])))
    affine[:3, :3] = affine[:3, :3] @ np.diag(spacing)
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def _smooth_volume() -> Volume:
    """A smooth blob pattern on an oblique, anisotropic LAS-like grid."""
    shape = (36, 30, 26)
    affine = _grid(shape, (1.2, 1.0, 1.5), [0.1, -0.05, 0.2], [5.0, -3.0, 10.0])
    affine[:, 0] *= -1  # flip the first axis: a left-handed index frame, as in LAS files
    affine[:3, 3] = np.asarray([5.0, -3.0, 10.0]) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape],
                                 indexing="ij"), -1)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    data = np.zeros(shape)
    for centre, width, height in (([0.0, 0.0, 10.0], 9.0, 100.0), ([9.0, -8.0, 4.0], 6.0, -60.0),
                                  ([-8.0, 6.0, 18.0], 7.0, 80.0)):
        data += height * np.exp(-np.sum((world - centre) ** 2, axis=-1) / (2 * width ** 2))
    data += 0.5 * world[..., 0] - 0.3 * world[..., 2]
    return Volume(data.astype(np.float32), affine, units="other")


TRANSFORMS = {
    "rigid": np.asarray(rigid_from_params(np.array([0.12, -0.08, 0.2, 3.0, -2.0, 4.0]),
                                          [5.0, -3.0, 10.0])),
    "affine": np.asarray(affine_from_params(
        np.array([0.1, 0.05, -0.15, -2.0, 1.5, 3.0, 0.06, -0.04, 0.03, 0.05, -0.03, 0.04]),
        [5.0, -3.0, 10.0])),
}


@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
def test_tfm_resamples_like_regkit_in_simpleitk(tmp_path: Path, kind: str) -> None:
    moving = _smooth_volume()
    fixed_from_moving = TRANSFORMS[kind]
    fixed_shape = (30, 28, 24)
    fixed_affine = _grid(fixed_shape, (1.1, 1.3, 1.2), [-0.07, 0.12, 0.05], [6.0, -2.0, 11.0])
    save_nifti(moving, tmp_path / "moving.nii.gz")
    save_nifti(Volume(np.zeros(fixed_shape, np.float32), fixed_affine), tmp_path / "fixed.nii")
    write_itk_transform(tmp_path / "t.tfm", fixed_from_moving)

    # SimpleITK reads the NIfTI files itself (its own RAS -> LPS conversion) and the .tfm.
    moving_img = sitk.ReadImage(str(tmp_path / "moving.nii.gz"), sitk.sitkFloat64)
    fixed_img = sitk.ReadImage(str(tmp_path / "fixed.nii"))
    transform = sitk.ReadTransform(str(tmp_path / "t.tfm"))
    theirs = sitk.GetArrayFromImage(
        sitk.Resample(moving_img, fixed_img, transform, sitk.sitkLinear, -1e6)).transpose(2, 1, 0)

    ours = TorchRenderer(moving, dtype=torch.float64).resample(
        fixed_shape, fixed_affine, fixed_from_moving[None], fill=-1e6)
    values = ours.values[0].numpy()
    mask = ours.mask[0].numpy() & (theirs > -1e5)
    # Interior only: one voxel away from where either resampler stops having data.
    from scipy.ndimage import binary_erosion

    interior = binary_erosion(mask, iterations=1)
    assert interior.sum() > 0.3 * interior.size
    value_range = float(np.ptp(moving.data))
    assert np.max(np.abs(values[interior] - theirs[interior])) < 1e-3 * value_range
    # And the convention is not trivially satisfied: the identity file would disagree.
    write_itk_transform(tmp_path / "eye.tfm", np.eye(4))
    wrong = sitk.GetArrayFromImage(sitk.Resample(
        moving_img, fixed_img, sitk.ReadTransform(str(tmp_path / "eye.tfm")), sitk.sitkLinear,
        -1e6)).transpose(2, 1, 0)
    both = interior & (wrong > -1e5)
    assert np.max(np.abs(values[both] - wrong[both])) > 0.05 * value_range


@pytest.mark.parametrize("kind", sorted(TRANSFORMS))
def test_round_trip_exact(tmp_path: Path, kind: str) -> None:
    m = TRANSFORMS[kind]
    write_itk_transform(tmp_path / "t.tfm", m)
    back = read_itk_transform(tmp_path / "t.tfm")
    np.testing.assert_allclose(back, m, rtol=0, atol=1e-12)


def test_file_layout_and_worked_example(tmp_path: Path) -> None:
    m = np.eye(4)
    m[0, 3] = -10.0  # moving anatomy sits 10 mm to the right (RAS +x) of the fixed one
    write_itk_transform(tmp_path / "t.tfm", m)
    lines = (tmp_path / "t.tfm").read_text().splitlines()
    assert lines[0] == "#Insight Transform File V1.0"
    assert lines[1] == "#Transform 0"
    assert lines[2] == "Transform: AffineTransform_double_3_3"
    assert lines[4] == "FixedParameters: 0 0 0"
    params = [float(v) for v in lines[3].split(":")[1].split()]
    np.testing.assert_allclose(params, [1, 0, 0, 0, 1, 0, 0, 0, 1, -10, 0, 0], atol=1e-15)
    t_lps = np.eye(4)
    t_lps[:3, :3] = np.reshape(params[:9], (3, 3))
    t_lps[:3, 3] = params[9:]
    np.testing.assert_allclose(t_lps, LPS_FROM_RAS @ np.linalg.inv(m) @ LPS_FROM_RAS)


def test_centre_in_fixed_parameters_is_honoured(tmp_path: Path) -> None:
    # An ITK-written file with a centre of rotation (as SimpleITK writes them).
    rot = sitk.Euler3DTransform((10.0, -20.0, 5.0), 0.1, -0.2, 0.3, (1.0, 2.0, 3.0))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(rot.GetMatrix())
    affine.SetCenter(rot.GetCenter())
    affine.SetTranslation(rot.GetTranslation())
    sitk.WriteTransform(affine, str(tmp_path / "c.tfm"))
    fixed_from_moving = read_itk_transform(tmp_path / "c.tfm")
    # moving_from_fixed in LPS applied to a point must match ITK's TransformPoint.
    p_lps = np.array([3.0, -7.0, 12.0])
    expected = np.asarray(affine.TransformPoint(p_lps.tolist()))
    moving_from_fixed_lps = LPS_FROM_RAS @ np.linalg.inv(fixed_from_moving) @ LPS_FROM_RAS
    np.testing.assert_allclose((moving_from_fixed_lps @ np.append(p_lps, 1))[:3], expected,
                               atol=1e-9)


@pytest.mark.parametrize(("text", "line"), [
    ("#Insight Transform File V2\n", "line 1"),
    ("", "line 1"),
    ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
     "Parameters: 1 0 0 0 1 0 0 0 1 0 0\nFixedParameters: 0 0 0\n", "line 4"),
    ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
     "Parameters: 1 0 0 0 1 0 0 0 1 0 0 x\nFixedParameters: 0 0 0\n", "line 4"),
    ("#Insight Transform File V1.0\n#Transform 0\nTransform: BSplineTransform_double_3_3\n"
     "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n", "line 3"),
    ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
     "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters 0 0 0\n", "line 5"),
    ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
     "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\n", "missing 'FixedParameters:'"),
    ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
     "Parameters: 0 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n", "singular"),
    ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
     "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n#Transform 1\n", "line 6"),
])
def test_malformed_files_name_the_line(tmp_path: Path, text: str, line: str) -> None:
    p = tmp_path / "bad.tfm"
    p.write_text(text)
    with pytest.raises(FileFormatError, match=line):
        read_itk_transform(p)


def test_missing_file_and_bad_matrices(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match="no such file"):
        read_itk_transform(tmp_path / "none.tfm")
    with pytest.raises(ShapeError):
        write_itk_transform(tmp_path / "t.tfm", np.eye(3))
    with pytest.raises(InputError, match="singular"):
        write_itk_transform(tmp_path / "t.tfm", np.diag([1.0, 0.0, 1.0, 1.0]))
    bad = np.eye(4)
    bad[3, 0] = 1.0
    with pytest.raises(InputError, match="last row"):
        write_itk_transform(tmp_path / "t.tfm", bad)
    assert not (tmp_path / "t.tfm").exists()
