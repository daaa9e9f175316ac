"""Where and how training runs: the device, the process group under torchrun, Ctrl-C, precision.

Used by :mod:`regkit_recon.net.train`; nothing here knows the network or the data.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from regkit.errors import InputError

__all__ = ["Interrupts", "any_rank_interrupted", "autocast_dtype", "cpu_has_bf16", "device_name",
           "join_process_group", "precision_note", "rank_device"]


def device_name(requested: str | None) -> str:
    """``cpu`` or ``cuda``: the one asked for (checked), else CUDA where there is a device."""
    name = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise InputError(f"must be cpu or cuda, got {name!r}", key="device")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("no CUDA device here", key="device")
    return name


def join_process_group(device: str) -> tuple[int, int]:
    """(rank, world size); joins the process group under torchrun (NCCL for CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def any_rank_interrupted(interrupts: Interrupts, world: int, device: torch.device) -> bool:
    """Whether any process has a Ctrl-C pending (all ranks stop at the same step)."""
    if world > 1:
        flag = torch.tensor([1.0 if interrupts.pending else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        interrupts.pending = bool(flag.item() > 0)
    return interrupts.pending


class Interrupts:
    """Ctrl-C waits for the step under way to finish; a second Ctrl-C stops at once.

    Waiting makes the checkpoint a step boundary; stopping at once keeps the last checkpoint
    written.
    """

    def __init__(self) -> None:
        self.pending = False
        self.hard = False
        self._old: Any = None

    def __enter__(self) -> Interrupts:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.pending:
            self.hard = True
            raise KeyboardInterrupt
        self.pending = True

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: full float32)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise InputError(f"must be auto, bf16 or fp32, got {precision!r}", key="precision")
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda" or cpu_has_bf16():
        return torch.bfloat16
    return None


def precision_note(precision: str, device: torch.device) -> str | None:
    """A warning when bf16 is asked for on a CPU that has to emulate it, else None.

    Without AVX512-BF16 or AMX, oneDNN falls back to slow bfloat16 kernels: on an AVX2-only
    CPU (2 cores) one training step of batch 8 at 256² took 270 s in bf16 against 13 s in fp32.
    ``auto`` picks fp32 there; an explicit ``bf16`` (as the recipes of hand_v6-v10 ask, trained
    on CPUs with AMX) is obeyed, with this note.
    """
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        return ("note: --precision bf16 on a CPU without native bfloat16 (no AVX512-BF16 or "
                "AMX): it is emulated, many times slower than fp32 (--precision auto picks "
                "fp32 here)")
    return None


def rank_device(name: str, rank: int) -> torch.device:
    """The torch device of this process: its own GPU under torchrun (``LOCAL_RANK``), or the CPU."""
    if name == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")
