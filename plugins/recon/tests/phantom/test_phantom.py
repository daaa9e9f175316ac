"""The procedural hand phantom: labels, determinism, materials, gaps, deformities, command line.

Phantoms here use 0.5 mm voxels (the coarse end of the intended range) to keep the suite fast;
each takes one to three seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pytest
from regkit_recon import make_hand_phantom, measure_bone_axis, measure_fracture, parse_deformity
from regkit_recon.measure import bone_gaps, bone_points, measure_radius_angles
from regkit_recon.phantom import BONE_NAMES, HandPhantom
from scipy import ndimage

from regkit.cli.main import main
from regkit.errors import InputError

SEED = 11
VOXEL = 0.5
EXPECTED_NAMES = {
    1: "radius", 2: "ulna", 3: "scaphoid", 4: "lunate", 5: "triquetrum", 6: "pisiform",
    7: "trapezium", 8: "trapezoid", 9: "capitate", 10: "hamate",
    11: "metacarpal_1", 12: "metacarpal_2", 13: "metacarpal_3", 14: "metacarpal_4",
    15: "metacarpal_5", 16: "proximal_phalanx_1", 17: "proximal_phalanx_2",
    18: "proximal_phalanx_3", 19: "proximal_phalanx_4", 20: "proximal_phalanx_5",
    21: "middle_phalanx_2", 22: "middle_phalanx_3", 23: "middle_phalanx_4", 24: "middle_phalanx_5",
    25: "distal_phalanx_1", 26: "distal_phalanx_2", 27: "distal_phalanx_3",
    28: "distal_phalanx_4", 29: "distal_phalanx_5",
}
DEFORMITY = ("bone=metacarpal_5,angulation_deg=20,angulation2_deg=5,rotation_deg=10,"
             "shortening_mm=3;"
             "bone=proximal_phalanx_3,level=0.45,angulation_deg=-12,angulation2_deg=-8,"
             "rotation_deg=-15,shortening_mm=2;"
             "bone=radius,dorsal_tilt_deg=15,radial_inclination_deg=14")


@pytest.fixture(scope="module")
def phantom() -> HandPhantom:
    return make_hand_phantom(SEED, voxel_mm=VOXEL)


@pytest.fixture(scope="module")
def deformed() -> HandPhantom:
    return make_hand_phantom(SEED, deformity=DEFORMITY, voxel_mm=VOXEL)


# ------------------------------------------------------------------------------------ bones


@pytest.mark.slow
def test_29_labelled_bones_with_the_documented_names(phantom: HandPhantom) -> None:
    assert dict(BONE_NAMES) == EXPECTED_NAMES
    assert phantom.bone_table == tuple(EXPECTED_NAMES.items())
    present = set(np.unique(phantom.labels).tolist()) - {0}
    assert present == set(range(1, 30))
    assert phantom.labels.dtype == np.uint8
    assert phantom.volume.data.dtype == np.int16


def test_each_bone_is_one_piece_of_plausible_size(phantom: HandPhantom) -> None:
    counts = np.bincount(phantom.labels.ravel(), minlength=30)
    voxel_mm3 = VOXEL ** 3
    boxes = ndimage.find_objects(phantom.labels)
    for label, name in EXPECTED_NAMES.items():
        mask = phantom.labels[boxes[label - 1]] == label
        _, pieces = ndimage.label(mask)
        assert pieces == 1, name
        volume_cm3 = counts[label] * voxel_mm3 / 1000.0
        assert 0.1 < volume_cm3 < 40.0, (name, volume_cm3)


def test_long_bone_lengths_follow_the_anthropometric_table(phantom: HandPhantom) -> None:
    scale = phantom.pose.scale
    reference = {"metacarpal_2": 68.0, "metacarpal_3": 65.0, "metacarpal_5": 53.0,
                 "proximal_phalanx_3": 45.0, "middle_phalanx_3": 27.0}
    for name, length in reference.items():
        record = phantom.bone(name)
        axis = measure_bone_axis(phantom.labels, record.label, phantom.volume.world_from_index,
                                 towards=record.world_from_local[:3, 2])
        # voxel centres span about one voxel less than the bone
        assert axis.length == pytest.approx(length * scale - VOXEL, abs=1.2), name
        assert float(axis.direction @ record.world_from_local[:3, 2]) > math.cos(math.radians(2))
    # middle + distal phalanx = proximal phalanx, ray by ray
    for ray in (2, 3, 4, 5):
        lengths = {kind: cast(float, phantom.bone(f"{kind}_phalanx_{ray}").length_mm)
                   for kind in ("proximal", "middle", "distal")}
        assert lengths["middle"] + lengths["distal"] == pytest.approx(lengths["proximal"])


def test_carpal_height_ratio_is_normal(phantom: HandPhantom) -> None:
    """Youm's carpal height ratio: radius to third metacarpal base over its length, 0.54 ± 0.03."""
    affine = phantom.volume.world_from_index
    mc3 = phantom.bone("metacarpal_3")
    axis, origin = mc3.world_from_local[:3, 2], mc3.world_from_local[:3, 3]
    base = float(((bone_points(phantom.labels, mc3.label, affine) - origin) @ axis).min())
    radius = bone_points(phantom.labels, phantom.bone("radius").label, affine) - origin
    along = radius @ axis
    across = np.linalg.norm(radius - np.outer(along, axis), axis=1)
    height = base - float(along[across < 2.0].max())
    assert mc3.length_mm is not None
    assert 0.5 <= height / mc3.length_mm <= 0.6


