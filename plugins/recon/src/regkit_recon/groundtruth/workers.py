"""What runs in the worker processes of ``regkit recon generate``.

They run in the calling process when there is one worker. They make phantoms and render samples,
with the renderers of the last source kept between tasks. The functions handed to a process pool
live here, at module level, so that a spawned worker can import them.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np

from regkit.errors import InputError, UserInputError
from regkit_recon.groundtruth.manifest import sample_name
from regkit_recon.groundtruth.spec import malunion_attempt, sample_streams

__all__ = ["MALUNION_ATTEMPTS", "WorkerError", "init_worker", "make_phantom", "make_samples",
           "release_renderers", "render_sample", "worker_threads"]

_STATE: dict[str, Any] = {}


def release_renderers() -> None:
    """Close the renderers this process keeps for the last source (see :func:`render_sample`)."""
    old = _STATE.get("renderer")
    if old is not None:
        old.close()
    _STATE.clear()


def init_worker(threads: int) -> None:
    """Set up a pool's worker process: Ctrl-C left to the parent, ``threads`` threads."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    # Mesa's llvmpipe starts one render thread per CPU in every process; with a worker per CPU
    # that oversubscribes the cores (measured on 2 cores: a sample every 0.12 s with the
    # default, every 0.08-0.10 s with one thread per worker). It is read when the worker's
    # OpenGL context is made, so it is set before; a user's own setting wins.
    os.environ.setdefault("LP_NUM_THREADS", str(max(1, threads)))
    import torch

    torch.set_num_threads(max(1, threads))


class WorkerError(RuntimeError):
    """A worker process failed.

    ``args`` are (message naming the job and the error, whether the error was the user's input).

    (Regkit's own errors take keyword arguments and do not survive the trip back from a worker,
    so every worker failure is sent as this plain RuntimeError;
    :func:`~regkit_recon.groundtruth.generate.generate` raises an
    :class:`InputError` again for a bad input.)
    """

    @classmethod
    def wrap(cls, job: str, err: Exception) -> WorkerError:
        """The error to send back for ``err`` raised while doing ``job``."""
        return cls(f"{job}: {type(err).__name__}: {err}", isinstance(err, UserInputError))


MALUNION_ATTEMPTS = 12
"""Draws of random malunions tried for one phantom before it is made without any."""


def make_phantom(job: tuple[int, int, float, str, int, bool]) -> int:
    """Make and save one phantom; returns the index.

    ``job`` is (index, seed, voxel mm, folder, run seed, malunited).
    """
    from regkit_recon.phantom.deformity import draw_malunions
    from regkit_recon.phantom.phantom import make_hand_phantom

    k, seed, voxel, path, run_seed, malunited = job
    try:
        phantom = None
        if malunited:
            for attempt in range(MALUNION_ATTEMPTS):
                stream = malunion_attempt(run_seed, k, attempt)
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


def make_samples(task: tuple[list[int], dict[str, Any], dict[str, Any], str, int]) -> list[int]:
    """Render and write a chunk of samples; returns the indices made.

    ``task`` is (indices, source, parameters, samples folder, views per source).
    """
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


def worker_threads(workers: int) -> int:
    """Threads for each of ``workers`` processes: the CPUs shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // workers)
