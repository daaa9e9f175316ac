"""The one image-similarity contract shared by every metric, and the metric registry.

A metric compares a fixed image with a *batch* of moving images in one call, so that a whole
CMA-ES population (or the B views of a 2D–3D registration) is scored at once. Subclasses implement
one method, :meth:`Metric.forward`, on inputs that :meth:`Metric.__call__` has already checked,
converted and made broadcastable.

Convention:
    * ``moving`` is ``(B, *S)`` with ``S = (H, W)`` (2-D, e.g. DRRs against a radiograph) or
      ``S = (D, H, W)`` (3-D, e.g. a resampled volume against a fixed volume). An unbatched 3-D
      array ``(D, H, W)`` would be read as D 2-D images: always add the batch axis.
    * ``fixed`` is ``(*S)``, ``(1, *S)`` (both broadcast over the batch) or ``(B, *S)``.
    * ``mask`` is ``(*S)``, ``(1, *S)`` or ``(B, *S)``, boolean or float weights in ``[0, 1]``;
      only pixels (voxels) with a positive weight count, each in proportion to its weight. For
      3-D–3-D registration pass the voxels that hold data in both images (the fixed image's field
      of view AND the resampler's in-bounds mask).
    * The score has shape ``(B,)`` and the dtype and device of ``moving``; ``higher_is_better``
      says which way is better, and :meth:`Metric.loss` always decreases towards a better match.
    * Images must be finite everywhere, masked-out pixels included (NaN and inf are refused
      while ``check_finite`` is on): fill pixels without data (e.g. with 0) and mask them out.
    * Scores and their gradients are finite for every finite input: degenerate inputs (a
      zero-variance image, an empty mask, constant patches) give the finite values that each
      metric's docstring lists; an empty mask always gives the class's ``empty_score``.

Example:
    >>> import torch
    >>> from regkit.metrics import get_metric
    >>> ncc = get_metric("ncc")
    >>> fixed = torch.rand(64, 64)
    >>> ncc(fixed, torch.stack([fixed, 2 * fixed + 1, -fixed])).tolist()  # doctest: +SKIP
    [1.0, 1.0, -1.0]
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch

from regkit.errors import InputError, ShapeError, did_you_mean
from regkit.registry import Registry
from regkit.utils.checks import is_whole

__all__ = ["Metric", "get_metric", "metrics", "register"]

metrics: Registry[type[Metric]] = Registry("metric", entry_point_group="regkit.metrics")

M = TypeVar("M", bound="type[Metric]")

_FLOAT_DTYPES = (torch.float32, torch.float64)


def register(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Metric` subclass as ``name`` and set its ``name``.

    Args:
        name: The registry name (``"ncc"``); a name may be taken once.
    """

    def decorator(cls: M) -> M:
        cls.name = name
        metrics.add(name, cls)
        return cls

    return decorator