def test_world_convention_right_hand_anatomical_position(phantom: HandPhantom) -> None:
    affine = phantom.volume.world_from_index

    def centre(name: str) -> np.ndarray:
        return measure_bone_axis(phantom.labels, phantom.bone(name).label, affine).centroid

    assert centre("distal_phalanx_1")[0] > centre("distal_phalanx_5")[0] + 40  # thumb at +x
    assert centre("distal_phalanx_3")[2] < centre("radius")[2] - 150  # fingers point inferior
    mc3 = phantom.bone("metacarpal_3").world_from_local
    assert mc3[:3, 1] @ np.array([0.0, -1.0, 0.0]) > 0.8  # dorsum faces posterior
    assert mc3[:3, 2] @ np.array([0.0, 0.0, -1.0]) > 0.8  # distal is inferior
    assert np.allclose(affine[:3, :3], np.eye(3) * VOXEL)


# ------------------------------------------------------------------------------ determinism


@pytest.mark.slow
def test_same_seed_gives_identical_arrays(phantom: HandPhantom) -> None:
    again = make_hand_phantom(SEED, voxel_mm=VOXEL)
    assert np.array_equal(again.volume.data, phantom.volume.data)
    assert np.array_equal(again.labels, phantom.labels)
    assert np.array_equal(again.volume.world_from_index, phantom.volume.world_from_index)
    assert again.to_json() == phantom.to_json()


def test_different_seeds_differ(phantom: HandPhantom) -> None:
    other = make_hand_phantom(SEED + 1, voxel_mm=VOXEL)
    assert other.to_json()["parameters"] != phantom.to_json()["parameters"]
    assert (other.volume.shape != phantom.volume.shape
            or not np.array_equal(other.volume.data, phantom.volume.data))


def test_drawn_parameters_lie_in_their_documented_ranges(phantom: HandPhantom) -> None:
    record = phantom.to_json()
    assert record["seed"] == SEED
    assert record["version"]
    for name, value in record["parameters"].items():
        lo, hi = record["ranges"][name]
        assert lo <= value <= hi, name
    assert set(record["parameters"]) == set(record["ranges"])


# ------------------------------------------------------------------------------- materials


def test_hu_ranges_per_material(phantom: HandPhantom) -> None:
    ct, labels = np.asarray(phantom.volume.data), phantom.labels
    bone = labels > 0
    assert ct[bone].min() >= 150
    assert ct[bone].max() <= 1800
    soft = ~bone & (ct > -1000)
    assert ct[soft].min() >= 0
    assert ct[soft].max() <= 60
    assert set(np.unique(ct[~bone & (ct < 0)]).tolist()) == {-1000}
    # air all around but at the proximal cut through the forearm
    for axis in range(3):
        assert (np.take(ct, 0, axis=axis) == -1000).all()
        if axis != 2:
            assert (np.take(ct, -1, axis=axis) == -1000).all()
    for label, name in EXPECTED_NAMES.items():
        values = ct[labels == label]
        assert (values >= 1000).any(), f"{name} has no cortical bone"
        assert ((values >= 150) & (values <= 400)).any(), f"{name} has no cancellous bone"


def test_cortex_is_the_outer_shell_and_thickest_mid_shaft(phantom: HandPhantom) -> None:
    ct, labels = np.asarray(phantom.volume.data), phantom.labels
    bone = labels > 0
    surface = bone & ~ndimage.binary_erosion(bone)
    assert np.mean(ct[surface] >= 1000) > 0.9
    record = phantom.bone("metacarpal_3")
    points = np.argwhere(labels == record.label)
    world = points @ phantom.volume.world_from_index[:3, :3].T \
        + phantom.volume.world_from_index[:3, 3]
    local = (world - record.world_from_local[:3, 3]) @ record.world_from_local[:3, :3]
    t = local[:, 2] / record.length_mm
    values = ct[tuple(points.T)]
    mid = (t > 0.4) & (t < 0.6)
    end = (t > 0.05) & (t < 0.15)
    assert np.mean(values[mid] >= 1000) > np.mean(values[end] >= 1000) + 0.15


