"""Batch-size choice, timing and batch halving on out-of-memory (simulated)."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from helpers.lessons import timing as inference


def test_batch_size_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert inference.pick_batch_size(0, cpu) == inference.CPU_BATCH
    assert inference.pick_batch_size(12, cpu) == 12
    props = types.SimpleNamespace(total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    assert inference.pick_batch_size(0, torch.device("cuda")) == 64
    props.total_memory = 16 * 2**30
    assert inference.pick_batch_size(0, torch.device("cuda")) == 32


def test_cpu_report():
    cpu = torch.device("cpu")
    report = inference.device_report(cpu)
    assert (
        report["name"] == "CPU"
        and report["autocast"].startswith("fp32")
        and not report["channels_last"]
    )


def test_timer_on_cpu():
    with inference.Timer(torch.device("cpu")) as t:
        sum(range(10000))
    assert t.ms > 0


def fake_model():
    return types.SimpleNamespace(device=torch.device("cpu"))


def test_benchmark_rows():
    seen = []
    rows = inference.benchmark(
        fake_model(),
        torch.zeros(3, 3, 8, 8),
        5,
        warmup=1,
        repeats=2,
        infer=lambda m, x: seen.append(x.shape[0]),
    )
    assert [r["mode"] for r in rows] == ["latency", "throughput"]
    assert rows[0]["batch"] == 1 and rows[1]["batch"] == 5 and rows[1]["images_per_s"] > 0
    assert set(seen) == {1, 5}


def test_throughput_batch_is_halved_on_out_of_memory():
    def infer(model, x):
        if x.shape[0] > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = inference.benchmark(
            fake_model(), torch.zeros(4, 3, 8, 8), 64, warmup=1, repeats=1, infer=infer
        )
    assert rows[1]["batch"] == 16 and rows[1]["requested_batch"] == 64
    assert any("retrying with 32" in str(w.message) for w in caught)


def test_other_errors_are_not_swallowed():
    def infer(model, x):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        inference.benchmark(fake_model(), torch.zeros(1, 3, 8, 8), 4, infer=infer)


def test_resolve_device_quietly_silences_the_cpu_warning_for_the_kernel(monkeypatch):
    """Notebook 04 prints its own CPU note; the generic warning would be a second one, and the
    models created later (PatchCore resolves the device again) must stay quiet too."""
    from helpers.core import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_WARNED_CPU", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert inference.resolve_device_quietly("auto") == torch.device("cpu")
        assert runtime.resolve_device("auto") == torch.device("cpu")
    assert not [w for w in caught if "no CUDA GPU" in str(w.message)]
    monkeypatch.setattr(runtime, "_WARNED_CPU", False)
    with pytest.warns(UserWarning, match="no CUDA GPU found"):
        runtime.resolve_device("auto")  # without it, the warning is still issued
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        inference.resolve_device_quietly("cuda")  # an explicit request is still an error
