"""``regkit recon generate --shard K/N`` and ``--malunion-fraction F``.

Also random malunions (:func:`draw_malunions`) and reading several ground-truth folders as one
(:func:`open_ground_truth`).

Small on purpose: 2 phantoms at 0.8 mm voxels, 3 views each on a 64 px detector (about 2 s a run).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from regkit_recon.groundtruth.dataset import (
    GroundTruthDataset,
    collate_ground_truth,
    open_ground_truth,
)
from regkit_recon.groundtruth.generate import (
    GenerateSpec,
    generate,
    parse_shard,
    phantom_is_malunited,
)
from regkit_recon.groundtruth.sample import SAMPLE_KEYS, read_sample
from regkit_recon.phantom.anatomy import LONG_BONES
from regkit_recon.phantom.deformity import (
    MALUNION_DRAW,
    RADIUS_FIELDS,
    SHAFT_FIELDS,
    SHORTENING_MAX_FRACTION,
    draw_malunions,
    parse_deformity,
)

from regkit.cli.main import main
from regkit.errors import InputError

SEED = 5
VOXEL = 0.8
SAMPLES = 6  # 2 phantoms x 3 views


def _spec(out: Path, **kw: Any) -> GenerateSpec:
    args: dict[str, Any] = {"out": str(out), "phantoms": 2, "views": 3, "size": 64,
                            "voxel_mm": VOXEL, "seed": SEED, "montage": 0,
                            "malunion_fraction": 1.0}
    args.update(kw)
    return GenerateSpec(**args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The unsharded run and its two shards, every phantom with malunions."""
    root = tmp_path_factory.mktemp("shards")
    out = {"whole": root / "whole", "s0": root / "s0", "s1": root / "s1"}
    generate(_spec(out["whole"]))
    generate(_spec(out["s0"], shard=(0, 2)))
    generate(_spec(out["s1"], shard=(1, 2)))
    return out


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _deformities(folder: Path, k: int) -> list[dict[str, Any]]:
    record = json.loads((folder / "phantoms" / f"p{k:03d}" / "phantom.json").read_text())
    return list(record["deformities"])


def _assert_same_sample(a: dict[str, Any], b: dict[str, Any], what: Any) -> None:
    assert set(a) == set(b), what
    for key in a:
        if isinstance(a[key], str):
            assert a[key] == b[key], (what, key)
        else:
            assert a[key].dtype == b[key].dtype, (what, key)
            assert a[key].shape == b[key].shape, (what, key)
            assert np.array_equal(a[key], b[key], equal_nan=a[key].dtype.kind == "f"), \
                (what, key)


# ------------------------------------------------------------------------------ shards


@pytest.mark.slow
def test_shards_together_are_the_unsharded_run(runs: dict[str, Path]) -> None:
    whole = _manifest(runs["whole"])
    assert whole["complete"]
    assert whole["shard"] is None
    assert [s["index"] for s in whole["samples"]] == list(range(SAMPLES))
    held: dict[int, Path] = {}
    for k, name in enumerate(("s0", "s1")):
        manifest = _manifest(runs[name])
        assert manifest["complete"]
        assert manifest["shard"] == [k, 2]
        assert manifest["parameters"] == whole["parameters"]
        assert manifest["sources"] == whole["sources"]      # every source is listed
        indices = [s["index"] for s in manifest["samples"]]
        assert indices == list(range(k, SAMPLES, 2))
        on_disk = sorted(f.name for f in (runs[name] / "samples").glob("*.npz"))
        assert on_disk == [f"{i:06d}.npz" for i in indices]  # nothing else was made
        for entry in manifest["samples"]:
            assert entry["index"] not in held
            held[entry["index"]] = runs[name] / entry["file"]
            assert entry == whole["samples"][entry["index"]]
    assert sorted(held) == list(range(SAMPLES))
    for i, path in held.items():
        ref = runs["whole"] / "samples" / f"{i:06d}.npz"
        a, b = read_sample(path), read_sample(ref)
        assert set(SAMPLE_KEYS) <= set(a)
        _assert_same_sample(a, b, i)
        assert path.read_bytes() == ref.read_bytes(), i


