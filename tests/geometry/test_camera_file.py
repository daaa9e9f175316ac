"""The camera file (regkit.geometry.camera): round trips; every bad field named by file and key."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from regkit.errors import FileFormatError, InputError
from regkit.geometry.camera import (
    Camera,
    load_cameras,
    save_cameras,
)
from regkit.testing.cameras import (
    EXAMPLE_CAMERA_FROM_WORLD,
    EXAMPLE_INTRINSIC,
    example_camera,
    oblique_camera,
)

# --------------------------------------------------------------------------------------------------
# the camera file


def _camera_dict() -> dict[str, Any]:
    return {
        "width": 256,
        "height": 256,
        "intrinsic": EXAMPLE_INTRINSIC.tolist(),
        "camera_from_world": EXAMPLE_CAMERA_FROM_WORLD.tolist(),
        "pixel_spacing_mm": [0.8, 0.8],
    }


def _write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")  # NaN is written as the literal NaN
    return path


def assert_same_camera(a: Camera, b: Camera) -> None:
    assert np.array_equal(a.intrinsic, b.intrinsic)
    assert np.array_equal(a.camera_from_world, b.camera_from_world)
    assert (a.width, a.height) == (b.width, b.height)
    assert a.pixel_spacing_mm == b.pixel_spacing_mm


def test_example_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "cam.json"
    path.write_text("""{
      "width": 256,
      "height": 256,
      "intrinsic": [[1275.0, 0.0, 128.0], [0.0, 1275.0, 128.0], [0.0, 0.0, 1.0]],
      "camera_from_world": [[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 850], [0, 0, 0, 1]],
      "pixel_spacing_mm": [0.8, 0.8]
    }""", encoding="utf-8")
    (cam,) = load_cameras(path)
    assert_same_camera(cam, example_camera())
    np.testing.assert_allclose(cam.project([[10.0, 0.0, 0.0]]), [[143.0, 128.0]], atol=1e-9)


def test_round_trip_single_is_bit_exact(tmp_path: Path) -> None:
    cam = oblique_camera(0.123456789, -0.987654321)
    path = tmp_path / "one.json"
    save_cameras(path, cam)
    assert isinstance(json.loads(path.read_text()), dict)  # a single object, not a list
    (back,) = load_cameras(path)
    assert_same_camera(back, cam)
    assert_same_camera(Camera.from_json(cam.to_json()), cam)
    assert_same_camera(Camera.from_json(cam.to_json(indent=None)), cam)
    no_spacing = Camera(cam.intrinsic, cam.camera_from_world, cam.width, cam.height)
    assert "pixel_spacing_mm" not in no_spacing.to_dict()
    save_cameras(path, no_spacing)
    (back,) = load_cameras(path)
    assert_same_camera(back, no_spacing)


def test_round_trip_list_is_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    cams = [oblique_camera(*rng.uniform(-1, 1, size=2)) for _ in range(4)]
    path = tmp_path / "sub" / "views.json"
    save_cameras(path, cams)
    assert isinstance(json.loads(path.read_text()), list)
    back = load_cameras(path)
    assert len(back) == 4
    for a, b in zip(back, cams, strict=True):
        assert_same_camera(a, b)
    # a list of one stays a list of one
    save_cameras(path, cams[:1])
    assert isinstance(json.loads(path.read_text()), list)
    assert len(load_cameras(path)) == 1
    with pytest.raises(InputError):
        save_cameras(path, [])


def test_whole_number_floats_are_accepted(tmp_path: Path) -> None:
    d = _camera_dict()
    d["width"] = 256.0
    (cam,) = load_cameras(_write(tmp_path / "c.json", d))
    assert cam.width == 256
    assert type(cam.width) is int


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        target: Any = d
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
    return edit


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        del d[key]
    return edit


def _scale_pose(d: dict[str, Any]) -> None:
    d["camera_from_world"] = (np.diag([1.1, 1.1, 1.1, 1.0]) @ EXAMPLE_CAMERA_FROM_WORLD).tolist()


def _reflect_pose(d: dict[str, Any]) -> None:
    d["camera_from_world"] = (np.diag([-1.0, 1.0, 1.0, 1.0]) @ EXAMPLE_CAMERA_FROM_WORLD).tolist()


def _shear_pose(d: dict[str, Any]) -> None:
    shear = np.eye(4)
    shear[0, 1] = 0.05
    d["camera_from_world"] = (shear @ EXAMPLE_CAMERA_FROM_WORLD).tolist()


def _tiny_scale_pose(d: dict[str, Any]) -> None:
    scale = np.diag([1 + 1e-5, 1 + 1e-5, 1 + 1e-5, 1.0])
    d["camera_from_world"] = (scale @ EXAMPLE_CAMERA_FROM_WORLD).tolist()


# (case id, edit, key the message must name, word the message must contain)
BAD_FIELDS: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("missing width", _drop("width"), "width", "missing"),
    ("missing height", _drop("height"), "height", "missing"),
    ("missing intrinsic", _drop("intrinsic"), "intrinsic", "missing"),
    ("missing camera_from_world", _drop("camera_from_world"), "camera_from_world", "missing"),
    ("unknown key", _set(("focal_mm",), 5.0), "focal_mm", "unknown"),
    ("pose scaled", _scale_pose, "camera_from_world", "rigid"),
    ("pose slightly scaled", _tiny_scale_pose, "camera_from_world", "rigid"),
    ("pose reflected", _reflect_pose, "camera_from_world", "reflection"),
    ("pose sheared", _shear_pose, "camera_from_world", "rigid"),
    ("pose last row", _set(("camera_from_world", 3), [0, 0, 1, 1]), "camera_from_world",
     "last row"),
    ("pose last one", _set(("camera_from_world", 3, 3), 2.0), "camera_from_world", "last row"),
    ("pose NaN", _set(("camera_from_world", 1, 3), math.nan), "camera_from_world", "NaN"),
    ("pose Infinity", _set(("camera_from_world", 0, 0), math.inf), "camera_from_world",
     "infinite"),
    ("pose 3x3", _set(("camera_from_world",), np.eye(3).tolist()), "camera_from_world", "4x4"),
    ("pose ragged", _set(("camera_from_world", 2), [0, 1, 0]), "camera_from_world", "4x4"),
    ("pose string", _set(("camera_from_world", 0, 0), "1"), "camera_from_world", "number"),
    ("pose bool", _set(("camera_from_world", 0, 0), True), "camera_from_world", "number"),
    ("pose null", _set(("camera_from_world",), None), "camera_from_world", "4x4"),
    ("fx negative", _set(("intrinsic", 0, 0), -1275.0), "intrinsic", "focal"),
    ("fx zero", _set(("intrinsic", 0, 0), 0.0), "intrinsic", "focal"),
    ("fy negative", _set(("intrinsic", 1, 1), -1.0), "intrinsic", "focal"),
    ("skew", _set(("intrinsic", 0, 1), 0.5), "intrinsic", "skew"),
    ("lower skew", _set(("intrinsic", 1, 0), 0.5), "intrinsic", "skew"),
    ("K last row", _set(("intrinsic", 2), [0, 0, 2]), "intrinsic", "last row"),
    ("K last row offset", _set(("intrinsic", 2, 0), 0.1), "intrinsic", "last row"),
    ("K NaN", _set(("intrinsic", 0, 2), math.nan), "intrinsic", "NaN"),
    ("K 2x3", _set(("intrinsic",), [[1, 0, 0], [0, 1, 0]]), "intrinsic", "3x3"),
    ("K string", _set(("intrinsic",), "eye"), "intrinsic", "3x3"),
    ("width 0", _set(("width",), 0), "width", "positive"),
    ("width negative", _set(("width",), -256), "width", "positive"),
    ("width 2.5", _set(("width",), 2.5), "width", "whole"),
    ("width string", _set(("width",), "256"), "width", "whole"),
    ("width true", _set(("width",), True), "width", "whole"),
    ("width null", _set(("width",), None), "width", "whole"),
    ("width NaN", _set(("width",), math.nan), "width", "whole"),
    ("height 0", _set(("height",), 0), "height", "positive"),
    ("height 2.5", _set(("height",), 2.5), "height", "whole"),
    ("height string", _set(("height",), "256"), "height", "whole"),
    ("height true", _set(("height",), True), "height", "whole"),
    ("spacing negative", _set(("pixel_spacing_mm",), [-0.8, 0.8]), "pixel_spacing_mm",
     "positive"),
    ("spacing zero", _set(("pixel_spacing_mm",), [0.8, 0.0]), "pixel_spacing_mm", "positive"),
    ("spacing NaN", _set(("pixel_spacing_mm",), [0.8, math.nan]), "pixel_spacing_mm",
     "positive"),
    ("spacing one", _set(("pixel_spacing_mm",), [0.8]), "pixel_spacing_mm", "two numbers"),
    ("spacing three", _set(("pixel_spacing_mm",), [0.8, 0.8, 0.8]), "pixel_spacing_mm",
     "two numbers"),
    ("spacing scalar", _set(("pixel_spacing_mm",), 0.8), "pixel_spacing_mm", "two numbers"),
    ("spacing strings", _set(("pixel_spacing_mm",), ["0.8", "0.8"]), "pixel_spacing_mm",
     "two numbers"),
]


@pytest.mark.parametrize(("edit", "key", "word"), [c[1:] for c in BAD_FIELDS],
                         ids=[c[0] for c in BAD_FIELDS])
def test_bad_field_names_file_and_key(tmp_path: Path, edit: Callable[[dict[str, Any]], None],
                                      key: str, word: str) -> None:
    d = _camera_dict()
    edit(d)
    path = _write(tmp_path / "bad_camera.json", d)
    with pytest.raises(InputError) as info:
        load_cameras(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert f"'{key}'" in msg, msg
    assert word in msg, msg
    assert info.value.key == key
    assert info.value.source == str(path)
    # the same object inside a list, as its second view: the message says which view
    path = _write(tmp_path / "bad_list.json", [_camera_dict(), d, _camera_dict()])
    with pytest.raises(InputError) as info:
        load_cameras(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert f"'[1].{key}'" in msg, msg
    # and straight from text
    with pytest.raises(InputError, match=key):
        Camera.from_json(json.dumps(d), source="inline.json")


def test_nan_literal_is_refused(tmp_path: Path) -> None:
    text = json.dumps(_camera_dict()).replace("850.0", "NaN")
    assert "NaN" in text
    path = tmp_path / "nan.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match="camera_from_world") as info:
        load_cameras(path)
    assert str(path) in str(info.value)


def test_near_rigid_pose_is_accepted(tmp_path: Path) -> None:
    d = _camera_dict()
    t = copy.deepcopy(EXAMPLE_CAMERA_FROM_WORLD)
    t[:3, :3] *= 1 + 1e-9  # within the 1e-6 of the contract
    d["camera_from_world"] = t.tolist()
    (cam,) = load_cameras(_write(tmp_path / "c.json", d))
    np.testing.assert_array_equal(cam.camera_from_world, t)  # kept as given, not re-orthogonalised


@pytest.mark.parametrize(("text", "word"), [
    ("not json at all", "JSON"),
    ('{"width": 256, "height": 256, "intrinsic": [[1275.0, 0.0, 12', "JSON"),
    ("", "JSON"),
    ("{'width': 256}", "JSON"),
])
def test_not_json(tmp_path: Path, text: str, word: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FileFormatError, match=word) as info:
        load_cameras(path)
    assert str(path) in str(info.value)


def test_truncated_real_file(tmp_path: Path) -> None:
    path = tmp_path / "cams.json"
    save_cameras(path, [example_camera(), oblique_camera()])
    text = path.read_text()
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(FileFormatError) as info:
        load_cameras(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(FileFormatError, match="not found") as info:
        load_cameras(path)
    assert str(path) in str(info.value)
    with pytest.raises(FileFormatError) as info:
        load_cameras(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"width": "\xff"}')
    with pytest.raises(FileFormatError) as info:
        load_cameras(path)
    assert str(path) in str(info.value)


def test_empty_list(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.json", [])
    with pytest.raises(InputError, match="empty") as info:
        load_cameras(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("obj", [5, "camera", None, [[1, 2]], [_camera_dict(), 3]])
def test_not_an_object(tmp_path: Path, obj: Any) -> None:
    path = _write(tmp_path / "odd.json", obj)
    with pytest.raises(InputError, match="object") as info:
        load_cameras(path)
    assert str(path) in str(info.value)
    if isinstance(obj, list):
        assert f"[{len(obj) - 1}]" in str(info.value)


def test_error_classes() -> None:
    # the command line relies on these being user errors, and ValueError for callers
    assert issubclass(FileFormatError, InputError)
    assert issubclass(InputError, ValueError)
