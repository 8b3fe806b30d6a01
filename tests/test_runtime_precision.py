"""Precision choice: bf16 only where the GPU has bf16 tensor cores (compute capability >= 8.0),
fp16 on older GPUs, fp32 on the CPU; explicit values honoured. The GPU is mocked: no CUDA needed."""

from __future__ import annotations

import warnings

import pytest
import torch

from helpers.core import runtime
from helpers.core.runtime import autocast_dtype

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
A100, H200, L4, T4, V100 = (8, 0), (9, 0), (8, 9), (7, 5), (7, 0)


@pytest.fixture
def gpu(monkeypatch):
    """Pretend the CUDA device has the given compute capability."""

    def set_capability(capability):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        # is_bf16_supported() is True on a T4 too (emulated): the choice must not rely on it
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    return set_capability


@pytest.mark.parametrize("capability", [A100, L4, H200])
def test_auto_is_bf16_from_compute_capability_8(gpu, capability):
    gpu(capability)
    assert autocast_dtype(CUDA, "auto") is torch.bfloat16
    assert runtime.has_native_bf16(CUDA)


@pytest.mark.parametrize("capability", [T4, V100])
def test_auto_is_fp16_below_8_even_when_torch_says_bf16_is_supported(gpu, capability):
    gpu(capability)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        assert autocast_dtype(CUDA, "auto") is torch.float16
    assert not runtime.has_native_bf16(CUDA)


def test_auto_on_the_cpu_is_fp32():
    assert autocast_dtype(CPU, "auto") is None
    assert runtime.cuda_capability(CPU) is None and not runtime.has_native_bf16(CPU)


@pytest.mark.parametrize("device", [CPU, CUDA])
def test_fp32_and_fp16_are_honoured(gpu, device):
    gpu(A100)
    assert autocast_dtype(device, "fp32") is None
    assert autocast_dtype(device, "fp16") is torch.float16


def test_bf16_is_honoured_where_it_is_native(gpu):
    gpu(H200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert autocast_dtype(CUDA, "bf16") is torch.bfloat16
    assert autocast_dtype(CPU, "bf16") is torch.bfloat16  # CPU autocast supports bf16


def test_bf16_asked_on_a_t4_falls_back_to_fp16_with_a_warning(gpu):
    gpu(T4)
    with pytest.warns(UserWarning, match=r"compute capability 7\.5.*fp16"):
        assert autocast_dtype(CUDA, "bf16") is torch.float16


def test_precision_note_names_the_choice_and_the_reason(gpu):
    gpu(T4)
    note = runtime.precision_note(CUDA)
    assert note.startswith("fp16 autocast") and "7.5" in note and "8.0" in note
    gpu(A100)
    assert runtime.precision_note(CUDA).startswith("bf16 autocast")
    assert runtime.precision_note(CPU).startswith("fp32")


def _allocator_in_a_fresh_process(env: dict) -> str:
    import os
    import subprocess
    import sys

    code = (
        "from helpers.core import process; from helpers import PatchCore;"
        "PatchCore(backbone='mobilenet_v2', device='cpu'); print(process.keep_freed_memory())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True)  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def test_freed_memory_is_kept_on_glibc_unless_the_environment_says_system():
    import platform
    import sys

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert _allocator_in_a_fresh_process({"PATCHCORE_ALLOCATOR": ""}) == str(glibc)
    assert _allocator_in_a_fresh_process({"PATCHCORE_ALLOCATOR": "system"}) == "False"


def test_child_processes_get_huge_pages_for_malloc_unless_the_environment_says_system():
    from helpers.core.process import HUGE_PAGES, child_environment

    assert child_environment({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": HUGE_PAGES}
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}  # the user's tunables are kept
    assert child_environment(mine)["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGE_PAGES}"
    off = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}  # the user's own choice wins
    assert child_environment(off) == off
    assert child_environment({"PATCHCORE_ALLOCATOR": "system"}) == {"PATCHCORE_ALLOCATOR": "system"}
    twice = child_environment(child_environment({}))  # no duplicate
    assert twice["GLIBC_TUNABLES"] == HUGE_PAGES
