"""Ground truth for a real radiograph: register the CT to it, then render in that view.

Uses :func:`regkit.registration.register_2d3d` (imported when needed). The sample's ``image`` is
the real radiograph (line integrals), ``image_clean`` the DRR in the registered camera, and the
depths are rendered in that camera; ``meta`` records the registration (initial camera,
``world_correction``, metric and score).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from regkit.errors import InputError, RegkitError

__all__ = ["registered_sample"]


def _register_2d3d() -> Any:
    try:
        from regkit.registration import register_2d3d
    except (ImportError, AttributeError) as err:
        raise RegkitError("this regkit has no 2D-3D registration "
                          "(regkit.registration.register_2d3d), which --radiograph needs: "
                          f"{err}") from None
    return register_2d3d


def registered_sample(spec: Any, out: Path, *, stream: Any = None,  # noqa: ARG001 - generate passes it
                      options: Any = None) -> dict[str, Any]:
    """Register ``spec.ct`` to ``spec.radiograph`` from ``spec.camera``; write sample 0.

    Returns:
        The manifest written.
    """
    from regkit import load_cameras, load_nifti, load_radiograph
    from regkit_recon.groundtruth.manifest import (
        list_sources,
        manifest_path,
        sample_name,
        write_manifest,
    )
    from regkit_recon.groundtruth.sample import SampleRenderer, write_sample

    register_2d3d = _register_2d3d()
    sources = list_sources(spec, out)
    source = sources[0]
    cameras = load_cameras(spec.camera)
    if len(cameras) != 1:
        raise InputError(f"must hold one camera for the one radiograph, got {len(cameras)}",
                         source=spec.camera, key="camera")
    radiograph = load_radiograph(spec.radiograph)
    image = np.asarray(radiograph.image, dtype=np.float32)
    start = cameras[0]
    if (start.height, start.width) != image.shape:
        raise InputError(f"the camera's detector is {start.width} x {start.height} but the "
                         f"radiograph is {image.shape[1]} x {image.shape[0]}",
                         source=spec.camera, key="width")
    volume = load_nifti(source["ct"], labels=source["labels"])
    result = register_2d3d(volume, [start], [image],
                           seed=spec.seed, backend=spec.backend, options=options)
    camera = result.cameras[0]
    # the radiograph's own pixels set the detector here: the CT as it is unless told otherwise
    factor = spec.drr_factor or 1
    renderer = SampleRenderer(volume, source["bones"], backend=spec.backend,
                              step_mm=spec.step_mm, drr_factor=factor)
    try:
        clean = renderer.drr(camera)
        depth = renderer.depth(camera, spec.layers)
    finally:
        renderer.close()
    meta = {"index": 0, "seed": spec.seed, "drr_factor": factor,
            "generator": "regkit-recon generate (registered)",
            "radiograph": str(Path(spec.radiograph).absolute()),
            "initial_camera": start.to_dict(),
            "registration": {"world_correction": np.asarray(result.world_correction).tolist(),
                             "metric": result.metric,
                             "final_score": float(result.final_score),
                             "seconds": float(result.seconds),
                             "evaluations": int(result.evaluations)}}
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    name = sample_name(0)
    write_sample(folder / name, {
        "image": image, "image_clean": clean, "camera": camera.to_json(indent=None),
        "bones": np.asarray(source["bones"], dtype=np.int32), **depth,
        "source": json.dumps({**source["record"], "radiograph": meta["radiograph"]}),
        "meta": json.dumps(meta)})
    samples = [{"index": 0, "file": f"samples/{name}", "source": source["id"],
                "view": "registered"}]
    extra: dict[str, Any] = {"registration": meta["registration"]}
    if spec.montage:
        from regkit_recon.groundtruth.montage import write_montage

        write_montage(out / "montage.png", [folder / name])
        extra["montage"] = "montage.png"
    write_manifest(out, spec, sources, samples, complete=True, extra=extra)
    return json.loads(manifest_path(out).read_text(encoding="utf-8"))
