"""Notebook 04's device report, batch-size choice and timer."""

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
    assert report["name"] == "CPU" and report["autocast"].startswith("fp32")
    assert report["channels_last"]  # PatchCore.extractor uses it on every device
    assert report["kNN search"] in inference.KNN_SEARCH.values()


def test_timer_on_cpu():
    with inference.Timer(torch.device("cpu")) as t:
        sum(range(10000))
    assert t.ms > 0


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
