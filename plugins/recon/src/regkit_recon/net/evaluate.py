"""``regkit recon evaluate``: score the bone network on ground-truth folders.

Each sample's degraded radiograph (``image``) goes through :func:`~regkit_recon.net.predict.predict`
with the sample's camera, and the prediction is scored against the sample's truth: the hit mask
and the first depth layer (``front[:, 0]``, ``back[:, 0]``) of every bone.

**Variants.** The generated samples show a right hand with the fingers pointing down the image
(the phantom's anatomical position). Each sample can also be scored as

* ``left``: the radiograph mirrored left-right (a left hand), with the camera mirrored to match
  (:func:`~regkit_recon.net.predict.turn_camera`: ``cx' = W − cx`` and the world mirrored,
  ``camera_from_world' = diag(−1, 1, 1, 1) · C · diag(−1, 1, 1, 1)``); the truth maps flip their
  columns, their depths unchanged (distances along rays do not change);
* ``up``: turned by 180° (fingers up): ``cx' = W − cx``, ``cy' = H − cy``,
  ``camera_from_world' = diag(−1, −1, 1, 1) · C``, the truth maps turned likewise;
* ``left-up``: both.

**Figures** (per case = one sample in one variant; all depths in mm along the rays):

* **Dice** of each bone's predicted and true mask, ``2|T ∩ P| / (|T| + |P|)`` (a bone absent from
  both is skipped).
* **Depth errors** ``pred − truth`` of ``front``, ``back`` and ``thickness = back − front``, on
  two regions: the **true mask** (every pixel where the truth hits the bone; the network's depths
  exist everywhere, :attr:`~regkit_recon.net.predict.Prediction.front_all`) and the **predicted
  mask** (pixels where both hit).
* Each twice: **absolute**, and **shift-aligned**: after removing the case's single common offset
  ``δ`` along the central ray (the camera's z axis). A shift of the whole prediction by ``δ``
  along z moves the depth along a ray at angle ``θ`` to z by ``δ / cos θ``; ``δ`` is the median,
  over the true-mask pixels of all bones, front and back together, of ``(pred − truth) · cos θ``
  (the L1-best shift), and the aligned error is ``pred − truth − δ / cos θ``. Thickness does not
  change under the shift. Hand rays lie within a few degrees of z, so ``δ`` is within ~1 % of the
  median depth offset along the rays.
* A case's error figure is the **median absolute error** over the pixels of the region (all bones
  pooled); groups of cases report the median and the mean over their cases. Per-bone figures are
  each bone's median absolute error in a case, aggregated by the median over cases; per-bone Dice
  by the mean over cases.

* **Thickness by distance from the outline** (``thickness_by_rim``): the thickness error
  ``pred − truth`` on the true mask split by each pixel's distance from its bone's true outline
  (the Euclidean distance transform of the true mask, pixels: the outermost ring is ``1``, then
  ``2``, ``3``, ``4-5`` and ``6+``). A case's figures per ring: the median signed error
  (``bias``) and the median absolute error (``abs``) over the ring's pixels, all bones pooled, and
  the pixel count; groups report the median over cases. A network that blurs the thickness
  across the outline shows a positive bias in the outer rings and a negative one inside; the
  reconstruction's solids take their rims from these rings.

Groups: ``overall``, ``by_view`` (the sample's view kind: pa, oblique, lateral), ``by_hand``
(right, left), ``by_orientation`` (fingers down, fingers up) and ``by_variant``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from regkit.errors import InputError

if TYPE_CHECKING:
    from regkit_recon.net.predict import ModelLike

__all__ = ["RIM_RINGS", "VARIANTS", "Example", "add_evaluate_arguments", "evaluate",
           "parse_variants", "run_evaluate", "score_case", "summarise", "summary_table",
           "write_report"]

VARIANTS: dict[str, tuple[int, bool]] = {"right": (0, False), "left": (0, True),
                                         "up": (2, False), "left-up": (2, True)}
"""Variant name → (quarter turns, mirror) of the sample as generated (a right hand, fingers
down); see :func:`~regkit_recon.net.predict.turn_array`."""

ALL_VARIANTS = ("right", "left", "up")
"""What ``--all-variants`` scores."""

REPORT_FORMAT = "regkit-recon evaluation"
_QUANTITIES = ("front", "back", "thickness")
_REGIONS = ("true_mask", "pred_mask")
_KINDS = ("absolute", "aligned")
RIM_RINGS: dict[str, tuple[float, float]] = {"1": (0.0, 1.5), "2": (1.5, 2.5), "3": (2.5, 3.5),
                                             "4-5": (3.5, 5.5), "6+": (5.5, float("inf"))}
"""Ring name → (lo, hi]: a true-mask pixel's distance from its bone's outline, pixels (the
outermost pixels are at 1)."""
ERROR_WINDOW_MM = 10.0
"""Error maps of the figure run from 0 (black) to this (bright)."""
RIM_WINDOW_MM = 4.0
"""The figure's thickness-by-ring bars span ± this."""
RIM_COLOURS = {True: (230, 120, 90), False: (90, 150, 230)}
"""Bar colours of a positive (too thick) and a negative (too thin) ring bias."""


