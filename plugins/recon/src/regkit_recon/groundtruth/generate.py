"""The ground-truth factory behind ``regkit recon generate``.

Layout of the output folder ``DIR``::

    DIR/manifest.json            parameters, sources, one entry per sample, "complete"
    DIR/phantoms/p000/ ...       the procedural phantoms (ct.nii.gz, labels.nii.gz, ...)
    DIR/samples/000000.npz       one file per sample (see regkit_recon.groundtruth.sample)
    DIR/montage.png              a few samples: radiograph, clean DRR, masks, front, back,
                                 thickness

Sample ``i`` comes from source ``i // V`` (phantom or CT) and is that source's view ``i % V``; its
view kind is ``kinds[(i % V) % len(kinds)]``. Every random draw of sample ``i`` comes from
``SeedSequence(seed, spawn_key=(1, i))`` (view geometry from its child 0, degradation from child
1), and phantom ``k`` has the seed ``SeedSequence(seed, spawn_key=(0, k))``'s first 63 bits: a
sample's content depends on the seed, its index and the parameters, never on the number of
workers or on what else was generated in the same run.

Malunions: phantom ``k`` carries random malunions (1-2 bones, drawn by
:func:`~regkit_recon.phantom.deformity.draw_malunions`) when the first draw of
``SeedSequence(seed, spawn_key=(2, k))`` falls under ``malunion_fraction``; the malunions come from
that stream's attempt ``a`` (``spawn_key=(2, k, a)``), the next attempt being taken when a draw
makes bones collide. Each sample's ``meta`` records its phantom's deformities.

Sharding: ``shard=(K, N)`` makes only the samples with ``index % N == K`` (and the phantoms they
come from). Every sample is byte-identical to the same sample of an unsharded run, so N machines
can share one data set; :func:`regkit_recon.groundtruth.dataset.open_ground_truth` reads the shard
folders as one.

Resuming: a rerun with the same parameters skips every sample whose file exists (files appear
only by rename, so an existing file is complete) and deletes leftover temporary files. Other
parameters on an existing folder are refused. One run per folder at a time.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regkit.errors import InputError, UserInputError
from regkit.utils.files import atomic_write_text

__all__ = ["GenerateSpec", "WorkerError", "generate", "malunion_stream", "parse_shard",
           "phantom_is_malunited", "phantom_seed", "release_renderers", "render_sample",
           "sample_streams"]

SIZE_RANGE = (32, 2048)
MAX_LAYERS = 8
_CHUNK = 4
FORMAT_VERSION = 2
"""Version of the folder layout and sample content (2: DRRs from a block-averaged CT)."""


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

    def checked(self) -> GenerateSpec:
        """Validate every field; InputError names the flag."""
        from regkit_recon.groundtruth.views import VIEW_KINDS

        def whole(name: str, value: Any, lo: int, hi: int | None = None) -> int:
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo \
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
        if isinstance(frac, bool) or not isinstance(frac, int | float) \
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


def phantom_seed(seed: int, k: int) -> int:
    """The seed of phantom ``k`` of a run seeded with ``seed``."""
    state = np.random.SeedSequence(seed, spawn_key=(0, k)).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def sample_streams(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Sample ``index``'s generators: (view geometry, degradation)."""
    root = np.random.SeedSequence(seed, spawn_key=(1, index))
    view, noise = root.spawn(2)
    return np.random.default_rng(view), np.random.default_rng(noise)


# ------------------------------------------------------------------------------ workers

_STATE: dict[str, Any] = {}


def release_renderers() -> None:
    """Close the renderers this process keeps for the last source (see :func:`render_sample`)."""
    old = _STATE.get("renderer")
    if old is not None:
        old.close()
    _STATE.clear()