def test_soft_tissue_covers_every_bone(phantom: HandPhantom) -> None:
    air = np.asarray(phantom.volume.data) == -1000
    # every voxel within 1 mm (two voxels, face steps) of a bone is tissue, not air
    near = ndimage.binary_dilation(phantom.labels > 0, iterations=round(1.0 / VOXEL))
    assert not (near & air).any()


# ------------------------------------------------------------------------------------- gaps


def test_bones_do_not_overlap_and_keep_joint_spaces(phantom: HandPhantom) -> None:
    record = phantom.to_json()["checks"]
    assert record["overlap_voxels"] == 0
    gaps = bone_gaps(phantom.labels, phantom.volume.world_from_index, within_mm=4.0)
    assert min(gaps.values()) >= 1.0
    assert record["min_gap_mm"] == pytest.approx(min(gaps.values()), abs=1e-3)
    # articulating neighbours really are close: 1-2 mm joint spaces at the MCP joints
    for ray in range(1, 6):
        pair = (phantom.bone(f"metacarpal_{ray}").label,
                phantom.bone(f"proximal_phalanx_{ray}").label)
        assert 1.0 <= gaps[pair] <= 2.2, (ray, gaps[pair])


# ------------------------------------------------------------------------------ deformities


def _fracture(phantom: HandPhantom, name: str) -> tuple[float, float, float, float]:
    record = phantom.bone(name)
    deformity = next(d for d in phantom.to_json()["deformities"] if d["bone"] == name)
    frame = record.world_from_local
    m = measure_fracture(phantom.labels, record.label, phantom.volume.world_from_index,
                         fracture_point=deformity["fracture_point_world"], distal=frame[:3, 2],
                         dorsal=frame[:3, 1], margin_mm=(deformity["shortening_mm"] + 2.5, 2.5))
    return (math.degrees(m.angulation), math.degrees(m.angulation2), math.degrees(m.rotation),
            m.length)


@pytest.mark.slow
def test_shaft_malunions_are_reproduced_by_measurement(phantom: HandPhantom,
                                                       deformed: HandPhantom) -> None:
    """Measured on the voxels: within 2° and 0.5 mm of what was asked for."""
    for item in deformed.to_json()["deformities"]:
        if item["bone"] == "radius":
            continue
        name = item["bone"]
        angulation, angulation2, rotation, length = _fracture(deformed, name)
        assert angulation == pytest.approx(item["angulation_deg"], abs=2.0), name
        assert angulation2 == pytest.approx(item["angulation2_deg"], abs=2.0), name
        assert rotation == pytest.approx(item["rotation_deg"], abs=2.0), name
        # shortening: against the same bone of the same seed without the deformity
        record = phantom.bone(name)
        axis = measure_bone_axis(phantom.labels, record.label,
                                 phantom.volume.world_from_index,
                                 towards=record.world_from_local[:3, 2])
        normal_length = axis.length
        assert normal_length - length == pytest.approx(item["shortening_mm"], abs=0.5), name


def test_radius_malunion_is_reproduced_by_measurement(phantom: HandPhantom,
                                                      deformed: HandPhantom) -> None:
    item = next(d for d in deformed.to_json()["deformities"] if d["bone"] == "radius")
    frame = deformed.bone("radius").world_from_local
    affine = deformed.volume.world_from_index
    before = measure_radius_angles(phantom.labels, 1, phantom.volume.world_from_index,
                                   distal=frame[:3, 2], dorsal=frame[:3, 1])
    after = measure_radius_angles(deformed.labels, 1, affine, distal=frame[:3, 2],
                                  dorsal=frame[:3, 1])
    assert math.degrees(before.dorsal_tilt) == pytest.approx(item["normal_dorsal_tilt_deg"],
                                                             abs=2.0)
    assert math.degrees(before.radial_inclination) == pytest.approx(
        item["normal_radial_inclination_deg"], abs=2.0)
    assert math.degrees(after.dorsal_tilt) == pytest.approx(item["dorsal_tilt_deg"], abs=2.0)
    assert math.degrees(after.radial_inclination) == pytest.approx(
        item["radial_inclination_deg"], abs=2.0)


def test_deformity_keeps_pose_and_bones_apart(phantom: HandPhantom,
                                              deformed: HandPhantom) -> None:
    assert deformed.to_json()["parameters"] == phantom.to_json()["parameters"]
    assert deformed.to_json()["checks"]["overlap_voxels"] == 0
    assert deformed.min_gap_mm >= 1.0
    assert len(deformed.deformities) == 3