# ------------------------------------------------------------------------------ scoring


def _median_abs(values: np.ndarray) -> float:
    return float(np.median(np.abs(values))) if values.size else float("nan")


def _nan_stat(values: Sequence[float], how: str) -> float:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    a = a[np.isfinite(a)]
    if not a.size:
        return float("nan")
    return float(np.median(a) if how == "median" else np.mean(a))


def _rim_distance(hit: np.ndarray) -> np.ndarray:
    """Each hit pixel's distance from its bone's outline, ``[NB, H, W]``, pixels.

    The Euclidean distance to the nearest pixel the bone does not hit, the image's border counted
    as outside; 0 off the mask.
    """
    from scipy import ndimage

    out = np.zeros(hit.shape, dtype=np.float64)
    for b in range(hit.shape[0]):
        if hit[b].any():
            rows, cols = np.nonzero(hit[b])
            r0, r1 = rows.min(), rows.max() + 1
            c0, c1 = cols.min(), cols.max() + 1
            window = np.pad(hit[b, r0:r1, c0:c1], 1)
            out[b, r0:r1, c0:c1] = ndimage.distance_transform_edt(window)[1:-1, 1:-1]
    return out


def _thickness_by_rim(residual: np.ndarray, valid: np.ndarray,
                      distance: np.ndarray) -> dict[str, dict[str, float | int]]:
    out: dict[str, dict[str, float | int]] = {}
    for name, (lo, hi) in RIM_RINGS.items():
        r = residual[valid & (distance > lo) & (distance <= hi)]
        out[name] = {"bias": float(np.median(r)) if r.size else float("nan"),
                     "abs": _median_abs(r), "pixels": int(r.size)}
    return out


def score_case(truth_hit: np.ndarray, truth_front: np.ndarray, truth_back: np.ndarray,
               pred_hit: np.ndarray, pred_front: np.ndarray, pred_back: np.ndarray,
               cos: np.ndarray) -> dict[str, Any]:
    """The figures of one case (see the module's docstring).

    Args:
        truth_hit: bool ``[NB, H, W]``.
        truth_front: ``[NB, H, W]`` mm along the rays (the first layer; finite where
            ``truth_hit``).
        truth_back: ``[NB, H, W]`` mm along the rays (the first layer; finite where
            ``truth_hit``).
        pred_hit: bool ``[NB, H, W]``.
        pred_front: ``[NB, H, W]`` mm, the predicted depths at every pixel (finite where they
            are to be scored).
        pred_back: ``[NB, H, W]`` mm, the predicted depths at every pixel (finite where they
            are to be scored).
        cos: ``[H, W]`` cosine of each pixel's ray to the camera's z axis.

    Returns:
        ``dice`` (per bone, NaN for a bone absent from both masks), ``true_pixels``,
        ``pred_pixels`` (per bone), ``offset_mm`` (δ along z), ``errors[quantity][region][kind]``
        (median absolute error of the case, mm), ``per_bone[quantity][kind]`` (per bone, on
        the true mask) and ``thickness_by_rim[ring]`` (``bias``, ``abs`` in mm and ``pixels``;
        :data:`RIM_RINGS`).
    """
    th = np.asarray(truth_hit, dtype=bool)
    ph = np.asarray(pred_hit, dtype=bool)
    tf, tb = np.asarray(truth_front, np.float64), np.asarray(truth_back, np.float64)
    pf, pb = np.asarray(pred_front, np.float64), np.asarray(pred_back, np.float64)
    c = np.broadcast_to(np.asarray(cos, np.float64), th.shape)
    nb = th.shape[0]
    inter = (th & ph).sum(axis=(1, 2))
    total = th.sum(axis=(1, 2)) + ph.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2.0 * inter / total, np.nan)
    valid = th & np.isfinite(tf) & np.isfinite(tb) & np.isfinite(pf) & np.isfinite(pb)
    rf, rb = pf - tf, pb - tb
    cv = c[valid]
    pooled = np.concatenate([rf[valid] * cv, rb[valid] * cv])
    offset = float(np.median(pooled)) if pooled.size else float("nan")
    shift = offset / c
    residual = {"front": {"absolute": rf, "aligned": rf - shift},
                "back": {"absolute": rb, "aligned": rb - shift},
                "thickness": {"absolute": rb - rf, "aligned": rb - rf}}
    regions = {"true_mask": valid, "pred_mask": valid & ph}
    errors = {q: {r: {k: _median_abs(residual[q][k][regions[r]]) for k in _KINDS}
                  for r in _REGIONS} for q in _QUANTITIES}
    per_bone = {q: {k: [_median_abs(residual[q][k][b][valid[b]]) for b in range(nb)]
                    for k in _KINDS} for q in _QUANTITIES}
    rim = _thickness_by_rim(rb - rf, valid, _rim_distance(th))
    return {"dice": dice.tolist(), "true_pixels": th.sum(axis=(1, 2)).tolist(),
            "pred_pixels": ph.sum(axis=(1, 2)).tolist(), "offset_mm": offset,
            "errors": errors, "per_bone": per_bone, "thickness_by_rim": rim}


