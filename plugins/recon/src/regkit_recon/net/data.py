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
from regkit_recon.net.geometry import augment, depth_to_height, fit_image
from regkit_recon.net.model import HEIGHT_SCALE

__all__ = ["TrainItems", "item_generator", "sample_targets"]


def sample_targets(sample: dict[str, Any], size: int, bones: Sequence[int]
                   ) -> dict[str, torch.Tensor]:
    """One read sample on the network's grid, unaugmented.

    Returns:
        ``image`` ``(1, S, S)`` normalised; ``hit`` bool, ``front``, ``back`` ``(NB, S, S)``
        heights of the first layer in height units (NaN where the bone is not hit);
        ``unit_mm``, mm per height unit.

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
    maps = torch.from_numpy(np.stack([hit.astype(np.float32), np.nan_to_num(front),
                                      np.nan_to_num(back)]).astype(np.float32))
    nb = len(have)
    h, w = fit.inner_height, fit.inner_width
    if (w, h) != (fit.width, fit.height):
        maps = F.interpolate(maps.reshape(1, 3 * nb, fit.height, fit.width), size=(h, w),
                             mode="bilinear", align_corners=False)[0].reshape(3, nb, h, w)
    grid = torch.zeros((3, nb, size, size))
    grid[:, :, :h, :w] = maps
    inside = grid[0] > 0.999
    return {"image": x[0], "hit": grid[0] > 0.5,
            "front": torch.where(inside, grid[1], torch.nan),
            "back": torch.where(inside, grid[2], torch.nan),
            "unit_mm": torch.tensor(unit, dtype=torch.float64)}


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
    """

    def __init__(self, files: Sequence[Any], size: int, bones: Sequence[int], seed: int,
                 *, augmented: bool = True) -> None:
        self.files = list(files)
        self.size, self.bones, self.seed = int(size), tuple(bones), int(seed)
        self.augmented = augmented
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from regkit_recon.groundtruth.sample import read_sample

        item = sample_targets(read_sample(self.files[index]), self.size, self.bones)
        if self.augmented:
            image, hit, front, back, _, rec = augment(
                item["image"], item["hit"], item["front"], item["back"],
                item_generator(self.seed, self.epoch, index))
            item = {"image": image, "hit": hit, "front": front, "back": back,
                    "unit_mm": item["unit_mm"] / rec["zoom"]}
        item["index"] = torch.tensor(index)
        return item
