r"""PyTorch ``Dataset``\ s over ground-truth folders made by ``regkit recon generate``.

:class:`GroundTruthDataset` reads one folder; :func:`open_ground_truth` reads several as one (the
shard folders of one data set, ``generate --shard K/N``, and/or unrelated data sets with the same
bone table). Batch their items with :func:`collate_ground_truth` (``DataLoader(...,
collate_fn=collate_ground_truth)``): torch's default collation fails on a batch whose samples
come from different sources (a phantom with malunions and one without, a CT and a phantom),
since it zips their ``meta`` and ``source`` records field by field.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from regkit.errors import InputError
from regkit_recon.groundtruth.spec import FORMAT_VERSION

__all__ = ["GroundTruthDataset", "GroundTruthFolders", "collate_ground_truth", "open_ground_truth"]

_IMAGES = ("degraded", "clean", "both")
_FORMAT = "regkit-recon ground truth"


def _read_manifest(root: Path, key: str) -> dict[str, Any]:
    """``root/manifest.json``, or an InputError naming the folder."""
    path = root / "manifest.json"
    if not path.is_file():
        what = "does not exist" if not root.exists() else "no manifest.json"
        raise InputError(f"{what}: not a ground-truth folder", source=root, key=key)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError("holds an unreadable manifest.json", source=root, key=key) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("samples"), list):
        raise InputError("manifest.json is not a ground-truth manifest (no sample list)",
                         source=root, key=key)
    return manifest


def _item(path: Path, image: str, nan_fill: float | None, index: int) -> dict[str, Any]:
    """The item of the sample file ``path`` (see :class:`GroundTruthDataset`)."""
    from regkit_recon.groundtruth.sample import read_sample

    s = read_sample(path)
    if image == "degraded":
        img = s["image"][None]
    elif image == "clean":
        img = s["image_clean"][None]
    else:
        img = np.stack([s["image"], s["image_clean"]])
    front, back = s["front"], s["back"]
    if nan_fill is not None:
        front = np.nan_to_num(front, nan=nan_fill)
        back = np.nan_to_num(back, nan=nan_fill)
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


def collate_ground_truth(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items of :class:`GroundTruthDataset` / :func:`open_ground_truth` (a ``collate_fn``).

    Tensors are stacked (a new first axis), ``index`` becomes an int64 tensor, and ``camera``,
    ``source`` and ``meta`` stay lists of one value per item: unlike torch's default collation,
    this batches samples whose records differ (phantoms with and without malunions, CTs and
    phantoms).
    """
    if not batch:
        raise InputError("an empty batch", key="batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif key == "index":
            out[key] = torch.tensor(values, dtype=torch.int64)
        else:
            out[key] = values
    return out


class GroundTruthDataset(Dataset[dict[str, Any]]):
    """The samples of a ground-truth folder, as tensors.

    Each item is a dict:
        * ``image``: float32 ``[1, H, W]`` line integrals, the degraded radiograph
          (``image="degraded"``, default) or the clean DRR (``"clean"``); with ``"both"``,
          ``[2, H, W]``: degraded then clean;
        * ``hit``: bool ``[NB, H, W]``; ``front``, ``back``: float32 ``[NB, L, H, W]`` mm (NaN
          where none, or ``nan_fill`` when given); ``bones``: int64 ``[NB]`` label values;
        * ``intrinsic`` float64 ``[3, 3]``, ``camera_from_world`` float64 ``[4, 4]``, and
          ``camera`` (the camera file JSON string), ``source`` and ``meta`` (dicts; the sample's
          own index in its data set is ``meta["index"]``), ``index`` (the item's position in
          this dataset).

    Batch items with :func:`collate_ground_truth` as a DataLoader's ``collate_fn``: the default
    collation fails once the samples of a batch come from phantoms with different malunions
    (``meta``'s ``deformities``).

    Attributes:
        root, manifest: The folder and its manifest.
        files: The sample files read, in the manifest's order.
        indices: Their sample indices (the manifest's ``index``), in the same order.

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
        self.manifest = _read_manifest(self.root, "root")
        if not self.manifest.get("complete") and not include_incomplete:
            raise InputError("the generation has not finished (rerun it, or pass "
                             "include_incomplete=True)", source=self.root, key="root")
        entries = [e for e in self.manifest["samples"] if (self.root / e["file"]).is_file()]
        self.files = [self.root / e["file"] for e in entries]
        self.indices = [int(e["index"]) for e in entries]
        self.image = image
        self.nan_fill = nan_fill

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _item(self.files[index], self.image, self.nan_fill, index)


class GroundTruthFolders(Dataset[dict[str, Any]]):
    """Several ground-truth folders read as one dataset (made by :func:`open_ground_truth`).

    Items are those of :class:`GroundTruthDataset` (``index``: the position in this dataset).

    Attributes:
        parts: One :class:`GroundTruthDataset` per folder, in the order given (``roots`` and
            ``manifests``: their folders and manifests).
        files: Every sample file, in item order.
        locations: ``(part, sample index)`` of each item: the folder (index into ``parts``) and
            the sample's index in its data set.
        bones: The bone label values every sample holds, in channel order.
        image, nan_fill: As for :class:`GroundTruthDataset`.
    """

    def __init__(self, parts: list[GroundTruthDataset], order: list[tuple[int, int]],
                 bones: list[int], image: str, nan_fill: float | None) -> None:
        self.parts = tuple(parts)
        self.locations = list(order)
        where = [dict(zip(p.indices, p.files, strict=True)) for p in parts]
        self.files = [where[p][i] for p, i in order]
        self.bones = list(bones)
        self.image = image
        self.nan_fill = nan_fill

    @property
    def roots(self) -> list[Path]:
        """The folders, in the order given."""
        return [p.root for p in self.parts]

    @property
    def manifests(self) -> list[dict[str, Any]]:
        """The folders' manifests, in the order given."""
        return [p.manifest for p in self.parts]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _item(self.files[index], self.image, self.nan_fill, index)


def _dataset_key(manifest: dict[str, Any]) -> str:
    """What makes two folders parts of one data set: the format and the parameters."""
    return json.dumps([manifest.get("format_version"), manifest.get("parameters")],
                      sort_keys=True)


def open_ground_truth(roots: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
                      image: str = "degraded", nan_fill: float | None = None
                      ) -> GroundTruthFolders:
    """Read one or several ground-truth folders as one dataset.

    The folders may be the shard folders of one data set (``generate --shard K/N``, the same
    parameters) and/or folders of different data sets; the items of one data set come in the
    order of their sample indices (so the shards of a data set read like the unsharded run),
    data sets in the order of their first folder.

    Args:
        roots: A folder, or several.
        image: As for :class:`GroundTruthDataset`.
        nan_fill: As for :class:`GroundTruthDataset`.

    Returns:
        The dataset (items as :class:`GroundTruthDataset`'s).

    Raises:
        InputError: no folder; a folder that is not a complete ground-truth folder (no or an
            unreadable manifest, a run not finished, a listed sample file missing); two folders
            holding the same sample of one data set (a shard given twice, or a shard with the
            whole run); folders whose samples hold different bones (a network needs one bone
            table). The message names the folder.
    """
    if isinstance(roots, str | os.PathLike):
        roots = [roots]
    folders = [Path(r) for r in roots]
    if not folders:
        raise InputError("no ground-truth folder given", key="roots")
    if image not in _IMAGES:
        raise InputError(f"must be one of {', '.join(_IMAGES)}, got {image!r}", key="image")
    parts: list[GroundTruthDataset] = []
    bones: list[int] | None = None
    bones_from: Path | None = None
    held: dict[str, dict[int, Path]] = {}   # data set -> sample index -> folder
    groups: dict[str, list[int]] = {}       # data set -> parts, in the order given
    for root in folders:
        manifest = _read_manifest(root, "roots")
        if manifest.get("format") != _FORMAT:
            raise InputError(f"manifest.json is not a {_FORMAT} manifest", source=root,
                             key="roots")
        version = manifest.get("format_version")
        if isinstance(version, int) and version < 3:
            warnings.warn(f"{root}: ground truth of format_version {version}, whose degraded "
                          "images clip over-exposed air and thin bones to zero while the "
                          f"truth keeps them; regenerate it (format {FORMAT_VERSION})", UserWarning,
                          stacklevel=2)
        if not manifest.get("complete"):
            raise InputError("the generation has not finished (rerun the same generate "
                             "command to complete it)", source=root, key="roots")
        missing = [e["file"] for e in manifest["samples"] if not (root / e["file"]).is_file()]
        if missing:
            raise InputError(f"{len(missing)} sample file(s) of its manifest are missing "
                             f"(first: {missing[0]}): an incomplete ground-truth folder",
                             source=root, key="roots")
        for source in manifest.get("sources", []):
            these = [int(b) for b in source.get("bones", [])]
            if bones is None:
                bones, bones_from = these, root
            elif these != bones:
                raise InputError(f"its samples hold bones {these} (source "
                                 f"{source.get('id')!r}), but those of {bones_from} hold "
                                 f"{bones}; folders read together need one bone table",
                                 source=root, key="roots")
        key = _dataset_key(manifest)
        seen = held.setdefault(key, {})
        for entry in manifest["samples"]:
            i = int(entry["index"])
            if i in seen:
                raise InputError(f"holds sample {i} of the same data set as {seen[i]} (the same "
                                 "parameters): a folder or shard given twice, or a shard with "
                                 "its whole run", source=root, key="roots")
            seen[i] = root
        part = GroundTruthDataset(root, image=image, nan_fill=nan_fill)
        groups.setdefault(key, []).append(len(parts))
        parts.append(part)
    order: list[tuple[int, int]] = []
    for members in groups.values():
        order += sorted(((p, i) for p in members for i in parts[p].indices),
                        key=lambda pi: pi[1])
    return GroundTruthFolders(parts, order, bones or [], image, nan_fill)