def summarise(cases: Sequence[dict[str, Any]], bone_names: Sequence[str]) -> dict[str, Any]:
    """The figures of a group of cases (records of :func:`score_case`).

    Returns:
        ``cases``; ``dice``: ``mean`` (over bones of each bone's mean over cases), ``min`` and
        ``min_bone``, ``case_mean`` (median and mean over cases of a case's mean over bones) and
        ``per_bone``; ``errors[quantity][region][kind]``: ``median`` and ``mean`` over cases of
        the cases' median absolute errors; ``offset_mm``: median and mean of δ and of |δ|;
        ``per_bone[name]``: ``dice`` and ``QUANTITY_KIND`` (true mask, median over cases);
        ``thickness_by_rim[ring]``: ``bias`` and ``abs`` (median over cases) and ``pixels``
        (their sum).
    """
    names = list(bone_names)
    nb = len(names)
    dice = np.array([[np.nan if d is None else d for d in c["dice"]] for c in cases],
                    dtype=np.float64).reshape(len(cases), nb)
    with warnings.catch_warnings():  # all-NaN columns (a bone never seen) give NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        per_bone_dice = np.nanmean(dice, axis=0) if len(cases) else np.full(nb, np.nan)
        case_dice = np.nanmean(dice, axis=1) if nb else np.zeros(0)
    seen = np.isfinite(per_bone_dice)
    worst = int(np.nanargmin(per_bone_dice)) if seen.any() else -1
    out: dict[str, Any] = {
        "cases": len(cases),
        "dice": {
            "mean": float(np.mean(per_bone_dice[seen])) if seen.any() else float("nan"),
            "min": float(per_bone_dice[worst]) if worst >= 0 else float("nan"),
            "min_bone": names[worst] if worst >= 0 else None,
            "case_mean": {"median": _nan_stat(case_dice.tolist(), "median"),
                          "mean": _nan_stat(case_dice.tolist(), "mean")},
            "per_bone": dict(zip(names, per_bone_dice.tolist(), strict=True)),
        },
        "errors": {q: {r: {k: {how: _nan_stat([c["errors"][q][r][k] for c in cases], how)
                               for how in ("median", "mean")}
                           for k in _KINDS} for r in _REGIONS} for q in _QUANTITIES},
        "offset_mm": {
            "median": _nan_stat([c["offset_mm"] for c in cases], "median"),
            "mean": _nan_stat([c["offset_mm"] for c in cases], "mean"),
            "abs_median": _nan_stat([abs(c["offset_mm"]) for c in cases], "median"),
            "abs_mean": _nan_stat([abs(c["offset_mm"]) for c in cases], "mean"),
        },
    }
    out["per_bone"] = {
        name: {"dice": float(per_bone_dice[b]),
               **{f"{q}_{k}": _nan_stat([c["per_bone"][q][k][b] for c in cases], "median")
                  for q in _QUANTITIES for k in _KINDS if not (q == "thickness"
                                                                and k == "aligned")}}
        for b, name in enumerate(names)}
    out["thickness_by_rim"] = {
        ring: {"bias": _nan_stat([c["thickness_by_rim"][ring]["bias"] for c in cases], "median"),
               "abs": _nan_stat([c["thickness_by_rim"][ring]["abs"] for c in cases], "median"),
               "pixels": int(sum(c["thickness_by_rim"][ring]["pixels"] for c in cases))}
        for ring in RIM_RINGS}
    return out