class Metric(ABC):
    """An image similarity score between a fixed image and a batch of moving images.

    Subclasses set the class attributes, take their options as typed keyword-only constructor
    arguments (calling ``super().__init__(check_finite=...)``) and implement :meth:`forward`.

    Attributes:
        name: The registry name.
        higher_is_better: True for similarities (NCC, MI), False for distances (SSD).
        spatial_dims: The image dimensionalities the metric accepts: ``(2,)``, ``(3,)`` or
            ``(2, 3)``.
        empty_score: The score returned for a batch element whose mask counts no pixel.
        requires_mask: Whether calling without a mask is an error.
        check_finite: Whether each call checks the images for NaN/inf (and the mask for values
            outside ``[0, 1]``), at the cost of one device synchronisation per call.

    Args:
        check_finite: See the attribute; pass False inside an optimizer loop once the inputs are
            known to be clean.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    spatial_dims: ClassVar[tuple[int, ...]] = (2, 3)
    empty_score: ClassVar[float]
    requires_mask: ClassVar[bool] = False

    def __new__(cls, *args: Any, **options: Any) -> Metric:
        """Refuse positional arguments and unknown options, then make the metric."""
        # Runs before the subclass's __init__, so that an unknown option is refused with the
        # same message whether the metric is built directly or through get_metric.
        if args:
            label = getattr(cls, "name", cls.__name__)
            raise InputError(f"metric '{label}' takes keyword options only, got {len(args)} "
                             f"positional argument(s)")
        check_options(cls, options)
        return super().__new__(cls)

    def __init__(self, *, check_finite: bool = True) -> None:
        self.check_finite = bool_option("check_finite", check_finite)

    @abstractmethod
    def forward(self, fixed: torch.Tensor, moving: torch.Tensor,
                weight: torch.Tensor | None) -> torch.Tensor:
        """Score checked, broadcast-ready inputs.

        Args:
            fixed: ``(1, *S)`` or ``(B, *S)``, the dtype and device of ``moving``.
            moving: ``(B, *S)`` float32 or float64, B >= 1.
            weight: None (every pixel counts fully) or ``(1, *S)`` / ``(B, *S)`` weights in
                ``[0, 1]``, the dtype of ``moving``.

        Returns:
            ``(B,)`` scores, finite, differentiable with respect to ``moving``.
        """

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        """Score each moving image of the batch against the fixed image.

        Args:
            fixed: ``(*S)`` or ``(B, *S)`` (or ``(1, *S)``); any real dtype, converted to that of
                ``moving``; on the device of ``moving``.
            moving: ``(B, *S)`` float32 or float64, ``S = (H, W)`` or ``(D, H, W)``.
            mask: Optional ``(*S)`` or ``(B, *S)`` (or ``(1, *S)``), bool or weights in
                ``[0, 1]``; only pixels with positive weight count.

        Returns:
            ``(B,)`` scores with the dtype and device of ``moving``.

        Raises:
            InputError: An argument that is not a tensor, a wrong dtype or device, NaN or inf in
                an image, mask weights outside ``[0, 1]``, or a missing mask where one is needed.
            ShapeError: Shapes that do not fit together, naming both shapes.
        """
        fixed_t, moving_t, weight = self._prepare(fixed, moving, mask)
        if moving_t.shape[0] == 0:
            return moving_t.new_zeros(0)
        return self.forward(fixed_t, moving_t, weight)

    def loss(self, fixed: torch.Tensor, moving: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """The score turned into a value to minimise: ``-score`` if higher is better.

        Same arguments and shapes as :meth:`__call__`; returns ``(B,)``.
        """
        score = self(fixed, moving, mask)
        return -score if self.higher_is_better else score

    def options(self) -> dict[str, Any]:
        """The constructor options this metric was built with."""
        return {key: getattr(self, key) for key in option_names(type(self))}

    def __repr__(self) -> str:
        opts = ", ".join(f"{key}={value!r}" for key, value in self.options().items())
        return f"{type(self).__name__}({opts})"

    # -- input checking -----------------------------------------------------------------------

    def _prepare(self, fixed: Any, moving: Any, mask: Any
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if not isinstance(moving, torch.Tensor):
            raise InputError(f"must be a torch.Tensor, got {type(moving).__name__}", key="moving")
        if not isinstance(fixed, torch.Tensor):
            raise InputError(f"must be a torch.Tensor, got {type(fixed).__name__}", key="fixed")
        if moving.dtype not in _FLOAT_DTYPES:
            raise InputError(f"must be float32 or float64, got {moving.dtype}", key="moving")
        if fixed.is_complex() or fixed.dtype == torch.bool:
            raise InputError(f"must hold real numbers, got {fixed.dtype}", key="fixed")
        ndim = moving.ndim - 1
        if ndim not in self.spatial_dims:
            dims = " or ".join(f"{d}-D" for d in self.spatial_dims)
            raise ShapeError(f"metric '{self.name}' takes a batch of {dims} images, (B, *S); "
                             f"moving has shape {tuple(moving.shape)}")
        spatial = tuple(moving.shape[1:])
        if any(n == 0 for n in spatial):
            raise ShapeError(f"moving has an empty image shape {tuple(moving.shape)}")
        if fixed.device != moving.device:
            raise InputError(f"is on {fixed.device} but moving is on {moving.device}",
                             key="fixed")
        fixed_b = _batched(fixed, "fixed", moving).to(dtype=moving.dtype)

        weight: torch.Tensor | None = None
        if mask is None:
            if self.requires_mask:
                raise InputError(f"metric '{self.name}' needs a mask", key="mask")
        else:
            if not isinstance(mask, torch.Tensor):
                raise InputError(f"must be a torch.Tensor, got {type(mask).__name__}",
                                 key="mask")
            if mask.is_complex():
                raise InputError(f"must be bool or real weights, got {mask.dtype}", key="mask")
            if mask.device != moving.device:
                raise InputError(f"is on {mask.device} but moving is on {moving.device}",
                                 key="mask")
            weight = _batched(mask, "mask", moving)

        if self.check_finite and moving.numel() > 0:
            _check_values(moving, fixed_b, weight)
        if weight is not None:
            weight = weight.to(dtype=moving.dtype)
        return fixed_b, moving, weight


def _check_values(moving: torch.Tensor, fixed: torch.Tensor, weight: torch.Tensor | None
                  ) -> None:
    """Refuse NaN or inf in ``moving`` and ``fixed``, and real ``weight`` outside ``[0, 1]``."""
    # One read-only pass per tensor (min and max propagate NaN, and show ±inf), and a
    # single device synchronisation for all of them.
    tensors = [("moving", moving), ("fixed", fixed)]
    if weight is not None and weight.dtype != torch.bool:
        tensors.append(("mask", weight))
    with torch.no_grad():
        extremes = torch.cat([torch.stack(torch.aminmax(t)).to(torch.float64)
                              for _, t in tensors]).tolist()
    for i, (key, _) in enumerate(tensors):
        lo, hi = extremes[2 * i], extremes[2 * i + 1]
        if key != "mask" and not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputError("contains NaN or inf", key=key)
        if key == "mask" and not (lo >= 0.0 and hi <= 1.0):
            raise InputError("weights must lie in [0, 1] (NaN is refused too)",
                             key=key)


def _batched(x: torch.Tensor, key: str, moving: torch.Tensor) -> torch.Tensor:
    """``x`` as ``(1, *S)`` or ``(B, *S)`` matching ``moving`` ``(B, *S)``, or a ShapeError."""
    spatial = tuple(moving.shape[1:])
    shape = tuple(x.shape)
    if shape == spatial:
        return x.unsqueeze(0)
    if x.ndim == moving.ndim and shape[1:] == spatial and shape[0] in (1, moving.shape[0]):
        return x
    raise ShapeError(f"{key} has shape {shape} but moving has shape {tuple(moving.shape)}; "
                     f"{key} must be {spatial}, (1, *{spatial}) or ({moving.shape[0]}, "
                     f"*{spatial})")


def check_options(cls: type[Metric], options: dict[str, Any]) -> None:
    """Refuse option names that ``cls``'s constructor does not take.

    Raises:
        InputError: Naming the first unknown option, with the closest known one and the list.
    """
    known = option_names(cls)
    for key in options:
        if key not in known:
            hint = did_you_mean(key, known)
            name = getattr(cls, "name", cls.__name__)
            raise InputError(f"unknown option for metric '{name}'{hint}; known: "
                             f"{', '.join(known) or 'none'}", key=key)


def bool_option(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"must be True or False, got {value!r}", key=key)
    return value


def int_option(key: str, value: Any, minimum: int) -> int:
    """Check an integer option (bools are refused) against a lower bound.

    Raises:
        InputError: Naming ``key`` when ``value`` is not an int or is below ``minimum``.
    """
    if not is_whole(value):
        raise InputError(f"must be an integer, got {value!r}", key=key)
    if value < minimum:
        raise InputError(f"must be at least {minimum}, got {value}", key=key)
    return value


def option_names(cls: type[Metric]) -> list[str]:
    """The keyword options a metric class's constructor takes, in signature order."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def get_metric(name: str, **options: Any) -> Metric:
    """Build the metric registered as ``name`` with the given options.

    Args:
        name: A registry name (``"ncc"``, ``"gc"``, ``"nmi"``, ...; see ``metrics.names()``).
        **options: The metric's constructor options (``patch_size=9``, ``bins=50``, ...).

    Returns:
        The metric instance.

    Raises:
        UnknownNameError: ``name`` is not registered; the message lists the known names and the
            closest matches.
        InputError: An option the metric does not take (the message lists those it does), or a
            bad option value.
    """
    cls = metrics.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        raise TypeError(f"metric '{name}' is registered as {cls!r}, which is not a Metric "
                        f"subclass (a broken plugin?)")
    if not getattr(cls, "name", None):  # a plugin class registered by entry point only
        cls.name = name
    check_options(cls, options)
    return cls(**options)
