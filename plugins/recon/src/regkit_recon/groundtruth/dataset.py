"""A PyTorch ``Dataset`` over a ground-truth folder made by ``regkit recon generate``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from regkit.errors import InputError

__all__ = ["GroundTruthDataset"]

_IMAGES = ("degraded", "clean", "both")


class GroundTruthDataset(Dataset[dict[str, Any]]):
    """The samples of a ground-truth folder, as tensors.

    Each item is a dict:
        * ``image``: float32 ``[1, H, W]`` line integrals, the degraded radiograph
          (``image="degraded"``, default) or the clean DRR (``"clean"``); with ``"both"``,
          ``[2, H, W]``: degraded then clean;
        * ``hit``: bool ``[NB, H, W]``; ``front``, ``back``: float32 ``[NB, L, H, W]`` mm (NaN
          where none, or ``nan_fill`` when given); ``bones``: int64 ``[NB]`` label values;
        * ``intrinsic`` float64 ``[3, 3]``, ``camera_from_world`` float64 ``[4, 4]``, and
          ``camera`` (the camera file JSON string), ``source`` and ``meta`` (dicts), ``index``.

    Args:
        root: The folder (holding ``manifest.json``).
        image: Which radiograph ``image`` holds: ``"degraded"``, ``"clean"`` or ``"both"``.
        nan_fill: Replace NaN depths by this value (None keeps NaN).
        include_incomplete: Also list a folder whose run has not finished (only the samples
            already written).
    """

    def __init__(self, root: str | os.PathLike[str], *, image: str = "degraded",
                 nan_fill: float | None = None, include_incomplete: bool = False) -> None:
        if image not in _IMAGES:
            raise InputError(f"must be one of {', '.join(_IMAGES)}, got {image!r}", key="image")
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise InputError("no manifest.json: not a ground-truth folder", source=self.root,
                             key="root")
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        if not self.manifest.get("complete") and not include_incomplete:
            raise InputError("the generation has not finished (rerun it, or pass "
                             "include_incomplete=True)", source=self.root, key="root")
        entries = self.manifest["samples"]
        self.files = [self.root / e["file"] for e in entries
                      if (self.root / e["file"]).is_file()]
        self.image = image
        self.nan_fill = nan_fill

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from regkit_recon.groundtruth.sample import read_sample

        s = read_sample(self.files[index])
        if self.image == "degraded":
            img = s["image"][None]
        elif self.image == "clean":
            img = s["image_clean"][None]
        else:
            img = np.stack([s["image"], s["image_clean"]])
        front, back = s["front"], s["back"]
        if self.nan_fill is not None:
            front = np.nan_to_num(front, nan=self.nan_fill)
            back = np.nan_to_num(back, nan=self.nan_fill)
        cam = json.loads(s["camera"])
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "hit": torch.from_numpy(s["hit"]),
            "front": torch.from_numpy(front),
            "back": torch.from_numpy(back),
            "bones": torch.from_numpy(s["bones"].astype(np.int64)),
            "intrinsic": torch.tensor(cam["intrinsic"], dtype=torch.float64),
            "camera_from_world": torch.tensor(cam["camera_from_world"], dtype=torch.float64),
            "camera": s["camera"],
            "source": json.loads(s["source"]),
            "meta": json.loads(s["meta"]),
            "index": index,
        }
