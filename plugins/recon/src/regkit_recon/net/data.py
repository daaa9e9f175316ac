"""Training items for the bone network, made from ground-truth samples.

An item is one sample fitted to the network's input (:func:`~regkit_recon.net.geometry.fit_image`)
with its targets in height units, then augmented (turn, mirror, zoom, tone curve) with a
generator drawn from ``SeedSequence(seed, spawn_key=(epoch, index))``: an item depends only on the
seed, the epoch and its index, never on the worker, the rank or the number of processes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from regkit.errors import InputError
from regkit.geometry.camera import Camera
from regkit_recon.net.geometry import Augmentation, augment_batch, depth_to_height, fit_image
from regkit_recon.net.model import HEIGHT_SCALE

__all__ = ["TrainItems", "augment_targets", "item_generator", "last_exit_depth",
           "sample_targets"]


def last_exit_depth(back: np.ndarray) -> np.ndarray:
    """``[NB, H, W]`` where each ray leaves each bone for the last time, mm from the source.

    The back of the deepest of the ``[NB, L, H, W]`` layers ``back`` holds (NaN where the ray
    misses the bone); a ray that crosses a bone more often than ``L`` leaves it later still.
    """
    stored = np.asarray(back, dtype=np.float64)
    deepest = np.where(np.isfinite(stored), stored, -np.inf).max(axis=1)
    return np.where(np.isfinite(stored[:, 0]), deepest, np.nan)


def sample_targets(sample: dict[str, Any], size: int, bones: Sequence[int], *,
                   last: bool = False) -> dict[str, torch.Tensor]:
    """One read sample on the network's grid, unaugmented.

    Returns:
        ``image`` ``(1, S, S)`` normalised; ``hit`` bool, ``front``, ``back`` ``(NB, S, S)``
        heights of the first layer in height units (NaN where the bone is not hit); with
        ``last``, ``last`` ``(NB, S, S)``, the height where the ray leaves the bone for the last
        time (:func:`last_exit_depth`; ``back`` where it crosses the bone once; NaN also where it
        crosses the bone more often than the sample's layers hold); ``unit_mm``, mm per height
        unit.

    Raises:
        InputError: the sample's bones are not ``bones``.
    """
    have = [int(b) for b in sample["bones"]]
    if have != [int(b) for b in bones]:
        raise InputError(f"the sample's bones {have} are not the network's {list(bones)}",
                         key="bones")
    camera = Camera.from_dict(json.loads(sample["camera"]))
    x, fit = fit_image(sample["image"], camera, size)
    unit = HEIGHT_SCALE * fit.net_spacing_mm
    front = depth_to_height(sample["front"][:, 0], camera) / unit
    back = depth_to_height(sample["back"][:, 0], camera) / unit
    hit = np.isfinite(front) & np.isfinite(back)
    planes: list[np.ndarray] = [hit.astype(np.float32), np.nan_to_num(front),
                                np.nan_to_num(back)]
    if last:
        # a ray that crosses the bone more often than the sample's layers hold: last exit unknown
        layers = np.asarray(sample["back"]).shape[1]
        whole = hit & (np.asarray(sample["layers"]) <= layers) if "layers" in sample else hit
        exit_mm = np.where(whole, last_exit_depth(sample["back"]), np.nan)
        planes += [np.nan_to_num(np.where(whole, depth_to_height(exit_mm, camera) / unit, 0.0)),
                   whole.astype(np.float32)]
    maps = torch.from_numpy(np.stack(planes).astype(np.float32))
    nb, k = len(have), len(planes)
    h, w = fit.inner_height, fit.inner_width
    if (w, h) != (fit.width, fit.height):
        maps = F.interpolate(maps.reshape(1, k * nb, fit.height, fit.width), size=(h, w),
                             mode="bilinear", align_corners=False)[0].reshape(k, nb, h, w)
    grid = torch.zeros((k, nb, size, size))
    grid[:, :, :h, :w] = maps
    inside = grid[0] > 0.999
    out = {"image": x[0], "hit": grid[0] > 0.5,
           "front": torch.where(inside, grid[1], torch.nan),
           "back": torch.where(inside, grid[2], torch.nan),
           "unit_mm": torch.tensor(unit, dtype=torch.float64)}
    if last:
        out["last"] = torch.where(inside & (grid[4] > 0.999), grid[3], torch.nan)
    return out


def augment_targets(image: torch.Tensor, hit: torch.Tensor, front: torch.Tensor,
                    back: torch.Tensor, last: torch.Tensor | None,
                    augmentations: list[Augmentation], *, outline: bool = False
                    ) -> dict[str, torch.Tensor]:
    """:func:`~regkit_recon.net.geometry.augment_batch` of a batch, with its ``last`` map if any.

    ``last`` is turned and zoomed like ``back`` (paired with ``front``, so it is known where
    ``front`` and it are). ``outline``: keep the targets at the outlines (``augment_batch``'s
    ``outline``). Returns ``image``, ``hit``, ``front``, ``back``, ``valid`` and, when given,
    ``last``.
    """
    if last is None:
        return dict(zip(("image", "hit", "front", "back", "valid"),
                        augment_batch(image, hit, front, back, augmentations, outline=outline),
                        strict=True))
    nb = hit.shape[1]
    image, hit2, front2, back2, valid = augment_batch(
        image, torch.cat([hit, hit], dim=1), torch.cat([front, front], dim=1),
        torch.cat([back, last], dim=1), augmentations, outline=outline)
    return {"image": image, "hit": hit2[:, :nb], "front": front2[:, :nb],
            "back": back2[:, :nb], "last": back2[:, nb:], "valid": valid}


def item_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of item ``index``'s augmentation in ``epoch`` of a run seeded ``seed``.

    Keyed by the run's seed, the epoch and the item, never by the process that draws it, so the
    data loader's processes and :class:`~regkit_recon.net.train.DeviceCache` draw alike.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, index)))


class TrainItems(Dataset[dict[str, torch.Tensor]]):
    """Augmented training items of a ground-truth data set.

    Args:
        files: The sample files (for example the ``files`` of what
            :func:`~regkit_recon.groundtruth.dataset.open_ground_truth` returns).
        size: The network's input size.
        bones: The network's bone table.
        seed: The run's seed.
        augmented: Draw augmentations (False: the sample as it is, for validation).
        last: Give the last exit's target ``last`` too (for a network with that output; without,
            an item is turned with half the maps).
        outline: Keep the depth targets at the outlines under augmentation (see
            :func:`~regkit_recon.net.geometry.augment_batch`).
    """

    def __init__(self, files: Sequence[Any], size: int, bones: Sequence[int], seed: int,
                 *, augmented: bool = True, last: bool = False, outline: bool = False) -> None:
        self.files = list(files)
        self.size, self.bones, self.seed = int(size), tuple(bones), int(seed)
        self.augmented, self.last, self.outline = augmented, bool(last), bool(outline)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from regkit_recon.groundtruth.sample import read_sample
        from regkit_recon.net.geometry import draw_augmentation

        item = sample_targets(read_sample(self.files[index]), self.size, self.bones,
                              last=self.last)
        if self.augmented:
            aug = draw_augmentation(item_generator(self.seed, self.epoch, index))
            turned = augment_targets(item["image"][None], item["hit"][None], item["front"][None],
                                     item["back"][None],
                                     item["last"][None] if self.last else None, [aug],
                                     outline=self.outline)
            item = {k: turned[k][0] for k in item if k != "unit_mm"} | {
                "unit_mm": item["unit_mm"] / aug.zoom}
        item["index"] = torch.tensor(index)
        return item
