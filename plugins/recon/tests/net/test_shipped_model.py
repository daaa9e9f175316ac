"""What ships with the plugin: the default model and the demo radiographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from regkit_recon.data import demo_hand
from regkit_recon.groundtruth.dataset import open_ground_truth
from regkit_recon.groundtruth.sample import camera_of, read_sample
from regkit_recon.net.model import load_model
from regkit_recon.net.predict import DEFAULT_MODEL, predict


def test_the_shipped_model_loads_with_its_record() -> None:
    model = load_model(DEFAULT_MODEL)
    assert model.net.config.bones == tuple(range(1, 30))
    assert model.net.config.size == 256
    assert model.record["steps"] > 0
    assert "recipe" in model.record
    blob = torch.load(DEFAULT_MODEL, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in blob["state"].values() if v.is_floating_point())
    assert DEFAULT_MODEL.with_suffix(".md").is_file()  # its model card


def test_the_demo_hand_is_a_ground_truth_set_the_default_model_reads() -> None:
    data = open_ground_truth(demo_hand())
    assert len(data) == 3
    sample = read_sample(data.files[0])
    camera = camera_of(sample)
    torch.set_num_threads(1)
    pred = predict(sample["image"], camera)
    assert pred.prob.shape == (29, camera.height, camera.width)
    assert pred.front.shape == (29, 1, camera.height, camera.width)
    hit = pred.hit[:, None]
    assert np.isnan(pred.front[~hit]).all()
    assert np.isfinite(pred.front[hit]).all()
    assert (pred.front[hit] <= pred.back[hit] + 1e-4).all()
    sdd = camera.source_to_detector_mm
    assert sdd is not None
    seen = pred.front[hit]
    if seen.size:  # the depths lie between the source and the detector
        assert 0.5 * sdd < float(seen.min())
        assert float(pred.back[hit].max()) < 1.1 * sdd


@pytest.mark.parametrize("name", ["000000.npz", "000001.npz", "000002.npz"])
def test_demo_samples_are_never_trained_on(name: str) -> None:
    """The demo samples come from the test split (seed 303), not the training set (seed 101)."""
    meta = read_sample(demo_hand() / "samples" / name)["meta"]
    assert '"seed": 303' in meta


def test_the_demo_hand_is_current_ground_truth_with_every_listed_file() -> None:
    """Format 3 (no clipped air or thin bones), and no manifest entry without its file."""
    import json

    from regkit_recon.groundtruth.spec import FORMAT_VERSION

    manifest = json.loads((demo_hand() / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert "montage" not in manifest
    for entry in manifest["samples"]:
        assert (demo_hand() / entry["file"]).is_file()
    for name in ("000000.npz", "000001.npz", "000002.npz"):
        sample = read_sample(demo_hand() / "samples" / name)
        bone = sample["hit"].any(0)
        assert not (sample["image"][bone] == 0.0).any()
