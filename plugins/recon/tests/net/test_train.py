"""``regkit recon train``: the loss, the batches, overfitting and determinism.

Also checkpoints and resuming, DistributedDataParallel on two processes, and the command line.

Fast on purpose: a tiny network (32² input, widths 8, 16, stem 8) in float32, no loader workers,
and a ground-truth folder of 4 samples (one phantom at 0.8 mm voxels, 4 views on a 64 px
detector: about 3 s to make, once per module).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from regkit_recon.groundtruth.dataset import collate_ground_truth
from regkit_recon.groundtruth.generate import GenerateSpec, generate
from regkit_recon.net import data as net_data
from regkit_recon.net import train as tr
from regkit_recon.net.model import HEIGHT_SCALE, BoneNet, NetConfig, load_model
from regkit_recon.net.train import TrainSpec, batch_loss, global_batches, open_folders, train

from regkit.cli.main import main
from regkit.errors import InputError

ITEMS = 4
TINY: dict[str, Any] = {"size": 32, "widths": (8, 16), "stem": 8, "precision": "fp32",
                        "loader_workers": 0, "device": "cpu", "val_limit": 2}
TERMS = ("bce", "dice", "depth", "offset", "thickness", "loss")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete ground-truth folder of 4 samples (all 29 bones)."""
    out = tmp_path_factory.mktemp("gt") / "gt"
    generate(GenerateSpec(out=str(out), phantoms=1, views=ITEMS, size=64, voxel_mm=0.8, seed=3,
                          montage=0, malunion_fraction=0.0))
    return out


def _spec(data: Path, out: Path, **kw: Any) -> TrainSpec:
    args: dict[str, Any] = {"data": (str(data),), "out": str(out), "epochs": 3, "batch": 2,
                            "warmup": 2, **TINY}
    args.update(kw)
    return TrainSpec(**args)


def _run(spec: TrainSpec, **kw: Any) -> dict[str, Any]:
    return train(spec, stream=io.StringIO(), **kw)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    return dict(state["model"])


def _log(run: Path, kind: str = "train") -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line]
    return [r for r in rows if r["kind"] == kind]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ loss


def _batch(seed: int = 0, n: int = 4, nb: int = 3, s: int = 8) -> dict[str, torch.Tensor]:
    """Random targets: hits, heights and one item without any bone.

    Heights are NaN where not hit, and at a few hit pixels, as at a bone's outline.
    """
    g = torch.Generator().manual_seed(seed)
    hit = torch.rand((n, nb, s, s), generator=g) < 0.4
    hit[:, 0] = False  # a bone absent from every item
    hit[1] = False     # an item without bones: no Dice, no depth
    front = 1.0 + torch.rand((n, nb, s, s), generator=g)
    back = front - 0.5 * torch.rand((n, nb, s, s), generator=g)
    unknown = ~hit | (torch.rand((n, nb, s, s), generator=g) < 0.2)
    front = front.masked_fill(unknown, torch.nan)
    back = back.masked_fill(unknown, torch.nan)
    image = torch.rand((n, 1, s, s), generator=g)
    return {"image": image, "hit": hit, "front": front, "back": back}


def _perfect(batch: dict[str, torch.Tensor], shift: float = 0.0) -> dict[str, torch.Tensor]:
    logits = torch.where(batch["hit"], 20.0, -20.0)
    return {"logits": logits, "front": torch.nan_to_num(batch["front"], 7.0) + shift,
            "back": torch.nan_to_num(batch["back"], 7.0) + shift}


def _loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, float]:
    terms = batch_loss(out, batch, depth_weight=0.1, offset_weight=0.02)
    return {k: float(v.detach()) for k, v in terms.items()}


def test_a_perfect_prediction_costs_nothing() -> None:
    batch = _batch()
    terms = _loss(_perfect(batch), batch)
    assert set(terms) == set(TERMS)
    assert terms["bce"] < 1e-6
    assert terms["dice"] < 1e-6
    assert terms["depth"] == 0.0
    assert terms["offset"] == 0.0
    assert terms["loss"] < 1e-6
    # and a wrong one costs
    wrong = _perfect(batch)
    wrong["logits"] = -wrong["logits"]
    bad = _loss(wrong, batch)
    assert bad["bce"] > 5.0
    assert bad["dice"] > 0.5


def test_the_last_exit_s_gap_is_scored_shift_free() -> None:
    """With a ``last`` output, the gap from ``back`` down to ``last`` is scored, in input pixels.

    A perfect gap costs nothing, a common shift of all heights leaves the term alone, a gap one
    height unit too wide everywhere costs HEIGHT_SCALE; a batch without the target is refused.
    """
    batch = _batch(2)
    g = torch.Generator().manual_seed(3)
    batch["last"] = batch["back"] - 0.3 * (torch.rand(batch["back"].shape, generator=g) < 0.2)
    out = _perfect(batch)
    out["last"] = torch.nan_to_num(batch["last"], 7.0)
    terms = _loss(out, batch)
    assert set(terms) == {*TERMS, "last"}
    assert terms["last"] == 0.0
    shifted = {k: v + 0.5 if k != "logits" else v for k, v in out.items()}
    assert _loss(shifted, batch)["last"] == pytest.approx(0.0, abs=1e-5)
    wide = dict(out, last=out["last"] - 1.0)
    got = _loss(wide, batch)
    # the mean over items that have heights (two of the four items have none)
    has = sum(bool(torch.isfinite(batch["back"][i]).any()) for i in range(4))
    assert got["last"] == pytest.approx(HEIGHT_SCALE * has / 4, rel=1e-5)
    assert got["loss"] == pytest.approx(terms["loss"] + 0.1 * got["last"], rel=1e-5)
    with pytest.raises(InputError, match="no 'last' target") as info:
        _loss(out, {k: v for k, v in batch.items() if k != "last"})
    assert info.value.key == "last"


def test_a_common_shift_is_offset_not_depth() -> None:
    batch = _batch(1)
    for shift in (0.25, -0.5):
        terms = _loss(_perfect(batch, shift), batch)
        # items with known heights score |shift| in input pixels; the item without any
        # counts as zero in the mean over items
        has = torch.isfinite(torch.cat([batch["front"], batch["back"]], 1)).flatten(1).any(1)
        expected = abs(shift) * HEIGHT_SCALE * float(has.float().mean())
        assert terms["depth"] < 1e-4
        assert terms["offset"] == pytest.approx(expected, rel=1e-5)
        assert terms["loss"] == pytest.approx(terms["bce"] + terms["dice"]
                                              + 0.1 * terms["depth"] + 0.02 * expected,
                                              rel=1e-5)
    # a shift of one item's front only is not common: it is depth
    out = _perfect(batch)
    out["front"][0] += 0.25
    assert _loss(out, batch)["depth"] > 0.1