def parse_variants(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"right,left,up"`` (or a sequence of names) → the variant names, checked.

    Raises:
        InputError: an unknown or repeated name, or none.
    """
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if not names:
        raise InputError(f"no variant given; known: {', '.join(VARIANTS)}", key="variants")
    for n in names:
        if n not in VARIANTS:
            raise InputError(f"unknown variant {n!r}; known: {', '.join(VARIANTS)}",
                             key="variants")
    if len(set(names)) != len(names):
        raise InputError(f"a variant is named twice in {','.join(names)}", key="variants")
    return tuple(names)


# ------------------------------------------------------------------------------ evaluation


@dataclass
class Example:
    """One case kept for the report's figure (all maps ``[NB, H, W]`` or ``[H, W]``).

    Attributes:
        title: What the row is (file, variant, figures).
        image: The radiograph the network saw (line integrals).
        truth_hit, pred_hit: bool masks.
        truth_front, truth_back, pred_front, pred_back: mm, NaN outside each one's mask.
        front_error, front_error_aligned: ``[H, W]`` mean over the bones the truth hits of
            ``|pred − truth|`` of the front depth (absolute and shift-aligned), NaN elsewhere.
        dice: Per bone.
    """

    title: str
    image: np.ndarray
    truth_hit: np.ndarray
    truth_front: np.ndarray
    truth_back: np.ndarray
    pred_hit: np.ndarray
    pred_front: np.ndarray
    pred_back: np.ndarray
    front_error: np.ndarray
    front_error_aligned: np.ndarray
    dice: list[float]


def _front_errors(truth_hit: np.ndarray, truth_front: np.ndarray, pred_front: np.ndarray,
                  shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.where(truth_hit, np.asarray(pred_front, np.float64) - truth_front, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (np.nanmean(np.abs(r), axis=0).astype(np.float32),
                np.nanmean(np.abs(r - shift), axis=0).astype(np.float32))


def evaluate(model: ModelLike, roots: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
             *, limit: int | None = None, tta: bool = False, device: str = "cpu",
             variants: Sequence[str] = ("right",), threshold: float = 0.5,
             stream: TextIO | None = None, examples: list[Example] | None = None,
             max_examples: int = 4) -> dict[str, Any]:
    """Score a model on ground-truth folders.

    Args:
        model: A model file, a loaded model or network, or None for the shipped model.
        roots: Ground-truth folders (``regkit recon generate``), read as one data set.
        limit: Score only the first ``limit`` samples (in data set order).
        tta: Predict with test-time augmentation.
        device: Where the network runs.
        variants: Names of :data:`VARIANTS` each sample is scored in.
        threshold: The prediction's hit threshold.
        stream: Progress lines go here (one per case); None: quiet.
        examples: When given, the first ``max_examples`` cases are appended to it
            (:class:`Example`, for :func:`write_report`).
        max_examples: See ``examples``.

    Returns:
        The JSON-ready report: ``format``, ``model``, ``data``, ``tta``, ``threshold``,
        ``variants``, ``samples``, ``bones``, ``bone_names``, ``definitions``, ``overall``,
        ``by_view``, ``by_hand``, ``by_orientation``, ``by_variant`` (each a :func:`summarise`),
        ``per_case`` (each case's :func:`score_case` record with its ``file``, ``sample``,
        ``view``, ``variant``, ``hand``, ``orientation``) and ``seconds``. NaN is written as
        None.

    Raises:
        InputError: a folder that is not a complete ground-truth folder, data for other bones
            than the model's, an unknown variant, a bad limit.
        FileFormatError: a missing or unreadable model file.
    """
    from regkit_recon.groundtruth.dataset import open_ground_truth
    from regkit_recon.groundtruth.sample import camera_of, read_sample
    from regkit_recon.net.geometry import cos_theta
    from regkit_recon.net.predict import (
        check_bones,
        predict,
        resolve_model,
        turn_array,
        turn_camera,
    )

    start = time.perf_counter()
    names = parse_variants(variants)
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise InputError(f"must be a whole number >= 1, got {limit!r}", key="limit")
    data = open_ground_truth(roots)
    loaded = resolve_model(model, device=device)
    if data.bones:
        check_bones(loaded, data.bones, source=str(data.roots[0]))
    files = list(data.files if limit is None else data.files[:int(limit)])
    if not files:
        raise InputError("the ground-truth folders hold no sample", key="data")
    bone_names = list(loaded.net.config.bone_names)
    cases: list[dict[str, Any]] = []
    n_cases = len(files) * len(names)
    for f in files:
        sample = read_sample(f)
        check_bones(loaded, sample["bones"], source=str(f))
        camera = camera_of(sample)
        try:
            view = str(json.loads(sample["meta"])["view"]["kind"])
        except (KeyError, TypeError, ValueError):
            view = "unknown"
        for variant in names:
            k, mirror = VARIANTS[variant]
            cam = turn_camera(camera, k, mirror)
            image = turn_array(sample["image"], k, mirror)
            th = turn_array(sample["hit"], k, mirror)
            tf = turn_array(sample["front"][:, 0], k, mirror)
            tb = turn_array(sample["back"][:, 0], k, mirror)
            pred = predict(image, cam, model=loaded, tta=tta, threshold=threshold,
                           device=device)
            assert pred.front_all is not None
            assert pred.back_all is not None
            cos = cos_theta(cam)
            score = score_case(th, tf, tb, pred.hit, pred.front_all, pred.back_all, cos)
            case = {"file": str(f), "sample": _sample_index(sample), "view": view,
                    "variant": variant, "hand": "left" if mirror else "right",
                    "orientation": "fingers_up" if k == 2 else "fingers_down", **score}
            cases.append(case)
            if stream is not None:
                e = score["errors"]["front"]["true_mask"]
                print(f"evaluate: {len(cases)}/{n_cases} {Path(f).name} {variant}: Dice "
                      f"{_nan_stat(score['dice'], 'mean'):.3f}, front {e['absolute']:.2f} mm "
                      f"({e['aligned']:.2f} aligned)", file=stream, flush=True)
            if examples is not None and len(examples) < max_examples:
                shift = score["offset_mm"] / cos
                err, err_aligned = _front_errors(th, tf, pred.front_all, shift)
                examples.append(Example(
                    title=f"{Path(f).name} {variant} ({view}): Dice "
                          f"{_nan_stat(score['dice'], 'mean'):.3f}, offset "
                          f"{score['offset_mm']:+.1f} mm",
                    image=image, truth_hit=th, truth_front=np.where(th, tf, np.nan),
                    truth_back=np.where(th, tb, np.nan), pred_hit=pred.hit,
                    pred_front=pred.front[:, 0], pred_back=pred.back[:, 0], front_error=err,
                    front_error_aligned=err_aligned, dice=list(score["dice"])))

    def groups(key: str) -> dict[str, Any]:
        values = list(dict.fromkeys(c[key] for c in cases))
        return {v: summarise([c for c in cases if c[key] == v], bone_names) for v in values}

    report = {
        "format": REPORT_FORMAT,
        "model": loaded.path,
        "data": [str(r) for r in data.roots],
        "tta": bool(tta),
        "threshold": float(threshold),
        "variants": list(names),
        "samples": len(files),
        "bones": [int(b) for b in loaded.net.config.bones],
        "bone_names": bone_names,
        "definitions": _DEFINITIONS,
        "overall": summarise(cases, bone_names),
        "by_view": groups("view"),
        "by_hand": groups("hand"),
        "by_orientation": groups("orientation"),
        "by_variant": groups("variant"),
        "per_case": cases,
        "seconds": time.perf_counter() - start,
    }
    return _json_ready(report)


_DEFINITIONS = {
    "dice": "2|T∩P|/(|T|+|P|) per bone and case; a bone absent from both masks is skipped",
    "true_mask": "pixels where the truth hits the bone (network depths exist at every pixel)",
    "pred_mask": "pixels where both the truth and the prediction hit the bone",
    "absolute": "pred − truth of depths in mm along the ray from the source (layer 0)",
    "aligned": "pred − truth − δ/cos θ, δ = median over all bones' true-mask pixels, front and "
               "back together, of (pred − truth)·cos θ: one shift along the camera's z axis "
               "per case (offset_mm)",
    "thickness": "back − front; unchanged by the shift",
    "thickness_by_rim": "thickness pred − truth on the true mask by the pixel's distance from "
                        "its bone's true outline (pixels, Euclidean; outermost ring 1): median "
                        "signed (bias) and absolute (abs) error per case, all bones pooled; "
                        "groups: median over cases",
    "case figure": "median absolute error over the region's pixels, all bones pooled",
    "group figure": "median and mean over cases of the case figures; per-bone errors: median "
                    "over cases; per-bone Dice: mean over cases",
    "variants": "right: the sample as generated (right hand, fingers down); left: mirrored "
                "left-right with the camera mirrored; up: turned 180°; left-up: both",
}


def _sample_index(sample: dict[str, Any]) -> int | None:
    try:
        return int(json.loads(sample["meta"])["index"])
    except (KeyError, TypeError, ValueError):
        return None


def _json_ready(value: Any) -> Any:
    """NaN and infinities → None, numpy scalars → Python, recursively."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# ------------------------------------------------------------------------------ report files


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def summary_table(report: dict[str, Any]) -> str:
    """A short text table of the report: one row per group, Dice and median errors (mm)."""
    head = (f"{'group':<24}{'cases':>6}{'dice':>7}{'min bone':>16}{'front':>8}{'aligned':>8}"
            f"{'back':>8}{'aligned':>8}{'thick':>8}{'offset':>8}")
    lines = [head, "-" * len(head)]

    def row(label: str, g: dict[str, Any]) -> str:
        e = g["errors"]
        t = {q: e[q]["true_mask"] for q in _QUANTITIES}
        bone = g["dice"]["min_bone"] or "-"
        return (f"{label:<24}{g['cases']:>6}{_fmt(g['dice']['mean'], '.3f'):>7}"
                f"{bone[:15]:>16}{_fmt(t['front']['absolute']['median']):>8}"
                f"{_fmt(t['front']['aligned']['median']):>8}"
                f"{_fmt(t['back']['absolute']['median']):>8}"
                f"{_fmt(t['back']['aligned']['median']):>8}"
                f"{_fmt(t['thickness']['absolute']['median']):>8}"
                f"{_fmt(g['offset_mm']['median'], '+.2f'):>8}")

    lines.append(row("all", report["overall"]))
    for key in ("by_view", "by_hand", "by_orientation"):
        groups = report.get(key, {})
        if len(groups) > 1 or key == "by_view":
            for name, g in groups.items():
                lines.append(row(f"{key[3:]}={name}", g))
    lines.append("depth errors: median over cases of the median |pred - truth| (mm) on the "
                 "true masks; aligned: after the per-case shift along z (offset)")
    rim = report["overall"].get("thickness_by_rim")
    if rim:
        lines.append("thickness pred - truth by distance from the true outline (px), median "
                     "bias (|error|) mm: " + ", ".join(
                         f"{ring}: {_fmt(v['bias'], '+.2f')} ({_fmt(v['abs'])})"
                         for ring, v in rim.items()))
    return "\n".join(lines)


_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
                     [253, 231, 37]], dtype=np.float64)


