"""Precision: bf16 autocast only where the hardware has it, unless forced; the choice is recorded."""

import warnings

import pytest
import torch

from mergedna import precision as P


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_hardware_and_explicit_choices_win(monkeypatch, native):
    monkeypatch.setattr(P, "bf16_is_native", lambda device_type="cpu": native)
    P._warn_slow_bf16.cache_clear()
    assert P.resolve("auto") == P.resolve(None) == ("bf16" if native else "fp32")
    assert P.resolve("fp32") == P.resolve(False) == "fp32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert P.resolve("bf16") == P.resolve(True) == "bf16"
    assert any("far slower than fp32" in str(w.message) for w in caught) == (not native)
    with P.autocast("auto"):
        assert torch.is_autocast_enabled("cpu") == native
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == (torch.bfloat16 if native else torch.float32)
    with P.autocast("fp32"):
        assert not torch.is_autocast_enabled("cpu")


def test_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="precision must be one of"):
        P.resolve("fp16")


def test_native_detection_matches_the_cpu_flags():
    flags = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    expected = " amx_tile" in flags or " avx512_bf16" in flags
    assert P.bf16_is_native("cpu") == expected
