"""Launchers of the RMSNorm and LayerNorm kernels (kernels/norms.cu) on CUDA or OpenCL.

    out, rstd = rmsnorm_forward(x, weight, eps=1e-6, backend="opencl")
    dx, dweight = rmsnorm_backward(dout, x, weight, rstd)
    out, mean, rstd = layernorm_forward(x, weight, bias, eps=1e-5)
    dx, dweight, dbias = layernorm_backward(dout, x, weight, mean, rstd, has_bias=True)

compute ``ref_numpy.norms`` (torch's ``F.rms_norm`` and ``F.layer_norm`` over the last
dimension, eps inside the square root, the biased variance). The forward saves the per-row
statistics the backward reads (rstd = 1 / sqrt(mean square or variance + eps), and the mean for
LayerNorm). The weight and bias gradients are summed over the rows in two stages without
atomics: ``rows_per_chunk`` rows per stage-1 block (default :func:`row_chunks`), then one sum
over the chunks per column; the order depends only on the shapes and ``rows_per_chunk``, so
repeated calls give the same bits. The header of the .cu file says what each kernel does. Every
argument is validated before anything is compiled or launched.

Arrays: x, dout (..., C), any leading dimensions (the R rows); weight, bias (C,); rstd, mean of
shape (...) (x's shape without its last dimension). float32/float64, one dtype per call,
C-contiguous. NumPy arrays with backend="opencl"; NumPy or CuPy arrays with backend="cupy"
(results come back as CuPy arrays if any CuPy array went in). Values are not scanned for NaN
(see ``gpu_cupy.softmax``). ``eps = 0`` is allowed, as in ``ref_numpy.norms``; a row with
nothing to divide by (all zeros, or constant for LayerNorm) then raises ValueError once the
forward has computed its statistics.
"""
from __future__ import annotations

import numpy as np

from gpu_cupy import runtime
from gpu_cupy.arguments import array_module, check_backend, results
from gpu_cupy.softmax import INT32_MAX, NUM_THREADS, check_array, check_rows, defines, ready

KERNEL_FILE = "norms.cu"
FORWARD_KERNELS = ("rmsnorm_forward", "layernorm_forward")
BACKWARD_KERNELS = ("rmsnorm_backward_dx", "layernorm_backward_dx",
                    "rmsnorm_backward_dweight_partial", "layernorm_backward_dweight_partial",
                    "norm_backward_dweight_reduce")
MAX_CHUNKS = 128               # default row chunks of the weight-gradient reduction's stage 1
_CUDA_GRID_YZ_MAX = 65535      # the row chunks are grid dimension y


def shared_bytes(kernel: str, itemsize: int) -> int:
    """Static shared memory of a block of ``kernel``, in bytes, as declared in the .cu file: one
    reduction array of NUM_THREADS reals in the row kernels, none in the column sums.

    >>> shared_bytes("layernorm_forward", 8), shared_bytes("norm_backward_dweight_reduce", 8)
    (2048, 0)
    """
    return 0 if "dweight" in kernel else NUM_THREADS * itemsize


def nvrtc_configs(dtype) -> list[tuple[dict, tuple[str, ...]]]:
    """What ``crosscheck kernels`` compiles: every kernel at the launcher's NUM_THREADS."""
    return [(defines(dtype), FORWARD_KERNELS + BACKWARD_KERNELS)]


def row_chunks(R: int) -> int:
    """The default rows per stage-1 block of the weight gradients: R split into at most
    MAX_CHUNKS chunks of equal length (the last one may be shorter).

    >>> row_chunks(8192), row_chunks(300), row_chunks(7)
    (64, 3, 1)
    """
    return max(1, -(-R // MAX_CHUNKS))


# ----------------------------------------------------------------------------- validation

def _eps(eps, dtype) -> float:
    if (isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating))
            or not 0 <= eps <= float(np.finfo(dtype).max)):
        raise ValueError(f"eps: expected a finite number >= 0 representable in {dtype} but got "
                         f"{eps!r}")
    return float(eps)


def _params(backend: str, dtype, C: int, **params) -> None:
    for name, p in params.items():
        check_array(name, p, backend, dtype)
        if tuple(p.shape) != (C,):
            raise ValueError(f"{name}: expected shape (C,) = ({C},) but got {tuple(p.shape)}")


def _stats(backend: str, dtype, lead: tuple, **stats) -> None:
    for name, s in stats.items():
        check_array(name, s, backend, dtype)
        if tuple(s.shape) != lead:
            raise ValueError(f"{name}: expected shape {lead} (x's shape without its last "
                             f"dimension) but got {tuple(s.shape)}")