def _colour(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``[H, W]`` values → RGB uint8 on a viridis-like scale; NaN black."""
    a = np.asarray(values, np.float64)
    finite = np.isfinite(a)
    t = np.clip((np.where(finite, a, lo) - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    x = t * (len(_ANCHORS) - 1)
    i = np.minimum(np.floor(x).astype(int), len(_ANCHORS) - 2)
    w = (x - i)[..., None]
    rgb = _ANCHORS[i] * (1 - w) + _ANCHORS[i + 1] * w
    rgb[~finite] = 0
    return np.round(rgb).astype(np.uint8)


def _palette(nb: int) -> np.ndarray:
    hue = (np.arange(nb) * 0.618034) % 1.0
    return (np.stack([np.abs(hue * 6 - 3) - 1, 2 - np.abs(hue * 6 - 2),
                      2 - np.abs(hue * 6 - 4)], axis=1).clip(0, 1) * 230 + 25).astype(np.uint8)


def _masks(hit: np.ndarray) -> np.ndarray:
    """``[NB, H, W]`` → RGB, one colour per bone (the first bone a pixel belongs to)."""
    out = _palette(hit.shape[0])[np.argmax(hit, axis=0)]
    out[~hit.any(axis=0)] = 0
    return out


def _nearest(front: np.ndarray) -> np.ndarray:
    near = np.where(np.isfinite(front), front, np.inf).min(axis=0)
    return np.where(np.isfinite(near), near, np.nan)


def _thickness(front: np.ndarray, back: np.ndarray) -> np.ndarray:
    t = np.nan_to_num(back - front, nan=0.0).sum(axis=0)
    return np.where(np.isfinite(front).any(axis=0), t, np.nan)


_COLUMNS = ("radiograph", "true bones", "predicted bones", "true front", "predicted front",
            "true thickness", "pred. thickness", "|front err|", "|front err| aligned")


def _example_tiles(ex: Example) -> list[np.ndarray]:
    from regkit.io.png import to_uint8

    gray = to_uint8(ex.image)
    near_t, near_p = _nearest(ex.truth_front), _nearest(ex.pred_front)
    finite = near_t[np.isfinite(near_t)]
    lo, hi = (np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0))
    thick_t = _thickness(ex.truth_front, ex.truth_back)
    thick_p = _thickness(ex.pred_front, ex.pred_back)
    tmax = float(np.nanmax(thick_t)) if np.isfinite(thick_t).any() else 1.0
    return [np.repeat(gray[..., None], 3, axis=2), _masks(ex.truth_hit), _masks(ex.pred_hit),
            _colour(near_t, float(lo), float(hi)), _colour(near_p, float(lo), float(hi)),
            _colour(thick_t, 0.0, tmax), _colour(thick_p, 0.0, tmax),
            _colour(ex.front_error, 0.0, ERROR_WINDOW_MM),
            _colour(ex.front_error_aligned, 0.0, ERROR_WINDOW_MM)]


def _figure(report: dict[str, Any], examples: Sequence[Example], tile: int = 128) -> Any:
    """The report's PNG as a PIL image: example rows, the per-bone Dice bars, the ring bars."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    gap, text_h = 4, 14
    ncol = len(_COLUMNS)
    width = max(ncol * (tile + gap) + gap, 640)
    names = list(report.get("bone_names", []))
    per_bone = report.get("overall", {}).get("dice", {}).get("per_bone", {})
    bar_h = 12
    rows_h = len(examples) * (text_h + tile + gap)
    chart_h = text_h * 2 + len(names) * bar_h + gap
    rim = report.get("overall", {}).get("thickness_by_rim") or {}
    rim_h = text_h * 2 + len(rim) * bar_h + gap if rim else 0
    height = gap + text_h + rows_h + chart_h + rim_h + gap
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    y = gap
    for i, title in enumerate(_COLUMNS):
        draw.text((gap + i * (tile + gap), y), title, fill=(230, 230, 230), font=font)
    y += text_h
    for ex in examples:
        draw.text((gap, y), ex.title, fill=(255, 220, 120), font=font)
        y += text_h
        for i, rgb in enumerate(_example_tiles(ex)):
            im = Image.fromarray(rgb)
            scale = tile / max(im.size)
            size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
            resample = Image.Resampling.NEAREST if i in (1, 2) else Image.Resampling.BILINEAR
            canvas.paste(im.resize(size, resample), (gap + i * (tile + gap), y))
        y += tile + gap
    overall = report.get("overall", {})
    dice = overall.get("dice", {})
    draw.text((gap, y), f"Dice per bone (mean over {overall.get('cases', 0)} cases; mean "
              f"{_fmt(dice.get('mean'), '.3f')}); depth error maps 0-{ERROR_WINDOW_MM:g} mm",
              fill=(230, 230, 230), font=font)
    y += text_h * 2
    label_w, bar_w = 150, max(200, width - 150 - 60 - 2 * gap)
    palette = _palette(len(names))
    for b, name in enumerate(names):
        value = per_bone.get(name)
        draw.text((gap, y), name, fill=(210, 210, 210), font=font)
        x0 = gap + label_w
        draw.rectangle([x0, y + 2, x0 + bar_w, y + bar_h - 2], outline=(60, 60, 60))
        if value is not None:
            draw.rectangle([x0, y + 2, x0 + round(bar_w * max(0.0, min(1.0, value))),
                            y + bar_h - 2], fill=tuple(int(c) for c in palette[b]))
        draw.text((x0 + bar_w + 6, y), _fmt(value, ".3f"), fill=(210, 210, 210), font=font)
        y += bar_h
    if rim:
        y += gap
        draw.text((gap, y), f"thickness pred - truth by distance from the true outline (px), "
                  f"median over cases; bars span +-{RIM_WINDOW_MM:g} mm",
                  fill=(230, 230, 230), font=font)
        y += text_h * 2
        rim_w = bar_w - 80                          # room for the value's longer text
        centre = gap + label_w + rim_w // 2
        for ring, values in rim.items():
            bias = values.get("bias")
            draw.text((gap, y), f"ring {ring}", fill=(210, 210, 210), font=font)
            draw.rectangle([gap + label_w, y + 2, gap + label_w + rim_w, y + bar_h - 2],
                           outline=(60, 60, 60))
            if bias is not None and math.isfinite(bias):   # a ring without pixels: no bar
                reach = round(0.5 * rim_w * max(-1.0, min(1.0, bias / RIM_WINDOW_MM)))
                draw.rectangle([min(centre, centre + reach), y + 2, max(centre, centre + reach),
                                y + bar_h - 2], fill=RIM_COLOURS[bias >= 0])
            draw.line([centre, y, centre, y + bar_h], fill=(230, 230, 230))
            draw.text((gap + label_w + rim_w + 6, y),
                      f"{_fmt(bias, '+.2f')} mm, |err| {_fmt(values.get('abs'))}",
                      fill=(210, 210, 210), font=font)
            y += bar_h
    return canvas


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str],
                 examples: Sequence[Example] = ()) -> tuple[Path, Path]:
    """Write ``out_dir/report.json`` and ``out_dir/report.png`` (each atomically).

    The PNG holds one row per example (radiograph; true and predicted masks, one colour per
    bone; true and predicted nearest front depth on one scale; true and predicted total
    thickness; the front depth's absolute error, plain and shift-aligned, 0-10 mm), a bar
    chart of the overall per-bone Dice and one of the overall thickness bias by ring (signed,
    ±4 mm).

    Returns:
        The two paths.
    """
    from regkit.utils.files import atomic_path, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "report.json", out / "report.png"
    atomic_write_text(json_path, json.dumps(_json_ready(report), indent=1, allow_nan=False)
                      + "\n")
    with atomic_path(png_path) as tmp:
        _figure(report, examples).save(tmp, format="PNG")
    return json_path, png_path


