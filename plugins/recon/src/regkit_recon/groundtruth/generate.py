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

This module drives a run (:func:`generate`); what was asked for and the seeds are in
:mod:`.spec`, the manifest and the folder's bookkeeping in :mod:`.manifest`, and what runs in the
worker processes in :mod:`.workers`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from regkit.errors import InputError
from regkit_recon.groundtruth.manifest import (
    check_resume,
    clean_temporaries,
    list_sources,
    manifest_path,
    sample_name,
    write_manifest,
)
from regkit_recon.groundtruth.sample import sample_intact
from regkit_recon.groundtruth.spec import (
    GenerateSpec,
    malunion_stream,
    parse_bones,
    parse_shard,
    phantom_is_malunited,
    phantom_seed,
    sample_streams,
)
from regkit_recon.groundtruth.workers import (
    WorkerError,
    init_worker,
    make_phantom,
    make_samples,
    release_renderers,
    render_sample,
    worker_threads,
)

__all__ = ["GenerateSpec", "WorkerError", "generate", "malunion_stream", "parse_bones",
           "parse_shard", "phantom_is_malunited", "phantom_seed", "release_renderers",
           "render_sample", "sample_streams"]

_CHUNK = 4


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


# ------------------------------------------------------------------------------ driver


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
    check_resume(out, params, spec.shard)
    if spec.radiograph is not None:
        from regkit_recon.groundtruth.registered import registered_sample

        return registered_sample(spec, out, stream=stream, options=registration_options)
    sources = list_sources(spec, out)
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    clean_temporaries(folder, out / "phantoms")
    k_shard, n_shard = spec.shard or (0, 1)
    samples = [{"index": i, "file": f"samples/{sample_name(i)}",
                "source": sources[i // spec.views]["id"],
                "view": spec.kinds[(i % spec.views) % len(spec.kinds)]}
               for i in range(len(sources) * spec.views) if i % n_shard == k_shard]
    write_manifest(out, spec, sources, samples, complete=False)
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
    write_manifest(out, spec, sources, samples, complete=True, extra=extra)
    return json.loads(manifest_path(out).read_text(encoding="utf-8"))


def _drop_damaged(out: Path, samples: list[dict[str, Any]], stream: Any) -> None:
    """Remove the damaged sample files a resumed run finds (a truncated copy, a full disk).

    They are then made again rather than kept.
    """
    damaged = [s for s in samples if (out / s["file"]).is_file()
               and not sample_intact(out / s["file"])]
    if damaged:
        print(f"{len(damaged)} damaged sample file(s) are made again: "
              f"{', '.join(s['file'] for s in damaged[:5])}"
              + (" ..." if len(damaged) > 5 else ""), file=stream, flush=True)
    for s in damaged:
        (out / s["file"]).unlink()


def _run(spec: GenerateSpec, out: Path, sources: list[dict[str, Any]],
         samples: list[dict[str, Any]], params: dict[str, Any], folder: Path, stream: Any,
         on_sample: Callable[[int], None] | None) -> list[int]:
    """Make the missing phantoms, then the missing samples; the indices made."""
    pool = None
    try:
        if spec.workers > 1:
            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(spec.workers, initializer=init_worker,
                            initargs=(worker_threads(spec.workers),))
        if spec.phantoms is not None:
            needed = {s["source"] for s in samples}
            jobs = [(s["record"]["index"], s["record"]["seed"], spec.voxel_mm,
                     str(out / s["id"]), spec.seed, s["record"]["malunited"]) for s in sources
                    if s["id"] in needed and not (out / s["id"] / "phantom.json").is_file()]
            if jobs:
                bar = Progress(len(jobs), "phantoms", stream)
                results = pool.imap_unordered(make_phantom, jobs) if pool \
                    else map(make_phantom, jobs)
                for _ in results:
                    bar.advance()
        _drop_damaged(out, samples, stream)
        todo = [s["index"] for s in samples if not (out / s["file"]).is_file()]
        tasks = []
        for src_index, source in enumerate(sources):
            mine = [i for i in todo if i // spec.views == src_index]
            for c in range(0, len(mine), _CHUNK):
                tasks.append((mine[c:c + _CHUNK], source, params, str(folder), spec.views))
        bar = Progress(len(todo), "samples", stream)
        if pool is None:
            release_renderers()
            done_iter: Any = map(make_samples, tasks)
        else:
            done_iter = pool.imap_unordered(make_samples, tasks)
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