def _x(x, backend: str) -> tuple[int, int, np.dtype]:
    check_backend(backend)
    R, C = check_rows("x", x, backend)
    if C < 1:
        raise ValueError(f"x: expected shape (..., C) with C >= 1 but got {tuple(x.shape)}")
    return R, C, np.dtype(x.dtype)


def _chunks(rows_per_chunk, R: int, C: int, K: int) -> tuple[int, int]:
    """(rows per chunk, chunks P) of the weight-gradient reduction, checked."""
    if rows_per_chunk is None:
        rows_per_chunk = row_chunks(R)
    elif isinstance(rows_per_chunk, bool) or not isinstance(rows_per_chunk, (int, np.integer)):
        raise TypeError(f"rows_per_chunk: expected a positive int or None but got "
                        f"{type(rows_per_chunk).__name__} ({rows_per_chunk!r})")
    elif rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk: expected a positive int but got {rows_per_chunk}")
    rpc = min(int(rows_per_chunk), max(R, 1))   # a chunk longer than R is all of R
    P = -(-R // rpc)
    if P > _CUDA_GRID_YZ_MAX:
        raise ValueError(f"rows_per_chunk: expected at most {_CUDA_GRID_YZ_MAX} chunks (a grid "
                         f"dimension) but {R} rows in chunks of {rpc} make {P}")
    if P * K * C + NUM_THREADS > INT32_MAX:
        raise ValueError(f"rows_per_chunk: expected the partial sums ({P} x {K} x {C}) to be "
                         f"indexable with int32 but got {P * K * C} elements")
    if R + rpc > INT32_MAX:   # the kernel forms the end of the last chunk, P · rpc < R + rpc
        raise ValueError(f"rows_per_chunk: expected R + rows_per_chunk <= {INT32_MAX} (chunk "
                         f"ends are int32) but got {R} + {rpc}")
    return rpc, P


def _check_statistics(rstd, eps: float, what: str, hint: str) -> None:
    """With eps = 0 a row whose mean square (variance) is 0 has rstd = inf: refuse it, as
    ``ref_numpy.norms`` does."""
    if eps == 0:
        host = runtime.to_host(rstd)
        if not np.isfinite(host).all():
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(host))[0])
            raise ValueError(f"x: row {idx} has {what} 0 and eps=0; expected eps > 0 or {hint}")


# ----------------------------------------------------------------------------- launchers

def rmsnorm_forward(x, weight, *, eps: float = 1e-6, backend: str = "opencl"):
    """RMSNorm over the last dimension, one block per row.

        r = 1 / sqrt(mean_c x_c^2 + eps),   out = x r weight

    Args:
        x: (..., C) float32/float64.
        weight: (C,), the dtype of x.
        eps: added to the mean square inside the square root, >= 0 (LLaMA's 1e-6 by default).
        backend: "opencl" or "cupy".

    Returns:
        (out (..., C), rstd (...)): the output and each row's r.
    """
    R, C, dtype = _x(x, backend)
    _params(backend, dtype, C, weight=weight)
    eps = _eps(eps, dtype)
    ready(backend, dtype, shared_bytes(FORWARD_KERNELS[0], dtype.itemsize))
    xp = array_module(backend, x, weight)
    if R == 0:
        return xp.zeros(x.shape, dtype), xp.zeros(x.shape[:-1], dtype)
    program = runtime.build(backend, KERNEL_FILE, defines(dtype))
    d_x, d_w = (runtime.to_device(backend, a) for a in (x, weight))
    d_out = runtime.empty(backend, x.shape, dtype)
    d_rstd = runtime.empty(backend, x.shape[:-1], dtype)
    runtime.launch(program, FORWARD_KERNELS[0], grid=(R,), block=(NUM_THREADS,),
                   args=(d_x, d_w, d_out, d_rstd, np.int32(C), dtype.type(eps)))
    _check_statistics(d_rstd, eps, "mean square", "a row that is not all zeros")
    return results(xp, d_out, d_rstd)