def test_the_thickness_term_scores_front_minus_back() -> None:
    """``thickness`` is the mean over items of the mean |error of front − back| (input pixels).

    A common shift and a perfect prediction cost nothing; a back one height unit too deep
    everywhere costs HEIGHT_SCALE per item with heights, added to the loss with its weight; a
    pixel whose back is unknown is left out, however wrong its thickness.
    """
    batch = _batch(4)
    has = sum(bool(torch.isfinite(batch["back"][i]).any()) for i in range(4))
    assert 0 < has < 4
    assert _loss(_perfect(batch), batch)["thickness"] == 0.0
    assert _loss(_perfect(batch, 0.5), batch)["thickness"] == pytest.approx(0.0, abs=1e-5)
    deep = _perfect(batch)
    deep["back"] = deep["back"] - 1.0
    base = _loss(deep, batch)
    assert base["thickness"] == pytest.approx(HEIGHT_SCALE * has / 4, rel=1e-5)
    weighted = {k: float(v.detach()) for k, v in
                batch_loss(deep, batch, depth_weight=0.1, offset_weight=0.02,
                           thickness_weight=0.3).items()}
    assert weighted["thickness"] == base["thickness"]
    assert weighted["loss"] == pytest.approx(base["loss"] + 0.3 * base["thickness"], rel=1e-6)
    # equal and opposite errors of front and back: the depth term sees each, this one both
    out = _perfect(batch)
    out["front"] = out["front"] + 0.25
    out["back"] = out["back"] - 0.25
    got = _loss(out, batch)
    assert got["thickness"] == pytest.approx(0.5 * HEIGHT_SCALE * has / 4, rel=1e-5)
    assert got["depth"] == pytest.approx(0.25 * HEIGHT_SCALE * has / 4, rel=1e-5)
    # a pixel without a back target does not count
    front_only = {k: v.clone() for k, v in batch.items()}
    i, b, y, x = (int(v[0]) for v in torch.isfinite(batch["back"]).nonzero(as_tuple=True))
    front_only["back"][i, b, y, x] = torch.nan
    wild = _perfect(front_only)
    wild["back"][i, b, y, x] = -1e6
    assert _loss(wild, front_only)["thickness"] == pytest.approx(0.0, abs=1e-5)


def test_unknown_heights_are_ignored() -> None:
    batch = _batch(2)
    out = _perfect(batch)
    for key in ("front", "back"):
        out[key] = out[key].clone().requires_grad_(True)
    wild = {k: v.detach().clone() for k, v in out.items()}
    unknown = ~torch.isfinite(batch["front"])
    wild["front"][unknown] = 1e6
    wild["back"][~torch.isfinite(batch["back"])] = -1e6
    assert _loss(wild, batch) == _loss(out, batch)
    # no NaN reaches the gradients, and unknown pixels get none
    noisy = {k: v + 0.1 * torch.randn_like(v) for k, v in out.items()}
    batch_loss(noisy, batch, depth_weight=0.1, offset_weight=0.02)["loss"].backward()
    grad = out["front"].grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert (grad[unknown] == 0).all()
    assert (grad[~unknown] != 0).any()
    # a batch without any known height: zero depth terms, not NaN
    blind = dict(batch, front=torch.full_like(batch["front"], torch.nan),
                 back=torch.full_like(batch["back"], torch.nan))
    terms = _loss(out, blind)
    assert terms["depth"] == 0.0
    assert terms["offset"] == 0.0
    assert np.isfinite(terms["loss"])


def test_the_loss_of_a_batch_is_the_mean_of_its_halves() -> None:
    # what makes a step on W processes (DDP averages the gradients) the single-process step
    batch = _batch(3)
    g = torch.Generator().manual_seed(4)
    shape = batch["hit"].shape
    out = {"logits": 3.0 * torch.randn(shape, generator=g),
           "front": 1.5 + torch.randn(shape, generator=g),
           "back": 1.0 + torch.randn(shape, generator=g)}
    whole = _loss(out, batch)
    halves = [_loss({k: v[i:i + 2] for k, v in out.items()},
                    {k: v[i:i + 2] for k, v in batch.items()}) for i in (0, 2)]
    for key in TERMS:
        assert whole[key] > 0, key
        assert whole[key] == pytest.approx(0.5 * (halves[0][key] + halves[1][key]),
                                           rel=1e-6, abs=1e-7), key


# ------------------------------------------------------------------------------- batching


def test_global_batches() -> None:
    first = global_batches(10, 3, seed=7, epoch=0)
    assert first == global_batches(10, 3, seed=7, epoch=0)
    assert [len(b) for b in first] == [3, 3, 3]  # the incomplete last batch is dropped
    flat = [i for b in first for i in b]
    assert len(set(flat)) == 9
    assert set(flat) <= set(range(10))
    assert all(isinstance(i, int) for i in flat)
    whole = global_batches(12, 4, seed=7, epoch=0)
    assert sorted(i for b in whole for i in b) == list(range(12))  # a permutation
    assert global_batches(12, 4, seed=7, epoch=1) != whole
    assert global_batches(12, 4, seed=8, epoch=0) != whole
    assert global_batches(3, 4, seed=0, epoch=0) == []
    assert global_batches(20, 20, seed=0, epoch=0)[0] != list(range(20))  # shuffled
    # the ranks' shares of a global batch are its items, in order
    for world in (1, 2, 4):
        for b in whole:
            assert [i for r in range(world) for i in tr._local(b, r, world)] == b


def test_check_refuses_bad_options(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "gt", tmp_path / "run", batch=6)
    tr._check(spec, 1)
    tr._check(spec, 2)
    tr._check(spec, 3)
    with pytest.raises(InputError, match="does not split over 4 processes") as info:
        tr._check(spec, 4)
    assert info.value.key == "batch"
    bad: list[tuple[str, Any]] = [("batch", 0), ("epochs", 0), ("seed", -1), ("batch", 2.0),
                                  ("epochs", True), ("lr", 0.0), ("lr", float("nan")),
                                  ("thickness_weight", -0.1),
                                  ("thickness_weight", float("nan"))]
    for key, value in bad:
        with pytest.raises(InputError) as info:
            tr._check(replace(spec, **{key: value}), 1)
        assert info.value.key == key, (key, value)
    with pytest.raises(InputError, match="no training data"):
        tr._check(replace(spec, data=()), 1)


# ------------------------------------------------------------------------------- training