# ------------------------------------------------------------------------------ command line


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``regkit recon evaluate``'s arguments to ``parser``."""
    from regkit_recon.net.predict import add_model_arguments

    parser.add_argument("--data", nargs="+", required=True, metavar="DIR",
                        help="ground-truth folders (regkit recon generate)")
    parser.add_argument("--out", default=None, metavar="REPORT_DIR",
                        help="write REPORT_DIR/report.json and report.png")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="score only the first N samples")
    add_model_arguments(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--variants", default="right", metavar="V1,V2",
                       help=f"score each sample as these variants ({', '.join(VARIANTS)}; "
                            "default right: as generated)")
    which.add_argument("--all-variants", action="store_true",
                       help=f"score {', '.join(ALL_VARIANTS)} (mirrored: a left hand; turned "
                            "180°: fingers up)")
    parser.add_argument("--examples", type=int, default=4, metavar="N",
                        help="cases drawn in report.png (default 4)")


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``regkit recon evaluate``: progress to stderr, the summary table to stdout."""
    variants = ALL_VARIANTS if args.all_variants else parse_variants(args.variants)
    if args.examples < 0:
        raise InputError(f"must be >= 0, got {args.examples}", key="examples")
    if args.out is not None:
        from regkit.utils.files import check_output

        check_output(args.out, [] if args.model is None else [args.model], kind="into")
    examples: list[Example] = []
    report = evaluate(args.model, args.data, limit=args.limit, tta=args.tta,
                      device=args.device, variants=variants, threshold=args.threshold,
                      stream=sys.stderr, examples=examples, max_examples=args.examples)
    print(summary_table(report))
    if args.out is not None:
        json_path, png_path = write_report(report, args.out, examples)
        print(f"regkit recon evaluate: {report['samples']} samples, "
              f"{len(report['per_case'])} cases, {report['seconds']:.1f} s -> {json_path}, "
              f"{png_path}", file=sys.stderr)
    return 0