@pytest.mark.parametrize(("spec", "field"), [
    ("bone=metacarpal_5,angluation_deg=20", "deformity.angluation_deg"),
    ("bone=metacarpal_5,angulation_deg=abc", "deformity.angulation_deg"),
    ("bone=metacarpal_5,angulation_deg=90", "deformity.angulation_deg"),
    ("bone=metacarpal_5,level=0.95", "deformity.level"),
    ("bone=distal_phalanx_5,shortening_mm=6", "deformity.shortening_mm"),
    ("bone=metacarpal_9,angulation_deg=10", "deformity.bone"),
    ("bone=scaphoid,angulation_deg=10", "deformity.bone"),
    ("angulation_deg=10", "deformity.bone"),
    ("bone=radius,dorsal_tilt_deg=80", "deformity.dorsal_tilt_deg"),
    ("bone=radius,rotation_deg=5", "deformity.rotation_deg"),
    ("bone=radius", "deformity.dorsal_tilt_deg"),
    ("bone=metacarpal_5,angulation_deg=1,angulation_deg=2", "deformity.angulation_deg"),
    ("bone=metacarpal_5;bone=metacarpal_5", "deformity.bone"),
    ('{"bone": "metacarpal_5", "rotation_deg": "x"}', "deformity.rotation_deg"),
    ('{"bone": "metacarpal_5", ', "deformity"),
])
def test_bad_deformity_names_the_field(spec: str, field: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_deformity(spec)
    assert caught.value.key == field
    assert field in str(caught.value)


def test_deformity_spec_forms_agree() -> None:
    text = parse_deformity("bone=metacarpal_5, angulation_deg=20 ,rotation_deg=-10")
    data = parse_deformity('{"bone": "metacarpal_5", "angulation_deg": 20, "rotation_deg": -10}')
    again = parse_deformity(text[0])
    assert text == data == again
    assert text[0].angulation == pytest.approx(math.radians(20))
    assert text[0].level == 0.5
    assert text[0].shortening_mm == 0.0


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"),
    ({"seed": 1, "voxel_mm": 0.1}, "voxel_mm"), ({"seed": 1, "voxel_mm": "big"}, "voxel_mm"),
])
def test_bad_arguments_are_refused(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(InputError) as caught:
        make_hand_phantom(**kwargs)
    assert caught.value.key == key


# ---------------------------------------------------------------------------- command line


def test_cli_writes_the_four_files(tmp_path: Path) -> None:
    out = tmp_path / "hand"
    status = main(["recon", "phantom", "--seed", "3", "--out", str(out), "--voxel-mm", "1.0",
                   "--deformity", "bone=metacarpal_2,angulation_deg=10"])
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["ct.nii.gz", "labels.nii.gz", "labels.csv", "phantom.json"])
    assert [p.name for p in tmp_path.iterdir()] == ["hand"]  # no staging debris
    ct = cast(nib.Nifti1Image, nib.load(out / "ct.nii.gz"))
    labels = cast(nib.Nifti1Image, nib.load(out / "labels.nii.gz"))
    assert ct.get_data_dtype() == np.int16
    assert labels.get_data_dtype() == np.uint8
    assert np.allclose(ct.affine, labels.affine)
    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0] == "label,bone"
    assert rows[1:] == [f"{k},{v}" for k, v in EXPECTED_NAMES.items()]
    record = json.loads((out / "phantom.json").read_text())
    assert record["seed"] == 3
    assert record["voxel_mm"] == 1.0
    assert record["deformities"][0]["bone"] == "metacarpal_2"
    assert record["deformities"][0]["angulation_deg"] == pytest.approx(10.0)
    assert set(np.unique(np.asarray(labels.dataobj)).tolist()) == set(range(30))


def test_cli_bad_spec_exits_2_and_writes_nothing(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hand"
    status = main(["recon", "phantom", "--seed", "3", "--out", str(out),
                   "--deformity", "bone=metacarpal_5,rotation=10"])
    assert status == 2
    assert "deformity.rotation" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_preview_that_is_a_folder_is_refused_before_the_phantom(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pdir").mkdir()
    status = main(["recon", "phantom", "--seed", "3", "--out", str(tmp_path / "hand"),
                   "--preview", str(tmp_path / "pdir")])
    assert status == 2
    assert "'--preview': is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pdir"]


def test_cli_failure_while_writing_leaves_no_folder(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import regkit_recon.phantom.phantom as module

    def broken(_path: object, _text: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(module, "atomic_write_text", broken)
    out = tmp_path / "hand"
    status = main(["recon", "phantom", "--seed", "3", "--out", str(out), "--voxel-mm", "1.0"])
    assert status == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_requires_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recon"]) == 2
    assert main(["recon", "phantom", "--help"]) == 0
    assert "SPEC" in capsys.readouterr().out
