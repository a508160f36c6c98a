"""Launchers of the softmax kernels (kernels/softmax.cu) on CUDA or OpenCL.

    y = softmax_forward(x, backend="opencl")               # version 1: three passes per row
    y = softmax_forward(x, version=2)                      # the online softmax: two passes
    z = log_softmax_forward(x)
    dx = softmax_backward(dy, y);  dx = log_softmax_backward(dy, z)

compute ``ref_numpy.softmax`` (softmax, log-softmax) and ``ref_numpy.online_softmax`` along the
last axis, with the same conventions: -inf entries are masked (probability 0), a fully -inf row
gives zeros (log-softmax: -inf) and passes zero gradient. The header of the .cu file says what
each kernel does. This module validates every argument before anything is compiled or launched
and dispatches the forward by version number (llm.c dev/cuda style).

Arrays: x (..., N), any leading dimensions (the R rows); every output and gradient has the shape
of x. NumPy arrays with backend="opencl"; NumPy or CuPy arrays with backend="cupy" (results come
back as CuPy arrays if any CuPy array went in, asynchronously as in CuPy itself). float32 or
float64, one dtype per call, C-contiguous: a strided view is rejected rather than copied.
Values are not scanned: a NaN or +inf in a row gives NaN in that row (as in torch), where
``ref_numpy`` raises; scanning would double the memory traffic of these memory-bound kernels.

The helpers below (``check_backend``, ``check_array``, ``check_rows``, ``ready``, ``array_module``,
``results``) are shared by the launchers of ``kernels/cross_entropy.cu`` and ``kernels/norms.cu``.
"""
from __future__ import annotations

import numpy as np

from gpu_cupy import runtime
from gpu_cupy.arguments import array_module, check_backend, is_cupy, results

KERNEL_FILE = "softmax.cu"
NUM_THREADS = 256              # threads per block for every kernel of the file (a power of two)
CUDA_STATIC_SHARED = 48 * 1024
FORWARD_VERSIONS = {1: "softmax_forward_v1", 2: "softmax_forward_v2"}
BACKWARD_KERNELS = ("softmax_backward", "log_softmax_backward")
INT32_MAX = 2**31 - 1


def defines(dtype) -> dict:
    """The compile-time defines of one program (every kernel of a row-kernel file)."""
    out = {"NUM_THREADS": NUM_THREADS}
    if np.dtype(dtype) == np.float64:
        out["REAL_IS_DOUBLE"] = 1
    return out


def shared_bytes(kernel: str, itemsize: int) -> int:
    """Static shared memory of a block of ``kernel``, in bytes, as declared in the .cu file:
    one reduction array of NUM_THREADS reals, two for the online softmax's (m, l).

    >>> shared_bytes("softmax_forward_v2", 4)
    2048
    """
    return (2 if kernel == FORWARD_VERSIONS[2] else 1) * NUM_THREADS * itemsize


def nvrtc_configs(dtype) -> list[tuple[dict, tuple[str, ...]]]:
    """What ``crosscheck kernels`` compiles: every kernel at the launcher's NUM_THREADS."""
    return [(defines(dtype), tuple(FORWARD_VERSIONS.values()) + BACKWARD_KERNELS)]


# ----------------------------------------------------------------------------- validation

def check_array(name: str, x, backend: str, dtype=None, kinds=(np.float32, np.float64)):
    """A NumPy array (or with backend="cupy" a NumPy or CuPy array), C-contiguous, of one of
    ``kinds``, and of ``dtype`` when given (the dtype of the call's first array)."""
    if is_cupy(x):
        if backend != "cupy":
            raise TypeError(f"{name}: expected a numpy.ndarray for backend={backend!r} but got "
                            f"a cupy.ndarray")
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray but got {type(x).__name__}")
    if x.dtype not in kinds:
        want = " or ".join(np.dtype(k).name for k in kinds)
        raise TypeError(f"{name}: expected dtype {want} but got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)} (the dtype of the first "
                        f"array) but got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array but got strides {x.strides} "
                         f"for shape {x.shape}; pass np.ascontiguousarray({name}) explicitly")
    return x


