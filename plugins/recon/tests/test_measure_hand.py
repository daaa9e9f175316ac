"""Whole-hand deformity measurement: the phantom's own labels give back its recorded malunions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from regkit_recon import make_hand_phantom
from regkit_recon.measure_hand import measure_hand, measure_labels_file
from regkit_recon.phantom.phantom import HandPhantom
from scipy.spatial.transform import Rotation

from regkit.errors import InputError

DEFORMITY = ("bone=metacarpal_3,angulation_deg=15,angulation2_deg=-5,level=0.45;"
             "bone=proximal_phalanx_2,angulation_deg=-15,angulation2_deg=12;"
             "bone=metacarpal_1,angulation_deg=15;"
             "bone=radius,dorsal_tilt_deg=20,radial_inclination_deg=12")


@pytest.fixture(scope="module")
def hand() -> HandPhantom:
    return make_hand_phantom(11, deformity=DEFORMITY, voxel_mm=0.4)


def _check(result: dict, truth: list[dict], world_from_phantom: np.ndarray) -> None:
    bones = result["bones"]
    for item in truth:
        got = bones[item["bone"]]
        if item["bone"] == "radius":
            assert got["dorsal_tilt_deg"] == pytest.approx(item["dorsal_tilt_deg"], abs=3.0)
            assert got["radial_inclination_deg"] == pytest.approx(
                item["radial_inclination_deg"], abs=3.0)
            continue
        assert got["angulation_deg"] == pytest.approx(item["angulation_deg"], abs=3.0), item
        assert got["angulation2_deg"] == pytest.approx(item["angulation2_deg"], abs=3.0), item
        apex = np.asarray(item["fracture_point_world"]) @ world_from_phantom[:3, :3].T \
            + world_from_phantom[:3, 3]
        assert np.linalg.norm(np.asarray(got["apex_world"]) - apex) < 3.0, item
    broken = {item["bone"] for item in truth}
    for name, fields in bones.items():
        if "angulation_deg" in fields and name not in broken and "distal" not in name:
            assert abs(fields["angulation_deg"]) < 4.0, (name, fields)
            assert abs(fields["angulation2_deg"]) < 4.0, (name, fields)
        if name != "ulna" and "length_mm" in fields:
            assert 8.0 < fields["length_mm"] < 300.0


@pytest.mark.slow
def test_recorded_malunions_are_measured_without_the_fracture_level(hand: HandPhantom) -> None:
    names = dict(hand.bone_table)
    result = measure_hand(np.asarray(hand.labels), hand.volume.world_from_index, names)
    assert result["frame"]["side"] == "right"
    _check(result, hand.to_json()["deformities"], np.eye(4))
    assert -6.0 < result["bones"]["ulna"]["ulnar_variance_mm"] < 8.0
    assert set(result["bones"]) >= {"radius", "ulna", "metacarpal_5", "distal_phalanx_5"}


@pytest.mark.slow
def test_short_distal_fragments_are_measured_to_their_full_angle() -> None:
    # Breaks at two thirds of a short bone leave distal fragments of 5-8 mm, wider than long;
    # the axis fit must be repeated until it settles (three rounds gave 9.0° and 4.3° of 16°).
    spec = ("bone=distal_phalanx_1,angulation_deg=20,angulation2_deg=16,level=0.66;"
            "bone=middle_phalanx_3,angulation_deg=20,angulation2_deg=16,level=0.66,"
            "shortening_mm=3")
    hand = make_hand_phantom(11, deformity=spec, voxel_mm=0.4)
    result = measure_hand(np.asarray(hand.labels), hand.volume.world_from_index,
                          dict(hand.bone_table))
    _check(result, hand.to_json()["deformities"], np.eye(4))


@pytest.mark.slow
def test_a_bent_and_turned_metacarpal_is_measured_in_its_own_planes() -> None:
    # 30° of palmar angulation and 25° of axial rotation: measured in the planes of a dorsal
    # direction shared with the other fingers' bones, which this bone's own bend pulls, the
    # coronal angle came out 6.1° off here (5.7° on phantom p011 of the issue-12 data).
    spec = "bone=metacarpal_2,angulation_deg=30,angulation2_deg=1,rotation_deg=-25,level=0.65"
    hand = make_hand_phantom(11, deformity=spec, voxel_mm=0.4)
    result = measure_hand(np.asarray(hand.labels), hand.volume.world_from_index,
                          dict(hand.bone_table))
    _check(result, hand.to_json()["deformities"], np.eye(4))


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["dorsal_tilt_deg=30,radial_inclination_deg=30,level_mm=26",
                                  "dorsal_tilt_deg=-20,radial_inclination_deg=8,level_mm=20"])
def test_malunited_radius_angles_within_a_degree(spec: str) -> None:
    # The sections turn with the radius' own shaft, not with the hand (which the malunion and
    # the wrist's pose turn), and stay thin under a steep rim: before, these read 27.0° of 30°
    # tilt and 11.8° of 8° inclination.
    hand = make_hand_phantom(11, deformity="bone=radius," + spec, voxel_mm=0.4)
    got = measure_hand(np.asarray(hand.labels), hand.volume.world_from_index,
                       dict(hand.bone_table))["bones"]["radius"]
    want = hand.to_json()["deformities"][0]
    assert got["dorsal_tilt_deg"] == pytest.approx(want["dorsal_tilt_deg"], abs=1.0)
    assert got["radial_inclination_deg"] == pytest.approx(want["radial_inclination_deg"],
                                                          abs=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("mirror", [False, True], ids=["right", "left"])
def test_any_position_and_either_hand_give_the_same_figures(hand: HandPhantom, mirror: bool
                                                            ) -> None:
    names = dict(hand.bone_table)
    labels = np.asarray(hand.labels)
    plain = measure_hand(labels, hand.volume.world_from_index, names)
    moved = np.eye(4)
    moved[:3, :3] = Rotation.from_euler("xyz", [30, -50, 120], degrees=True).as_matrix()
    moved[:3, 3] = (5.0, -7.0, 20.0)
    if mirror:
        moved = np.diag([-1.0, 1.0, 1.0, 1.0]) @ moved
    result = measure_hand(labels, moved @ hand.volume.world_from_index, names)
    assert result["frame"]["side"] == ("left" if mirror else "right")
    for name, fields in plain["bones"].items():
        for key, value in fields.items():
            if key == "apex_world":
                expected = moved[:3, :3] @ np.asarray(value) + moved[:3, 3]
                assert result["bones"][name][key] == pytest.approx(expected, abs=0.05)
            elif not key.startswith("apex"):
                assert result["bones"][name][key] == pytest.approx(value, abs=0.05), (name, key)
    _check(result, hand.to_json()["deformities"], moved)


@pytest.mark.slow
def test_measure_file_reads_names_beside_and_refuses_what_it_cannot_measure(
        hand: HandPhantom, tmp_path: Path) -> None:
    labels = np.asarray(hand.labels)
    affine = np.asarray(hand.volume.world_from_index)
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), path)
    result = measure_labels_file(path)
    assert result["bones"]["metacarpal_3"]["angulation_deg"] == pytest.approx(15.0, abs=3.0)
    json.dumps(result)                                     # JSON-ready
    # without the forearm there is no frame
    only_fingers = np.where(labels > 10, labels, 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(only_fingers, affine), tmp_path / "fingers.nii.gz")
    with pytest.raises(InputError, match="radius"):
        measure_labels_file(tmp_path / "fingers.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="cannot read"):
        measure_labels_file(tmp_path / "bad.nii.gz")
    assert math.isfinite(result["bones"]["radius"]["length_mm"])


def _mini_hand() -> np.ndarray:
    """Rods for the radius, metacarpals 2-4 and a proximal phalanx (1 mm voxels): a frame."""
    shape = (40, 24, 90)
    i, j, k = np.indices(shape)
    labels = np.zeros(shape, np.uint8)
    for label, x, y, z0, z1, r in ((1, 20, 12, 2, 40, 4.0), (2, 12, 12, 45, 65, 2.5),
                                   (3, 20, 12, 45, 66, 2.5), (4, 28, 12, 45, 64, 2.5),
                                   (5, 20, 9, 68, 85, 2.0)):
        labels[((i - x) ** 2 + ((j - y) / 0.8) ** 2 <= r * r) & (k >= z0) & (k < z1)] = label
    return labels


_MINI_NAMES = {1: "radius", 2: "metacarpal_2", 3: "metacarpal_3", 4: "metacarpal_4",
               5: "proximal_phalanx_3"}


def test_whole_number_float_labels_are_measured_as_integers() -> None:
    labels = _mini_hand()
    plain = measure_hand(labels, np.eye(4), _MINI_NAMES)
    assert "metacarpal_3" in plain["bones"]
    assert measure_hand(labels.astype(np.float32), np.eye(4), _MINI_NAMES) == plain


def _nan_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[1, 1] = np.nan
    return affine


@pytest.mark.parametrize(("labels", "affine", "key", "problem"), [
    (np.zeros((0, 24, 90), np.uint8), np.eye(4), "labels", "empty"),
    (np.zeros((40, 24), np.uint8), np.eye(4), "labels", "3-D"),
    (_mini_hand() > 0, np.eye(4), "labels", "dtype bool"),
    (_mini_hand() * 0.5, np.eye(4), "labels", "fractional"),
    (np.full((4, 4, 4), np.inf), np.eye(4), "labels", "NaN or infinite"),
    (_mini_hand(), _nan_affine(), "world_from_index", "affine.*NaN"),
    (_mini_hand(), np.diag([1.0, 1.0, 0.0, 1.0]), "world_from_index", "affine.*singular"),
    (_mini_hand(), np.eye(3), "world_from_index", "affine.*4x4"),
])
def test_measure_hand_refuses_bad_arrays_by_name(labels: np.ndarray, affine: np.ndarray, key: str,
                                                 problem: str) -> None:
    with pytest.raises(InputError, match=problem) as caught:
        measure_hand(labels, affine, _MINI_NAMES)
    assert caught.value.key == key
    assert "\n" not in str(caught.value)


def test_measure_file_names_the_file_for_fractional_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(_mini_hand() * 0.5, np.eye(4)), path)
    with pytest.raises(InputError, match="fractional") as caught:
        measure_labels_file(path)
    assert caught.value.source == str(path)