def test_train_items_depend_on_seed_epoch_and_index(gt: Path) -> None:
    files, manifests = open_folders([str(gt)])
    bones, _ = tr._bones_of(manifests)
    assert len(files) == ITEMS
    assert len(bones) == 29

    def item(seed: int, epoch: int, index: int, augmented: bool = True, last: bool = True
             ) -> dict[str, torch.Tensor]:
        items = net_data.TrainItems(files, 32, bones, seed, augmented=augmented, last=last)
        items.epoch = epoch
        return items[index]

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(
            torch.equal(a[k].nan_to_num(-9.0), b[k].nan_to_num(-9.0)) for k in a)

    a = item(0, 1, 2)
    assert a["image"].shape == (1, 32, 32)
    assert a["hit"].shape == (29, 32, 32)
    assert a["hit"].dtype == torch.bool
    assert int(a["index"]) == 2
    assert same(a, item(0, 1, 2))
    assert not same(a, item(0, 2, 2))
    assert not same(a, item(1, 1, 2))
    plain = item(0, 1, 2, augmented=False)
    assert same(plain, item(5, 3, 2, augmented=False))
    assert not torch.equal(plain["image"], a["image"])
    # heights are known only where the bone is hit (and not at its outline: at 32² and after
    # a turn, few of a small bone's pixels are inside it, so look at all items)
    for x in [a, plain, *(item(0, 1, i) for i in range(ITEMS))]:
        for key in ("front", "back"):
            assert not (torch.isfinite(x[key]) & ~x["hit"]).any()
        assert x["hit"].any()
        assert torch.equal(torch.isfinite(x["front"]), torch.isfinite(x["back"]))
    assert torch.isfinite(plain["front"]).any()
    without = item(0, 1, 2, last=False)    # the same draws, without the last exit's map
    assert set(a) - set(without) == {"last"}
    assert same(without, {k: v for k, v in a.items() if k != "last"})
    assert "last" not in item(0, 1, 2, augmented=False, last=False)
    for x in [a, plain]:       # the last exit: known with the first layer, at or below its back
        known = torch.isfinite(x["last"])
        assert not (known & ~torch.isfinite(x["back"])).any()
        assert known.sum() >= 0.95 * torch.isfinite(x["back"]).sum()
        assert bool((x["last"][known] <= x["back"][known] + 1e-6).all())
    batch = collate_ground_truth([a, plain])
    assert batch["image"].shape == (2, 1, 32, 32)
    assert batch["index"].tolist() == [2, 2]


def test_the_last_exit_target_is_the_deepest_layer_s_back(gt: Path) -> None:
    """``last``: the height of the deepest stored layer's back.

    The first layer's back where the ray crosses once; unknown where it crosses more often than
    the layers hold.
    """
    from regkit_recon.groundtruth.sample import camera_of, read_sample
    from regkit_recon.net.geometry import depth_to_height, fit_image

    files, manifests = open_folders([str(gt)])
    bones = tr._bones_of(manifests)[0]
    sample = dict(read_sample(files[0]))
    two = np.isfinite(sample["back"][:, 1])
    assert two.any()                       # some rays cross a bone twice
    cut = np.argwhere(two)[0]
    sample["layers"] = sample["layers"].copy()
    sample["layers"][tuple(cut)] = 3       # as if it crossed three times
    size = sample["image"].shape[0]
    got = net_data.sample_targets(sample, size, bones, last=True)
    assert "last" not in net_data.sample_targets(sample, size, bones)
    camera = camera_of(sample)
    unit = HEIGHT_SCALE * fit_image(sample["image"], camera, size)[1].net_spacing_mm
    want = depth_to_height(np.where(two, sample["back"][:, 1], sample["back"][:, 0]),
                           camera) / unit
    last = got["last"].numpy()
    known = np.isfinite(last)
    assert not known[tuple(cut)]
    assert known.sum() > 0.9 * np.isfinite(got["back"].numpy()).sum()
    np.testing.assert_allclose(last[known], want[known], rtol=1e-4, atol=1e-4)
    assert (last[known & two] < got["back"].numpy()[known & two] - 1e-3).all()


