"""The bone network: a compact U-Net that segments every bone and predicts its depth layer.

One encoder-decoder (GroupNorm, SiLU; pure PyTorch) feeds two heads at full resolution:

* the **segmentation head** gives one logit per bone of the bone table (multi-label: bones overlap
  in a radiograph, so a pixel may belong to several);
* the **depth head** sees the decoder's features *and the segmentation's probabilities* (the
  guidance of the seed design) and gives, per bone, the mid-height ``m`` and the half-thickness
  ``t = softplus(·) ≥ 0`` of the bone's first layer. Front and back heights are ``m + t`` and
  ``m − t``: front lies at or above back by construction. Optionally (``NetConfig.last``) a third
  map per bone, ``last = back − softplus(·)``: where the ray leaves the bone for the last time
  (its back after every layer), at or below ``back`` by construction. Optionally
  (``NetConfig.refine``) a full-resolution **depth refinement** corrects those maps at the
  outlines, where the depth head's half resolution blurs a thin bone's thickness.

Heights are in the network's *height units* (see :mod:`regkit_recon.net.geometry`): the distance
from the detector plane along the camera's z axis, in detector pixels of the network's input,
divided by :data:`HEIGHT_SCALE`.

A model file (``.pt``, :func:`save_model` / :func:`load_model`) holds the configuration, the bone
table, the training record and the weights (float16 by default: half the size, and the network's
outputs move by far less than its errors).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regkit.errors import FileFormatError, InputError

__all__ = ["HEIGHT_SCALE", "LAST_GAP_BIAS", "MODEL_FORMAT", "BoneNet", "NetConfig", "load_model",
           "rank_channel", "save_model"]

LAST_GAP_BIAS = -6.0
"""The last-exit output's starting gap below ``back``: softplus(−6) ≈ 0.0025 height units
(0.08 input pixels), so a network grown from one without it starts where that one was."""

HEIGHT_SCALE = 32.0
"""Input pixels per height unit, the network's output unit (a hand's heights are 0-80 detector
pixels at 256²)."""

MODEL_FORMAT = "regkit-recon bone network"
MODEL_VERSION = 5
"""The newest model file version: 5 holds a network with the full-resolution depth refinement
(``refine``), 4 a network with the last-exit output (``last``), 3 a
segmentation head wider than the stem or with
residual blocks (``head``, ``head_blocks``), 2 context blocks (which a reader of version 1 cannot
build), 1 neither. A file is written at the lowest version that can hold it, so older
regkit-recon releases keep reading what they can build; version 1 files with context blocks
(written before the version 2 existed) load too."""
READABLE_VERSIONS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class NetConfig:
    """What a :class:`BoneNet` is made of.

    Attributes:
        bones: Label values of the bone table, one output channel each.
        bone_names: Their names, in the same order.
        size: Input width = height in pixels (images are resampled to it).
        widths: Channels at each resolution of the U-Net (the first at half size).
        stem: Channels of the full-resolution stem.
        groups: GroupNorm groups (each width must be a multiple).
        context: Self-attention blocks over the whole image at the U-Net's coarsest level
            (0: none). They let every position see the whole hand at once: which finger is
            which depends on where the thumb is, which a stack of 3×3 convolutions reaches
            only with a receptive field of the whole image.
        head: Channels of the full-resolution segmentation head (0: the stem's). Its GroupNorm
            groups hold as many channels as the stem's (``head`` must be a multiple), so a head
            widened from a trained model's can start computing exactly what that model did.
        head_blocks: Residual blocks (two 3×3 convolutions) in that head, after its first
            layer; each ends in a zero-initialised convolution, so it starts as the identity.
        last: Also predict, per bone, the height where each ray leaves the bone for the last
            time. The first layer alone loses what lies behind it along the ray: in a PA view
            the distal radius' palmar rim lies behind its dorsal rim, and a back-projection of
            the first layer alone reads the dorsal tilt about 10° too dorsal (see the plugin
            README); one from the first entry to the last exit fills the concavity between the
            rims instead, which the tilt's rim-to-rim line does not see.
        refine: Channels of a full-resolution depth refinement (0: none; else a multiple of
            ``groups``). The depth head runs at half resolution and its maps are upsampled
            bilinearly, which blurs the thickness across a bone's outline: a finger bone 6-8
            pixels across is 3-4 cells there, and its thickness falls to zero over one or two
            pixels at the rim. The refinement reads, at full resolution, the segmentation head's
            features, the probabilities and the upsampled maps, and adds a correction to the maps
            before front, back and last are formed; its output layer starts at zero, so a network
            grown it computes what it computed without it.
    """

    bones: tuple[int, ...]
    bone_names: tuple[str, ...]
    size: int = 256
    widths: tuple[int, ...] = (24, 48, 96, 128, 160)
    stem: int = 16
    groups: int = 8
    context: int = 0
    head: int = 0
    head_blocks: int = 0
    last: bool = False
    refine: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bones", tuple(int(b) for b in self.bones))
        object.__setattr__(self, "bone_names", tuple(str(n) for n in self.bone_names))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if not self.bones or len(set(self.bones)) != len(self.bones):
            raise InputError(f"needs distinct bone labels, got {self.bones!r}", key="bones")
        if len(self.bone_names) != len(self.bones):
            raise InputError(f"{len(self.bone_names)} names for {len(self.bones)} bones",
                             key="bone_names")
        if len(self.widths) < 2 or any(w % self.groups for w in self.widths):
            raise InputError(f"widths {self.widths} must be at least 2 multiples of "
                             f"{self.groups}", key="widths")
        if self.stem < 1:
            raise InputError(f"must be >= 1, got {self.stem}", key="stem")
        if self.context < 0:
            raise InputError(f"must be >= 0, got {self.context}", key="context")
        if self.head < 0 or self.head % self.group_size:
            raise InputError(f"must be 0 (the stem's width) or a positive multiple of "
                             f"{self.group_size} (the stem's channels per GroupNorm group), got "
                             f"{self.head}", key="head")
        if not isinstance(self.last, bool):
            raise InputError(f"must be true or false, got {self.last!r}", key="last")
        if self.refine < 0 or self.refine % self.groups:
            raise InputError(f"must be 0 (none) or a positive multiple of {self.groups} (the "
                             f"GroupNorm groups), got {self.refine}", key="refine")
        if self.head_blocks < 0:
            raise InputError(f"must be >= 0, got {self.head_blocks}", key="head_blocks")
        down = 2 ** len(self.widths)
        if self.size < down or self.size % down:
            raise InputError(f"must be a multiple of {down} (the network halves it "
                             f"{len(self.widths)} times), got {self.size}", key="size")

    @property
    def group_size(self) -> int:
        """Channels per GroupNorm group of the stem, and of the segmentation head."""
        return self.stem // min(self.groups, self.stem)

    @property
    def head_width(self) -> int:
        """Channels of the full-resolution segmentation head."""
        return self.head or self.stem

    @property
    def version(self) -> int:
        """The lowest model file version that holds this network (see ``MODEL_VERSION``)."""
        return 5 if self.refine else 4 if self.last else 3 if self.head or self.head_blocks else \
            2 if self.context else 1

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict.

        ``context``, ``head``, ``head_blocks``, ``last`` and ``refine`` are left out at 0 or
        False, as before.
        """
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if not (k in ("context", "head", "head_blocks", "last", "refine") and not v)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> NetConfig:
        """The inverse of :meth:`to_json`."""
        known = {"bones", "bone_names", "size", "widths", "stem", "groups", "context", "head",
                 "head_blocks", "last", "refine"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise InputError(f"unknown key(s) {unknown} in a network configuration",
                             key="config")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in obj.items()}
        return cls(**fields)


class _Block(nn.Module):
    """Two 3×3 convolutions, each followed by GroupNorm and SiLU."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout), nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.GroupNorm(groups, cout),
            nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Residual(nn.Module):
    """``x + conv(SiLU(GroupNorm(conv(x))))``, the last convolution zero-initialised."""

    def __init__(self, width: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.GroupNorm(groups, width),
            nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))
        last = self.body[-1]
        assert isinstance(last, nn.Conv2d)
        assert last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


_HEAD_WIDTH = 32
"""Channels per attention head of a context block (one head where the width is not a multiple)."""


class _Context(nn.Module):
    """A transformer block over the positions of a feature map (pre-norm, residual).

    Attention, then a two-layer MLP, each added to its input. Both residual branches end in a
    zero-initialised projection, so a network given context blocks computes exactly what it
    computed without them until training moves those weights: a trained model can be warm-started
    into the larger network. Positions are told apart by a learnt embedding of the grid cell
    (a fixed input size fixes the grid).
    """

    def __init__(self, width: int, cells: int) -> None:
        super().__init__()
        self.heads = width // _HEAD_WIDTH if width % _HEAD_WIDTH == 0 else 1
        self.where = nn.Parameter(torch.randn(1, cells, width) * 0.02)
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(),
                                 nn.Linear(2 * width, width))
        for last in (self.proj, self.mlp[-1]):
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(self.norm1(t + self.where)).chunk(3, dim=-1)
        q, k, v = (a.reshape(b, h * w, self.heads, -1).transpose(1, 2) for a in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        t = t + self.proj(a)
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class BoneNet(nn.Module):
    """Segmentation and per-bone depth from one normalised radiograph.

    Input ``(B, 1, S, S)`` normalised line integrals (:func:`~regkit_recon.net.geometry.normalise`);
    the network adds their rank channel (:func:`rank_channel`) itself.
    Output a dict of ``logits`` ``(B, NB, S, S)``, ``front`` and ``back`` ``(B, NB, S, S)``
    heights in height units (front ≥ back), and with ``config.last`` ``last`` ``(B, NB, S, S)``
    (back ≥ last).

    Layout: a full-resolution stem (``stem`` channels) keeps the outlines; a strided convolution
    takes the U-Net (``widths``) to half resolution, where all the heavy work happens (a
    full-resolution U-Net level costs about as much as the rest on a CPU). The decoder's output
    is brought back to full resolution and fused with the stem in the segmentation head
    (``config.head_width`` channels, with ``config.head_blocks`` residual blocks), which gives
    the logits. The depth head runs at half resolution on the decoder's features and the
    segmentation's probabilities (average-pooled), and its heights are upsampled bilinearly:
    depth varies smoothly inside a bone, outlines do not. Optional context blocks
    (``config.context``: self-attention over the coarsest level's cells) give every position the
    whole image. An optional full-resolution depth refinement (``config.refine``) corrects the
    upsampled maps where they blur across the outlines.
    """

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        w, g, nb, s = config.widths, config.groups, len(config.bones), config.stem
        self.stem = nn.Sequential(nn.Conv2d(2, s, 3, padding=1, bias=False),
                                  nn.GroupNorm(min(g, s), s), nn.SiLU())
        self.enter = nn.Sequential(nn.Conv2d(s, w[0], 3, stride=2, padding=1, bias=False),
                                   nn.GroupNorm(g, w[0]), nn.SiLU())
        self.down = nn.ModuleList([_Block(w[0], w[0], g)] + [
            _Block(w[i - 1], w[i], g) for i in range(1, len(w))])
        cells = (config.size // 2 ** len(w)) ** 2
        self.context = nn.Sequential(*[_Context(w[-1], cells) for _ in range(config.context)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(w[i], w[i - 1], 2, stride=2)
                                 for i in range(len(w) - 1, 0, -1)])
        self.fuse = nn.ModuleList([_Block(2 * w[i - 1], w[i - 1], g)
                                   for i in range(len(w) - 1, 0, -1)])
        r, hg = config.head_width, config.head_width // config.group_size
        self.rise = nn.ConvTranspose2d(w[0], r, 2, stride=2)
        self.finish = nn.Sequential(nn.Conv2d(r + s, r, 3, padding=1, bias=False),
                                    nn.GroupNorm(hg, r), nn.SiLU())
        self.polish = nn.Sequential(*[_Residual(r, hg) for _ in range(config.head_blocks)])
        self.seg = nn.Conv2d(r, nb, 1)
        self.depth = nn.Sequential(
            nn.Conv2d(w[0] + nb, w[0], 3, padding=1, bias=False), nn.GroupNorm(g, w[0]),
            nn.SiLU())
        maps = (3 if config.last else 2) * nb
        self.depth_out = nn.Conv2d(w[0], maps, 1)
        if config.refine:
            c = config.refine
            self.refine = nn.Sequential(
                nn.Conv2d(r + nb + maps, c, 3, padding=1, bias=False), nn.GroupNorm(g, c),
                nn.SiLU(), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.GroupNorm(g, c),
                nn.SiLU())
            self.refine_out = nn.Conv2d(c, maps, 1)
            nn.init.zeros_(self.refine_out.weight)
            assert self.refine_out.bias is not None
            nn.init.zeros_(self.refine_out.bias)
        assert self.seg.bias is not None
        assert self.depth_out.bias is not None
        nn.init.constant_(self.seg.bias, -4.0)  # bones are rare: start at p ≈ 0.02
        with torch.no_grad():  # start mid-heights near a hand's (~40 mm at 0.8 mm/px)
            self.depth_out.bias[:nb].fill_(1.5)
            self.depth_out.bias[2 * nb:].fill_(LAST_GAP_BIAS)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``logits``, ``front`` and ``back`` of ``x`` (shapes and units: see the class)."""
        size = self.config.size
        if self.config.context and tuple(x.shape[-2:]) != (size, size):
            raise InputError(f"a network with context blocks takes {size}×{size} inputs (its "
                             f"cell embedding fixes the grid), got {tuple(x.shape[-2:])}",
                             key="image")
        stem = self.stem(torch.cat([x, rank_channel(x)], dim=1))
        h = self.enter(stem)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        h = self.context(skips.pop())
        for up, fuse in zip(self.up, self.fuse, strict=True):
            h = fuse(torch.cat([up(h), skips.pop()], dim=1))
        top = self.polish(self.finish(torch.cat([self.rise(h), stem], dim=1)))
        # the output layers run in float32 under mixed precision: bfloat16's 8-bit mantissa
        # would round a 40 mm height to 0.15 mm
        with torch.autocast(x.device.type, enabled=False):
            logits = self.seg(top.float())
            seen = torch.sigmoid(logits)
            prob = F.avg_pool2d(seen, 2)
        feat = self.depth(torch.cat([h, prob.to(h.dtype)], dim=1))
        with torch.autocast(x.device.type, enabled=False):
            raw = self.depth_out(feat.float())
            raw = F.interpolate(raw, scale_factor=2.0, mode="bilinear", align_corners=False)
        if self.config.refine:
            fix = self.refine(torch.cat([top, seen.to(top.dtype),
                                         raw.to(top.dtype)], dim=1))
            with torch.autocast(x.device.type, enabled=False):
                raw = raw + self.refine_out(fix.float())
        nb = len(self.config.bones)
        mid, half = raw[:, :nb], F.softplus(raw[:, nb:2 * nb])
        out = {"logits": logits, "front": mid + half, "back": mid - half}
        if self.config.last:
            out["last"] = out["back"] - F.softplus(raw[:, 2 * nb:])
        return out


def rank_channel(x: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank in its own image, in (0, 1]: ``(B, 1, H, W)`` → ``(B, 1, H, W)``.

    The fraction of the image's pixels at or below the pixel's value (histogram equalisation):
    invariant to any increasing mapping of the intensities (exposure, gain, tone curve), and
    not squashed by a bright collimated border, which takes the top of a linear scale. Equal
    values share one rank.
    """
    flat = x.detach().float().flatten(1)
    ordered = flat.sort(dim=1).values
    rank = torch.searchsorted(ordered, flat.contiguous(), right=True).to(x.dtype)
    return (rank / flat.shape[1]).reshape(x.shape)


def save_model(path: str | os.PathLike[str], model: BoneNet, *,
               record: dict[str, Any] | None = None, half: bool = True) -> None:
    """Write ``model`` (configuration, weights, a JSON-ready ``record``) atomically.

    Args:
        path: The ``.pt`` file.
        model: The network (its weights are copied to the CPU).
        record: What to keep with it: training data, recipe, figures.
        half: Store float16 weights (loaded back as float32).
    """
    from regkit.utils.files import atomic_write_bytes

    state = {k: (v.detach().cpu().half() if half and v.is_floating_point() else
                 v.detach().cpu()) for k, v in model.state_dict().items()}
    blob = {"format": MODEL_FORMAT, "version": model.config.version,
            "config": model.config.to_json(), "record": dict(record or {}), "state": state}
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


@dataclass
class LoadedModel:
    """A model read from a file: the network (eval mode, float32), its record and path."""

    net: BoneNet
    record: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def load_model(path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
               ) -> LoadedModel:
    """Read a model file written by :func:`save_model`.

    Raises:
        FileFormatError: a missing, unreadable or foreign file.
    """
    source = Path(path)
    if not source.is_file():
        raise FileFormatError("no such model file", source=source, key="model")
    try:
        blob = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a corrupt file
        raise FileFormatError(f"not a readable model file ({type(err).__name__})",
                              source=source, key="model") from None
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise FileFormatError(f"not a {MODEL_FORMAT} file", source=source, key="model")
    if blob.get("version") not in READABLE_VERSIONS:
        raise FileFormatError(f"model format version {blob.get('version')!r}, this regkit-recon "
                              f"reads {', '.join(map(str, READABLE_VERSIONS[:-1]))} and "
                              f"{READABLE_VERSIONS[-1]} (a newer "
                              "release wrote it?)", source=source, key="model")
    try:
        net = BoneNet(NetConfig.from_json(blob["config"]))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v
                             for k, v in blob["state"].items()})
    except (KeyError, RuntimeError, TypeError, InputError) as err:
        raise FileFormatError(f"a damaged model file ({err})", source=source,
                              key="model") from None
    net.eval().to(device)
    return LoadedModel(net, dict(blob.get("record", {})), str(source))


def bone_table(bones: Sequence[int]) -> tuple[str, ...]:
    """Names of hand phantom labels (``bone_<label>`` for labels the hand table lacks)."""
    from regkit_recon.phantom.anatomy import BONE_NAMES

    return tuple(BONE_NAMES.get(int(b), f"bone_{int(b)}") for b in bones)
