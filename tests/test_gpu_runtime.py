"""gpu_cupy.runtime: availability, cached builds, grid/block launches, copies, on PoCL and CuPy.

The kernel used here is written in the dialect (kernels/DIALECT.md) in a temporary file: each
block reverses its slice of x through shared memory and writes y = alpha * reversed + its
(block x, block y) position, so a wrong grid, block, barrier or scalar argument shows.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpu_cupy import runtime

OPENCL_OK, OPENCL_WHY = runtime.available("opencl")
CUPY_OK, CUPY_WHY = runtime.available("cupy")

REVERSE_CU = r"""
KERNEL void reverse_scale(GLOBAL const real* x, GLOBAL real* y, real alpha, int n)
{
    SHARED real tile[THREADS];
    int block = BLOCK_IDX_Y * 1000 + BLOCK_IDX_X;          /* gridDim.x <= 1000 here */
    int i = (BLOCK_IDX_Y * GRID_X + BLOCK_IDX_X) * THREADS + THREAD_IDX_X;
    tile[THREAD_IDX_X] = i < n ? x[i] : (real)0;
    BARRIER();
    if (i < n)
        y[i] = alpha * tile[THREADS - 1 - THREAD_IDX_X] + (real)block;
}
"""


def expected_reverse(x: np.ndarray, alpha: float, threads: int, grid_x: int) -> np.ndarray:
    """The kernel's result in NumPy: reverse within each block of ``threads``, scale, add id."""
    n = x.size
    padded = np.zeros(-(-n // threads) * threads, x.dtype)
    padded[:n] = x
    blocks = padded.reshape(-1, threads)[:, ::-1]                    # (n_blocks, threads)
    ids = np.arange(blocks.shape[0])
    block_id = (ids // grid_x) * 1000 + ids % grid_x                 # (n_blocks,)
    return (alpha * blocks + block_id[:, None]).reshape(-1)[:n].astype(x.dtype)


@pytest.fixture
def reverse_file(tmp_path):
    path = tmp_path / "reverse.cu"
    path.write_text(REVERSE_CU)
    return str(path)


def run_reverse(backend: str, path: str, dtype, n: int, threads: int, grid_x: int):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(dtype)
    n_blocks = -(-n // threads)
    grid = (grid_x, -(-n_blocks // grid_x))
    defs = {"THREADS": threads, "GRID_X": grid_x}
    if np.dtype(dtype) == np.float64:
        defs["REAL_IS_DOUBLE"] = 1
    prog = runtime.build(backend, path, defs)
    d_x = runtime.to_device(backend, x)
    d_y = runtime.empty(backend, x.shape, dtype)
    runtime.launch(prog, "reverse_scale", grid=grid, block=(threads,),
                   args=(d_x, d_y, np.dtype(dtype).type(0.5), np.int32(n)))
    return runtime.to_host(d_y), expected_reverse(x, 0.5, threads, grid_x)


# ----------------------------------------------------------------------------- availability

def test_available_returns_flag_and_reason():
    for backend in runtime.BACKENDS:
        ok, why = runtime.available(backend)
        assert isinstance(ok, bool) and isinstance(why, str) and why


def test_available_rejects_unknown_backend():
    with pytest.raises(ValueError, match=r"backend: expected one of \['opencl', 'cupy'\] "
                                         r"but got 'metal'"):
        runtime.available("metal")


def test_cupy_unavailable_reason_comes_from_the_device_query(monkeypatch):
    cupy = pytest.importorskip("cupy")

    def no_device():
        raise cupy.cuda.runtime.CUDARuntimeError(35)  # cudaErrorInsufficientDriver

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", no_device)
    ok, why = runtime.available.__wrapped__("cupy")
    assert not ok
    assert why.startswith("no CUDA device: cudaErrorInsufficientDriver"), why


@pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
def test_opencl_device_info_matches_pyopencl():
    import pyopencl as cl
    dev = runtime.device("opencl")
    devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    same = [d for d in devices if d.name.strip() == dev.name]
    assert same, (dev.name, [d.name for d in devices])
    assert dev.shared_mem_bytes == same[0].local_mem_size
    assert dev.max_threads_per_block == same[0].max_work_group_size
    assert dev.fp64 == ("cl_khr_fp64" in same[0].extensions.split())
    # The runtime picks a float64 device when there is one, and then float64 is available.
    if any("cl_khr_fp64" in d.extensions.split() for d in devices):
        assert dev.fp64 and runtime.available("opencl", np.float64)[0]


@pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
def test_available_does_not_raise_when_the_device_query_fails(monkeypatch):
    def refused(backend):
        raise RuntimeError("attribute query refused")

    monkeypatch.setattr(runtime, "device", refused)
    assert runtime.available.__wrapped__("opencl") == (
        False, "the opencl device cannot be queried: RuntimeError: attribute query refused")


# ----------------------------------------------------------------------------- build and launch

def test_define_options_are_sorted_flags():
    assert runtime.define_options({"HEAD_DIM": 64, "BLOCK_Q": 5}) == ["-DBLOCK_Q=5",
                                                                      "-DHEAD_DIM=64"]


def test_kernel_source_starts_with_the_runtime_prelude(reverse_file):
    assert "#define KERNEL __kernel" in runtime.kernel_source("opencl", reverse_file)
    cuda = runtime.kernel_source("cupy", reverse_file)
    assert '#define KERNEL extern "C" __global__' in cuda and "0x7f800000" in cuda
    assert cuda.rstrip().endswith(REVERSE_CU.rstrip())


@pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
def test_build_is_cached_by_source_and_defines(reverse_file):
    a = runtime.build("opencl", reverse_file, {"THREADS": 4, "GRID_X": 1})
    b = runtime.build("opencl", reverse_file, {"GRID_X": 1, "THREADS": 4})
    c = runtime.build("opencl", reverse_file, {"THREADS": 8, "GRID_X": 1})
    assert a is b and a is not c


@pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, threads, grid_x", [(1, 4, 1), (37, 8, 2), (97, 16, 3)])
def test_opencl_launch_grid_block_and_copies(reverse_file, dtype, n, threads, grid_x):
    got, want = run_reverse("opencl", reverse_file, dtype, n, threads, grid_x)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
def test_launch_rejects_python_scalars(reverse_file):
    prog = runtime.build("opencl", reverse_file, {"THREADS": 4, "GRID_X": 1})
    x = runtime.to_device("opencl", np.zeros(4, np.float32))
    with pytest.raises(TypeError, match=r"args\[3\]: expected a NumPy scalar .* but got Python "
                                        r"int 4"):
        runtime.launch(prog, "reverse_scale", (1,), (4,), (x, x, np.float32(1), 4))


@pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
def test_launch_rejects_more_threads_than_the_device_allows(reverse_file, monkeypatch):
    prog = runtime.build("opencl", reverse_file, {"THREADS": 16, "GRID_X": 3})
    x = runtime.to_device("opencl", np.zeros(16, np.float32))
    small = runtime.Device("opencl", "a device of 8 threads", 48 * 1024, 8, True)
    monkeypatch.setattr(runtime, "device", lambda backend: small)
    with pytest.raises(ValueError, match=r"block: expected at most 8 threads per block on a "
                                         r"device of 8 threads but got 16 for block \(16,\)"):
        runtime.launch(prog, "reverse_scale", (1,), (16,), (x, x, np.float32(1), np.int32(16)))


@pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
def test_launch_rejects_four_dimensional_grid(reverse_file):
    prog = runtime.build("opencl", reverse_file, {"THREADS": 4, "GRID_X": 1})
    with pytest.raises(ValueError, match="expected 1 to 3 dimensions"):
        runtime.launch(prog, "reverse_scale", (1, 1, 1, 1), (4,), ())


@pytest.mark.gpu
@pytest.mark.skipif(not CUPY_OK, reason=CUPY_WHY)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cupy_launch_grid_block_and_copies(reverse_file, dtype):
    got, want = run_reverse("cupy", reverse_file, dtype, 97, 16, 3)
    np.testing.assert_array_equal(got, want)