def layernorm_forward(x, weight, bias=None, *, eps: float = 1e-5, backend: str = "opencl"):
    """LayerNorm over the last dimension, one block per row.

        mu = mean_c x_c,   r = 1 / sqrt(mean_c (x_c - mu)^2 + eps),   out = (x - mu) r w + b

    Args:
        x: (..., C) float32/float64.
        weight: (C,), the dtype of x.
        bias: (C,) or None (no bias: torch's nn.LayerNorm(bias=False)).
        eps: added to the biased variance inside the square root, >= 0.
        backend: "opencl" or "cupy".

    Returns:
        (out (..., C), mean (...), rstd (...)).
    """
    R, C, dtype = _x(x, backend)
    _params(backend, dtype, C, weight=weight, **({} if bias is None else {"bias": bias}))
    eps = _eps(eps, dtype)
    ready(backend, dtype, shared_bytes(FORWARD_KERNELS[1], dtype.itemsize))
    xp = array_module(backend, x, weight, *(() if bias is None else (bias,)))
    if R == 0:
        return (xp.zeros(x.shape, dtype), xp.zeros(x.shape[:-1], dtype),
                xp.zeros(x.shape[:-1], dtype))
    program = runtime.build(backend, KERNEL_FILE, defines(dtype))
    # No bias adds zeros: (x - mu) r w + 0 is (x - mu) r w exactly.
    d_x, d_w, d_b = (runtime.to_device(backend, a)
                     for a in (x, weight, np.zeros(C, dtype) if bias is None else bias))
    d_out = runtime.empty(backend, x.shape, dtype)
    d_mean, d_rstd = (runtime.empty(backend, x.shape[:-1], dtype) for _ in range(2))
    runtime.launch(program, FORWARD_KERNELS[1], grid=(R,), block=(NUM_THREADS,),
                   args=(d_x, d_w, d_b, d_out, d_mean, d_rstd, np.int32(C), dtype.type(eps)))
    _check_statistics(d_rstd, eps, "variance", "a row that is not constant")
    return results(xp, d_out, d_mean, d_rstd)


