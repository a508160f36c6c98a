"""Argument checks shared by the launchers of the dense kernels (elementwise, embedding, gemm,
rope): each raises before anything is compiled or launched, naming the argument, what was
expected and what came.

Arrays: NumPy arrays with backend="opencl"; NumPy or CuPy arrays with backend="cupy". Floats are
float32 or float64, one dtype per call; index arrays are int32 (the kernels read ``int``).
Every array must be C-contiguous: a strided view is rejected rather than copied. The kernels
index with int32, so element counts (plus the headroom a launch's last block reaches past
them) must stay within 2^31 - 1.
"""
from __future__ import annotations

import numpy as np

from gpu_cupy import runtime

INT32_MAX = 2**31 - 1
CUDA_STATIC_SHARED = 48 * 1024   # static shared memory per block on every CUDA GPU
CUDA_GRID_YZ_MAX = 65535         # the largest grid dimension y or z


def is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


def check_backend(backend: str) -> None:
    if backend not in runtime.BACKENDS:
        raise ValueError(f"backend: expected one of {list(runtime.BACKENDS)} but got {backend!r}")


def check_kind_type(name: str, x) -> None:
    """An array at all (NumPy or CuPy), before its dtype is read."""
    if not (isinstance(x, np.ndarray) or is_cupy(x)):
        raise TypeError(f"{name}: expected a numpy.ndarray but got {type(x).__name__}")


def check_kind(name: str, x, backend: str) -> None:
    """A NumPy array, or with backend="cupy" a NumPy or CuPy array; C-contiguous."""
    if is_cupy(x):
        if backend != "cupy":
            raise TypeError(f"{name}: expected a numpy.ndarray for backend={backend!r} but got "
                            f"a cupy.ndarray")
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray but got {type(x).__name__}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array but got strides {x.strides} "
                         f"for shape {x.shape}; pass np.ascontiguousarray({name}) explicitly")


def check_floats(backend: str, arrays: dict) -> np.dtype:
    """float32/float64 arrays of one dtype (that of the first, None entries skipped), each of
    the right kind and C-contiguous. Returns the dtype."""
    named = {n: x for n, x in arrays.items() if x is not None}
    first = next(iter(named))
    for name, x in named.items():
        check_kind_type(name, x)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: expected dtype float32 or float64 but got {x.dtype}")
    dtype = np.dtype(named[first].dtype)
    for name, x in named.items():
        if x.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} (the dtype of {first}) but got "
                            f"{x.dtype}")
        check_kind(name, x, backend)
    return dtype


def check_int32(backend: str, name: str, x) -> None:
    check_kind_type(name, x)
    if x.dtype != np.int32:
        raise TypeError(f"{name}: expected dtype int32 but got {x.dtype}; pass "
                        f"{name}.astype(np.int32) explicitly")
    check_kind(name, x, backend)


def check_shape(name: str, x, shape: tuple, what: str) -> None:
    """``x.shape == shape``; ``what`` names it: letters such as "(N,)" or words such as "the
    shape of a"."""
    if tuple(x.shape) != tuple(shape):
        want = (f"{what} = {tuple(shape)}" if what.startswith("(") else
                f"{tuple(shape)} ({what})")
        raise ValueError(f"{name}: expected shape {want} but got {tuple(x.shape)}")


def check_int32_count(name: str, count: int, what: str) -> None:
    """``count`` (an element count or an index a kernel forms) must fit int32."""
    if count > INT32_MAX:
        raise ValueError(f"{name}: expected {what} <= {INT32_MAX} (the kernels index with "
                         f"int32) but got {count}")


def check_available(backend: str, dtype) -> None:
    ok, why = runtime.available(backend, dtype)
    if not ok:
        raise RuntimeError(f"backend={backend!r} is not available: {why}")


def array_module(backend: str, *arrays):
    """The module results are returned in: CuPy if any CuPy array went in, else NumPy."""
    if backend == "cupy" and any(is_cupy(x) for x in arrays if x is not None):
        import cupy
        return cupy
    return np


def results(xp, *device_arrays) -> tuple:
    """Device arrays as the caller gets them: copied to NumPy, or the CuPy arrays themselves."""
    if xp is np:
        return tuple(runtime.to_host(a) for a in device_arrays)
    return device_arrays


def dtype_defines(dtype, **defines) -> dict:
    """``defines`` plus REAL_IS_DOUBLE=1 for float64."""
    out = dict(defines)
    if np.dtype(dtype) == np.float64:
        out["REAL_IS_DOUBLE"] = 1
    return out


def synchronize(backend: str) -> None:
    """Wait for the kernels queued on ``backend``: CuPy's current stream (NumPy results of the
    opencl launchers are complete when returned)."""
    if backend == "cupy":
        import cupy
        cupy.cuda.get_current_stream().synchronize()