@pytest.mark.slow
def test_a_few_samples_are_overfitted(gt: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # TrainItems always augments training items (a new turn, mirror, zoom and tone curve each
    # epoch), and a 32² network does not learn 29 bones' masks from 4 radiographs in 60 steps
    # that way. Memorising them is what this test asks for, so augmentation is switched off
    # (validation items are made unaugmented anyway).
    original = net_data.TrainItems.__init__

    def unaugmented(self: Any, *args: Any, augmented: bool = True, **kw: Any  # noqa: ARG001 - overridden
                    ) -> None:
        original(self, *args, augmented=False, **kw)

    monkeypatch.setattr(net_data.TrainItems, "__init__", unaugmented)
    run = tmp_path / "run"
    spec = _spec(gt, run, epochs=60, batch=ITEMS, lr=3e-2, warmup=5)
    record = _run(spec)
    assert record["steps"] == 60
    assert record["world_size"] == 1
    rows = _log(run)
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    first, last = rows[0], rows[-1]
    # the untrained network's loss on the same batch (train() seeds the weights with the seed)
    files, manifests = open_folders([str(gt)])
    bones, names = tr._bones_of(manifests)
    items = net_data.TrainItems(files, 32, bones, 0)
    batch = collate_ground_truth([items[i] for i in range(ITEMS)])
    torch.manual_seed(spec.seed)
    net = BoneNet(NetConfig(bones, names, 32, (8, 16), 8))
    with torch.no_grad():
        start = _loss(net(batch["image"]), batch)
    assert last["loss"] < 0.25 * start["loss"], (start, last)
    assert last["loss"] < 0.5 * first["loss"], (first, last)
    assert last["dice"] < 0.85 * first["dice"], (first, last)  # it learns the masks too
    assert last["depth"] < 0.2 * first["depth"], (first, last)
    assert np.isfinite([r["loss"] for r in rows]).all()
    assert rows[-1]["lr"] == pytest.approx(0.02 * 3e-2, rel=1e-6)  # the cosine's floor


def test_training_notes_bf16_emulated_on_the_cpu(gt: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from regkit_recon.net import runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    stream = io.StringIO()
    train(_spec(gt, tmp_path / "bf16", precision="bf16", max_steps=1), stream=stream)
    assert "emulated" in stream.getvalue()
    stream = io.StringIO()
    train(_spec(gt, tmp_path / "fp32", max_steps=1), stream=stream)
    assert "emulated" not in stream.getvalue()


def test_the_same_seed_gives_the_same_weights(gt: Path, tmp_path: Path) -> None:
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    _run(_spec(gt, runs["a"], seed=1))
    _run(_spec(gt, runs["b"], seed=1))
    _run(_spec(gt, runs["c"], seed=2))
    a, b, c = (_weights(runs[n]) for n in ("a", "b", "c"))
    assert _same(a, b)
    differ = [k for k in a if not torch.equal(a[k], c[k])]
    assert len(differ) > 0.9 * len(a), sorted(set(a) - set(differ))


def test_loader_processes_give_the_same_weights(gt: Path, tmp_path: Path) -> None:
    # each item's augmentation follows (seed, epoch, index), not the process that makes it
    _run(_spec(gt, tmp_path / "inline", epochs=2))
    _run(_spec(gt, tmp_path / "workers", epochs=2, loader_workers=2))
    assert _same(_weights(tmp_path / "inline"), _weights(tmp_path / "workers"))


def test_items_cached_on_the_device_give_the_same_weights(gt: Path, tmp_path: Path) -> None:
    # the same draws, applied to a batch at once instead of item by item in the loader
    _run(_spec(gt, tmp_path / "loader", epochs=2))
    _run(_spec(gt, tmp_path / "cached", epochs=2, device_cache=True))
    a, b = _weights(tmp_path / "loader"), _weights(tmp_path / "cached")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize(("last", "outline"), [(False, False), (True, False), (True, True)])
def test_a_device_cache_batch_is_the_loader_batch(gt: Path, last: bool, outline: bool) -> None:
    files, manifests = open_folders([str(gt)])
    bones = tr._bones_of(manifests)[0]
    items = net_data.TrainItems(files, 32, bones, seed=4, last=last, outline=outline)
    items.epoch = 3
    cache = tr.DeviceCache(items, torch.device("cpu"), workers=0)
    want = collate_ground_truth([items[i] for i in (2, 0, 3)])
    got = cache.batch([2, 0, 3], epoch=3)
    assert set(got) == set(want)
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-6, equal_nan=True,
                                   msg=key)
    other = cache.batch([2, 0, 3], epoch=4)
    assert not torch.equal(other["image"], got["image"])


def test_a_device_cache_too_large_is_refused(gt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files, manifests = open_folders([str(gt)])
    items = net_data.TrainItems(files, 32, tr._bones_of(manifests)[0], seed=4)
    monkeypatch.setattr(tr, "_free_bytes", lambda _device: 1000)
    with pytest.raises(InputError, match="GiB decoded") as info:
        tr.DeviceCache(items, torch.device("cpu"), workers=0)
    assert info.value.key == "device_cache"


def test_checkpoint_and_resume(gt: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    record = _run(_spec(gt, straight))  # 3 epochs of 2 steps
    assert record["steps"] == 6
    state = torch.load(straight / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert {"model", "optimiser", "scheduler", "step", "torch_rng", "recipe", "config",
            "seconds", "reason"} <= set(state)
    assert state["step"] == 6
    assert state["reason"] == "epoch"
    assert state["recipe"] == _spec(gt, straight).recipe()

    # the same run, interrupted (Ctrl-C) in the middle of its second epoch, after 3 steps
    calls = {"n": 0}

    def interrupted(*args: Any, **kw: Any) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return batch_loss(*args, **kw)

    monkeypatch.setattr(tr, "batch_loss", interrupted)
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        train(_spec(gt, broken), stream=stream)
    assert "interrupted at step 3" in stream.getvalue()
    monkeypatch.setattr(tr, "batch_loss", batch_loss)
    state = torch.load(broken / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 3
    assert state["reason"] == "interrupted"
    assert not _same(dict(state["model"]), _weights(straight))

    # a new run into the folder is refused; so is a resume with another recipe
    with pytest.raises(InputError, match="--resume") as info:
        _run(_spec(gt, broken))
    assert info.value.key == "out"
    with pytest.raises(InputError, match="lr") as info:
        _run(_spec(gt, broken, lr=1e-3), resume=True)
    assert info.value.key == "resume"
    with pytest.raises(InputError, match="warmup"):
        _run(_spec(gt, broken, warmup=3), resume=True)
    with pytest.raises(InputError, match=r"no checkpoint\.pt") as info:
        _run(_spec(gt, tmp_path / "nothing"), resume=True)
    assert info.value.key == "resume"
    assert torch.load(broken / "checkpoint.pt", weights_only=False)["step"] == 3

    # what may change between runs does not stop a resume; the end is the uninterrupted run's
    record = _run(_spec(gt, broken, checkpoint_s=1e6), resume=True)
    assert record["steps"] == 6
    assert _same(_weights(broken), _weights(straight))
    resumed = torch.load(broken / "checkpoint.pt", map_location="cpu", weights_only=False)
    done = torch.load(straight / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert resumed["scheduler"] == done["scheduler"]
    assert resumed["optimiser"]["state"][0]["step"] == done["optimiser"]["state"][0]["step"]
    assert torch.equal(resumed["optimiser"]["state"][0]["exp_avg_sq"],
                       done["optimiser"]["state"][0]["exp_avg_sq"])
    # nothing left to do: a second resume changes nothing
    assert _run(_spec(gt, broken), resume=True)["steps"] == 6
    assert _same(_weights(broken), _weights(straight))

    # model.pt: float16 in the file, the checkpoint's weights when loaded
    blob = torch.load(straight / "model.pt", map_location="cpu", weights_only=True)
    floats = [v for v in blob["state"].values() if v.is_floating_point()]
    assert floats
    assert all(v.dtype == torch.float16 for v in floats)
    assert blob["record"]["steps"] == 6
    assert blob["record"]["training_items"] == ITEMS
    loaded = load_model(straight / "model.pt")
    assert loaded.net.config.size == 32
    assert loaded.net.config.widths == (8, 16)
    assert len(loaded.net.config.bones) == 29
    weights = _weights(straight)
    for key, value in loaded.net.state_dict().items():
        assert value.dtype == weights[key].dtype, key
        assert torch.allclose(value, weights[key], rtol=1e-3, atol=1e-4), key


def test_ctrl_c_finishes_the_step_under_way(gt: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A real SIGINT in the middle of step 4 lets that step finish, then checkpoints.

    The SIGINT comes inside the loss; the checkpoint is at step 4. A second SIGINT stops at once and
    keeps the last checkpoint.
    """
    import os
    import signal

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    _run(_spec(gt, straight))
    calls = {"n": 0}

    def signalled(*args: Any, **kw: Any) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only takes note
        return batch_loss(*args, **kw)

    monkeypatch.setattr(tr, "batch_loss", signalled)
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        train(_spec(gt, broken), stream=stream)
    assert "interrupted at step 4" in stream.getvalue()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    monkeypatch.setattr(tr, "batch_loss", batch_loss)
    state = torch.load(broken / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 4
    assert state["reason"] == "interrupted"
    _run(_spec(gt, broken), resume=True)
    assert _same(_weights(broken), _weights(straight))

    # twice: the second stops at once, without writing an inconsistent checkpoint
    hard = tmp_path / "hard"
    calls["n"] = 0

    def twice(*args: Any, **kw: Any) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return batch_loss(*args, **kw)

    monkeypatch.setattr(tr, "batch_loss", twice)
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        train(_spec(gt, hard, checkpoint_s=1e6), stream=stream)
    assert "stopped at once" in stream.getvalue()
    assert not (hard / "checkpoint.pt").exists()  # no step boundary had been saved yet


def test_a_resume_may_train_longer(gt: Path, tmp_path: Path) -> None:
    """--epochs may grow on --resume: the run goes on to the new length with the new schedule."""
    run = tmp_path / "run"
    assert _run(_spec(gt, run, epochs=2))["steps"] == 4
    first = _weights(run)
    stream = io.StringIO()
    record = train(_spec(gt, run, epochs=3), resume=True, stream=stream)
    assert record["steps"] == 6
    assert "new length (epochs 2 -> 3)" in stream.getvalue()
    assert not _same(_weights(run), first)
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["recipe"]["epochs"] == 3
    assert state["step"] == 6


def test_stop_at_replays_an_interruption(gt: Path, tmp_path: Path) -> None:
    """--stop-at N stops as an interruption at step N would.

    A resume ends bit-identical to the run that was never stopped, and the schedule is the whole
    run's (unlike max_steps).
    """
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _run(_spec(gt, straight))                      # 3 epochs of 2 steps
    record = _run(_spec(gt, stopped), stop_at=3)   # mid-epoch
    assert record["steps"] == 3
    assert record["stopped"]
    state = torch.load(stopped / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == 3
    assert state["reason"] == "stopped"
    assert (stopped / "model.pt").exists()
    lr = {r["step"]: r["lr"] for r in _log(straight)}
    record = _run(_spec(gt, stopped), resume=True)
    assert record["steps"] == 6
    assert not record["stopped"]
    assert _same(_weights(straight), _weights(stopped))
    assert {r["step"]: r["lr"] for r in _log(stopped)} == lr
    with pytest.raises(InputError, match="stop_at"):
        _run(_spec(gt, tmp_path / "never"), stop_at=0)


def test_init_starts_from_a_model(gt: Path, tmp_path: Path) -> None:
    """--init: the run starts from a model file's weights.

    A model of another shape is refused.
    """
    first = tmp_path / "first"
    _run(_spec(gt, first, epochs=1))
    model = load_model(first / "model.pt")
    second = tmp_path / "second"
    spec = _spec(gt, second, epochs=1, max_steps=1, init=str(first / "model.pt"), lr=1e-12,
                 warmup=1)
    _run(spec)
    for key, value in _weights(second).items():  # a vanishing step: still the start's weights
        assert torch.allclose(value, model.net.state_dict()[key], atol=1e-6), key
    other = _spec(gt, tmp_path / "third", epochs=1, init=str(first / "model.pt"),
                  widths=(8, 8))
    with pytest.raises(InputError, match=r"widths \(8, 16\) against \(8, 8\)") as info:
        _run(other)
    assert info.value.key == "init"


def test_init_may_add_context_blocks(gt: Path, tmp_path: Path) -> None:
    """--init into a network with more context blocks starts from the model's own outputs.

    The new blocks start as the identity and then learn. Fewer blocks are refused.
    """
    first = tmp_path / "first"
    _run(_spec(gt, first, epochs=1))
    model = load_model(first / "model.pt").net
    grown = tmp_path / "grown"
    _run(_spec(gt, grown, epochs=1, max_steps=1, init=str(first / "model.pt"), lr=1e-12,
               warmup=1, context=1))
    net = load_model(grown / "model.pt").net
    assert net.config.context == 1
    x = torch.rand((2, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(x), net(x)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-3), key
    trained = tmp_path / "trained"
    _run(_spec(gt, trained, epochs=1, max_steps=2, init=str(first / "model.pt"), context=1))
    proj = load_model(trained / "model.pt").net.state_dict()["context.0.proj.weight"]
    assert float(proj.abs().max()) > 0  # the zero projection is not stuck
    assert "context" not in _spec(gt, first).recipe()  # as before: older checkpoints resume
    assert _spec(gt, first, context=1).recipe()["context"] == 1
    with pytest.raises(InputError, match=r"\(context 1 against 0: the model's first\); a run "
                       "may only add context blocks") as info:
        _run(_spec(gt, tmp_path / "shrunk", epochs=1, init=str(grown / "model.pt")))
    assert info.value.key == "init"


def _scrambled(net: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, the zero-initialised ones too (no zeros to hide behind)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def test_a_grown_head_starts_as_the_model() -> None:
    """A wider segmentation head with more blocks, warm-started, computes the model's outputs.

    Exactly (to float rounding), for every output, whatever the model's weights; a narrower or
    shallower head than the model's is refused.
    """
    from regkit_recon.net.model import BoneNet, NetConfig
    from regkit_recon.net.train import _warm_start

    small = NetConfig((1, 2, 3), ("a", "b", "c"), size=32, widths=(8, 16), stem=8, groups=4,
                      head=8, head_blocks=1)
    start = BoneNet(small).eval()
    _scrambled(start, 0)
    x = torch.rand((2, 1, 32, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = start(x)
    for head, blocks, context in ((24, 1, 0), (8, 3, 0), (16, 2, 1)):
        net = BoneNet(replace(small, head=head, head_blocks=blocks, context=context)).eval()
        _warm_start(net, start, "start.pt")
        with torch.no_grad():
            got = net(x)
        for key in want:
            assert torch.allclose(got[key], want[key], atol=1e-5), (head, blocks, key)
        # the new channels are not dead: they get random weights from the old ones
        assert float(net.rise.weight[:, 8:].detach().abs().sum()) > 0 or head == 8
    for head, blocks in ((6, 1), (8, 0)):
        with pytest.raises(InputError, match="head channels, head blocks") as info:
            _warm_start(BoneNet(replace(small, head=head, head_blocks=blocks)), start, "s.pt")
        assert info.value.key == "init"


def test_a_network_grown_a_last_exit_starts_as_the_model() -> None:
    """Warm-started with the last exit, a network computes the model's outputs.

    To float rounding; its last exit lies a hair below its back. A model with it does not go
    into one without.
    """
    from regkit_recon.net.model import LAST_GAP_BIAS
    from regkit_recon.net.train import _warm_start

    small = NetConfig((1, 2, 3), ("a", "b", "c"), size=32, widths=(8, 16), stem=8, groups=4)
    start = BoneNet(small).eval()
    _scrambled(start, 2)
    x = torch.rand((2, 1, 32, 32), generator=torch.Generator().manual_seed(1))
    net = BoneNet(replace(small, last=True, head=16)).eval()
    _warm_start(net, start, "start.pt")
    with torch.no_grad():
        want, got = start(x), net(x)
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-5), key
    gap = got["back"] - got["last"]
    expected = torch.nn.functional.softplus(torch.tensor(LAST_GAP_BIAS))
    assert torch.allclose(gap, expected.expand_as(gap), atol=1e-6)
    with pytest.raises(InputError, match="the last exit and the depth refinement") as info:
        _warm_start(BoneNet(small), net, "n.pt")
    assert info.value.key == "init"
    with pytest.raises(InputError, match="must train the depth head") as info:
        _warm_start(BoneNet(replace(small, last=True)), start, "s.pt", trainable="head")
    assert info.value.key == "trainable"


def test_trainable_head_trains_only_the_head(gt: Path, tmp_path: Path) -> None:
    """``trainable="head"`` moves the segmentation head's weights and no other.

    The recipe records the head options (and leaves them out at their defaults, as recipes
    were before them); an unknown choice is refused.
    """
    from regkit_recon.net.train import HEAD_MODULES

    first = tmp_path / "first"
    _run(_spec(gt, first, epochs=1))
    model = load_model(first / "model.pt").net.state_dict()
    run = tmp_path / "head"
    spec = _spec(gt, run, epochs=1, max_steps=3, init=str(first / "model.pt"), head=16,
                 head_blocks=1, trainable="head")
    _run(spec)
    after = _weights(run)
    moved = {k for k in after if k.split(".")[0] in HEAD_MODULES}
    assert {k.split(".")[0] for k in moved} == set(HEAD_MODULES)
    for key, value in after.items():
        if key not in moved:
            assert torch.equal(value, model[key]), key
    assert not torch.equal(after["seg.weight"][:, :8], model["seg.weight"])
    assert float(after["seg.weight"][:, 8:].abs().max()) > 0   # the new channels learn
    assert after["seg.weight"].shape == (model["seg.weight"].shape[0], 16, 1, 1)
    recipe = spec.recipe()
    assert (recipe["head"], recipe["head_blocks"], recipe["trainable"]) == (16, 1, "head")
    assert not {"head", "head_blocks", "trainable"} & set(_spec(gt, first).recipe())
    with pytest.raises(InputError, match="all, head, heads") as info:
        _run(_spec(gt, tmp_path / "bad", trainable="body"))
    assert info.value.key == "trainable"
    for part in ("head", "heads", "depth"):   # a part trained on a random, frozen rest: refused
        with pytest.raises(InputError, match="needs --init") as info:
            _run(_spec(gt, tmp_path / "bad", trainable=part))
        assert info.value.key == "trainable"
    assert not (tmp_path / "bad").exists()


def test_trainable_heads_trains_both_heads_only(gt: Path, tmp_path: Path) -> None:
    """``trainable="heads"`` moves the segmentation and depth heads' weights and no other."""
    from regkit_recon.net.train import DEPTH_MODULES, HEAD_MODULES

    first = tmp_path / "first"
    _run(_spec(gt, first, epochs=1))
    model = load_model(first / "model.pt").net.state_dict()
    run = tmp_path / "heads"
    spec = _spec(gt, run, epochs=1, max_steps=3, init=str(first / "model.pt"), trainable="heads")
    _run(spec)
    after = _weights(run)
    moved = {k for k, v in after.items() if not torch.equal(v, model[k])}
    present = {k.split(".")[0] for k in model}          # "polish" only with head blocks
    assert {k.split(".")[0] for k in moved} == set(HEAD_MODULES + DEPTH_MODULES) & present
    assert not torch.equal(after["depth_out.weight"], model["depth_out.weight"])
    assert spec.recipe()["trainable"] == "heads"


def test_trainable_depth_trains_only_the_depth_head_and_its_refinement(gt: Path,
                                                                       tmp_path: Path) -> None:
    """``trainable="depth"`` grown a refinement: the depth modules move, nothing else does.

    The masks stay the model's; the new refinement learns (its zero output layer moves); the
    recipe records ``refine``, ``outline_targets`` and ``trainable``, and leaves them out at
    their defaults.
    """
    from regkit_recon.net.train import DEPTH_MODULES

    first = tmp_path / "first"
    _run(_spec(gt, first, epochs=1))
    model = load_model(first / "model.pt").net.state_dict()
    run = tmp_path / "depth"
    spec = _spec(gt, run, epochs=1, max_steps=3, init=str(first / "model.pt"), refine=8,
                 outline_targets=True, trainable="depth")
    _run(spec)
    after = _weights(run)
    new = {k for k in after if k not in model}
    assert {k.split(".")[0] for k in new} == {"refine", "refine_out"}
    moved = {k for k in after if k in new or not torch.equal(after[k], model[k])}
    assert {k.split(".")[0] for k in moved} == set(DEPTH_MODULES)
    assert float(after["refine_out.weight"].abs().max()) > 0
    recipe = spec.recipe()
    assert (recipe["refine"], recipe["outline_targets"], recipe["trainable"]) == (8, True,
                                                                                 "depth")
    assert not {"refine", "outline_targets"} & set(_spec(gt, first).recipe())
    assert load_model(run / "model.pt").net.config.refine == 8


def test_a_network_grown_a_refinement_starts_as_the_model() -> None:
    """Warm-started with a depth refinement, a network computes the model's outputs exactly.

    A run that adds it must train it, and its width may not change.
    """
    from regkit_recon.net.train import _warm_start

    small = NetConfig((1, 2, 3), ("a", "b", "c"), size=32, widths=(8, 16), stem=8, groups=4,
                      last=True)
    start = BoneNet(small).eval()
    _scrambled(start, 5)
    x = torch.rand((2, 1, 32, 32), generator=torch.Generator().manual_seed(1))
    net = BoneNet(replace(small, refine=8)).eval()
    _warm_start(net, start, "start.pt", trainable="depth")
    with torch.no_grad():
        want, got = start(x), net(x)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    with pytest.raises(InputError, match="must train it") as info:
        _warm_start(BoneNet(replace(small, refine=8)), start, "s.pt", trainable="head")
    assert info.value.key == "trainable"
    for other in (0, 12):
        with pytest.raises(InputError, match="the depth refinement") as info:
            _warm_start(BoneNet(replace(small, refine=other)), net, "n.pt")
        assert info.value.key == "init"


def test_the_cli_offers_every_trainable_choice(gt: Path, tmp_path: Path) -> None:
    import argparse

    from regkit_recon.cli import register
    from regkit_recon.net.train import TRAINABLE

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    recon = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = next(a for a in recon.choices["recon"]._actions
                   if isinstance(a, argparse._SubParsersAction))
    trainable = next(a for a in actions.choices["train"]._actions if a.dest == "trainable")
    assert tuple(trainable.choices) == TRAINABLE
    for choice in TRAINABLE:
        args = parser.parse_args(_train_args(gt, tmp_path, "--trainable", choice))
        assert args.trainable == choice
    with pytest.raises(SystemExit):
        parser.parse_args(_train_args(gt, tmp_path, "--trainable", "body"))


# ------------------------------------------------------------------- two processes (DDP)

_CHILD = """
import json, sys
import torch
torch.set_num_threads(1)
from regkit_recon.net.train import TrainSpec, train
kw = json.loads(sys.argv[1])
kw["data"], kw["widths"] = tuple(kw["data"]), tuple(kw["widths"])
record = train(TrainSpec(**kw), stream=sys.stderr)
print(json.dumps({"steps": record["steps"], "world_size": record["world_size"]}))
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on the loopback device 'lo'")
def test_two_processes_take_the_single_process_steps(gt: Path, tmp_path: Path) -> None:
    # train() on two processes (the environment torchrun sets, gloo over the loopback device),
    # global batch 4 = 2 items per rank, 2 epochs of one step each; about 10 s. With a context
    # block: its zero projections leave the block's other weights without a gradient at step 1
    # (still in the graph, so DDP does not count them unused) and with one at step 2
    single, double = tmp_path / "single", tmp_path / "double"
    kw = {"epochs": 2, "batch": 4, "lr": 5e-3, "warmup": 1, "context": 1}
    _run(_spec(gt, single, **kw))
    spec = _spec(gt, double, **kw)
    args = {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(spec).items()}
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                   CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)],
                                      env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=180))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == {"steps": 2, "world_size": 2}
    assert json.loads((double / "spec.json").read_text())["world_size"] == 2
    one = torch.load(single / "checkpoint.pt", map_location="cpu", weights_only=False)
    state = torch.load(double / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["step"] == one["step"] == 2
    # the gradients: AdamW's first moment is 0.09 g1 + 0.1 g2 after two steps; the two
    # processes' averaged gradients are the single process's up to float rounding
    for i, moments in one["optimiser"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            x, y = moments[name], state["optimiser"]["state"][i][name]
            scale = float(x.abs().max())
            assert float((x - y).abs().max()) <= 2e-5 * scale + 1e-12, (i, name)
    # the weights: Adam divides each gradient by its own size, so an element whose gradient
    # is as small as the rounding (~1e-7 here) may move by a different fraction of lr; all
    # others agree to 1e-6 (measured: 1 element of 12559 at 2.4e-6, the rest below 7e-7)
    a, b = dict(one["model"]), dict(state["model"])
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert float(diff.max()) <= 2 * 2 * 5e-3, float(diff.max())  # two steps of at most lr each
    assert int((diff > 1e-6).sum()) <= 1e-3 * diff.numel(), int((diff > 1e-6).sum())
    torch.manual_seed(spec.seed)  # the weights train() starts from
    start = BoneNet(NetConfig.from_json(state["config"])).state_dict()
    moved = [k for k in a if not torch.equal(a[k], start[k])]
    assert len(moved) > 0.9 * len(a)  # what was compared are trained weights


# ---------------------------------------------------------------------------- command line


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["recon", "train", "--data", str(data), "--out", str(out), "--epochs", "1",
            "--batch", "2", "--size", "32", "--widths", "8,16", "--stem", "8",
            "--precision", "fp32", "--device", "cpu", "--max-steps", "2", *extra]


def test_learning_curves_draw_the_thickness_term_and_older_logs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The depth panel draws the terms that every logged step has.

    The thickness term where the log holds it; a log of a run from before it (no ``thickness``,
    no ``last``) still draws.
    """
    from regkit_recon.net import plot

    drawn: list[list[str]] = []
    real = plot.line_chart

    def spy(path: Any, panels: Any, **kw: Any) -> None:
        drawn.append(sorted(panels[1][2]))
        real(path, panels, **kw)

    monkeypatch.setattr(plot, "line_chart", spy)
    old = {"kind": "train", "bce": 0.1, "dice": 0.2, "depth": 2.0, "offset": 5.0, "loss": 0.5}
    for name, rows in (("new", [dict(old, step=s, thickness=1.0 + s, last=0.1) for s in (10, 20)]),
                       ("old", [dict(old, step=s) for s in (10, 20)]),
                       ("mixed", [dict(old, step=10), dict(old, step=20, thickness=1.0)])):
        log = tmp_path / f"{name}.jsonl"
        log.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tr.write_curves(log, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn == [["depth", "last", "offset", "thickness"], ["depth", "offset"],
                     ["depth", "offset"]]


def test_cli_train(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    code = main(_train_args(gt, run, "--val", str(gt), "--val-limit", "2"))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "regkit recon train: 2 steps" in err
    assert "validation after epoch 1" in err
    for name in ("checkpoint.pt", "model.pt", "log.jsonl", "curves.png", "spec.json"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(run / "curves.png") as img:
        img.verify()
    spec = json.loads((run / "spec.json").read_text())
    assert spec["steps"] == 2
    assert spec["items"] == ITEMS
    assert spec["world_size"] == 1
    assert spec["recipe"]["widths"] == [8, 16]
    assert spec["precision"] == "float32"
    assert [r["step"] for r in _log(run)] == [2]
    (val,) = _log(run, "val")
    assert val["items"] == 2
    assert 0.0 <= val["dice"] <= 1.0
    assert len(val["dice_per_bone"]) == 29
    assert load_model(run / "model.pt").record["steps"] == 2
    # a rerun into the same folder needs --resume; with it, nothing is left to do
    assert main(_train_args(gt, run)) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(_train_args(gt, run, "--resume")) == 0, capsys.readouterr().err


def _cli_grown(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
               *flags: str) -> tuple[Path, Path]:
    """A plain run ``first``, then ``run`` started from its model with ``flags``; both folders."""
    first = tmp_path / "first"
    assert main(_train_args(gt, first)) == 0, capsys.readouterr().err
    run = tmp_path / "run"
    code = main(_train_args(gt, run, "--init", str(first / "model.pt"), *flags))
    assert code == 0, capsys.readouterr().err
    return first, run


def test_cli_train_head_options(gt: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """--head, --head-blocks and --trainable reach the run, its recipe and its model."""
    first, run = _cli_grown(gt, tmp_path, capsys, "--head", "16", "--head-blocks", "1",
                            "--trainable", "head")
    recipe = json.loads((run / "spec.json").read_text())["recipe"]
    assert (recipe["head"], recipe["head_blocks"], recipe["trainable"]) == (16, 1, "head")
    config = load_model(run / "model.pt").net.config
    assert (config.head, config.head_blocks) == (16, 1)
    body = "down.0.body.0.weight"
    assert torch.equal(load_model(run / "model.pt").net.state_dict()[body],
                       load_model(first / "model.pt").net.state_dict()[body])


def test_cli_train_last(gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--last: the model predicts the last exit, the recipe says so, the log scores it.

    The run is grown from a model without it.
    """
    first, run = _cli_grown(gt, tmp_path, capsys, "--last", "--trainable", "heads", "--val",
                            str(gt), "--val-limit", "2")
    assert json.loads((run / "spec.json").read_text())["recipe"]["last"] is True
    assert "last" not in json.loads((first / "spec.json").read_text())["recipe"]
    assert load_model(run / "model.pt").net.config.last
    rows = _log(run)
    assert rows
    assert all(np.isfinite(r["last"]) for r in rows)
    val = _log(run, "val")[-1]
    assert "last_mm" in val
    assert "last exit" in capsys.readouterr().err


def test_cli_train_refine_and_outline_targets(gt: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """--refine, --outline-targets, --thickness-weight and --trainable depth reach the run.

    They reach its recipe and model; the recipe of a run without them does not name them.
    """
    first, run = _cli_grown(gt, tmp_path, capsys, "--refine", "8", "--outline-targets",
                            "--trainable", "depth", "--thickness-weight", "0.2")
    recipe = json.loads((run / "spec.json").read_text())["recipe"]
    assert (recipe["refine"], recipe["outline_targets"], recipe["trainable"],
            recipe["thickness_weight"]) == (8, True, "depth", 0.2)
    plain = json.loads((first / "spec.json").read_text())["recipe"]
    assert not {"refine", "outline_targets", "trainable", "thickness_weight"} & set(plain)
    assert any(r["thickness"] > 0 for r in _log(run))
    assert load_model(run / "model.pt").net.config.refine == 8
    assert main(_train_args(gt, tmp_path / "bad", "--refine", "6")) == 2
    assert "multiple of 8" in capsys.readouterr().err


def test_cli_train_refuses_bad_input(gt: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    cases = [
        (_train_args(tmp_path / "missing", run), "does not exist"),
        ([*_train_args(gt, run), "--batch", "0"], "'batch'"),
        ([*_train_args(gt, run), "--batch", "8"], "no batch of 8"),
        ([*_train_args(gt, run), "--widths", "8,x"], "'widths'"),
        ([*_train_args(gt, run), "--widths", "8,12"], "widths"),
        ([*_train_args(gt, run), "--size", "30"], "'size'"),
        ([*_train_args(gt, run), "--lr", "-1"], "'lr'"),
        ([*_train_args(gt, run), "--loader-workers", "-1"], "'loader_workers'"),
        ([*_train_args(gt, run), "--head", "-8"], "'head'"),
        ([*_train_args(gt, run), "--head-blocks", "-1"], "'head_blocks'"),
        ([*_train_args(gt, run), "--thickness-weight", "-1"], "'thickness_weight'"),
        ([*_train_args(gt, run), "--resume"], "no checkpoint.pt"),
        ([*_train_args(gt, run), "--val", str(tmp_path / "missing")], "does not exist"),
    ]
    for argv, words in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith("regkit: error: "), (argv, err)
        assert words in err, (argv, err)
        assert "Traceback" not in err, (argv, err)
    assert not (run / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def three_bones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("few") / "few"
    generate(GenerateSpec(out=str(out), phantoms=1, views=1, size=64, voxel_mm=0.8, seed=3,
                          montage=0, malunion_fraction=0.0, bones=(1, 2, 3)))
    return out


def test_validation_with_other_bones_is_refused_before_training(
        gt: Path, three_bones: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    with pytest.raises(InputError, match="validation data hold bones") as info:
        _run(_spec(gt, run, val=(str(three_bones),)))
    assert info.value.key == "val"
    assert not (run / "checkpoint.pt").exists()
    assert not (run / "log.jsonl").exists()
    code = main(_train_args(gt, tmp_path / "cli", "--val", str(three_bones)))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "'val'" in err, err
    assert "bones" in err, err
    assert "Traceback" not in err, err


def test_damaged_samples_refused_remade_and_changed_data_not_resumed(
        gt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from regkit_recon.groundtruth.sample import read_sample

    from regkit.errors import FileFormatError

    data = tmp_path / "gt"
    shutil.copytree(gt, data)
    sample = data / "samples" / "000002.npz"
    good = sample.read_bytes()
    sample.write_bytes(good[:1000])                      # a truncated copy
    with pytest.raises(FileFormatError, match="truncated or corrupt sample"):
        read_sample(sample)
    assert main(_train_args(data, tmp_path / "bad")) == 2
    assert "000002.npz" in capsys.readouterr().err
    # generate's resume remakes it, byte for byte
    generate(GenerateSpec(out=str(data), phantoms=1, views=ITEMS, size=64, voxel_mm=0.8, seed=3,
                          montage=0, malunion_fraction=0.0), stream=io.StringIO())
    assert sample.read_bytes() == good
    # a run resumed on a folder whose files changed is refused
    run = tmp_path / "run"
    assert main(_train_args(data, run, "--stop-at", "1")) == 0     # stops as Ctrl-C would
    (tmp_path / "link").symlink_to(data)                 # the same data by another path
    assert main(_train_args(tmp_path / "link", run, "--resume", "--stop-at", "2")) == 0
    capsys.readouterr()
    (data / "samples" / "000003.npz").write_bytes(good)  # another sample's bytes
    assert main(_train_args(data, run, "--resume")) == 2
    assert "training data changed" in capsys.readouterr().err
    # an --out that is a file is refused before any work
    (tmp_path / "afile").write_text("x")
    assert main(_train_args(gt, tmp_path / "afile")) == 2
    assert "is a file" in capsys.readouterr().err