def _backward(kind: str, dout, x, weight, stats: dict, K: int, rows_per_chunk, backend: str):
    """dx and the (K, C) parameter gradients of ``kind`` ("rmsnorm" or "layernorm")."""
    R, C, dtype = _x(x, backend)
    check_rows("dout", dout, backend, dtype, x.shape)
    _params(backend, dtype, C, weight=weight)
    _stats(backend, dtype, tuple(x.shape[:-1]), **stats)
    rpc, P = _chunks(rows_per_chunk, R, C, K)
    ready(backend, dtype, shared_bytes(f"{kind}_backward_dx", dtype.itemsize))
    xp = array_module(backend, dout, x, weight, *stats.values())
    if R == 0:
        return xp.zeros(x.shape, dtype), xp.zeros((K, C), dtype)
    program = runtime.build(backend, KERNEL_FILE, defines(dtype))
    d_dout, d_x, d_w = (runtime.to_device(backend, a) for a in (dout, x, weight))
    d_stats = tuple(runtime.to_device(backend, s) for s in stats.values())
    d_dx = runtime.empty(backend, x.shape, dtype)
    d_partial = runtime.empty(backend, (P, K, C), dtype)
    d_params = runtime.empty(backend, (K, C), dtype)
    i32 = np.int32
    runtime.launch(program, f"{kind}_backward_dx", grid=(R,), block=(NUM_THREADS,),
                   args=(d_dout, d_x, d_w) + d_stats + (d_dx, i32(C)))
    runtime.launch(program, f"{kind}_backward_dweight_partial",
                   grid=(-(-C // NUM_THREADS), P), block=(NUM_THREADS,),
                   args=(d_dout, d_x) + d_stats + (d_partial, i32(R), i32(C), i32(rpc)))
    runtime.launch(program, BACKWARD_KERNELS[4], grid=(-(-K * C // NUM_THREADS),),
                   block=(NUM_THREADS,), args=(d_partial, d_params, i32(P), i32(K * C)))
    return results(xp, d_dx, d_params)


def rmsnorm_backward(dout, x, weight, rstd, *, rows_per_chunk: int | None = None,
                     backend: str = "opencl"):
    """Gradients of RMSNorm with respect to x and weight, from the forward's rstd.

        g = dout w,  xhat = x r:  dx = r (g - xhat mean_c(g xhat)),  dweight = sum_rows dout xhat

    Args:
        dout: (..., C), the shape and dtype of x.
        x, weight: the forward's inputs.
        rstd: (...), the forward's statistics.
        rows_per_chunk: rows per stage-1 block of dweight's two-stage sum (default
            :func:`row_chunks`; at most R).
        backend: "opencl" or "cupy".

    Returns:
        (dx (..., C), dweight (C,)).
    """
    dx, params = _backward("rmsnorm", dout, x, weight, {"rstd": rstd}, 1, rows_per_chunk,
                           backend)
    return dx, params[0]


def layernorm_backward(dout, x, weight, mean, rstd, *, has_bias: bool = True,
                       rows_per_chunk: int | None = None, backend: str = "opencl"):
    """Gradients of LayerNorm with respect to x, weight and bias, from the forward's mean, rstd.

        g = dout w,  xhat = (x - mu) r:
        dx = r (g - mean_c g - xhat mean_c(g xhat)),  dweight = sum_rows dout xhat,
        dbias = sum_rows dout

    Args:
        dout: (..., C), the shape and dtype of x.
        x, weight: the forward's inputs.
        mean, rstd: (...), the forward's statistics.
        has_bias: whether the forward had a bias (else dbias is None).
        rows_per_chunk: rows per stage-1 block of the two-stage sums (default :func:`row_chunks`).
        backend: "opencl" or "cupy".

    Returns:
        (dx (..., C), dweight (C,), dbias (C,) or None).
    """
    if not isinstance(has_bias, (bool, np.bool_)):
        raise TypeError(f"has_bias: expected a bool but got {type(has_bias).__name__} "
                        f"({has_bias!r})")
    dx, params = _backward("layernorm", dout, x, weight, {"mean": mean, "rstd": rstd}, 2,
                           rows_per_chunk, backend)
    return dx, params[0], (params[1] if has_bias else None)


# ----------------------------------------------------------------------------- bench

BENCH_SHAPE = (8192, 768)      # (R, C): GPT-2 small's B·T = 8 x 1024 positions of width 768


def _bench_inputs(shape, dtype):
    rng = np.random.default_rng(0)
    R, C = shape
    return (rng.standard_normal((R, C)).astype(dtype), (1 + 0.1 * rng.standard_normal(C))
            .astype(dtype), rng.standard_normal(C).astype(dtype),
            rng.standard_normal((R, C)).astype(dtype))


def bench_kernel(backend: str, op: str, shape, dtype: str):
    """``crosscheck bench kernels``: one launch of ``op`` (rmsnorm_forward, rmsnorm_backward,
    layernorm_forward, layernorm_backward) on (R, C) inputs, synchronised."""
    x, w, b, dy = _bench_inputs(shape, dtype)
    sync = lambda: None  # noqa: E731
    if backend == "cupy":
        import cupy
        x, w, b, dy = (cupy.asarray(a) for a in (x, w, b, dy))
        sync = cupy.cuda.get_current_stream().synchronize
    kw = {"backend": backend}
    if op == "rmsnorm_forward":
        call = lambda: rmsnorm_forward(x, w, **kw)  # noqa: E731
    elif op == "layernorm_forward":
        call = lambda: layernorm_forward(x, w, b, **kw)  # noqa: E731
    elif op == "rmsnorm_backward":
        _, rstd = rmsnorm_forward(x, w, **kw)
        call = lambda: rmsnorm_backward(dy, x, w, rstd, **kw)  # noqa: E731
    else:
        _, mean, rstd = layernorm_forward(x, w, b, **kw)
        call = lambda: layernorm_backward(dy, x, w, mean, rstd, **kw)  # noqa: E731

    def run():
        result = call()
        sync()
        return result
    return run


def bench_torch(device: str, op: str, shape, dtype: str):
    """The same op in torch on ``device``: F.rms_norm / F.layer_norm, and their backward
    (dx, dweight, dbias) through autograd."""
    import torch
    import torch.nn.functional as F
    x, w, b, dy = (torch.from_numpy(a).to(device) for a in _bench_inputs(shape, dtype))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    C = x.shape[-1]
    if op.startswith("rmsnorm"):
        fn, params = (lambda: F.rms_norm(x, (C,), weight=w, eps=1e-6)), (x, w)
    else:
        fn, params = (lambda: F.layer_norm(x, (C,), weight=w, bias=b, eps=1e-5)), (x, w, b)
    if op.endswith("_forward"):
        call = fn
    else:
        for p in params:
            p.requires_grad_(True)
        out = fn()
        call = lambda: torch.autograd.grad(out, params, dy, retain_graph=True)  # noqa: E731

    def run():
        result = call()
        sync()
        return result
    return run


def _bench_entry(op: str, tensors: int) -> dict:
    R, C = BENCH_SHAPE
    return {"name": f"{op} {R}x{C}", "build": "gpu_cupy.norms:bench_kernel",
            "kwargs": {"op": op, "shape": list(BENCH_SHAPE), "dtype": "float32"},
            "bytes": tensors * R * C * 4, "flops": None, "torch": "gpu_cupy.norms:bench_torch"}


# Bytes are the (R, C) tensors each read or written once: x in, out out; x and dout in, dx out
# (the (C,) parameters and (R,) statistics are left out).
BENCH = [_bench_entry("rmsnorm_forward", 2), _bench_entry("rmsnorm_backward", 3),
         _bench_entry("layernorm_forward", 2), _bench_entry("layernorm_backward", 3)]