def _init_worker(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    # Mesa's llvmpipe starts one render thread per CPU in every process; with a worker per CPU
    # that oversubscribes the cores (measured on 2 cores: a sample every 0.12 s with the
    # default, every 0.08-0.10 s with one thread per worker). It is read when the worker's
    # OpenGL context is made, so it is set before; a user's own setting wins.
    os.environ.setdefault("LP_NUM_THREADS", str(max(1, threads)))
    import torch

    torch.set_num_threads(max(1, threads))


class WorkerError(RuntimeError):
    """A worker process failed; ``args`` are (message naming the job and the error, whether
    the error was the user's input).

    (Regkit's own errors take keyword arguments and do not survive the trip back from a worker,
    so every worker failure is sent as this plain RuntimeError; :func:`generate` raises an
    :class:`InputError` again for a bad input.)
    """

    @classmethod
    def wrap(cls, job: str, err: Exception) -> WorkerError:
        """The error to send back for ``err`` raised while doing ``job``."""
        return cls(f"{job}: {type(err).__name__}: {err}", isinstance(err, UserInputError))


MALUNION_ATTEMPTS = 12
"""Draws of random malunions tried for one phantom before it is made without any."""


def malunion_stream(seed: int, k: int) -> np.random.SeedSequence:
    """The seed sequence of phantom ``k``'s malunion draws in a run seeded with ``seed``."""
    return np.random.SeedSequence(seed, spawn_key=(2, k))


def phantom_is_malunited(seed: int, k: int, fraction: float) -> bool:
    """Whether phantom ``k`` of a run seeded with ``seed`` carries random malunions."""
    return bool(np.random.default_rng(malunion_stream(seed, k)).random() < fraction)


def _make_phantom(job: tuple[int, int, float, str, int, bool]) -> int:
    from regkit_recon.phantom.deformity import draw_malunions
    from regkit_recon.phantom.phantom import make_hand_phantom

    k, seed, voxel, path, run_seed, malunited = job
    try:
        phantom = None
        if malunited:
            for attempt in range(MALUNION_ATTEMPTS):
                stream = np.random.SeedSequence(run_seed, spawn_key=(2, k, attempt))
                spec = draw_malunions(np.random.default_rng(stream))
                try:
                    phantom = make_hand_phantom(seed, deformity=spec, voxel_mm=voxel)
                    break
                except InputError as err:
                    if err.key != "deformity":  # only a collision earns another draw
                        raise
        if phantom is None:
            phantom = make_hand_phantom(seed, voxel_mm=voxel)
        phantom.save(path)
    except Exception as err:
        raise WorkerError.wrap(f"phantom {k} (seed {seed})", err) from None
    return k


def _deformities_of(source: dict[str, Any]) -> list[dict[str, Any]]:
    """The deformity records of a phantom source (from its phantom.json), [] for a CT."""
    if source["record"].get("kind") != "phantom":
        return []
    path = Path(source["labels"]).with_name("phantom.json")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError("cannot read the phantom's record", source=path) from None
    return list(record.get("deformities", []))


def _load_source(source: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The worker's renderer for ``source`` (cached: consecutive tasks share a source)."""
    key = (source["ct"], source["labels"], tuple(source["bones"]), params["backend"],
           params["step_mm"], params.get("drr_factor"), params["size"])
    if _STATE.get("key") == key:
        return _STATE
    release_renderers()
    from regkit import load_nifti
    from regkit_recon.groundtruth.sample import SampleRenderer, auto_drr_factor
    from regkit_recon.groundtruth.views import ViewRanges, anatomy_corners, bone_boxes

    volume = load_nifti(source["ct"], labels=source["labels"])
    bones = source["bones"]
    boxes = bone_boxes(volume.labels, bones)
    corners = anatomy_corners(volume, bones, boxes=boxes)
    factor = params.get("drr_factor")
    if factor is None:
        factor = auto_drr_factor(volume, corners, params["size"], max(ViewRanges().fill))
    _STATE.update(key=key, bones=bones, corners=corners,
                  deformities=_deformities_of(source),
                  renderer=SampleRenderer(volume, bones, backend=params["backend"],
                                          step_mm=params["step_mm"], drr_factor=factor,
                                          boxes=boxes))
    return _STATE


def render_sample(index: int, source: dict[str, Any], params: dict[str, Any],
                  view: int) -> dict[str, Any]:
    """Every array of sample ``index`` (see the sample module).

    The renderers of ``source`` are bound on first use and kept for the next call with the same
    source (:func:`release_renderers` closes them).
    """
    from regkit_recon.groundtruth.degrade import degrade
    from regkit_recon.groundtruth.views import draw_view

    state = _load_source(source, params)
    view_rng, noise_rng = sample_streams(params["seed"], index)
    kind = params["kinds"][view % len(params["kinds"])]
    camera, view_record = draw_view(view_rng, kind, state["corners"], params["size"])
    clean = state["renderer"].drr(camera)
    image, noise_record = degrade(clean, noise_rng)
    depth = state["renderer"].depth(camera, params["layers"])
    meta = {"index": index, "view_index": view, "view": view_record, "degrade": noise_record,
            "drr_factor": state["renderer"].drr_factor,
            "drr_step_mm": state["renderer"].drr_step_mm, "seed": params["seed"],
            "deformities": state["deformities"],
            "generator": "regkit-recon generate"}
    return {"image": image, "image_clean": clean, "camera": camera.to_json(indent=None),
            "bones": np.asarray(state["bones"], dtype=np.int32), **depth,
            "source": json.dumps(source["record"]), "meta": json.dumps(meta)}


def _work(task: tuple[list[int], dict[str, Any], dict[str, Any], str, int]) -> list[int]:
    from regkit_recon.groundtruth.sample import write_sample

    indices, source, params, folder, views = task
    done = []
    for i in indices:
        try:
            arrays = render_sample(i, source, params, i % views)
            write_sample(Path(folder) / sample_name(i), arrays)
        except Exception as err:
            raise WorkerError.wrap(f"sample {i} ({source['id']})", err) from None
        done.append(i)
    return done


def sample_name(index: int) -> str:
    """The file name of sample ``index`` inside ``DIR/samples``."""
    return f"{index:06d}.npz"


# ------------------------------------------------------------------------------ progress


class Progress:
    """A one-line progress bar on a stream (stderr by default)."""

    def __init__(self, total: int, what: str, stream: Any = None) -> None:
        self.total, self.what, self.done = total, what, 0
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = -1.0

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more done and redraw (at most every 0.2 s, and at the end)."""
        self.done += n
        now = time.perf_counter()
        if self.done < self.total and now - self._last < (0.2 if self._tty else 5.0):
            return
        self._last = now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = (f"{self.what} [{bar}] {self.done}/{self.total} {rate:.2f}/s "
                f"eta {eta:.0f} s" if math.isfinite(eta) else f"{self.what} {self.done}")
        end = "" if self._tty and self.done < self.total else "\n"
        print(("\r" if self._tty else "") + line, end=end, file=self.stream, flush=True)


# ------------------------------------------------------------------------------ planning


def _bones_of(ct: str, labels: str, bones: tuple[int, ...] | None) -> tuple[int, ...]:
    """Validate the CT, its labels' grid and the bones there; the bones to render."""
    from regkit import load_nifti

    volume = load_nifti(ct, labels=labels)
    assert volume.labels is not None
    present = sorted(int(v) for v in np.unique(volume.labels) if v > 0)
    if not present:
        raise InputError("the label map holds no bone (every voxel is 0)", source=labels,
                         key="labels")
    if bones is None:
        return tuple(present)
    missing = [b for b in bones if b not in present]
    if missing:
        raise InputError(f"bone label(s) {missing} do not occur in the label map (present: "
                         f"{', '.join(str(v) for v in present[:40])})", source=labels,
                         key="bones")
    return tuple(bones)


def _manifest_path(out: Path) -> Path:
    return out / "manifest.json"


def _check_resume(out: Path, params: dict[str, Any],
                  shard: tuple[int, int] | None = None) -> None:
    path = _manifest_path(out)
    if not path.is_file():
        if any((out / "samples").glob("[0-9]*.npz")):
            raise InputError("holds samples but no manifest.json, so what made them is unknown; "
                             "use a new --out", source=out, key="out")
        return
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        old, version = manifest["parameters"], manifest.get("format_version")
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError("holds an unreadable manifest.json; use a new --out", source=out,
                         key="out") from None
    if version != FORMAT_VERSION:
        raise InputError(f"holds samples of format_version {version!r}, not {FORMAT_VERSION} "
                         "(made by another regkit-recon); use a new --out", source=out,
                         key="out")
    old_shard = manifest.get("shard")
    if old_shard != (None if shard is None else list(shard)):
        raise InputError(f"holds shard {old_shard!r} of a data set, not {shard!r}; rerun with "
                         "the same --shard to resume, or use a new --out", source=out,
                         key="out")
    for key in sorted(set(old) | set(params)):
        if old.get(key) != params.get(key):
            raise InputError(f"holds samples made with other parameters ({key} was "
                             f"{old.get(key)!r}, now {params.get(key)!r}); rerun with the same "
                             "parameters to resume, or use a new --out", source=out, key="out")


def _clean_temporaries(folder: Path, phantoms: Path) -> int:
    """Delete what an interrupted run left: temporary sample files and phantom staging folders."""
    import shutil

    n = 0
    for leftover in folder.glob(".*.npz"):
        leftover.unlink(missing_ok=True)
        n += 1
    for staging in phantoms.glob(".p*.tmp"):
        shutil.rmtree(staging, ignore_errors=True)
        n += 1
    return n


def _bone_names(labels: str, bones: tuple[int, ...]) -> dict[str, str]:
    """Names of ``bones`` from a ``label,name`` CSV beside the label map (``bones.nii.gz`` ->
    ``bones.csv``), or {} when there is none or it cannot be read."""
    import csv

    path = Path(labels)
    table = path.with_name(path.name.split(".")[0] + ".csv")
    names: dict[str, str] = {}
    try:
        with open(table, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                label, name = row.get("label"), row.get("name") or row.get("bone")
                if label is not None and name and int(label) in bones:
                    names[str(int(label))] = name
    except (OSError, ValueError):
        return {}
    return names


def _sources(spec: GenerateSpec, out: Path) -> list[dict[str, Any]]:
    if spec.phantoms is not None:
        from regkit_recon.phantom.anatomy import BONE_NAMES

        bones = spec.bones or tuple(range(1, 30))
        bad = [b for b in bones if not 1 <= b <= 29]
        if bad:
            raise InputError(f"bone label(s) {bad} are not phantom bones (1-29)", key="bones")
        out_sources = []
        for k in range(spec.phantoms):
            seed = phantom_seed(spec.seed, k)
            rel = f"phantoms/p{k:03d}"
            out_sources.append({
                "id": rel, "ct": str(out / rel / "ct.nii.gz"),
                "labels": str(out / rel / "labels.nii.gz"), "bones": list(bones),
                "bone_names": {str(b): BONE_NAMES[b] for b in bones},
                "record": {"kind": "phantom", "path": rel, "seed": seed, "index": k,
                           "voxel_mm": spec.voxel_mm,
                           "malunited": phantom_is_malunited(spec.seed, k,
                                                             spec.malunion_fraction)}})
        return out_sources
    assert spec.ct is not None and spec.labels is not None
    bones = _bones_of(spec.ct, spec.labels, spec.bones)
    ct, labels = str(Path(spec.ct).absolute()), str(Path(spec.labels).absolute())
    return [{"id": "ct", "ct": ct, "labels": labels, "bones": list(bones),
             "bone_names": _bone_names(labels, bones),
             "record": {"kind": "ct", "ct": ct, "labels": labels}}]


def _write_manifest(out: Path, spec: GenerateSpec, sources: list[dict[str, Any]],
                    samples: list[dict[str, Any]], complete: bool,
                    extra: dict[str, Any] | None = None) -> None:
    from regkit_recon.groundtruth.degrade import DegradeRanges
    from regkit_recon.groundtruth.views import ViewRanges

    manifest = {
        "format": "regkit-recon ground truth",
        "format_version": FORMAT_VERSION,
        "parameters": spec.parameters(),
        "view_ranges": ViewRanges().to_json(),
        "degrade_ranges": DegradeRanges().to_json(),
        "sources": [{"id": s["id"], "bones": s["bones"], "bone_names": s["bone_names"],
                     **s["record"]} for s in sources],
        "shard": None if spec.shard is None else list(spec.shard),
        "samples": samples,
        "complete": complete,
        **(extra or {}),
    }
    atomic_write_text(_manifest_path(out), json.dumps(manifest, indent=1) + "\n")


def _threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def generate(spec: GenerateSpec, *, stream: Any = None,
             on_sample: Callable[[int], None] | None = None,
             registration_options: Any = None) -> dict[str, Any]:
    """Make (or finish) the ground truth ``spec`` asks for.

    Args:
        spec: What to make.
        stream: Where the progress bars go (default stderr).
        on_sample: Called in this process with each finished sample's index (tests).
        registration_options: ``options`` of :func:`regkit.registration.register_2d3d` for a
            ``radiograph`` (None: its defaults).

    Returns:
        The manifest written to ``DIR/manifest.json``.

    Raises:
        InputError: bad parameters or inputs (exit status 2 on the command line).
        KeyboardInterrupt: Ctrl-C; the finished samples are kept, a rerun resumes.
    """
    spec = spec.checked()
    out = Path(spec.out)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", source=out, key="out")
    params = spec.parameters()
    _check_resume(out, params, spec.shard)
    if spec.radiograph is not None:
        from regkit_recon.groundtruth.registered import registered_sample

        return registered_sample(spec, out, stream=stream, options=registration_options)
    sources = _sources(spec, out)
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(folder, out / "phantoms")
    k_shard, n_shard = spec.shard or (0, 1)
    samples = [{"index": i, "file": f"samples/{sample_name(i)}",
                "source": sources[i // spec.views]["id"],
                "view": spec.kinds[(i % spec.views) % len(spec.kinds)]}
               for i in range(len(sources) * spec.views) if i % n_shard == k_shard]
    _write_manifest(out, spec, sources, samples, complete=False)
    started = time.perf_counter()

    try:
        todo = _run(spec, out, sources, samples, params, folder, stream, on_sample)
    except WorkerError as err:
        if len(err.args) > 1 and err.args[1]:
            raise InputError(str(err.args[0])) from None
        raise
    extra: dict[str, Any] = {"seconds_last_run": round(time.perf_counter() - started, 3),
                             "generated_last_run": len(todo)}
    if spec.montage:
        from regkit_recon.groundtruth.montage import write_montage

        write_montage(out / "montage.png", [out / s["file"] for s in samples[:spec.montage]])
        extra["montage"] = "montage.png"
    _write_manifest(out, spec, sources, samples, complete=True, extra=extra)
    return json.loads(_manifest_path(out).read_text(encoding="utf-8"))


def _run(spec: GenerateSpec, out: Path, sources: list[dict[str, Any]],
         samples: list[dict[str, Any]], params: dict[str, Any], folder: Path, stream: Any,
         on_sample: Callable[[int], None] | None) -> list[int]:
    """Make the missing phantoms, then the missing samples; the indices made."""
    pool = None
    try:
        if spec.workers > 1:
            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(spec.workers, initializer=_init_worker,
                            initargs=(_threads(spec.workers),))
        if spec.phantoms is not None:
            needed = {s["source"] for s in samples}
            jobs = [(s["record"]["index"], s["record"]["seed"], spec.voxel_mm,
                     str(out / s["id"]), spec.seed, s["record"]["malunited"]) for s in sources
                    if s["id"] in needed and not (out / s["id"] / "phantom.json").is_file()]
            if jobs:
                bar = Progress(len(jobs), "phantoms", stream)
                results = pool.imap_unordered(_make_phantom, jobs) if pool \
                    else map(_make_phantom, jobs)
                for _ in results:
                    bar.advance()
        todo = [s["index"] for s in samples if not (out / s["file"]).is_file()]
        tasks = []
        for src_index, source in enumerate(sources):
            mine = [i for i in todo if i // spec.views == src_index]
            for c in range(0, len(mine), _CHUNK):
                tasks.append((mine[c:c + _CHUNK], source, params, str(folder), spec.views))
        bar = Progress(len(todo), "samples", stream)
        if pool is None:
            release_renderers()
            done_iter: Any = map(_work, tasks)
        else:
            done_iter = pool.imap_unordered(_work, tasks)
        try:
            for done in done_iter:
                bar.advance(len(done))
                if on_sample is not None:
                    for i in done:
                        on_sample(i)
        except KeyboardInterrupt:
            print(f"\ninterrupted: {bar.done} of {len(todo)} samples made in this run; rerun "
                  "the same command to make the rest", file=bar.stream, flush=True)
            raise
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        release_renderers()
    return todo


def parse_bones(text: str | None) -> tuple[int, ...] | None:
    """``"70,72"`` → ``(70, 72)``; None stays None."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"must be label values separated by commas, got {text!r}",
                         key="bones") from None
    if not values or any(v <= 0 for v in values):
        raise InputError(f"must be positive label values separated by commas, got {text!r}",
                         key="bones")
    return tuple(sorted(set(values)))


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
