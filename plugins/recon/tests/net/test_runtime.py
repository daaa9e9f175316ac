"""regkit_recon.net.runtime: the device, precision and Ctrl-C handling of training."""

from __future__ import annotations

import pytest
import torch
from regkit_recon.net import runtime

from regkit.errors import InputError


def test_autocast_dtype() -> None:
    cpu = torch.device("cpu")
    assert runtime.autocast_dtype("fp32", cpu) is None
    assert runtime.autocast_dtype("bf16", cpu) is torch.bfloat16
    expected = torch.bfloat16 if runtime.cpu_has_bf16() else None
    assert runtime.autocast_dtype("auto", cpu) is expected
    with pytest.raises(InputError) as info:
        runtime.autocast_dtype("fp16", cpu)
    assert info.value.key == "precision"


def test_bf16_emulated_on_the_cpu_is_noted(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    note = runtime.precision_note("bf16", cpu)
    assert note is not None
    assert "emulated" in note
    assert "--precision auto" in note
    assert runtime.precision_note("auto", cpu) is None      # auto picks fp32 there
    assert runtime.precision_note("fp32", cpu) is None
    assert runtime.precision_note("bf16", gpu) is None
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert runtime.precision_note("bf16", cpu) is None


def test_device_name_checks_what_is_asked() -> None:
    assert runtime.device_name("cpu") == "cpu"
    assert runtime.device_name(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="must be cpu or cuda") as info:
        runtime.device_name("tpu")
    assert info.value.key == "device"
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            runtime.device_name("cuda")


def test_one_process_joins_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert runtime.join_process_group("cpu") == (0, 1)
    assert runtime.rank_device("cpu", 0) == torch.device("cpu")


def test_a_first_ctrl_c_waits_for_the_step_and_a_second_stops_at_once() -> None:
    with runtime.Interrupts() as interrupts:
        interrupts._handle(2, None)
        assert interrupts.pending
        assert not interrupts.hard
        assert runtime.any_rank_interrupted(interrupts, 1, torch.device("cpu"))
        with pytest.raises(KeyboardInterrupt):
            interrupts._handle(2, None)
        assert interrupts.hard
