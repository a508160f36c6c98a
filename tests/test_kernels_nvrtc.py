"""Every kernel compiles with NVRTC for sm_80 and sm_90 in both dtypes (no GPU needed), and the
ptxas figures are parsed: registers, zero spills, shared memory equal to the launcher's budget."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from gpu_cupy import flash_attention as fa
from gpu_cupy import nvrtc, runtime

nvrtc_bindings = pytest.importorskip("cuda.bindings.nvrtc",
                                     reason="pip install nvidia-cuda-nvrtc cuda-bindings")

REGISTERS_PER_BLOCK = 64 * 1024  # 32-bit registers per block, compute capability 8.0 and 9.0

LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'first' for 'sm_80'
ptxas info    : Function properties for first
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 4096 bytes smem, 400 bytes cmem[0]
ptxas info    : Compile time = 3.1 ms
ptxas info    : Compiling entry function 'second' for 'sm_80'
ptxas info    : Function properties for second
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 380 bytes cmem[0]
"""


def test_parse_ptxas_reads_every_entry():
    assert nvrtc.parse_ptxas(LOG) == {
        "first": {"arch": "sm_80", "registers": 40, "stack_bytes": 16, "spill_stores": 8,
                  "spill_loads": 4, "smem_bytes": 4096},
        "second": {"arch": "sm_80", "registers": 12, "stack_bytes": 0, "spill_stores": 0,
                   "spill_loads": 0, "smem_bytes": 0}}


def test_nvrtc_library_comes_from_the_pip_package():
    assert "nvrtc" in nvrtc.nvrtc_library()


def test_compile_error_carries_the_log():
    with pytest.raises(RuntimeError, match="NVRTC could not compile bad.cu"):
        nvrtc.compile_log("KERNEL void k( { }", ["--gpu-architecture=sm_90"], "bad.cu")


@pytest.mark.parametrize("arch", nvrtc.ARCHS)
@pytest.mark.parametrize("dtype", nvrtc.DTYPES)
def test_flash_attention_kernels_compile_without_spills(arch, dtype):
    # D = 128 at the default tiles: the largest accumulators, where spills would appear first.
    source = runtime.kernel_source("cupy", fa.KERNEL_FILE)
    itemsize = np.dtype(dtype).itemsize
    for pass_, kernels in (("forward", tuple(fa.FORWARD_VERSIONS.values())),
                           ("backward", fa.BACKWARD_KERNELS)):
        block_q, block_k = fa.default_blocks(pass_, 128, dtype)
        defines = fa.defines(pass_, 128, block_q, block_k, dtype)
        log = nvrtc.compile_log(source, [f"--gpu-architecture={arch}", "--ptxas-options=-v"]
                                + runtime.define_options(defines), fa.KERNEL_FILE)
        figures = nvrtc.parse_ptxas(log)
        assert set(figures) == set(kernels), log
        for name, f in figures.items():
            assert f["arch"] == arch
            assert 0 < f["registers"] <= 255, (name, f)
            # A block of NUM_THREADS must fit the 64K registers one block may hold on sm_80 and
            # sm_90, or the launch fails on the GPU with "too many resources requested".
            assert f["registers"] * fa.NUM_THREADS <= REGISTERS_PER_BLOCK, (name, f)
            assert f["spill_stores"] == 0 and f["spill_loads"] == 0, (name, f)
        # The launcher's shared-memory budget is the pass's largest declared shared memory.
        biggest = max(f["smem_bytes"] for f in figures.values())
        assert biggest == fa.shared_bytes(pass_, 128, block_q, block_k, itemsize)
        assert biggest <= fa.CUDA_STATIC_SHARED


def _ptx(pass_: str, D: int, dtype) -> str:
    block_q, block_k = fa.default_blocks(pass_, D, dtype)
    options = ["--gpu-architecture=compute_80"] + runtime.define_options(
        fa.defines(pass_, D, block_q, block_k, dtype))
    return nvrtc.compile_ptx(runtime.kernel_source("cupy", fa.KERNEL_FILE), options,
                             fa.KERNEL_FILE)


def test_float32_kernels_do_no_float64_arithmetic():
    # A double-precision instruction in a float32 kernel (an unsuffixed literal, a math function
    # resolved to its double overload) runs at 1/2 to 1/64 of the float32 rate on a GPU.
    for pass_ in ("forward", "backward"):
        ptx = _ptx(pass_, 128, np.float32)
        assert ".entry flash_attention_" in ptx
        assert [ln.strip() for ln in ptx.splitlines() if ".f64" in ln] == [], pass_
    # The float64 build of the same source does use them: the check can see them.
    assert ".f64" in _ptx("forward", 16, np.float64)


def test_kernels_report_rows(monkeypatch):
    from equivalence import kernels_report
    calls = []

    def fake_compile_all(archs, dtypes, files):
        calls.append((archs, dtypes, files))
        return [{"file": "f.cu", "kernel": "k", "defines": "HEAD_DIM=8", "arch": "sm_90",
                 "dtype": "float32", "registers": 40, "spill_stores": 0, "spill_loads": 0,
                 "stack_bytes": 0, "smem_bytes": 4096}]

    monkeypatch.setattr(nvrtc, "compile_all", fake_compile_all)
    parser = argparse.ArgumentParser()
    kernels_report.add_arguments(parser)
    rows = kernels_report.run(parser.parse_args(["--arch", "sm_90", "--dtype", "float32"]))
    assert calls == [(("sm_90",), ("float32",), None)]
    assert rows == [{"kernel": "k", "config": "HEAD_DIM=8", "arch": "sm_90", "dtype": "float32",
                     "registers": 40, "spill stores": 0, "spill loads": 0, "smem bytes": 4096}]
    kernels_report.run(parser.parse_args([]))
    assert calls[-1] == (nvrtc.ARCHS, nvrtc.DTYPES, None)


def test_configs_fall_back_only_when_the_launcher_module_is_absent(monkeypatch):
    def import_module(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(nvrtc.importlib, "import_module", import_module)
    assert nvrtc._configs("no_launcher", "float64") == [({"REAL_IS_DOUBLE": 1}, None)]

    def broken_launcher(name):  # the launcher exists but one of its own imports is missing
        raise ModuleNotFoundError("No module named 'missing_dep'", name="missing_dep")

    monkeypatch.setattr(nvrtc.importlib, "import_module", broken_launcher)
    with pytest.raises(ModuleNotFoundError, match="missing_dep"):
        nvrtc._configs("flash_attention", "float32")


def test_compiling_leaves_the_interpreters_one_byte_objects_alone():
    # A kernel with an empty log has a log of size 1 (its NUL). NVRTC writes into the buffer it
    # is handed; handed b" " * 1, which is the interpreter's shared b" ", it turned every
    # bytes([32]) in the process into b"\x00" (seen as a BPE tokenizer spelling spaces as NULs).
    source = 'extern "C" __global__ void k(float* x) { x[0] = 1.0f; }'
    log, ptx = nvrtc._compile(source, ["--gpu-architecture=compute_80"], "k.cu", ptx=True)
    assert log == "" and ".entry k" in ptx
    assert bytes([32]) == b" " and bytes([32])[0] == 32 and b" ".decode() == " "
