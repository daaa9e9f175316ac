"""Package-level promises: a light import, the public names, the shipped data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import regkit


def test_import_is_light() -> None:
    code = ("import sys, regkit, regkit.io, regkit.geometry, regkit.geometry.frames, "
            "regkit.registration, regkit_recon; "
            "print(sorted(m for m in ('torch', 'moderngl', 'scipy', 'nibabel', 'pydicom') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_import_touches_no_environment_variable() -> None:
    code = ("import os; before = dict(os.environ); import regkit, regkit.render.select; "
            "print(dict(os.environ) == before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_public_names_resolve() -> None:
    for name in regkit.__all__:
        assert getattr(regkit, name) is not None


def test_shipped_crop_loads_with_its_labels() -> None:
    from regkit.data import chest_ct_crop

    paths = chest_ct_crop()
    vol = regkit.load_nifti(paths["ct"], labels=paths["bones"])
    assert vol.shape == (160, 192, 64)
    np.testing.assert_allclose(vol.spacing, [0.703125, 0.703125, 2.5])
    assert vol.labels is not None
    listed = {int(line.split(",")[0]) for line in paths["bones_csv"].read_text().splitlines()[1:]}
    assert set(np.unique(vol.labels).tolist()) - {0} == listed
    # Real anatomy: air, soft tissue and cortical bone are all there.
    assert vol.data.min() < -900
    assert vol.data.max() > 1000
