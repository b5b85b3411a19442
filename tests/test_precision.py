"""Precision: bf16 autocast only where the hardware has it, unless forced; the choice is recorded."""

import warnings

import pytest
import torch

from mergedna import precision as P


@pytest.mark.parametrize("native, speedup", [(True, 2.5), (True, 0.5), (False, 0.0)])
def test_auto_follows_the_measured_speed_and_explicit_choices_win(monkeypatch, native, speedup):
    monkeypatch.setattr(P, "bf16_is_native", lambda device_type="cpu": native)
    monkeypatch.setattr(P, "bf16_speedup", lambda device_type="cpu": speedup)
    P._warn_slow_bf16.cache_clear()
    pays = native and speedup >= P.MIN_SPEEDUP  # native but slower (a virtualised AVX512-BF16 Xeon): fp32
    assert P.resolve("auto") == P.resolve(None) == ("bf16" if pays else "fp32")
    assert P.resolve("fp32") == P.resolve(False) == "fp32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert P.resolve("bf16") == P.resolve(True) == "bf16"
    assert any("far slower than fp32" in str(w.message) for w in caught) == (not native)
    with P.autocast("auto"):
        assert torch.is_autocast_enabled("cpu") == pays
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == (torch.bfloat16 if pays else torch.float32)
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


def test_the_probe_measures_once_per_machine_and_every_process_reads_it_back(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEDNA_PRECISION_CACHE", str(tmp_path / "precision.json"))
    P.bf16_speedup.cache_clear()
    try:
        ratio = P.bf16_speedup("cpu")
        if not P.bf16_is_native("cpu"):
            assert ratio == 0.0 and not (tmp_path / "precision.json").exists()  # not probed: seconds of scalar bf16
            return
        assert 0.0 < ratio < 100.0
        assert P.bf16_pays("cpu") == (ratio >= P.MIN_SPEEDUP)
        # another process (here: the in-memory cache cleared) reads the stored ratio, never measures again
        monkeypatch.setattr(P, "_measure_bf16_speedup", lambda: pytest.fail("measured twice on one machine"))
        P.bf16_speedup.cache_clear()
        assert P.bf16_speedup("cpu") == ratio
    finally:
        P.bf16_speedup.cache_clear()


def test_the_measurement_compares_bf16_with_fp32_on_one_thread():
    threads = torch.get_num_threads()
    ratio = P._measure_bf16_speedup()
    assert 0.0 < ratio < 100.0 and torch.get_num_threads() == threads  # thread count restored