def test_resuming_with_another_shard_is_refused(runs: dict[str, Path]) -> None:
    before = sorted((runs["s0"] / "samples").iterdir())
    for other in ((1, 2), (0, 3), None):
        with pytest.raises(InputError, match="shard") as info:
            generate(_spec(runs["s0"], shard=other))
        assert info.value.key == "out"
        assert str(runs["s0"]) in str(info.value)
    assert sorted((runs["s0"] / "samples").iterdir()) == before
    # an unsharded folder is not resumed as a shard either
    with pytest.raises(InputError, match="shard"):
        generate(_spec(runs["whole"], shard=(0, 2)))
    # the same shard resumes: nothing left to make
    manifest = generate(_spec(runs["s0"], shard=(0, 2)))
    assert manifest["generated_last_run"] == 0
    assert manifest["shard"] == [0, 2]


def test_parse_shard() -> None:
    assert parse_shard(None) is None
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard("3/4") == (3, 4)
    for bad in ("2/2", "a/b", "1", "-1/2", "1/0", "0/-1", "0/2/3", "", "/2"):
        with pytest.raises(InputError) as info:
            parse_shard(bad)
        assert info.value.key == "shard", bad
    for bad_shard in ((2, 2), (-1, 2), (0, 0), (0,), (True, 2)):
        with pytest.raises(InputError) as info:
            _spec(Path("unused"), shard=bad_shard).checked()
        assert info.value.key == "shard", bad_shard


# ------------------------------------------------------------------------------ malunions


def test_malunited_phantoms_and_their_samples(runs: dict[str, Path]) -> None:
    manifest = _manifest(runs["whole"])
    assert manifest["parameters"]["malunion_fraction"] == 1.0
    assert [s["malunited"] for s in manifest["sources"]] == [True, True]
    found = {k: _deformities(runs["whole"], k) for k in range(2)}
    for k, deformities in found.items():
        assert 1 <= len(deformities) <= 2, k
        # what was built is what the grammar accepts
        parse_deformity([{f: v for f, v in d.items() if f in {"bone", *SHAFT_FIELDS,
                                                               *RADIUS_FIELDS}}
                         for d in deformities])
        # the shard runs drew the same malunions for the same seed
        for name in ("s0", "s1"):
            assert _deformities(runs[name], k) == deformities, (name, k)
    for entry in manifest["samples"]:
        s = read_sample(runs["whole"] / entry["file"])
        k = json.loads(s["source"])["index"]
        assert json.loads(s["source"])["malunited"] is True
        assert json.loads(s["meta"])["deformities"] == found[k], entry


def test_no_malunions_at_fraction_zero(tmp_path: Path) -> None:
    manifest = generate(_spec(tmp_path / "o", phantoms=1, views=1, malunion_fraction=0.0))
    assert manifest["parameters"]["malunion_fraction"] == 0.0
    assert manifest["sources"][0]["malunited"] is False
    assert _deformities(tmp_path / "o", 0) == []
    s = read_sample(tmp_path / "o" / "samples" / "000000.npz")
    assert json.loads(s["meta"])["deformities"] == []
    # another fraction is other parameters: the folder is not resumed with it
    with pytest.raises(InputError, match="malunion_fraction"):
        generate(_spec(tmp_path / "o", phantoms=1, views=1, malunion_fraction=0.5))


def test_which_phantoms_are_malunited() -> None:
    first = [phantom_is_malunited(SEED, k, 0.25) for k in range(2000)]
    assert first == [phantom_is_malunited(SEED, k, 0.25) for k in range(2000)]
    assert abs(np.mean(first) - 0.25) < 0.04
    other = [phantom_is_malunited(SEED + 1, k, 0.25) for k in range(2000)]
    assert other != first
    # a larger fraction keeps the malunited phantoms of a smaller one
    half = [phantom_is_malunited(SEED, k, 0.5) for k in range(2000)]
    assert all(h for f, h in zip(first, half, strict=True) if f)
    assert not any(phantom_is_malunited(SEED, k, 0.0) for k in range(200))
    assert all(phantom_is_malunited(SEED, k, 1.0) for k in range(200))


