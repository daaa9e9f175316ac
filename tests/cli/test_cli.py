"""The command line: exit statuses, messages, and the camera and project subcommands."""

from __future__ import annotations

import errno
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from regkit.cli.main import main
from regkit.errors import BackendUnavailableError

AP_CAMERA = {
    "width": 256,
    "height": 256,
    "intrinsic": [[1275.0, 0.0, 128.0], [0.0, 1275.0, 128.0], [0.0, 0.0, 1.0]],
    "camera_from_world": [[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 850], [0, 0, 0, 1]],
    "pixel_spacing_mm": [0.8, 0.8],
}


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["camera", "--help"], ["camera", "show", "--help"],
                 ["project", "--help"]):
        assert main(argv) == 0
        assert "usage:" in capsys.readouterr().out


def test_a_builtin_command_loads_no_plugin() -> None:
    """Running a built-in command builds only its parser: no entry point, no plugin import."""
    code = ("import sys; from regkit.cli.main import main, commands; "
            "status = main(['camera', '--help']); "
            "print(status, commands._loaded_entry_points, "
            "any(m.startswith('regkit_recon') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "0 False False"
    # the full help still lists every command, plugins' included, and so does a typo's error
    code = "from regkit.cli.main import main; main(['--help'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False).stdout
    assert "register-2d3d" in out
    if importlib.util.find_spec("regkit_recon") is not None:
        assert "recon" in out
    err = subprocess.run([sys.executable, "-m", "regkit.cli.main", "regsiter-2d3d"],
                         capture_output=True, text=True, check=False)
    assert err.returncode == 2
    assert "invalid choice" in err.stderr
    assert "register-2d3d" in err.stderr.split("invalid choice", 1)[1]   # the known names


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "error" in capsys.readouterr().err


def test_camera_show_prints_each_view(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    second = dict(AP_CAMERA, width=128, height=64)
    path = _write(tmp_path / "cams.json", [AP_CAMERA, second])
    assert main(["camera", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 views" in out
    assert "view 0: 256 x 256 px" in out
    assert "view 1: 128 x 64 px" in out
    assert "fx = 1275.000 px" in out
    assert "(0.00, -850.00, 0.00) mm" in out  # source 850 mm posterior
    assert "(0.0000, 1.0000, 0.0000)" in out  # looking anterior
    assert "source to detector 1020.00 mm" in out


def test_camera_show_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "cam.json", AP_CAMERA)
    assert main(["camera", "show", "--json", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[0]["source_world_mm"] == [0.0, -850.0, 0.0]


BAD_CAMERAS = {
    "missing key": ({k: v for k, v in AP_CAMERA.items() if k != "intrinsic"}, "'intrinsic'"),
    "non-rigid": (dict(AP_CAMERA, camera_from_world=[[2, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 850],
                                                      [0, 0, 0, 1]]), "'camera_from_world'"),
    "reflection": (dict(AP_CAMERA, camera_from_world=[[-1, 0, 0, 0], [0, 0, -1, 0],
                                                       [0, 1, 0, 850], [0, 0, 0, 1]]),
                   "determinant"),
    "negative focal": (dict(AP_CAMERA, intrinsic=[[-1275.0, 0, 128], [0, 1275, 128], [0, 0, 1]]),
                       "focal"),
    "nan": (dict(AP_CAMERA, intrinsic=[[float("nan"), 0, 128], [0, 1275, 128], [0, 0, 1]]),
            "NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_CAMERAS))
def test_bad_camera_exits_2_naming_file_and_key(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    obj, needle = BAD_CAMERAS[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(obj))  # json writes NaN as a bare NaN literal, which it also reads
    assert main(["camera", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_and_corrupt_files_exit_2(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["camera", "show", str(tmp_path / "absent.json")]) == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "trunc.json"
    bad.write_text(json.dumps(AP_CAMERA)[:40])
    assert main(["camera", "show", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_project_npy_hand_worked(tmp_path: Path) -> None:
    cam = _write(tmp_path / "cam.json", [AP_CAMERA, AP_CAMERA])
    points = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, 17.0], [0.0, 425.0, 0.0]])
    np.save(tmp_path / "pts.npy", points)
    assert main(["project", "--camera", str(cam), "--points", str(tmp_path / "pts.npy"),
                 "--out", str(tmp_path / "uv.npy")]) == 0
    uv = np.load(tmp_path / "uv.npy")
    assert uv.shape == (2, 4, 2)
    # Depth 850 mm for the origin: a 10 mm step right moves 1275 * 10 / 850 = 15 px along columns;
    # 17 mm superior moves 1275 * 17 / 850 = 25.5 px up (rows decrease). At depth 1275 mm (425 mm
    # nearer the detector) the origin still projects onto the principal point.
    expected = np.array([[128.0, 128.0], [143.0, 128.0], [128.0, 102.5], [128.0, 128.0]])
    np.testing.assert_allclose(uv[0], expected, atol=1e-9)
    np.testing.assert_allclose(uv[1], expected, atol=1e-9)


def test_project_csv_round_trip(tmp_path: Path) -> None:
    cam = _write(tmp_path / "cam.json", AP_CAMERA)
    (tmp_path / "pts.csv").write_text("x,y,z\n10,0,0\n-10,0,17\n")
    assert main(["project", "--camera", str(cam), "--points", str(tmp_path / "pts.csv"),
                 "--out", str(tmp_path / "uv.csv")]) == 0
    lines = (tmp_path / "uv.csv").read_text().splitlines()
    assert lines[0] == "u,v"
    np.testing.assert_allclose([float(x) for x in lines[1].split(",")], [143.0, 128.0])
    np.testing.assert_allclose([float(x) for x in lines[2].split(",")], [113.0, 102.5])


def test_project_csv_refuses_several_cameras(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cam = _write(tmp_path / "cam.json", [AP_CAMERA, AP_CAMERA])
    (tmp_path / "pts.csv").write_text("1,2,3\n")
    out = tmp_path / "uv.csv"
    assert main(["project", "--camera", str(cam), "--points", str(tmp_path / "pts.csv"),
                 "--out", str(out)]) == 2
    assert "use .npy" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("content", "needle"), [
    ("1,2\n", "columns"),
    ("1,2,nan\n", "NaN"),
    ("1,2,abc\n", "not a number"),
    ("x,y,z\n", "no points"),
])
def test_project_bad_points(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                            needle: str) -> None:
    cam = _write(tmp_path / "cam.json", AP_CAMERA)
    pts = tmp_path / "pts.csv"
    pts.write_text(content)
    assert main(["project", "--camera", str(cam), "--points", str(pts),
                 "--out", str(tmp_path / "uv.npy")]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert str(pts) in err
    assert not (tmp_path / "uv.npy").exists()


def test_project_npy_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cam = _write(tmp_path / "cam.json", AP_CAMERA)
    np.save(tmp_path / "pts.npy", np.zeros((4, 2)))
    assert main(["project", "--camera", str(cam), "--points", str(tmp_path / "pts.npy"),
                 "--out", str(tmp_path / "uv.npy")]) == 2
    assert "(N, 3)" in capsys.readouterr().err


def test_existing_output_untouched_on_failure(tmp_path: Path) -> None:
    cam = _write(tmp_path / "cam.json", AP_CAMERA)
    (tmp_path / "pts.csv").write_text("1,2\n")
    out = tmp_path / "uv.npy"
    np.save(out, np.arange(3.0))
    before = out.read_bytes()
    assert main(["project", "--camera", str(cam), "--points", str(tmp_path / "pts.csv"),
                 "--out", str(out)]) == 2
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.json", "pts.csv", "uv.npy"]


def test_an_output_that_is_an_input_is_refused(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cam = _write(tmp_path / "cam.json", AP_CAMERA)
    np.save(tmp_path / "pts.npy", np.zeros((2, 3)))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for out in ("pts.npy", "cam.json"):
        assert main(["project", "--camera", str(cam), "--points", str(tmp_path / "pts.npy"),
                     "--out", str(tmp_path / out)]) == 2
        assert "would destroy the input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_outputs_that_clash_with_each_other_or_with_inputs_are_refused_up_front(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cam = _write(tmp_path / "cam.json", AP_CAMERA)
    (tmp_path / "ct.nii.gz").write_bytes(b"not read: the outputs are checked first")
    report = tmp_path / "rep"
    report.mkdir()
    (report / "view_0.png").write_bytes(b"an input radiograph kept in the report folder")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    runs = [
        (["render", "--volume", str(tmp_path / "ct.nii.gz"), "--camera", str(cam), "--out",
          str(tmp_path / "x.npy"), "--png", str(tmp_path / "x.npy")], "same file as --out"),
        (["render", "--volume", str(tmp_path / "ct.nii.gz"), "--camera", str(cam), "--out",
          str(tmp_path / "d.npy"), "--png", str(tmp_path / "d.npy" / "p.png")], "--out"),
        (["register-2d3d", "--volume", str(tmp_path / "ct.nii.gz"), "--camera", str(cam),
          "--image", str(report / "view_0.png"), "--out", str(tmp_path / "r.json"),
          "--report", str(report)], "would destroy the input"),
        (["register-3d3d", "--fixed", str(tmp_path / "ct.nii.gz"), "--moving",
          str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "r.json"), "--report",
          str(tmp_path / "r.json")], "or inside it"),
    ]
    for argv, message in runs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, err
        assert "Traceback" not in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    (json.dumps(dict(AP_CAMERA, width=10**400)), "positive whole number of pixels, got 1000"),
    (json.dumps(dict(AP_CAMERA, width=100000, height=100000)), "more than any detector"),
    # which "width" wins depends on the reader (Python's: the last): not one camera
    (json.dumps(AP_CAMERA)[:-1] + ', "width": 128}', "the key 'width' is given twice"),
])
def test_camera_files_that_would_crash_are_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   text: str, message: str) -> None:
    path = tmp_path / "cam.json"
    path.write_text(text)
    assert main(["camera", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("error", "status"), [
    (PermissionError(errno.EACCES, "Permission denied", "/x/out.json"), 2),
    (OSError(errno.ENOSPC, "No space left on device", "/x/out.json"), 2),
    (OSError(errno.EINVAL, "Invalid argument"), 1),          # not the file system's refusal
    # torch's CPU allocator refuses with a RuntimeError, not a MemoryError
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                  "allocate memory: you tried to allocate 17179869184 bytes."), 2),
    (MemoryError("Unable to allocate 16.0 GiB"), 2),
    (RuntimeError("shape mismatch"), 1),                      # a bug
    (BackendUnavailableError("backend 'gl' is unavailable: no EGL"), 2),   # this machine's lack
])
def test_the_environments_refusals_exit_2_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception,
        status: int) -> None:
    import regkit.cli.project_cmd as project_cmd

    def fail(_args: object) -> int:
        raise error

    monkeypatch.setattr(project_cmd, "_project", fail)
    assert main(["project", "--camera", "c.json", "--points", "p.npy", "--out", "o.npy"]) \
        == status
    err = capsys.readouterr().err
    if status == 2 and isinstance(error, OSError):
        assert err.strip().splitlines() == [f"regkit: error: /x/out.json: {error.strerror}"]
    elif status == 2:
        assert len(err.strip().splitlines()) == 1
        assert "Traceback" not in err
        assert ("out of memory" in err) != isinstance(error, BackendUnavailableError)
    else:
        assert "Traceback" in err
        assert "internal error" in err


@pytest.mark.slow
def test_console_script_exit_status(tmp_path: Path) -> None:
    """The installed ``regkit`` entry point (run as a module here) returns the statuses."""
    bad = _write(tmp_path / "cam.json", dict(AP_CAMERA, width=0))
    proc = subprocess.run([sys.executable, "-m", "regkit.cli.main", "camera", "show", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "'width'" in proc.stderr
    assert "Traceback" not in proc.stderr
