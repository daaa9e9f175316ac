"""``regkit recon predict``: bone masks and depth layers from one radiograph and its camera.

The bone network (:mod:`regkit_recon.net.model`) sees the radiograph resampled to its ``S × S``
input (:func:`~regkit_recon.net.geometry.fit_image`) and gives, per bone of its bone table, a
segmentation logit and the front and back *heights* above the detector (height units). This
module brings them back to the radiograph's own detector and camera:

* ``prob = sigmoid(logit)`` and ``hit = prob > threshold``;
* heights in mm (``value · HEIGHT_SCALE · net_spacing_mm``), resampled to the detector, become
  depths along each pixel's ray with :func:`~regkit_recon.net.geometry.height_to_depth` and the
  radiograph's own camera. Front ≤ back (the network's front lies at or above its back).

**Test-time augmentation** (``tta=True``) runs the network on the 8 flips and quarter turns of
the radiograph (each with its camera turned to match, :func:`turn_camera`), each at the two
sizes of :data:`TTA_FILLS` (the radiograph filling the network's input, and shown at 0.87 of it
with air around, its camera scaled to match), turns each output back, and averages logits and
heights over the 16. The average over the whole group makes the prediction exactly equivariant
(up to float rounding): a mirrored or turned radiograph with the mirrored or turned camera gives
the mirrored or turned masks and the same depths.

**The offset.** One radiograph hardly fixes the hand's distance from the source; the absolute
depths are the network's prior (where the hands of its training data lay above the detector),
refined by what the image shows: ``Prediction.offset_method == "network prior"``. Later stages
(refinement) may replace it and say so.

Prediction file (``.npz``, the conventions' "Prediction file"): ``bones`` int32 ``[NB]``,
``hit`` bool ``[NB, H, W]``, ``prob`` float32 ``[NB, H, W]`` in [0, 1], ``front``, ``back``
float32 ``[NB, 1, H, W]`` mm along the ray from the source, NaN where the bone is not seen.
A model with the last-exit output (``NetConfig.last``) adds ``last`` float32 ``[NB, H, W]``: mm
along the ray to where it leaves the bone for the last time (at or beyond ``back``; NaN where the
bone is not seen), beyond the conventions' keys: the first layer alone hides what lies behind it
along the ray, such as the distal radius' palmar rim behind its dorsal rim in a PA view.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

import regkit_recon
from regkit.errors import FileFormatError, InputError
from regkit.utils.checks import is_real

if TYPE_CHECKING:
    import torch

    from regkit.geometry.camera import Camera
    from regkit.io.radiograph import ImageKind
    from regkit_recon.net.model import BoneNet, LoadedModel

    ModelLike = str | os.PathLike[str] | LoadedModel | BoneNet | None
    # logits, front, back and last heights (None from a model without the last exit)
    _Maps = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]

__all__ = ["DEFAULT_MODEL", "OFFSET_PRIOR", "PREDICTION_KEYS", "Prediction",
           "add_predict_arguments", "check_bones", "load_prediction", "predict", "predict_file",
           "predict_with_plain", "resolve_model", "run_predict", "turn_array", "turn_camera"]

DEFAULT_MODEL = Path(regkit_recon.__file__).parent / "models" / "hand_v10.pt"
"""The model shipped with the plugin (29 bones of the hand phantom)."""

PREDICTION_KEYS = ("bones", "hit", "prob", "front", "back")
"""The arrays of a prediction file."""

OFFSET_PRIOR = "network prior"
"""``offset_method`` of a raw network prediction (see the module's docstring)."""

_KINDS = ("line-integral", "transmitted")


# ------------------------------------------------------------------------------ turns


def _step_camera(camera: Camera, a: np.ndarray, t: np.ndarray, width: int, height: int
                 ) -> Camera:
    """The camera of a detector whose pixels moved by ``p' = a · p + t``.

    ``a`` is a signed permutation; the detector is ``width × height`` pixels after the move.

    The camera frame turns with the detector: ``(x', y') = a · (x, y)``. When ``a`` mirrors
    (det −1), the camera frame cannot follow rigidly, so the world is mirrored too (x → −x):
    ``camera_from_world' = M_cam · camera_from_world · M_world``, and the new camera sees the
    mirror image of the world. Distances along rays are unchanged either way.
    """
    from regkit.geometry.camera import Camera

    k = camera.intrinsic
    perm = np.abs(a)
    fx, fy = perm @ np.array([k[0, 0], k[1, 1]])
    cx, cy = a @ np.array([k[0, 2], k[1, 2]]) + t
    k_new = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    m_cam = np.eye(4)
    m_cam[:2, :2] = a
    pose = m_cam @ camera.camera_from_world
    if np.linalg.det(a) < 0:
        pose = pose @ np.diag([-1.0, 1.0, 1.0, 1.0])
    spacing = camera.pixel_spacing_mm
    if spacing is not None:
        sx, sy = perm @ np.array(spacing)
        spacing = (float(sx), float(sy))
    return Camera(k_new, pose, width, height, spacing)


def turn_camera(camera: Camera, quarter_turns: int = 0, mirror: bool = False) -> Camera:
    """The camera of the radiograph turned as :func:`turn_array` turns it.

    Convention: ``quarter_turns`` counter-clockwise quarter turns of the image as displayed (row
    0 at the top; ``np.rot90``), then, with ``mirror``, a left-right flip of its columns.
    A quarter turn maps pixel ``(u, v)`` to ``(v, W − u)`` and rolls the camera about its z axis
    (fx and fy and the pixel spacing swap); the flip maps ``(u, v)`` to ``(W − u, v)``,
    ``cx' = W − cx``, and mirrors the world (``camera_from_world' = diag(−1, 1, 1, 1) ·
    camera_from_world · diag(−1, 1, 1, 1)``): a right hand's radiograph becomes a left hand's.
    Two quarter turns give ``cx' = W − cx``, ``cy' = H − cy`` and ``camera_from_world' =
    diag(−1, −1, 1, 1) · camera_from_world``. A world point seen at pixel ``p`` by ``camera`` is
    seen at the turned ``p`` by the turned camera (its mirror image, when mirrored), at the same
    distance from the source.
    """
    cam = camera
    for _ in range(int(quarter_turns) % 4):
        cam = _step_camera(cam, np.array([[0.0, 1.0], [-1.0, 0.0]]),
                           np.array([0.0, float(cam.width)]), cam.height, cam.width)
    if mirror:
        cam = _step_camera(cam, np.array([[-1.0, 0.0], [0.0, 1.0]]),
                           np.array([float(cam.width), 0.0]), cam.width, cam.height)
    return cam


def turn_array(array: np.ndarray, quarter_turns: int = 0, mirror: bool = False) -> np.ndarray:
    """Turn maps ``(..., H, W)`` as :func:`turn_camera` turns the camera (a contiguous copy)."""
    out = np.rot90(np.asarray(array), int(quarter_turns) % 4, axes=(-2, -1))
    if mirror:
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


def _unturn(maps: torch.Tensor, quarter_turns: int, mirror: bool) -> torch.Tensor:
    """The inverse of :func:`turn_array` on a tensor ``(..., H', W')``."""
    import torch

    if mirror:
        maps = maps.flip(-1)
    return torch.rot90(maps, -quarter_turns % 4, dims=(-2, -1))


_GROUP = tuple((k, m) for m in (False, True) for k in range(4))
"""The 8 flips and quarter turns of the square, as (quarter_turns, mirror)."""

TTA_FILLS = (1.0, 0.87)
"""The sizes the radiograph is shown at with TTA: the share of the network's input its longer
side takes (the rest air), each with the 8 turns. The training data were zoomed 0.8–1.15×."""

_CPU_BATCH = 1
"""TTA members per network run on the CPU. One at a time ran 1.1–2× faster than all 8 at once on
2 cores (noisy timings; the activations of 8 no longer stay in the caches, presumably), and holds
less memory; a GPU runs the 8 together."""


# ------------------------------------------------------------------------------ prediction


@dataclass
class Prediction:
    """What the network sees in one radiograph, on the radiograph's own detector.

    Attributes:
        bones: int32 ``[NB]`` label values of the model's bone table.
        bone_names: Their names.
        hit: bool ``[NB, H, W]``: ``prob > threshold``.
        prob: float32 ``[NB, H, W]`` in [0, 1].
        front, back: float32 ``[NB, 1, H, W]`` mm along each pixel's ray from the source, NaN
            where ``hit`` is False; front ≤ back.
        camera: The radiograph's camera (the frame of the depths).
        offset_method: How the absolute depth (the distance from the source) was fixed
            (:data:`OFFSET_PRIOR` for the raw network).
        model: The model file ("" for a network given in memory).
        front_all, back_all: float32 ``[NB, H, W]``: the depths the network gives at every
            pixel, hit or not (for scoring on other masks; not part of the file).
        last: float32 ``[NB, H, W]`` mm along each pixel's ray to where it leaves the bone for
            the last time (≥ back; NaN where ``hit`` is False), from a model with that output;
            None otherwise.
        last_all: ``last`` at every pixel, hit or not (as ``back_all``; None without it).
    """

    bones: np.ndarray
    bone_names: tuple[str, ...]
    hit: np.ndarray
    prob: np.ndarray
    front: np.ndarray
    back: np.ndarray
    camera: Camera
    offset_method: str = OFFSET_PRIOR
    model: str = ""
    front_all: np.ndarray | None = field(default=None, repr=False)
    back_all: np.ndarray | None = field(default=None, repr=False)
    last: np.ndarray | None = None
    last_all: np.ndarray | None = field(default=None, repr=False)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the prediction file, with their dtypes.

        :data:`PREDICTION_KEYS`, and ``last`` where the model gives it.
        """
        out = {"bones": np.asarray(self.bones, dtype=np.int32),
               "hit": np.asarray(self.hit, dtype=bool),
               "prob": np.asarray(self.prob, dtype=np.float32),
               "front": np.asarray(self.front, dtype=np.float32),
               "back": np.asarray(self.back, dtype=np.float32)}
        if self.last is not None:
            out["last"] = np.asarray(self.last, dtype=np.float32)
        return out

    @property
    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """``[NB, 1, H, W]`` front and back of each ray's whole passage through each bone.

        From the first entry to the last exit (``last``; the first layer's back without it).
        """
        if self.last is None:
            return self.front, self.back
        return self.front, np.asarray(self.last, dtype=np.float32)[:, None]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the prediction file atomically (a compressed ``.npz``, any file name)."""
        from regkit.utils.files import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as stream:
            arrays: dict[str, Any] = self.to_arrays()
            np.savez_compressed(stream, **arrays)

    @property
    def seen(self) -> list[str]:
        """Names of the bones with at least one hit pixel."""
        return [n for n, h in zip(self.bone_names, self.hit, strict=True) if h.any()]


def load_prediction(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a prediction file's arrays (:data:`PREDICTION_KEYS`), checking keys and shapes.

    Raises:
        FileFormatError: a missing or unreadable file, a missing key or inconsistent shapes.
    """
    source = Path(path)
    if not source.is_file():
        raise FileFormatError("no such prediction file", source=source)
    try:
        with np.load(source, allow_pickle=False) as data:
            missing = [k for k in PREDICTION_KEYS if k not in data.files]
            if missing:
                raise FileFormatError(f"not a prediction file: missing {', '.join(missing)}",
                                      source=source, key=missing[0])
            out = {k: data[k] for k in PREDICTION_KEYS}
    except FileFormatError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise FileFormatError(f"not a readable .npz file ({err})", source=source) from None
    nb = out["bones"].shape[0] if out["bones"].ndim == 1 else -1
    ok = (out["hit"].ndim == 3 and out["hit"].shape[0] == nb
          and out["prob"].shape == out["hit"].shape
          and out["front"].ndim == 4 and out["front"].shape[0] == nb
          and out["front"].shape[2:] == out["hit"].shape[1:]
          and out["back"].shape == out["front"].shape)
    if not ok:
        raise FileFormatError("inconsistent shapes: " + ", ".join(
            f"{k} {out[k].shape}" for k in PREDICTION_KEYS), source=source)
    return out


def resolve_model(model: ModelLike = None, *, device: str | torch.device = "cpu"
                  ) -> LoadedModel:
    """The model to run: a model file, a loaded model, a network, or the shipped model (None).

    Raises:
        FileFormatError: the shipped model is missing (pass a model file), or the file is
            missing, unreadable or not a model.
        InputError: an unknown or unavailable device.
    """
    import torch

    from regkit_recon.net.model import BoneNet, LoadedModel, load_model

    dev = _device(device)
    if isinstance(model, LoadedModel):
        model.net.eval().to(dev)
        return model
    if isinstance(model, BoneNet):
        return LoadedModel(model.eval().to(dev), {}, "")
    if model is None:
        if not DEFAULT_MODEL.is_file():
            raise FileFormatError("the model shipped with regkit-recon is missing from this "
                                  "installation; pass a model file with --model M (model= in "
                                  "Python)", source=DEFAULT_MODEL, key="model")
        model = DEFAULT_MODEL
    loaded = load_model(model, device=dev)
    if dev.type == "cpu":
        # oneDNN's convolutions run a quarter faster on channels-last tensors (the same values
        # to float rounding). Only a network loaded here: one passed in keeps its layout.
        # (Module.to documents memory_format; its type stubs lack it.)
        loaded.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return loaded


def _device(device: str | torch.device) -> torch.device:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"not a torch device: {device!r}", key="device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine; use --device cpu",
                         key="device")
    return dev


def _bones_of(model: LoadedModel | BoneNet) -> tuple[list[int], list[str]]:
    from regkit_recon.net.model import LoadedModel

    net = model.net if isinstance(model, LoadedModel) else model
    return list(net.config.bones), list(net.config.bone_names)


def check_bones(model: LoadedModel | BoneNet, bones: Any, *, source: str | None = None) -> None:
    """Refuse data whose bone table (label values, in channel order) is not the model's.

    Raises:
        InputError: naming both bone lists.
    """
    from regkit_recon.net.model import LoadedModel

    have, names = _bones_of(model)
    want = [int(b) for b in np.asarray(bones).ravel()]
    if want != have:
        path = model.path if isinstance(model, LoadedModel) and model.path else "the model"
        raise InputError(f"the data hold bones {want}, but {path} predicts bones {have} "
                         f"({', '.join(names)}): a model for other bones", source=source,
                         key="bones")


def _as_image(image: Any, image_kind: str, i0: float | None) -> np.ndarray:
    from regkit.io.radiograph import Radiograph, to_line_integral

    if image_kind not in _KINDS:
        raise InputError(f"must be one of {', '.join(_KINDS)}; got {image_kind!r}",
                         key="image_kind")
    if isinstance(image, Radiograph):
        if image_kind != "line-integral":
            raise InputError("a Radiograph already holds line integrals; pass its array to "
                             "convert transmitted intensities", key="image_kind")
        return np.asarray(image.image, dtype=np.float32)
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"a radiograph is a non-empty 2-D array (H, W), got shape {arr.shape}",
                         key="image")
    return np.asarray(to_line_integral(arr, cast("ImageKind", image_kind), i0=i0))


def _network_maps(net: BoneNet, image: np.ndarray, camera: Camera, tta: bool,
                  device: torch.device) -> tuple[_Maps, _Maps]:
    """Mean logits and heights (mm) ``(NB, H, W)`` on the detector, and those of the image alone.

    The second is the first member, the identity at full size: with TTA one of the 16, no extra
    work. Each is front, back, and last (None from a model without it). With TTA the network
    runs once per fill of :data:`TTA_FILLS` on the 8 turns (a batch of 8 at a time on a GPU, one
    at a time on the CPU: :data:`_CPU_BATCH`).
    """
    import torch

    from regkit_recon.net.geometry import fit_image, unfit
    from regkit_recon.net.model import HEIGHT_SCALE

    size = net.config.size
    turns = _GROUP if tta else ((0, False),)
    fills = TTA_FILLS if tta else (1.0,)
    assert turns[0] == (0, False)
    assert fills[0] == 1.0
    nb = len(net.config.bones)
    total: torch.Tensor | None = None
    first: torch.Tensor | None = None
    heights: tuple[str, ...] = ()
    turned = [(turn_array(image, k, m), turn_camera(camera, k, m)) for k, m in turns]
    chunk = len(turned) if device.type == "cuda" else _CPU_BATCH
    for fill in fills:
        for start in range(0, len(turned), chunk):
            inputs, fits = [], []
            for img, cam in turned[start:start + chunk]:
                x, fit = fit_image(img, cam, size, fill=fill)
                inputs.append(x)
                fits.append(fit)
            with torch.no_grad():
                out = net(torch.cat(inputs).to(device))
            heights = ("front", "back", "last") if "last" in out else ("front", "back")
            for i, ((k, m), fit) in enumerate(zip(turns[start:start + chunk], fits,
                                                  strict=True)):
                mm = HEIGHT_SCALE * fit.net_spacing_mm
                maps = torch.cat([out["logits"][i], *(out[h][i] * mm for h in heights)])
                one = _unturn(unfit(maps.float().cpu(), fit), k, m).double()
                if total is None:
                    first, total = one.clone(), one
                else:
                    total += one      # in place: no new map stack per member
            del out, inputs   # free this batch before the next one runs
    assert total is not None
    assert first is not None
    total /= len(turns) * len(fills)

    def split(t: torch.Tensor) -> _Maps:
        return (t[:nb], t[nb:2 * nb], t[2 * nb:3 * nb], t[3 * nb:] if "last" in heights else None)

    return split(total), split(first)


def _prediction(maps: _Maps, camera: Camera, threshold: float,
                loaded: LoadedModel) -> Prediction:
    """The :class:`Prediction` of a model's maps on the radiograph's detector."""
    import torch

    from regkit_recon.net.geometry import height_to_depth

    logits, h_front, h_back, h_last = maps
    net = loaded.net
    prob = torch.sigmoid(logits).numpy().astype(np.float32)
    hit = prob > float(threshold)
    front_all = height_to_depth(h_front.numpy(), camera).astype(np.float32)
    back_all = height_to_depth(h_back.numpy(), camera).astype(np.float32)
    front = np.where(hit, front_all, np.float32(np.nan))[:, None]
    back = np.where(hit, back_all, np.float32(np.nan))[:, None]
    last = last_all = None
    if h_last is not None:   # at or beyond back, after the averaging as before it
        last_all = np.maximum(height_to_depth(h_last.numpy(), camera),
                              back_all).astype(np.float32)
        last = np.where(hit, last_all, np.float32(np.nan)).astype(np.float32)
    return Prediction(bones=np.asarray(net.config.bones, dtype=np.int32),
                      bone_names=tuple(net.config.bone_names), hit=hit, prob=prob,
                      front=front.astype(np.float32), back=back.astype(np.float32),
                      camera=camera, offset_method=OFFSET_PRIOR, model=loaded.path,
                      front_all=front_all, back_all=back_all, last=last,
                      last_all=last_all)


def predict(image: Any, camera: Camera | None = None, *, model: ModelLike = None,
            image_kind: str = "line-integral", i0: float | None = None, tta: bool = False,
            threshold: float = 0.5, device: str | torch.device = "cpu") -> Prediction:
    """Bone masks and front/back depths of one radiograph.

    Args:
        image: ``(H, W)`` pixel values, or a :class:`~regkit.io.radiograph.Radiograph` (line
            integrals; its camera is used when ``camera`` is None).
        camera: The radiograph's camera (``W × H`` pixels, with ``pixel_spacing_mm``).
        model: A model file, a :class:`~regkit_recon.net.model.LoadedModel` or
            :class:`~regkit_recon.net.model.BoneNet`, or None for the shipped model.
        image_kind: ``"line-integral"`` (bone bright) or ``"transmitted"`` (detector intensity,
            converted to ``−log(I / I0)``).
        i0: Unattenuated intensity for ``"transmitted"`` (default the brightest pixel).
        tta: Average over the 8 flips and quarter turns, each at the sizes of
            :data:`TTA_FILLS` (exactly equivariant, 16× the work).
        threshold: ``hit = prob > threshold``, in (0, 1).
        device: Where the network runs (``"cpu"``, ``"cuda"``).

    Returns:
        The :class:`Prediction`, on the radiograph's detector and in its camera.

    Raises:
        InputError: a camera of another size or without pixel spacing, a NaN, infinite or flat
            image, an unknown image kind, a bad threshold or device.
        FileFormatError: a missing, corrupt or foreign model file.
    """
    return predict_with_plain(image, camera, model=model, image_kind=image_kind, i0=i0,
                              tta=tta, threshold=threshold, device=device)[0]


def predict_with_plain(image: Any, camera: Camera | None = None, *, model: ModelLike = None,
                       image_kind: str = "line-integral", i0: float | None = None,
                       tta: bool = False, threshold: float = 0.5,
                       device: str | torch.device = "cpu") -> tuple[Prediction, Prediction]:
    """:func:`predict`, and the network's prediction of the image as it is.

    With ``tta`` the second is the identity's member of the 16 (no extra network run), equal to
    ``predict(..., tta=False)`` to rounding; without, both are the same object.
    """
    from regkit.geometry.camera import Camera
    from regkit.io.radiograph import Radiograph
    from regkit_recon.net.geometry import fit_image

    if camera is None and isinstance(image, Radiograph):
        camera = image.camera
    if not isinstance(camera, Camera):
        raise InputError("predict needs the radiograph's camera (a Camera), got "
                         f"{type(camera).__name__}", key="camera")
    if not is_real(threshold) or not 0.0 < float(threshold) < 1.0:
        raise InputError(f"must lie strictly between 0 and 1, got {threshold!r}",
                         key="threshold")
    img = _as_image(image, image_kind, i0)
    loaded = resolve_model(model, device=device)
    fit_image(img, camera, loaded.net.config.size)  # refuses a bad camera or image first
    mean, first = _network_maps(loaded.net, img, camera, tta, _device(device))
    pred = _prediction(mean, camera, threshold, loaded)
    return pred, (_prediction(first, camera, threshold, loaded) if tta else pred)


def predict_file(image_path: str | os.PathLike[str], camera_path: str | os.PathLike[str],
                 out_path: str | os.PathLike[str] | None = None, *, model: ModelLike = None,
                 image_kind: str = "line-integral", i0: float | None = None,
                 tta: bool = False, threshold: float = 0.5,
                 device: str | torch.device = "cpu") -> Prediction:
    """Read a radiograph file and a camera file, predict, and write the prediction file.

    Args:
        image_path: ``.npy``, PNG, TIFF or DICOM (:func:`regkit.io.radiograph.load_radiograph`).
        camera_path: A camera file holding one camera (a list of several is refused).
        out_path: The prediction file to write (None: write nothing).
        model: As for :func:`predict`.
        image_kind: As for :func:`predict`.
        i0: As for :func:`predict`.
        tta: As for :func:`predict`.
        threshold: As for :func:`predict`.
        device: As for :func:`predict`.

    Raises:
        FileFormatError: an unreadable image, camera or model file.
        InputError: a camera file of several cameras, or one that does not fit the image.
    """
    from regkit.geometry.camera import load_cameras
    from regkit.io.radiograph import load_radiograph

    if image_kind not in _KINDS:
        raise InputError(f"must be one of {', '.join(_KINDS)}; got {image_kind!r}",
                         key="image_kind")
    radiograph = load_radiograph(image_path, kind=cast("ImageKind", image_kind), i0=i0)
    cameras = load_cameras(camera_path)
    if len(cameras) != 1:
        raise InputError(f"holds {len(cameras)} cameras; predict needs the one camera of the "
                         "radiograph", source=camera_path, key="camera")
    camera = cameras[0]
    h, w = radiograph.shape
    if (camera.width, camera.height) != (w, h):
        raise InputError(f"the camera is {camera.width} x {camera.height} pixels but the image "
                         f"{image_path} is {w} x {h}", source=camera_path, key="camera")
    if camera.pixel_spacing_mm is None:
        raise InputError("the camera has no pixel_spacing_mm, so depths in mm are unknown; add "
                         "it to the camera file", source=camera_path, key="pixel_spacing_mm")
    pred = predict(radiograph.image, camera, model=model, tta=tta, threshold=threshold,
                   device=device)
    if out_path is not None:
        pred.save(out_path)
    return pred


# ------------------------------------------------------------------------------ command line


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of running a model, shared by ``predict`` and ``evaluate``.

    The options: ``--model``, ``--tta``, ``--threshold``, ``--device``.
    """
    parser.add_argument("--model", default=None, metavar="M",
                        help="model file (default: the model shipped with regkit-recon)")
    parser.add_argument("--tta", action="store_true",
                        help="average over the 8 flips and quarter turns at two sizes (16x slower)")
    parser.add_argument("--threshold", type=float, default=0.5, metavar="P",
                        help="a bone is seen where its probability exceeds P (default 0.5)")
    parser.add_argument("--device", default="cpu", metavar="DEV",
                        help="torch device (default cpu)")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``regkit recon predict``'s arguments to ``parser``."""
    parser.add_argument("--image", required=True, metavar="X",
                        help="the radiograph (.npy, .png, .tif, DICOM)")
    parser.add_argument("--camera", required=True, metavar="CAMERA.json",
                        help="its camera file (one camera, with pixel_spacing_mm)")
    parser.add_argument("--image-kind", choices=_KINDS, default="line-integral",
                        help="what the pixel values are: line integrals (bone bright, default) "
                             "or transmitted intensity (bone dark)")
    parser.add_argument("--i0", type=float, default=None, metavar="I0",
                        help="unattenuated intensity of a transmitted image (default: its "
                             "brightest pixel)")
    parser.add_argument("--out", required=True, metavar="PRED.npz",
                        help="the prediction file to write")
    add_model_arguments(parser)


def run_predict(args: argparse.Namespace) -> int:
    """Run ``regkit recon predict``; one line to stderr. Returns the exit status."""
    from regkit.utils.files import check_output

    start = time.perf_counter()
    check_output(args.out, [args.image, args.camera])
    pred = predict_file(args.image, args.camera, args.out, model=args.model,
                        image_kind=args.image_kind, i0=args.i0, tta=args.tta,
                        threshold=args.threshold, device=args.device)
    seen = pred.seen
    print(f"regkit recon predict: {len(seen)} of {len(pred.bone_names)} bones seen, "
          f"{time.perf_counter() - start:.1f} s -> {args.out}", file=sys.stderr)
    return 0