def test_bad_malunion_fractions_are_refused() -> None:
    for bad in (-0.1, 1.5, math.nan, math.inf, True, "0.5", None):
        with pytest.raises(InputError) as info:
            _spec(Path("unused"), malunion_fraction=bad).checked()
        assert info.value.key == "malunion_fraction", bad
    for good in (0, 0.0, 0.5, 1, 1.0):
        _spec(Path("unused"), malunion_fraction=good).checked()
    # a CT brings its own bones: the fraction is not one of its parameters
    ct = GenerateSpec(out="unused", ct="ct.nii.gz", labels="labels.nii.gz")
    assert "malunion_fraction" not in ct.parameters()
    assert _spec(Path("unused")).parameters()["malunion_fraction"] == 1.0


def test_draw_malunions() -> None:
    radius_keys = {"bone", "dorsal_tilt_deg", "radial_inclination_deg", "level_mm"}
    shaft_keys = {"bone", "level", "angulation_deg", "angulation2_deg", "rotation_deg",
                  "shortening_mm"}
    counts = {1: 0, 2: 0}
    radius = capped = 0
    for seed in range(300):
        items = draw_malunions(np.random.default_rng(seed))
        assert items == draw_malunions(np.random.default_rng(seed)), seed
        assert 1 <= len(items) <= 2
        counts[len(items)] += 1
        bones = [d["bone"] for d in items]
        assert len(set(bones)) == len(bones), (seed, bones)
        for d in items:
            if d["bone"] == "radius":
                radius += 1
                assert set(d) == radius_keys
            else:
                assert d["bone"] in LONG_BONES
                assert set(d) == shaft_keys
                cap = SHORTENING_MAX_FRACTION * LONG_BONES[d["bone"]].length
                assert d["shortening_mm"] <= cap
                capped += d["shortening_mm"] == cap
            for f, v in d.items():
                if f != "bone":
                    lo, hi = MALUNION_DRAW[f]
                    assert isinstance(v, float), (seed, f, v)
                    assert lo <= v <= hi, (seed, f, v)
        parsed = parse_deformity(items)
        assert [p.bone for p in parsed] == bones
    assert counts[1] > 50
    assert counts[2] > 50
    assert 0 < radius < 300
    assert capped > 0  # some short phalanx asked for more shortening than it may have
    assert draw_malunions(np.random.default_rng(1)) != draw_malunions(np.random.default_rng(2))
    for seed in range(50):
        assert len(draw_malunions(np.random.default_rng(seed), max_bones=1)) == 1
        assert all(d["bone"] != "radius"
                   for d in draw_malunions(np.random.default_rng(seed), radius_probability=0.0))
        assert draw_malunions(np.random.default_rng(seed),
                              radius_probability=1.0)[0]["bone"] == "radius"
    with pytest.raises(InputError, match="max_bones"):
        draw_malunions(np.random.default_rng(0), max_bones=0)


# ------------------------------------------------------------------------------ reading shards


def test_open_ground_truth_reads_the_shards_as_one(runs: dict[str, Path]) -> None:
    import torch

    whole = GroundTruthDataset(runs["whole"], image="both")
    assert whole.indices == list(range(SAMPLES))
    assert GroundTruthDataset(runs["s1"]).indices == [1, 3, 5]
    both = open_ground_truth([runs["s1"], runs["s0"]], image="both")
    assert len(both) == len(whole) == SAMPLES
    assert both.locations == [(1 - i % 2, i) for i in range(SAMPLES)]
    assert both.roots == [runs["s1"], runs["s0"]]
    assert both.manifests == [_manifest(runs["s1"]), _manifest(runs["s0"])]
    assert both.bones == list(range(1, 30))
    for i in range(SAMPLES):
        a, b = both[i], whole[i]
        assert set(a) == set(b)
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value.nan_to_num(-1.0), b[key].nan_to_num(-1.0)), (i, key)
            else:
                assert value == b[key], (i, key)
        assert a["meta"]["index"] == i
    filled = open_ground_truth([runs["s0"], runs["s1"]], nan_fill=0.0)
    assert not torch.isnan(filled[0]["front"]).any()
    assert filled[0]["image"].shape == (1, 64, 64)
    # the two phantoms carry different malunions: torch's default collation cannot zip their
    # meta records (KeyError), collate_ground_truth keeps them as lists
    batch = next(iter(torch.utils.data.DataLoader(filled, batch_size=SAMPLES,
                                                  collate_fn=collate_ground_truth)))
    assert batch["front"].shape == (SAMPLES, 29, 2, 64, 64)
    assert batch["image"].shape == (SAMPLES, 1, 64, 64)
    assert batch["image"].dtype == torch.float32
    assert batch["index"].tolist() == list(range(SAMPLES))
    assert [m["deformities"] for m in batch["meta"]] == [filled[i]["meta"]["deformities"]
                                                         for i in range(SAMPLES)]
    assert isinstance(batch["camera"][0], str)
    assert batch["source"][3]["index"] == 1
    single = open_ground_truth(str(runs["s0"]))
    assert len(single) == 3
    assert single.locations == [(0, 0), (0, 2), (0, 4)]