def check_rows(name: str, x, backend: str, dtype=None, shape=None) -> tuple[int, int]:
    """x (..., N) as R rows of N: a float array as :func:`check_array`, at least 1-D, of
    ``shape`` when given, with int32 headroom for the kernels' indices (R·N + NUM_THREADS, the
    last value a thread's strided index takes). Returns (R, N)."""
    check_array(name, x, backend, dtype)
    if x.ndim < 1:
        raise ValueError(f"{name}: expected shape (..., N) with at least one dimension but got "
                         f"{x.shape}")
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} but got {tuple(x.shape)}")
    if x.size + NUM_THREADS > INT32_MAX:
        raise ValueError(f"{name}: expected at most {INT32_MAX - NUM_THREADS} elements (the "
                         f"kernels index with int32) but got {x.size} for shape "
                         f"{tuple(x.shape)}")
    N = x.shape[-1]
    return (x.size // N if N else int(np.prod(x.shape[:-1]))), N


def ready(backend: str, dtype, shared: int) -> None:
    """The backend can run ``dtype`` and its device has the ``shared`` bytes a block needs
    (never more than CUDA's static 48 KiB, checked on every backend)."""
    limit = CUDA_STATIC_SHARED
    if shared > limit:
        raise ValueError(f"a block needs {shared} bytes of shared memory but at most {limit} are "
                         f"allowed (CUDA's static limit)")
    ok, why = runtime.available(backend, dtype)
    if not ok:
        raise RuntimeError(f"backend={backend!r} is not available: {why}")
    device_limit = runtime.device(backend).shared_mem_bytes
    if shared > device_limit:
        raise ValueError(f"a block needs {shared} bytes of shared memory but "
                         f"{runtime.device(backend).name} allows {device_limit}")


def _version(version) -> str:
    if isinstance(version, bool) or version not in FORWARD_VERSIONS:
        raise ValueError(f"version: expected one of {sorted(FORWARD_VERSIONS)} but got "
                         f"{version!r}")
    return FORWARD_VERSIONS[version]


# ----------------------------------------------------------------------------- launchers

def _forward(x, version, log_out: bool, backend: str):
    kernel = _version(version)
    check_backend(backend)
    R, N = check_rows("x", x, backend)
    dtype = np.dtype(x.dtype)
    ready(backend, dtype, shared_bytes(kernel, dtype.itemsize))
    xp = array_module(backend, x)
    if x.size == 0:
        return xp.zeros(x.shape, dtype)
    program = runtime.build(backend, KERNEL_FILE, defines(dtype))
    d_x = runtime.to_device(backend, x)
    d_out = runtime.empty(backend, x.shape, dtype)
    runtime.launch(program, kernel, grid=(R,), block=(NUM_THREADS,),
                   args=(d_x, d_out, np.int32(N), np.int32(log_out)))
    return results(xp, d_out)[0]


def _backward(kernel: str, dout, out, backend: str):
    check_backend(backend)
    R, N = check_rows("out", out, backend)
    check_rows("dout", dout, backend, out.dtype, out.shape)
    dtype = np.dtype(out.dtype)
    ready(backend, dtype, shared_bytes(kernel, dtype.itemsize))
    xp = array_module(backend, dout, out)
    if out.size == 0:
        return xp.zeros(out.shape, dtype)
    program = runtime.build(backend, KERNEL_FILE, defines(dtype))
    d_out, d_dout = (runtime.to_device(backend, a) for a in (out, dout))
    d_dx = runtime.empty(backend, out.shape, dtype)
    runtime.launch(program, kernel, grid=(R,), block=(NUM_THREADS,),
                   args=(d_out, d_dout, d_dx, np.int32(N)))
    return results(xp, d_dx)[0]


def softmax_forward(x, *, version: int = 1, backend: str = "opencl"):
    """Softmax of x along the last axis, one block per row.

        y_i = exp(x_i - m) / sum_j exp(x_j - m),  m = max_j x_j   (a fully -inf row gives 0)

    Args:
        x: (..., N) float32/float64, finite or -inf (masked).
        version: 1 (max, sum and write passes) or 2 (the online softmax: one pass for the
            normaliser (m, l), then the write).
        backend: "opencl" or "cupy".

    Returns:
        y: like x.
    """
    return _forward(x, version, False, backend)


def log_softmax_forward(x, *, version: int = 1, backend: str = "opencl"):
    """Log-softmax of x along the last axis: z_i = (x_i - m) - log sum_j exp(x_j - m), -inf
    for a masked entry and for every entry of a fully -inf row. Arguments as
    :func:`softmax_forward`."""
    return _forward(x, version, True, backend)


def softmax_backward(dout, out, *, backend: str = "opencl"):
    """dx = y (dout - sum_i dout_i y_i) per row, from the forward's output y = ``out``.

    Args:
        dout: (..., N), the dtype and shape of out.
        out: (..., N), the forward's y.
        backend: "opencl" or "cupy".

    Returns:
        dx: like out.
    """
    return _backward(BACKWARD_KERNELS[0], dout, out, backend)


def log_softmax_backward(dout, out, *, backend: str = "opencl"):
    """dx = dout - exp(z) sum_i dout_i per row, from the forward's output z = ``out``; a fully
    -inf row of z passes dx = 0. Arguments as :func:`softmax_backward`."""
    return _backward(BACKWARD_KERNELS[1], dout, out, backend)


# ----------------------------------------------------------------------------- bench

BENCH_SHAPE = (2048, 4096)     # (R, N): 8M entries


def _bench_inputs(shape, dtype, device_put):
    rng = np.random.default_rng(0)
    x, dy = (device_put(rng.standard_normal(tuple(shape)).astype(dtype)) for _ in range(2))
    return x, dy


def bench_kernel(backend: str, op: str, shape, dtype: str, version: int = 1):
    """``crosscheck bench kernels``: one launch of ``op`` (softmax_forward, log_softmax_forward,
    softmax_backward, log_softmax_backward) on (R, N) inputs, synchronised."""
    sync, put = (lambda: None), (lambda a: a)
    if backend == "cupy":
        import cupy
        sync, put = cupy.cuda.get_current_stream().synchronize, cupy.asarray
    x, dy = _bench_inputs(shape, dtype, put)
    log = op.startswith("log_")
    forward = log_softmax_forward if log else softmax_forward
    if op.endswith("_forward"):
        call = lambda: forward(x, version=version, backend=backend)  # noqa: E731
    else:
        out = forward(x, backend=backend)
        backward = log_softmax_backward if log else softmax_backward
        call = lambda: backward(dy, out, backend=backend)  # noqa: E731

    def run():
        result = call()
        sync()
        return result
    return run


def bench_torch(device: str, op: str, shape, dtype: str, version: int = 1):
    """The same op in torch on ``device``: F.softmax / F.log_softmax, and their backward through
    autograd (``version`` is the kernel's and changes nothing here)."""
    import torch
    import torch.nn.functional as F
    x, dy = _bench_inputs(shape, dtype, lambda a: torch.from_numpy(a).to(device))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn = F.log_softmax if op.startswith("log_") else F.softmax
    if op.endswith("_forward"):
        call = lambda: fn(x, dim=-1)  # noqa: E731
    else:
        x.requires_grad_(True)
        out = fn(x, dim=-1)
        call = lambda: torch.autograd.grad(out, x, dy, retain_graph=True)  # noqa: E731

    def run():
        result = call()
        sync()
        return result
    return run


def _bench_entry(op: str, version: int | None, reads: int, writes: int) -> dict:
    R, N = BENCH_SHAPE
    name = op if version is None else f"{op} v{version}"
    return {"name": f"{name} {R}x{N}", "build": "gpu_cupy.softmax:bench_kernel",
            "kwargs": {"op": op, "shape": list(BENCH_SHAPE), "dtype": "float32",
                       "version": version or 1},
            "bytes": (reads + writes) * R * N * 4, "flops": None,
            "torch": "gpu_cupy.softmax:bench_torch"}


# Bytes are each tensor read or written once (what the op must move): x in, y out; y (or z)
# and dy in, dx out.
BENCH = [_bench_entry("softmax_forward", 1, 1, 1), _bench_entry("softmax_forward", 2, 1, 1),
         _bench_entry("log_softmax_forward", 2, 1, 1), _bench_entry("softmax_backward", None, 2, 1),
         _bench_entry("log_softmax_backward", None, 2, 1)]
