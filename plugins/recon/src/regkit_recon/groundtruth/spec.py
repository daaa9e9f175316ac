"""What ``regkit recon generate`` is asked for: :class:`GenerateSpec` and its limits.

Also the parsing of its ``--bones`` and ``--shard`` flags, and the seeds every random draw of a run
comes from (see :mod:`regkit_recon.groundtruth.generate`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regkit.errors import InputError
from regkit.labels import parse_labels
from regkit.utils.checks import is_real, is_whole

__all__ = ["FORMAT_VERSION", "MAX_LAYERS", "SIZE_RANGE", "GenerateSpec", "malunion_attempt",
           "malunion_stream", "parse_bones", "parse_shard", "phantom_is_malunited", "phantom_seed",
           "sample_streams"]

SIZE_RANGE = (32, 2048)
MAX_LAYERS = 8
FORMAT_VERSION = 3
"""Version of the folder layout and sample content (2: DRRs from a block-averaged CT; 3: a tone
curve that keeps values below the nominal air level, see
:mod:`~regkit_recon.groundtruth.degrade`)."""


@dataclass(frozen=True)
class GenerateSpec:
    """What ``regkit recon generate`` was asked for (validated by :meth:`checked`).

    Attributes:
        out: The output folder.
        phantoms: Number of procedural phantoms (exclusive with ``ct``).
        ct, labels: A CT and its bone label map on the same grid.
        bones: Label values to render (None: all of the label map).
        views: Views (samples) per source.
        size: Detector width = height, pixels.
        layers: Depth layers per bone.
        seed: The seed of everything drawn.
        workers: Processes (1: in this process).
        backend: Renderer backend (None: regkit's choice).
        voxel_mm: Phantom voxel size, mm.
        step_mm: DRR step, mm (None: one DRR voxel when the CT is block-averaged, half a voxel
            when it is not).
        drr_factor: Block-average the CT over this many voxels per axis for the DRR (None: the
            largest block under 3/4 of the finest pixel footprint the views can draw, see
            :func:`~regkit_recon.groundtruth.sample.auto_drr_factor`; 1: the CT as it is).
        kinds: The view kinds cycled through.
        montage: Samples shown in ``montage.png`` (0: none).
        radiograph, camera: A real radiograph and its starting camera (with ``ct``): register
            first, then render the ground truth in the registered view (one sample).
        malunion_fraction: Fraction of phantoms with random malunions, in [0, 1] (phantoms
            only; default 1/3: a network that has only seen normal hands pulls deformed bones
            back to normal).
        shard: ``(K, N)``: make only the samples with ``index % N == K`` (None: all).
    """

    out: str
    phantoms: int | None = None
    ct: str | None = None
    labels: str | None = None
    bones: tuple[int, ...] | None = None
    views: int = 1
    size: int = 256
    layers: int = 2
    seed: int = 0
    workers: int = 1
    backend: str | None = None
    voxel_mm: float = 0.4
    step_mm: float | None = None
    drr_factor: int | None = None
    kinds: tuple[str, ...] = ("pa", "oblique", "lateral")
    montage: int = 4
    radiograph: str | None = None
    camera: str | None = None
    malunion_fraction: float = 1.0 / 3.0
    shard: tuple[int, int] | None = None

    def checked(self) -> GenerateSpec:  # noqa: C901 - a flat list of per-field checks
        """Validate every field; InputError names the flag."""
        from regkit_recon.groundtruth.views import VIEW_KINDS

        def whole(name: str, value: Any, lo: int, hi: int | None = None) -> int:
            if not is_whole(value) or value < lo \
                    or (hi is not None and value > hi):
                span = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise InputError(f"must be a whole number {span}, got {value!r}", key=name)
            return int(value)

        if (self.phantoms is None) == (self.ct is None):
            raise InputError("give either --phantoms K or --ct CT.nii.gz (with --labels)",
                             key="phantoms/ct")
        if self.phantoms is not None:
            whole("phantoms", self.phantoms, 1)
            if self.labels is not None or self.radiograph is not None:
                raise InputError("--labels and --radiograph go with --ct, not --phantoms",
                                 key="labels")
        if self.ct is not None and self.labels is None:
            raise InputError("a CT needs its bone label map (--labels LABELS.nii.gz)",
                             key="labels")
        if (self.radiograph is None) != (self.camera is None):
            raise InputError("a radiograph needs its starting camera (--radiograph X "
                             "--camera INIT.json), and the other way round", key="camera")
        whole("views", self.views, 1)
        whole("size", self.size, *SIZE_RANGE)
        whole("layers", self.layers, 1, MAX_LAYERS)
        whole("seed", self.seed, 0, 2**63 - 1)
        whole("workers", self.workers, 1, 256)
        whole("montage", self.montage, 0, 64)
        for kind in self.kinds:
            if kind not in VIEW_KINDS:
                raise InputError(f"unknown view kind {kind!r}; known: {', '.join(VIEW_KINDS)}",
                                 key="kinds")
        if not self.kinds:
            raise InputError("no view kinds", key="kinds")
        if self.drr_factor is not None:
            whole("drr_factor", self.drr_factor, 1, 16)
        frac = self.malunion_fraction
        if not is_real(frac) \
                or not (math.isfinite(frac) and 0.0 <= frac <= 1.0):
            raise InputError(f"must be a fraction in [0, 1], got {frac!r}",
                             key="malunion_fraction")
        if self.shard is not None:
            if len(self.shard) != 2:
                raise InputError(f"must be K/N, got {self.shard!r}", key="shard")
            count = whole("shard", self.shard[1], 1)
            whole("shard", self.shard[0], 0, count - 1)
            if self.radiograph is not None:
                raise InputError("a registered radiograph makes one sample; it cannot be "
                                 "sharded", key="shard")
        if self.step_mm is not None and not (math.isfinite(self.step_mm) and self.step_mm > 0):
            raise InputError(f"must be a positive number of mm, got {self.step_mm!r}",
                             key="step_mm")
        return self

    def parameters(self) -> dict[str, Any]:
        """The parameters a sample's content depends on (what a rerun must repeat)."""
        d = asdict(self)
        for key in ("out", "workers", "montage", "shard"):
            d.pop(key)
        if self.phantoms is None:
            d.pop("malunion_fraction")  # a CT brings its own bones
        for key in ("ct", "labels", "radiograph", "camera"):
            if d[key] is not None:
                d[key] = str(Path(d[key]).absolute())
        d["bones"] = None if self.bones is None else list(self.bones)
        d["kinds"] = list(self.kinds)
        return d


# ------------------------------------------------------------------------------ seeds


def phantom_seed(seed: int, k: int) -> int:
    """The seed of phantom ``k`` of a run seeded with ``seed``."""
    state = np.random.SeedSequence(seed, spawn_key=(0, k)).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def sample_streams(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Sample ``index``'s generators: (view geometry, degradation)."""
    root = np.random.SeedSequence(seed, spawn_key=(1, index))
    view, noise = root.spawn(2)
    return np.random.default_rng(view), np.random.default_rng(noise)


def malunion_stream(seed: int, k: int) -> np.random.SeedSequence:
    """The seed sequence of phantom ``k``'s malunion draws in a run seeded with ``seed``."""
    return np.random.SeedSequence(seed, spawn_key=(2, k))


def malunion_attempt(seed: int, k: int, attempt: int) -> np.random.SeedSequence:
    """The seed sequence of phantom ``k``'s ``attempt``-th malunion draw (0 first)."""
    return np.random.SeedSequence(seed, spawn_key=(2, k, attempt))


def phantom_is_malunited(seed: int, k: int, fraction: float) -> bool:
    """Whether phantom ``k`` of a run seeded with ``seed`` carries random malunions."""
    return bool(np.random.default_rng(malunion_stream(seed, k)).random() < fraction)


def parse_bones(text: str | None) -> tuple[int, ...] | None:
    """``"70,72"`` → ``(70, 72)``; None stays None."""
    return None if text is None else parse_labels(text, key="bones")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"1/4"`` → ``(1, 4)``; None stays None."""
    if text is None:
        return None
    parts = text.split("/")
    try:
        k, n = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"must be K/N with whole numbers 0 <= K < N, got {text!r}",
                         key="shard") from None
    if n < 1 or not 0 <= k < n:
        raise InputError(f"must be K/N with whole numbers 0 <= K < N, got {text!r}",
                         key="shard")
    return k, n