def _copy(src: Path, dst: Path, **changes: Any) -> Path:
    """``src``'s manifest and samples in ``dst`` (no phantoms), the manifest changed."""
    shutil.copytree(src / "samples", dst / "samples")
    manifest = _manifest(src)
    for key, change in changes.items():
        manifest[key] = change(manifest[key]) if callable(change) else change
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_open_ground_truth_refuses_what_cannot_be_read_together(
        runs: dict[str, Path], tmp_path: Path) -> None:
    def refused(roots: list[Path], words: str, folder: Path) -> None:
        with pytest.raises(InputError, match=words) as info:
            open_ground_truth(roots)
        assert str(folder) in str(info.value), info.value

    # a shard given twice, or with its whole run
    refused([runs["s0"], runs["s1"], runs["s0"]], "sample 0 of the same data set", runs["s0"])
    refused([runs["whole"], runs["s1"]], "sample 1 of the same data set", runs["s1"])
    # not a (complete) ground-truth folder
    refused([runs["s0"], tmp_path / "missing"], "does not exist", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    refused([tmp_path / "empty"], "no manifest.json", tmp_path / "empty")
    unfinished = _copy(runs["s1"], tmp_path / "unfinished", complete=False)
    refused([runs["s0"], unfinished], "not finished", unfinished)
    holed = _copy(runs["s1"], tmp_path / "holed")
    (holed / "samples" / "000003.npz").unlink()
    refused([runs["s0"], holed], "missing", holed)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    refused([broken], "unreadable", broken)
    with pytest.raises(InputError, match="no ground-truth folder"):
        open_ground_truth([])
    with pytest.raises(InputError, match="image"):
        open_ground_truth([runs["s0"]], image="raw")
    # another data set (other parameters) is welcome, even with the same sample indices ...
    other = _copy(runs["s0"], tmp_path / "other",
                  parameters=lambda p: {**p, "seed": p["seed"] + 1})
    mixed = open_ground_truth([runs["s0"], other, runs["s1"]])
    assert len(mixed) == 9
    assert mixed.locations == [(0, 0), (2, 1), (0, 2), (2, 3), (0, 4), (2, 5),
                               (1, 0), (1, 2), (1, 4)]
    # ... but not with another bone table
    fewer = _copy(runs["s0"], tmp_path / "fewer",
                  parameters=lambda p: {**p, "bones": [1, 2, 3]},
                  sources=lambda ss: [{**s, "bones": [1, 2, 3]} for s in ss])
    refused([runs["s1"], fewer], "bones", fewer)


# ------------------------------------------------------------------------------ command line


def test_cli_shard_and_malunion_fraction(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    base = ["recon", "generate", "--out", str(out), "--phantoms", "1", "--views", "2",
            "--size", "32", "--voxel-mm", str(VOXEL), "--montage", "0", "--seed", "1"]
    code = main([*base, "--shard", "0/2", "--malunion-fraction", "0"])
    assert code == 0, capsys.readouterr().err
    manifest = _manifest(out)
    assert manifest["shard"] == [0, 2]
    assert [s["index"] for s in manifest["samples"]] == [0]
    assert manifest["parameters"]["malunion_fraction"] == 0.0
    assert sorted(f.name for f in (out / "samples").glob("*.npz")) == ["000000.npz"]
    capsys.readouterr()
    for args, word in ((["--shard", "2/2"], "shard"), (["--shard", "x"], "shard"),
                       (["--shard", "1/2"], "shard"),   # another shard of the folder
                       (["--malunion-fraction", "1.5"], "malunion_fraction"),
                       (["--malunion-fraction", "nan"], "malunion_fraction")):
        code = main([*base, *args])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert word in err, (args, err)
        assert "Traceback" not in err, (args, err)
