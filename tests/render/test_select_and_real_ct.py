"""The backend selection rule, and the two backends agreeing on the shipped real CT crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regkit.data import chest_ct_crop
from regkit.errors import BackendUnavailableError, InputError, UnknownNameError
from regkit.geometry.carm import camera_from_carm
from regkit.io.nifti import load_nifti
from regkit.render.base import Views
from regkit.render.gl.context import gl_available
from regkit.render.select import available_backends, choose_backend, make_renderer
from regkit.volume import Volume


@pytest.fixture(scope="module")
def crop() -> Volume:
    paths = chest_ct_crop()
    return load_nifti(paths["ct"], labels=paths["bones"])


@pytest.fixture(scope="module")
def views(crop: Volume) -> Views:
    cams = [camera_from_carm(source_to_detector_mm=1020, source_to_isocenter_mm=850,
                             pixel_spacing_mm=1.6, width=80, height=72,
                             primary_angle=np.deg2rad(a), secondary_angle=np.deg2rad(s),
                             isocenter_world=crop.center_world)
            for a, s in ((0, 0), (35, 10), (90, 0))]
    return Views.from_cameras(cams)


def test_selection_rule() -> None:
    assert {"torch", "gl"} <= set(available_backends())
    assert choose_backend(requires_grad=True) == "torch"
    assert choose_backend(device="cuda:0") == "torch"
    assert choose_backend() == ("gl" if gl_available() else "torch")


@pytest.mark.gl
def test_gradients_go_to_torch_and_gl_refuses_them(crop: Volume) -> None:
    r = make_renderer(crop, requires_grad=True)
    assert r.backend == "torch"
    assert r.differentiable
    with pytest.raises(InputError, match="not differentiable"):
        make_renderer(crop, backend="gl", requires_grad=True)
    with pytest.raises(UnknownNameError, match=r"known: .*gl.*torch"):
        make_renderer(crop, backend="cuda-magic")


@pytest.mark.gl
def test_backends_agree_on_real_anatomy(crop: Volume, views: Views) -> None:
    try:
        gl = make_renderer(crop, backend="gl")
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    th = make_renderer(crop, backend="torch")
    a = th.drr(views).numpy()
    b = gl.drr(views).numpy()
    rays = a > 0.05 * a.max()
    rel = np.abs(a - b)[rays] / a[rays]
    # DRRs within 0.5 % relative
    assert rays.sum() > 1000
    assert rel.max() <= 5e-3

    bones = [36, 37, 98]  # two vertebrae and a rib
    da, db = th.depth(views, bones, layers=2), gl.depth(views, bones, layers=2)
    voxel = float(min(crop.spacing))
    for name in ("front", "back"):
        x, y = getattr(da, name).numpy(), getattr(db, name).numpy()
        both = np.isfinite(x) & np.isfinite(y)
        assert both.sum() > 500
        assert np.median(np.abs(x - y)[both]) <= 0.1 * voxel  # median within 0.1 voxel
        # Where one backend sees a layer the other almost always does too.
        assert (np.isfinite(x) ^ np.isfinite(y)).sum() <= 0.01 * both.sum()
    agree = (th.bone_index(views, bones) == gl.bone_index(views, bones)).float().mean()
    assert float(agree) > 0.99
    assert torch.equal(da.layers > 0, db.layers > 0) or \
        float(((da.layers > 0) != (db.layers > 0)).float().mean()) < 0.01
