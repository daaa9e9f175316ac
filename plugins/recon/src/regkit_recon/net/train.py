"""Training of the bone network: ``regkit recon train``, on one process or many (torchrun).

**Batches.** ``batch`` is the *global* batch. Each epoch's order is a permutation drawn from
``SeedSequence(seed, spawn_key=(epoch,))``, cut into global batches (the last incomplete one is
dropped); under ``torchrun`` with ``W`` processes, rank ``r`` takes the ``r``-th ``batch / W``
items of every global batch and DistributedDataParallel averages the gradients. Every loss term
is a mean over items of a per-item mean, so a step on ``W`` processes equals the single-process
step on the same global batch (GroupNorm has no batch statistics to synchronise).

**Loss.** Segmentation: binary cross-entropy per bone channel plus a soft Dice over the bones
present in the item. Depth (first layer, where the truth is hit): per item, the residuals
``r`` of front and back heights (input pixels) lose their mean ``r̄`` (the common offset along the
rays), ``|r − r̄|`` is scored with weight :attr:`TrainSpec.depth_weight`, and ``|r|`` itself with
:attr:`TrainSpec.offset_weight` (which teaches the network the training data's prior on the
offset; see :mod:`regkit_recon.net.geometry`). With :attr:`TrainSpec.thickness_weight`, the
error of each pixel's thickness (front height minus back height, where both are known) is
scored too: the terms above score front and back each, and equal errors of the two hide a
wrong thickness.

**Outputs** in ``RUN``: ``checkpoint.pt`` (model, optimiser, scheduler, step, random state:
written atomically every ``checkpoint_s`` seconds, at each epoch's end, and on Ctrl-C),
``model.pt`` (the float16 model, at each epoch's end), ``log.jsonl`` (one JSON
line per logged step and per validation), ``curves.png`` (the learning curves), ``spec.json``.
``--resume`` continues from ``checkpoint.pt`` and gives the same weights as a run that was never
interrupted (on the CPU; CUDA's convolution kernels are not bit-reproducible unless
``torch.use_deterministic_algorithms`` is set); a resume may also change ``--epochs`` (or
``--max-steps``) to train longer: a warm restart, the learning rate following the new schedule
from the step reached.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from regkit.errors import FileFormatError, InputError
from regkit.utils.checks import is_whole
from regkit.utils.files import atomic_write_bytes, atomic_write_text, check_output
from regkit_recon.net.model import HEIGHT_SCALE, LAST_GAP_BIAS, BoneNet, NetConfig, save_model
from regkit_recon.net.runtime import (
    Interrupts,
    any_rank_interrupted,
    autocast_dtype,
    device_name,
    join_process_group,
    precision_note,
    rank_device,
)

__all__ = ["DEPTH_MODULES", "HEAD_MODULES", "TRAINABLE", "TrainSpec", "batch_loss",
           "global_batches", "train"]


@dataclass(frozen=True)
class TrainSpec:
    """What ``regkit recon train`` was asked for.

    Attributes:
        data: Ground-truth folders to train on (shards of one set, or several sets).
        out: The run folder.
        val: Ground-truth folders to validate on (None: no validation).
        epochs: Passes over the training data.
        batch: Global batch (items per optimiser step, over all processes).
        size: Network input size S.
        seed: Seed of the weights, the order and the augmentation.
        lr: Peak learning rate (AdamW; linear warm-up over ``warmup`` steps, then cosine to 2 %).
        weight_decay: AdamW's weight decay.
        warmup: Warm-up steps.
        widths, stem: The network's channels (see :class:`NetConfig`).
        context: Self-attention blocks at the coarsest level (see :class:`NetConfig`).
        head, head_blocks: The segmentation head's channels (0: the stem's) and residual blocks
            (see :class:`NetConfig`).
        last: Also predict the last exit (see :class:`NetConfig`).
        refine: Channels of the full-resolution depth refinement (0: none; see
            :class:`NetConfig`).
        outline_targets: Keep the depth targets at the outlines under augmentation: a turned or
            zoomed pixel whose footprint straddles a bone's outline takes the mean height of the
            bone pixels in it (heights and their coverage resampled alike, then divided) rather
            than none. Without it (as every shipped model up to hand_v9 was trained) about half
            of each bone's outermost pixel ring loses its depth target in an augmented item.
        trainable: ``all``; ``head``: only the segmentation head (see :data:`HEAD_MODULES`)
            learns, the rest keeps its weights (with ``init``, a wider or deeper head trained on
            a fixed network: a few CPU hours instead of a GPU run); ``heads``: the segmentation
            head and the depth head (:data:`DEPTH_MODULES`, which reads the segmentation's
            probabilities, so it follows a retrained segmentation head) learn; ``depth``: only
            the depth head (and the refinement), so the masks stay the model's. All three need
            ``init``: the rest is a trained model's.
        depth_weight, offset_weight: Weights of the shift-aligned and raw depth terms.
        thickness_weight: Weight of the thickness term (0: none, as every shipped model up to
            hand_v9 was trained).
        checkpoint_s: Seconds between checkpoints.
        val_limit: Validation items per validation (None: all).
        val_every: Validate every this many epochs (and at the end).
        max_steps: Stop after this many steps in all (tests; None: the epochs' worth).
        loader_workers: DataLoader worker processes per training process.
        device_cache: Decode every training item once, hold them on the training device and
            augment each batch there (a GPU's pace rather than the loader's; the same draws).
        device: ``cpu``, ``cuda`` or None (CUDA when present).
        init: A model file (``model.pt``) whose weights start the run instead of random ones
            (fine-tuning, or going on from a shipped model whose checkpoint is gone); its
            configuration must match, except that it may have fewer context blocks, a narrower
            segmentation head or fewer head blocks, or lack the last exit: the new blocks start
            as the identity, the new head channels are left out of the old ones' sums and the
            last exit starts at the back, so the run starts from the model's own outputs.
        precision: ``bf16`` (autocast to bfloat16, the heads in float32), ``fp32``, or
            ``auto``: bf16 on CUDA and on CPUs with native bfloat16 (AVX512-BF16 or AMX; twice
            the speed measured on 2 EPYC cores), else fp32.
    """

    data: tuple[str, ...]
    out: str
    val: tuple[str, ...] | None = None
    epochs: int = 10
    batch: int = 8
    size: int = 256
    seed: int = 0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    widths: tuple[int, ...] = (24, 48, 96, 128, 160)
    stem: int = 16
    context: int = 0
    head: int = 0
    head_blocks: int = 0
    last: bool = False
    refine: int = 0
    outline_targets: bool = False
    trainable: str = "all"
    depth_weight: float = 0.1
    offset_weight: float = 0.02
    thickness_weight: float = 0.0
    checkpoint_s: float = 300.0
    val_limit: int | None = 64
    val_every: int = 1
    max_steps: int | None = None
    precision: str = "auto"
    init: str | None = None
    loader_workers: int = 1
    device: str | None = None
    device_cache: bool = False

    def recipe(self) -> dict[str, Any]:
        """What a resumed run must repeat (the rest may change between runs)."""
        d = asdict(self)
        for key in ("out", "checkpoint_s", "loader_workers", "device", "val_limit",
                    "val", "precision", "device_cache"):
            d.pop(key)
        d["data"] = [str(Path(p).resolve()) for p in self.data]
        d["widths"] = list(self.widths)
        for key, default in (("context", 0), ("head", 0), ("head_blocks", 0), ("last", False),
                             ("refine", 0), ("outline_targets", False), ("trainable", "all"),
                             ("thickness_weight", 0.0)):
            if d[key] == default:  # as recipes were before these options: older checkpoints resume
                d.pop(key)
        if self.init is not None:
            d["init"] = str(Path(self.init).resolve())
        return d


# ------------------------------------------------------------------------------------ loss


def batch_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], *,
               depth_weight: float, offset_weight: float,
               thickness_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """The loss of one batch and its terms (each a mean over items of per-item means).

    Args:
        out: The network's output (``logits``, ``front``, ``back``: ``(B, NB, S, S)``).
        batch: ``hit`` bool ``(B, NB, S, S)``; ``front``, ``back`` heights in height units
            ``(B, NB, S, S)``, NaN where unknown (not hit, or at a bone's outline, where a
            resampled height would mix inside and outside).
        depth_weight: Weight of the shift-aligned depth term.
        offset_weight: Weight of the raw depth term.
        thickness_weight: Weight of the thickness term.

    Returns:
        ``loss`` and its terms ``bce``, ``dice``, ``depth``, ``offset`` and ``thickness``
        (mean absolute heights in input pixels; ``thickness``: of front minus back, where both
        are known), each a scalar tensor; with a ``last`` output (and ``last`` in
        the batch, as ``back``), ``last`` too: the mean absolute error of the gap from ``back``
        down to ``last`` (input pixels, shift-free by nature, weighted as ``depth``).

    Pixels outside the original image (after a turn or a zoom) hold air and no bone, which is
    the truth there, so the segmentation is scored everywhere.
    """
    logits = out["logits"].float()
    hit = batch["hit"].float()
    bce = F.binary_cross_entropy_with_logits(logits, hit)
    prob = torch.sigmoid(logits)
    inter = (prob * hit).flatten(2).sum(2)
    truth = hit.flatten(2).sum(2)
    total = prob.flatten(2).sum(2) + truth
    present = (truth > 0).float()
    dice = 1.0 - (2.0 * inter + 1.0) / (total + 1.0)
    dice = (dice * present).sum(1) / present.sum(1).clamp_min(1.0)
    target = torch.cat([batch["front"], batch["back"]], dim=1)
    known = torch.isfinite(target).nonzero(as_tuple=True)
    pred = torch.cat([out["front"], out["back"]], dim=1)
    r = (pred[known].float() - target[known].float()) * HEIGHT_SCALE
    item = known[0]
    n = logits.shape[0]

    def per_item(values: torch.Tensor, of: torch.Tensor) -> torch.Tensor:
        """The sum of ``values`` over each item (``of``: each value's item)."""
        return torch.zeros(n, device=values.device).index_add_(0, of, values)

    def item_mean(values: torch.Tensor, of: torch.Tensor) -> torch.Tensor:
        """The mean over items of each item's mean of ``values`` (an item without any: 0)."""
        num = per_item(torch.ones_like(values), of)
        return ((per_item(values, of) / num.clamp_min(1.0)) * (num > 0).float()).mean()

    count = per_item(torch.ones_like(r), item)
    has = (count > 0).float()
    count = count.clamp_min(1.0)
    shift = per_item(r, item) / count
    depth = per_item((r - shift[item]).abs(), item) / count
    offset = per_item(r.abs(), item) / count
    terms = {"bce": bce, "dice": dice.mean(), "depth": (depth * has).mean(),
             "offset": (offset * has).mean()}
    thick_true = batch["front"] - batch["back"]
    both = torch.isfinite(thick_true).nonzero(as_tuple=True)
    t = ((out["front"] - out["back"])[both].float() - thick_true[both].float()).abs() * HEIGHT_SCALE
    terms["thickness"] = item_mean(t, both[0])
    terms["loss"] = (terms["bce"] + terms["dice"] + depth_weight * terms["depth"]
                     + offset_weight * terms["offset"] + thickness_weight * terms["thickness"])
    if "last" in out:
        if "last" not in batch:
            raise InputError("the network predicts the last exit but the batch has no 'last' "
                             "target", key="last")
        gap_true = batch["back"] - batch["last"]
        seen = torch.isfinite(gap_true).nonzero(as_tuple=True)
        gap = (out["back"] - out["last"])[seen].float()
        g = (gap - gap_true[seen].float()).abs() * HEIGHT_SCALE
        terms["last"] = item_mean(g, seen[0])
        terms["loss"] = terms["loss"] + depth_weight * terms["last"]
    return terms


# ------------------------------------------------------------------------------- batching


def global_batches(n: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The global batches of ``epoch`` over ``n`` items (the last incomplete one dropped)."""
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,))
                                  ).permutation(n)
    return [order[i:i + batch].tolist() for i in range(0, n - batch + 1, batch)]


def _local(indices: list[int], rank: int, world: int) -> list[int]:
    per = len(indices) // world
    return indices[rank * per:(rank + 1) * per]


class DeviceCache:
    """Every training item decoded once, unaugmented, held on the training device.

    :meth:`batch` augments a batch there with the draws that
    :class:`~regkit_recon.net.data.TrainItems` makes for the same epoch and items
    (:func:`~regkit_recon.net.data.item_generator`), so a run gives the weights of a run through the
    data loader (bit for bit on the CPU; on a GPU its kernels round differently); only the pace
    differs. On a GPU an augmented item costs the loader 0.2-0.4 s of a CPU core, more than a
    whole training step.

    Args:
        items: The run's training items.
        device: Where to hold them.
        workers: Loader processes for the one decoding pass.
        stream: Where to report progress (None: nowhere).
        interrupts: The run's Ctrl-C handler: a pending interrupt stops the decoding.

    Raises:
        InputError: the items would take more than 80 % of the device's free memory (under
            torchrun each process checks for itself, and holds every item).
        KeyboardInterrupt: an interrupt is pending.
    """

    def __init__(self, items: Any, device: torch.device, workers: int,
                 stream: Any = None, interrupts: Any = None) -> None:
        from regkit_recon.groundtruth.dataset import collate_ground_truth
        from regkit_recon.net.data import TrainItems

        self.seed, self.device, self.outline = items.seed, device, items.outline
        plain = TrainItems(items.files, items.size, items.bones, items.seed, augmented=False,
                           last=items.last)
        n, nb, s = len(plain), len(items.bones), items.size
        self.keys = ("image", "hit", "front", "back", "last")[:5 if items.last else 4]
        need = n * s * s * (4 + nb * (13 if items.last else 9))
        free = _free_bytes(device)
        if free is not None and need > 0.8 * free:
            raise InputError(f"{n} training items take {need / 2**30:.1f} GiB decoded, more "
                             f"than 80 % of the {free / 2**30:.1f} GiB free on {device}; train "
                             "through the data loader (without --cache-on-device) or on fewer "
                             "items", key="device_cache")
        self.image = torch.empty((n, 1, s, s), dtype=torch.float32, device=device)
        self.hit = torch.empty((n, nb, s, s), dtype=torch.bool, device=device)
        self.front = torch.empty((n, nb, s, s), dtype=torch.float32, device=device)
        self.back = torch.empty((n, nb, s, s), dtype=torch.float32, device=device)
        self.last = torch.empty((n, nb, s, s) if items.last else (0,), dtype=torch.float32,
                                device=device)
        self.unit_mm = torch.empty(n, dtype=torch.float64, device=device)
        loader = torch.utils.data.DataLoader(plain, batch_size=16, collate_fn=collate_ground_truth,
                                             num_workers=workers)
        start, done = time.perf_counter(), 0
        for part in loader:
            at = part["index"].to(device)
            for key in (*self.keys, "unit_mm"):
                getattr(self, key)[at] = part[key].to(device)
            done += len(at)
            if interrupts is not None and interrupts.pending:
                raise KeyboardInterrupt
            if stream is not None:
                print(f"\rcaching the training items on {device}: {done}/{n} "
                      f"({need / 2**30:.1f} GiB)", end="", file=stream, flush=True)
        if stream is not None:
            print(f" in {time.perf_counter() - start:.0f} s", file=stream, flush=True)

    def batch(self, indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        """The augmented items ``indices`` of ``epoch``, as the data loader would collate them."""
        from regkit_recon.net.data import augment_targets, item_generator
        from regkit_recon.net.geometry import draw_augmentation

        augs = [draw_augmentation(item_generator(self.seed, epoch, int(i))) for i in indices]
        at = torch.as_tensor(list(indices), dtype=torch.int64, device=self.device)
        turned = augment_targets(self.image[at], self.hit[at], self.front[at], self.back[at],
                                 self.last[at] if "last" in self.keys else None, augs,
                                 outline=self.outline)
        zoom = torch.tensor([a.zoom for a in augs], dtype=torch.float64, device=self.device)
        return {k: turned[k] for k in self.keys} | {
            "unit_mm": self.unit_mm[at] / zoom, "index": at}


def _refuse_damaged(files: Sequence[Any]) -> None:
    """Refuse, before training, sample files that are truncated or not samples (0.3 ms a file).

    A data loader would meet them only when their batch comes, hours in.
    """
    from regkit_recon.groundtruth.sample import sample_intact

    bad = [Path(f) for f in files if not sample_intact(f)]
    if bad:
        raise FileFormatError(f"{len(bad)} sample file(s) truncated or damaged: "
                              f"{', '.join(str(p) for p in bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}; remake them (regkit recon "
                              "generate resumes into the folder and remakes them)", key="data")


def _data_fingerprint(files: Sequence[Any]) -> str:
    """A digest of the training sample files' names and sizes, in order.

    A resumed run must see the data it started on: regenerating a folder with another seed or
    size keeps its path (which the recipe holds) but changes its files. Names within their
    folders (``samples/000002.npz``), not whole paths, so that the same data given by another
    spelling of its path (relative, absolute, a link) resumes.
    """
    import hashlib

    digest = hashlib.sha256()
    for f in files:
        path = Path(f)
        digest.update(f"{path.parent.name}/{path.name}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device, or available RAM (None where it cannot be read)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:  # MemAvailable counts the page cache the kernel can give back; MemFree does not
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


# --------------------------------------------------------------------------------- helpers


class _Progress:
    """One line of progress: epoch, step, loss, throughput and time left."""

    def __init__(self, total: int, stream: Any) -> None:
        self.total, self.stream = total, stream
        self.start, self.last = time.perf_counter(), -1e9
        self.first_step: int | None = None
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def show(self, step: int, epoch: int, loss: float, items_per_s: float, force: bool = False
             ) -> None:
        now = time.perf_counter()
        if self.first_step is None:
            self.first_step, self.start = step - 1, now - 1e-3
        if not force and now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        done = step - self.first_step
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - step) / rate if rate > 0 else float("inf")
        eta = f"{left / 60:.1f} min" if math.isfinite(left) else "?"
        width = 24
        filled = int(width * step / max(self.total, 1))
        line = (f"train epoch {epoch + 1} [{'#' * filled}{'-' * (width - filled)}] "
                f"{step}/{self.total} loss {loss:.4f} {items_per_s:.2f} items/s left {eta}")
        print(("\r" if self.tty else "") + line, end="" if self.tty else "\n",
              file=self.stream, flush=True)


_LENGTH = ("epochs", "max_steps")
"""Recipe keys a resumed run may change: it may be made longer (or shorter) than planned."""


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def open_folders(folders: list[str]) -> tuple[list[Path], list[dict[str, Any]]]:
    """The sample files and manifests of ground-truth folders.

    In the order of :func:`~regkit_recon.groundtruth.dataset.open_ground_truth` (which checks they
    go together): shards of one data set read exactly as the unsharded set.
    """
    from regkit_recon.groundtruth.dataset import open_ground_truth

    data = open_ground_truth(folders)  # the shards of one set in index order, as unsharded
    return list(data.files), list(data.manifests)


def _bones_of(manifests: list[dict[str, Any]]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    from regkit_recon.net.model import bone_table

    sources = [s for m in manifests for s in m["sources"]]
    bones = {tuple(int(b) for b in s["bones"]) for s in sources}
    if len(bones) != 1:
        raise InputError(f"the training data hold several bone tables {sorted(bones)}; a "
                         "network needs one", key="data")
    table = bones.pop()
    names = sources[0].get("bone_names") or {}
    fallback = bone_table(table)
    return table, tuple(names.get(str(b), fallback[i]) for i, b in enumerate(table))


# ------------------------------------------------------------------------------------ train


def train(spec: TrainSpec, *, resume: bool = False, stream: Any = None,
          stop_at: int | None = None) -> dict[str, Any]:
    """Train (or resume training) the bone network as ``spec`` says.

    Args:
        spec: The recipe.
        resume: Continue from ``RUN/checkpoint.pt``.
        stream: Where the progress goes (default stderr).
        stop_at: Stop once this many steps are done in all, with a checkpoint and ``model.pt``,
            as an interruption would; the schedule stays the whole run's, so a later
            ``--resume`` goes on exactly (unlike ``max_steps``, which shortens the schedule).
            A run's history with an interruption at step N is replayed by ``stop_at=N``.

    Returns:
        The final record: steps, seconds, last losses, last validation figures, and
        ``stopped`` (True when ``stop_at`` ended it).

    Raises:
        InputError: bad data, options, or a resume with another recipe.
        KeyboardInterrupt: Ctrl-C, after the step under way and a checkpoint (rank 0).
    """
    if stop_at is not None and (not is_whole(stop_at)
                                or stop_at < 1):
        raise InputError(f"must be a whole number >= 1, got {stop_at!r}", key="stop_at")
    name = device_name(spec.device)
    rank, world = join_process_group(name)
    try:
        with Interrupts() as interrupts:
            record = _train(spec, resume, stream if stream is not None else sys.stderr, rank,
                            world, rank_device(name, rank), interrupts, stop_at)
        if world > 1:
            # Every rank past its last collective before any tears the group down: a rank that
            # destroyed it while another's gloo work was in flight aborted at exit (SIGABRT,
            # "terminate called without an active exception"), seen once in CI.
            dist.barrier()
        return record
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(spec: TrainSpec, resume: bool, stream: Any, rank: int, world: int,  # noqa: C901 - the training loop, one linear pass
           device: torch.device, interrupts: Interrupts,
           stop_at: int | None = None) -> dict[str, Any]:
    from regkit_recon.groundtruth.dataset import collate_ground_truth
    from regkit_recon.net.data import TrainItems

    _check(spec, world)
    amp = autocast_dtype(spec.precision, device)
    note = precision_note(spec.precision, device)
    if note is not None and rank == 0:
        print(note, file=stream, flush=True)
    out = Path(spec.out)
    if rank == 0:
        check_output(out, [] if spec.init is None else [spec.init], kind="into", key="out")
    train_files, manifests = open_folders(list(spec.data))
    fingerprint = _data_fingerprint(train_files)
    _refuse_damaged(train_files)
    bones, names = _bones_of(manifests)
    config = NetConfig(bones, names, spec.size, tuple(spec.widths), spec.stem,
                       context=spec.context, head=spec.head, head_blocks=spec.head_blocks,
                       last=spec.last, refine=spec.refine)
    items = TrainItems(train_files, spec.size, bones, spec.seed, last=spec.last,
                       outline=spec.outline_targets)
    per_epoch = len(items) // spec.batch
    if per_epoch < 1:
        raise InputError(f"{len(items)} training items make no batch of {spec.batch}",
                         key="batch")
    total = per_epoch * spec.epochs
    if spec.max_steps is not None:
        total = min(total, spec.max_steps)

    torch.manual_seed(spec.seed)
    net = BoneNet(config).to(device)
    if spec.init is not None and not resume:
        from regkit_recon.net.model import load_model

        start = load_model(spec.init)
        _warm_start(net, start.net, spec.init, trainable=spec.trainable)
    learning = _learning_parameters(net, spec.trainable)
    optimiser = torch.optim.AdamW(learning, lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: _lr_factor(s, total, spec.warmup))
    step, history_seconds = 0, 0.0
    checkpoint = out / "checkpoint.pt"
    if resume:
        if not checkpoint.is_file():
            raise InputError("has no checkpoint.pt to resume from", source=out, key="resume")
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            old, new = state["recipe"], spec.recipe()
            _ = state["model"], state["optimiser"], state["scheduler"], state["step"]
            old_data = state.get("data_fingerprint")     # absent from runs made before it
        except Exception as err:  # torch raises many kinds for a damaged file
            raise FileFormatError(f"not a readable training checkpoint ({type(err).__name__})",
                                  source=checkpoint, key="resume") from None
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        other = [k for k in changed if k not in _LENGTH]
        if other:
            raise InputError(f"the checkpoint was made with another recipe ({', '.join(other)} "
                             f"{'differs' if len(other) == 1 else 'differ'}); resume with the "
                             "same options (only --epochs and --max-steps may change)",
                             source=checkpoint, key="resume")
        if old_data is not None and old_data != fingerprint:
            raise InputError("the training data changed since the checkpoint (the same folders "
                             "now hold other sample files); resume on the data it was made "
                             "with, or start a new run", source=checkpoint, key="resume")
        if changed and rank == 0:
            print(f"resuming at step {state['step']} with a new length ("
                  + ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in changed)
                  + "): the learning rate follows the new schedule from here, so the weights "
                  "will differ from one uninterrupted run's", file=stream, flush=True)
        net.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        step, history_seconds = int(state["step"]), float(state["seconds"])
        torch.set_rng_state(state["torch_rng"])
        for group, base in zip(optimiser.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * _lr_factor(step, total, spec.warmup)  # a longer schedule's
        if rank == 0:
            _truncate_log(out / "log.jsonl", step)
    elif rank == 0 and checkpoint.is_file():
        raise InputError("already holds a run (checkpoint.pt); pass --resume to continue it, "
                         "or use a new --out", source=out, key="out")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "spec.json", json.dumps(
            {"recipe": spec.recipe(), "val": list(spec.val or []), "world_size": world,
             "items": len(items), "steps": total, "precision": str(amp or "float32")},
            indent=1) + "\n")

    model: Any = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    val_items = None
    if spec.val:
        files, val_manifests = open_folders(list(spec.val))
        if _bones_of(val_manifests)[0] != bones:
            raise InputError(f"the validation data hold bones {list(_bones_of(val_manifests)[0])}"
                             f", the training data {list(bones)}", key="val")
        if spec.val_limit:  # spread over the set, not its first sources
            files = files[::max(1, len(files) // spec.val_limit)][:spec.val_limit]
        _refuse_damaged(files)
        val_items = TrainItems(files, spec.size, bones, spec.seed, augmented=False,
                               last=spec.last)

    def save(reason: str) -> None:
        if rank != 0:
            return
        _save_checkpoint(checkpoint, {
            "recipe": spec.recipe(), "config": config.to_json(), "model": net.state_dict(),
            "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
            "step": step, "seconds": history_seconds + (time.perf_counter() - started),
            "torch_rng": torch.get_rng_state(), "reason": reason,
            "data_fingerprint": fingerprint})

    cache: DeviceCache | None = None
    log = _Log(out / "log.jsonl", rank == 0)
    bar = _Progress(total, stream)
    started = time.perf_counter()
    last_ckpt = started
    last: dict[str, float] = {}
    val: dict[str, Any] = {}
    end = total if stop_at is None else min(total, stop_at)
    try:
        if spec.device_cache and step < end:  # inside: Ctrl-C while decoding stops cleanly
            cache = DeviceCache(items, device, spec.loader_workers,
                                stream if rank == 0 else None, interrupts=interrupts)
            started = time.perf_counter()  # the run's time starts after the decoding
            last_ckpt = started
        while step < end:
            if any_rank_interrupted(interrupts, world, device):
                raise KeyboardInterrupt
            epoch, within = divmod(step, per_epoch)
            items.epoch = epoch
            batches = global_batches(len(items), spec.batch, spec.seed, epoch)
            local = [_local(b, rank, world) for b in batches[within:]][:end - step]
            source: Any
            if cache is not None:
                source = (cache.batch(indices, epoch) for indices in local)
            else:
                source = torch.utils.data.DataLoader(
                    items, batch_sampler=local, collate_fn=collate_ground_truth,
                    num_workers=spec.loader_workers, pin_memory=device.type == "cuda")
            t0 = time.perf_counter()
            for batch in source:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                model.train()
                with torch.autocast(device.type, dtype=amp or torch.bfloat16,
                                    enabled=amp is not None):
                    out_t = model(batch["image"])
                terms = batch_loss(out_t, batch, depth_weight=spec.depth_weight,
                                   offset_weight=spec.offset_weight,
                                   thickness_weight=spec.thickness_weight)
                optimiser.zero_grad(set_to_none=True)
                terms["loss"].backward()
                optimiser.step()
                scheduler.step()
                step += 1
                dt = time.perf_counter() - t0
                last = {k: float(v.detach()) for k, v in terms.items()}
                rate = spec.batch / dt
                t0 = time.perf_counter()
                bar.show(step, epoch, last["loss"], rate, force=step == total)
                if step % 10 == 0 or step == total:
                    log.write({"kind": "train", "step": step, "epoch": epoch, **last,
                               "lr": scheduler.get_last_lr()[0], "items_per_s": rate,
                               "seconds": history_seconds + time.perf_counter() - started})
                if time.perf_counter() - last_ckpt > spec.checkpoint_s:
                    save("periodic")
                    last_ckpt = time.perf_counter()
                if any_rank_interrupted(interrupts, world, device):
                    raise KeyboardInterrupt
            epoch_done = step % per_epoch == 0 or step == total
            if epoch_done:
                save("epoch")
                last_ckpt = time.perf_counter()
                finished_epoch = (step - 1) // per_epoch + 1
                if val_items is not None and rank == 0 and (
                        finished_epoch % spec.val_every == 0 or step == total):
                    val = validate(net, val_items, device)
                    log.write({"kind": "val", "step": step, "epoch": finished_epoch, **val})
                    print(f"\nvalidation after epoch {finished_epoch}: dice {val['dice']:.3f} "
                          f"(min bone {val['dice_min']:.3f}), depth shift-aligned front "
                          f"{val['front_mm']:.2f} back {val['back_mm']:.2f} thickness "
                          f"{val['thickness_mm']:.2f} mm, offset {val['offset_mm']:.2f} mm"
                          + (f", last exit {val['last_mm']:.2f} mm" if "last_mm" in val else ""),
                          file=stream, flush=True)
                if rank == 0:
                    _write_model(out, net, spec, step, history_seconds, started, val, len(items))
                    write_curves(out / "log.jsonl", out / "curves.png")
            if step < total and step == end:   # stop_at reached inside the schedule
                save("stopped")
                if rank == 0:
                    _write_model(out, net, spec, step, history_seconds, started, val, len(items))
                    print(f"\nstopped at step {step} (--stop-at): checkpoint written to "
                          f"{checkpoint}; --resume goes on", file=stream, flush=True)
                break
    except (KeyboardInterrupt, RuntimeError) as err:
        # a loader worker that Ctrl-C ended shows up as a RuntimeError of the DataLoader
        if isinstance(err, RuntimeError) and not interrupts.pending:
            raise
        if interrupts.hard:
            if rank == 0:
                print(f"\nstopped at once: {checkpoint} holds the last step boundary saved",
                      file=stream, flush=True)
            raise KeyboardInterrupt from None
        save("interrupted")
        if rank == 0:
            print(f"\ninterrupted at step {step}: checkpoint written to {checkpoint}; rerun "
                  "with --resume to continue", file=stream, flush=True)
        raise KeyboardInterrupt from None
    seconds = history_seconds + time.perf_counter() - started
    if rank == 0:
        print("", file=stream, flush=True)
    return {"steps": step, "seconds": seconds, "loss": last, "validation": val,
            "world_size": world, "rank": rank, "stopped": step < total}


def _check(spec: TrainSpec, world: int) -> None:
    def whole(name: str, value: Any, lo: int) -> None:
        if not is_whole(value) or value < lo:
            raise InputError(f"must be a whole number >= {lo}, got {value!r}", key=name)

    if not spec.data:
        raise InputError("no training data (--data DIR...)", key="data")
    whole("epochs", spec.epochs, 1)
    whole("batch", spec.batch, 1)
    whole("seed", spec.seed, 0)
    if spec.batch % world:
        raise InputError(f"the global batch {spec.batch} does not split over {world} "
                         "processes", key="batch")
    if not (math.isfinite(spec.lr) and spec.lr > 0):
        raise InputError(f"must be a positive number, got {spec.lr!r}", key="lr")
    if spec.max_steps is not None:
        whole("max_steps", spec.max_steps, 1)
    if spec.val_limit is not None:
        whole("val_limit", spec.val_limit, 1)
    whole("stem", spec.stem, 1)
    whole("context", spec.context, 0)
    whole("head", spec.head, 0)
    whole("head_blocks", spec.head_blocks, 0)
    whole("refine", spec.refine, 0)
    if not (math.isfinite(spec.thickness_weight) and spec.thickness_weight >= 0):
        raise InputError(f"must be a number >= 0, got {spec.thickness_weight!r}",
                         key="thickness_weight")
    if spec.trainable not in TRAINABLE:
        raise InputError(f"must be one of {', '.join(TRAINABLE)}, got {spec.trainable!r}",
                         key="trainable")
    if spec.trainable != "all" and spec.init is None:
        raise InputError(f"{spec.trainable!r} trains part of the network and keeps the rest as "
                         "--init gives it: it needs --init (a trained model)", key="trainable")
    whole("loader_workers", spec.loader_workers, 0)
    if not (spec.checkpoint_s > 0):  # NaN too
        raise InputError(f"must be a positive number of seconds, got {spec.checkpoint_s!r}",
                         key="checkpoint_s")


HEAD_MODULES = ("rise", "finish", "polish", "seg")
"""The segmentation head's modules in :class:`BoneNet`: what ``trainable="head"`` trains."""

DEPTH_MODULES = ("depth", "depth_out", "refine", "refine_out")
"""The depth head's modules in :class:`BoneNet` (the refinement's included): ``trainable="heads"``
trains them besides :data:`HEAD_MODULES`, ``trainable="depth"`` alone."""

TRAINABLE = ("all", "head", "heads", "depth")
"""The values of :attr:`TrainSpec.trainable`."""


def _in_head(name: str) -> bool:
    """Whether a parameter or state key of :class:`BoneNet` belongs to the segmentation head."""
    return name.split(".")[0] in HEAD_MODULES


def _learning_parameters(net: BoneNet, trainable: str) -> list[torch.nn.Parameter]:
    """The parameters the optimiser moves; the others stop requiring gradients."""
    if trainable == "all":
        return list(net.parameters())
    modules = {"head": HEAD_MODULES, "heads": HEAD_MODULES + DEPTH_MODULES,
               "depth": DEPTH_MODULES}[trainable]
    learning = []
    for name, param in net.named_parameters():
        if name.split(".")[0] in modules:
            learning.append(param)
        else:
            param.requires_grad_(False)
    return learning


def _warm_start(net: BoneNet, start: BoneNet, source: str, *, trainable: str = "all") -> None:
    """Copy ``start``'s weights into ``net``, so that ``net`` computes what ``start`` did.

    The configurations must be equal but for five ways of growing: more context blocks, a wider
    segmentation head, more head blocks, the last exit and the depth refinement. New context and
    head blocks keep their initialisation, the identity (their residual branches end in zero
    weights). A wider head takes the old head's weights as its first channels: the old channels'
    sums leave the new channels out (zero weights), the GroupNorm groups hold as many channels as
    before (so the old channels' groups are the old ones) and the logits read only the old channels.
    The new channels keep random weights into them, so they learn from the first step. A new last
    exit starts at the back (its gap channels' weights zero, their bias ``LAST_GAP_BIAS``); a run
    that adds it with ``trainable="head"`` (which would never train it) is refused. A new depth
    refinement keeps its initialisation, which adds nothing (its output layer is zero); a run that
    adds it must train the depth head, and one may not change its width.
    """
    a, b = start.config, net.config
    grown = replace(a, context=b.context, head=b.head, head_blocks=b.head_blocks, last=b.last,
                    refine=b.refine)
    if (grown != b or a.context > b.context or a.head_width > b.head_width
            or a.head_blocks > b.head_blocks or a.last > b.last
            or a.refine not in (0, b.refine)):
        ours, theirs = asdict(b), asdict(a)
        differ = ", ".join(f"{k} {theirs[k]!r} against {ours[k]!r}" for k in ours
                           if ours[k] != theirs[k])
        raise InputError(f"the model's network is not this run's ({differ}: the model's first);"
                         " a run may only add context blocks, head channels, head blocks, "
                         "the last exit and the depth refinement",
                         source=source, key="init")
    old = start.state_dict()
    head = {k: v for k, v in old.items() if _in_head(k)}
    # with the configurations equal but for these, the only weights ``net`` has beyond
    # ``start``'s body are the new blocks' and the head's
    grow_last = b.last and not a.last
    if grow_last and trainable == "head":
        raise InputError("a run that adds the last exit must train the depth head, which holds "
                         "it (--trainable heads or all), not the segmentation head alone",
                         source=source, key="trainable")
    if b.refine and not a.refine and trainable == "head":
        raise InputError("a run that adds the depth refinement must train it (--trainable "
                         "depth, heads or all), not the segmentation head alone",
                         source=source, key="trainable")
    outputs = ("depth_out.weight", "depth_out.bias") if grow_last else ()
    missing, unexpected = net.load_state_dict(
        {k: v for k, v in old.items() if k not in head and k not in outputs}, strict=False)
    assert not unexpected, unexpected
    assert all((k.startswith("context.") and int(k.split(".")[1]) >= a.context)
               or _in_head(k) or k in outputs
               or (k.split(".")[0] in ("refine", "refine_out") and not a.refine)
               for k in missing), missing
    r0, r, s = a.head_width, b.head_width, a.stem
    new = net.state_dict()
    with torch.no_grad():
        if grow_last:                      # mid and half as they were, the gaps from the bias
            done = old["depth_out.bias"].shape[0]
            new["depth_out.weight"][:done] = old["depth_out.weight"]
            new["depth_out.weight"][done:] = 0.0
            new["depth_out.bias"][:done] = old["depth_out.bias"]
            new["depth_out.bias"][done:] = LAST_GAP_BIAS
        for key, value in head.items():
            target = new[key]
            if key == "finish.0.weight":            # inputs: the risen decoder (r), the stem (s)
                target[:r0] = 0.0
                target[:r0, :r0] = value[:, :r0]
                target[:r0, r:r + s] = value[:, r0:]
            elif key == "rise.weight":              # (in, out, 2, 2)
                target[:, :r0] = value
            elif key == "seg.weight":               # the logits read the old channels only
                target.zero_()
                target[:, :r0] = value
            elif target.ndim == 4:                  # a head block's convolution (out, in, 3, 3)
                target[:r0] = 0.0
                target[:r0, :r0] = value
            elif key == "seg.bias":
                target.copy_(value)
            else:                                   # biases and GroupNorm weights, per channel
                target[:r0] = value


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log lines of steps past ``step``, so the curves do not run backwards.

    Those lines were written after the checkpoint a resume starts from, by a run stopped hard.
    """
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


class _Log:
    def __init__(self, path: Path, active: bool) -> None:
        self.path, self.active = path, active

    def write(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _write_model(out: Path, net: BoneNet, spec: TrainSpec, step: int, history: float,
                 started: float, val: dict[str, Any], items: int) -> None:
    record = {"recipe": spec.recipe(), "steps": step, "training_items": items,
              "train_seconds": round(history + time.perf_counter() - started, 1),
              "validation": val, "torch": str(torch.__version__)}
    save_model(out / "model.pt", net, record=record)


@torch.no_grad()
def validate(net: BoneNet, items: Any, device: torch.device) -> dict[str, Any]:
    """Dice and shift-aligned depth errors (mm, on the true masks) over ``items``.

    With a last-exit output, ``last_mm`` is its error (shifted as the first layer) where the ray
    crosses the bone more than once.

    Figures are medians over items of each item's median absolute error (depth) and means over
    items of the mean Dice over the bones present (segmentation); ``dice_min`` is the lowest
    per-bone Dice (pooled over items).
    """
    net.eval()
    nb = len(net.config.bones)
    inter = np.zeros(nb)
    total = np.zeros(nb)
    dices, fronts, backs, thick, offsets, lasts = [], [], [], [], [], []
    for i in range(len(items)):
        item = items[i]
        out = net(item["image"][None].to(device))
        prob = torch.sigmoid(out["logits"][0]).cpu()
        pred = prob > 0.5
        hit = item["hit"]
        inter += (pred & hit).flatten(1).sum(1).numpy()
        total += (pred.flatten(1).sum(1) + hit.flatten(1).sum(1)).numpy()
        present = hit.flatten(1).any(1)
        d = 2 * (pred & hit).flatten(1).sum(1) / (pred.flatten(1).sum(1)
                                                  + hit.flatten(1).sum(1)).clamp_min(1)
        if bool(present.any()):
            dices.append(float(d[present].mean()))
        unit = float(item["unit_mm"])
        known = torch.isfinite(item["front"]) & torch.isfinite(item["back"])
        if not bool(known.any()):
            continue
        rf = (out["front"][0].cpu() - item["front"])[known] * unit
        rb = (out["back"][0].cpu() - item["back"])[known] * unit
        shift = float(torch.cat([rf, rb]).median())
        fronts.append(float((rf - shift).abs().median()))
        backs.append(float((rb - shift).abs().median()))
        thick.append(float((rb - rf).abs().median()))
        offsets.append(abs(shift))
        if "last" in out and "last" in item:
            twice = known & (item["back"] - item["last"] > 1e-4)  # rays that cross it again
            if bool(twice.any()):
                rl = (out["last"][0].cpu() - item["last"])[twice] * unit
                lasts.append(float((rl - shift).abs().median()))
    per_bone = 2 * inter / np.maximum(total, 1)
    return {"items": len(items), "dice": float(np.mean(dices)) if dices else float("nan"),
            "dice_min": float(per_bone[total > 0].min()) if (total > 0).any() else 0.0,
            "dice_per_bone": [round(float(v), 4) for v in per_bone],
            "front_mm": float(np.median(fronts)) if fronts else float("nan"),
            "back_mm": float(np.median(backs)) if backs else float("nan"),
            "thickness_mm": float(np.median(thick)) if thick else float("nan"),
            "offset_mm": float(np.median(offsets)) if offsets else float("nan")} | (
                {"last_mm": float(np.median(lasts)) if lasts else float("nan")}
                if net.config.last else {})


def write_curves(log_path: Path, png: Path) -> None:
    """Draw the learning curves of a run's ``log.jsonl`` into a PNG.

    Training loss terms by step, validation Dice and depth errors by step.
    """
    from regkit_recon.net.plot import line_chart

    train_rows: list[dict[str, Any]] = []
    val_rows: list[dict[str, Any]] = []
    if not log_path.is_file():  # nothing logged yet: an epoch of fewer than 10 steps
        return
    with open(log_path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                (train_rows if row.get("kind") == "train" else val_rows).append(row)
    panels: list[tuple[str, Sequence[float], dict[str, Sequence[float]], bool]] = []
    if train_rows:
        steps = [r["step"] for r in train_rows]
        panels.append(("training loss terms", steps, {
            k: [r[k] for r in train_rows] for k in ("loss", "bce", "dice")}, True))
        residuals = [k for k in ("depth", "offset", "thickness", "last")
                     if all(k in r for r in train_rows)]  # logs of older runs lack the latter
        panels.append(("training depth residual (px)", steps, {
            k: [r[k] for r in train_rows] for k in residuals}, True))
    if val_rows:
        steps = [r["step"] for r in val_rows]
        panels.append(("validation Dice", steps, {
            "dice": [r["dice"] for r in val_rows],
            "dice_min": [r["dice_min"] for r in val_rows]}, False))
        panels.append(("validation depth MAE (mm)", steps, {
            k: [r[k] for r in val_rows] for k in ("front_mm", "back_mm", "thickness_mm",
                                                  "offset_mm")}, True))
    if panels:
        line_chart(png, panels)
