"""Launchers of the tiled matrix products (kernels/gemm.cu) on CUDA or OpenCL, and the linear
layer built on them.

    c = gemm(a, b, bias, backend="opencl")                   # a b + bias
    c = gemm(a, b, transpose_b=True)                         # a b^T
    y = linear_forward(x, weight, bias)                      # x W + b, W stored (C_in, C_out)
    dx, dw, db = linear_backward(dout, x, weight, has_bias=True)

compute ``linear_forward`` and ``linear_backward`` of ``ref_numpy.linear``: the forward is one
product, the backward two (dx = dout W^T, dW = x^T dout) and a column sum (db), each output
element owned by one thread that sums in a fixed order, so two launches agree bit for bit (the
header of the .cu file says how the sums are kept). This module validates every argument before
anything is compiled or launched, chooses the tiles and picks the kernel of each product.

Shape letters: C (M, N) = op(A) (M, K) op(B) (K, N), op the identity or the transpose; for the
layer, M = the rows of x's leading dims (...), K = C_in, N = C_out.

Tiles: (TILE_M, TILE_N, TILE_K, THREAD_M, THREAD_N), a block's tile of C, the depth staged per
step, and each thread's sub-tile; DEFAULT_TILES unless given. Any positive sizes with THREAD_M
dividing TILE_M and THREAD_N dividing TILE_N, at most MAX_PER_THREAD accumulators and
MAX_THREADS threads per block, and shared memory within CUDA's 48 KiB static limit, checked on
every backend, PoCL included, so that a tiling accepted on a CPU also runs on a GPU.

Arrays: NumPy arrays with backend="opencl"; NumPy or CuPy arrays with backend="cupy" (results
come back as CuPy arrays if any CuPy array went in, asynchronously as in CuPy itself). One
dtype per call, float32 or float64; every array C-contiguous (a transposed operand is passed as
it is stored, with transpose_a / transpose_b, never as a strided view).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from gpu_cupy import arguments as args_
from gpu_cupy import runtime

KERNEL_FILE = "gemm.cu"
PRODUCTS = {(False, False): "gemm_nn", (False, True): "gemm_nt", (True, False): "gemm_tn"}
BIAS_KERNEL = "bias_grad"
KERNELS = tuple(PRODUCTS.values()) + (BIAS_KERNEL,)
MAX_PER_THREAD = 16             # THREAD_M * THREAD_N: three registers each (sums, compensation,
                                # the step's partial sums) keep the float64 build spill-free
MAX_THREADS = 1024              # CUDA's limit per block
ROW_CHUNK = 32                  # bias_grad: rows per partial sum (ROW_CHUNK in the .cu file)


class Tiles(NamedTuple):
    """A tiling of C (the defines of the .cu file of the same names)."""
    tile_m: int
    tile_n: int
    tile_k: int
    thread_m: int
    thread_n: int

    @property
    def threads(self) -> int:
        return (self.tile_m // self.thread_m) * (self.tile_n // self.thread_n)


DEFAULT_TILES = Tiles(64, 64, 16, 4, 4)      # 256 threads, 4 x 4 outputs each
# Small tiles that are not powers of two, for the sanitizer's shapes (several tiles in every
# direction at a few dozen rows).
SMALL_TILES = Tiles(12, 10, 5, 3, 2)


def shared_bytes(tiles: Tiles, itemsize: int) -> int:
    """Static shared memory of a product's block, in bytes, as declared in the .cu file: the
    staged tiles of op(A) and op(B), rows padded by one word (bias_grad needs less).

    >>> shared_bytes(DEFAULT_TILES, 4)      # 16 * (65 + 65) * 4
    8320
    """
    return tiles.tile_k * ((tiles.tile_m + 1) + (tiles.tile_n + 1)) * itemsize


def check_tiles(tiles, dtype) -> Tiles:
    """``tiles`` (None: DEFAULT_TILES) as a checked :class:`Tiles`."""
    if tiles is None:
        return DEFAULT_TILES
    if not isinstance(tiles, (tuple, list)) or len(tiles) != 5 or any(
            isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1 for t in tiles):
        raise ValueError(f"tiles: expected 5 positive ints (TILE_M, TILE_N, TILE_K, THREAD_M, "
                         f"THREAD_N) but got {tiles!r}")
    t = Tiles(*(int(v) for v in tiles))
    if t.tile_m % t.thread_m or t.tile_n % t.thread_n:
        raise ValueError(f"tiles: expected THREAD_M to divide TILE_M and THREAD_N to divide "
                         f"TILE_N but got {tuple(t)}")
    if t.thread_m * t.thread_n > MAX_PER_THREAD:
        raise ValueError(f"tiles: expected THREAD_M * THREAD_N <= {MAX_PER_THREAD} register "
                         f"accumulators per thread but got {t.thread_m} * {t.thread_n}")
    if t.threads > MAX_THREADS:
        raise ValueError(f"tiles: expected at most {MAX_THREADS} threads per block, "
                         f"(TILE_M / THREAD_M) * (TILE_N / THREAD_N), but got {t.threads}")
    need = shared_bytes(t, np.dtype(dtype).itemsize)
    if need > args_.CUDA_STATIC_SHARED:
        raise ValueError(f"tiles: {tuple(t)} needs {need} bytes of shared memory in "
                         f"{np.dtype(dtype)} but at most {args_.CUDA_STATIC_SHARED} are allowed "
                         f"(CUDA's static limit, checked on every backend); use smaller tiles")
    return t


def defines(tiles: Tiles, dtype) -> dict:
    """The compile-time defines of one program (every kernel of the file)."""
    return args_.dtype_defines(dtype, TILE_M=tiles.tile_m, TILE_N=tiles.tile_n,
                               TILE_K=tiles.tile_k, THREAD_M=tiles.thread_m,
                               THREAD_N=tiles.thread_n, NUM_THREADS=tiles.threads)


def nvrtc_configs(dtype) -> list[tuple[dict, tuple[str, ...]]]:
    """What ``crosscheck kernels`` compiles: every kernel at the default and the small tiles."""
    return [(defines(t, dtype), KERNELS) for t in (DEFAULT_TILES, SMALL_TILES)]


# ----------------------------------------------------------------------------- validation

def _ready(backend: str, dtype, tiles: Tiles) -> None:
    args_.check_available(backend, dtype)
    need = shared_bytes(tiles, np.dtype(dtype).itemsize)
    limit = runtime.device(backend).shared_mem_bytes
    if need > limit:
        raise ValueError(f"tiles: {tuple(tiles)} needs {need} bytes of shared memory in "
                         f"{np.dtype(dtype)} but the device allows {limit}; use smaller tiles")


def _check_sizes(M: int, N: int, K: int, tiles: Tiles) -> None:
    """Element counts and the indices the kernels form (tile ends, the bias rows) in int32,
    and the row tiles within a grid dimension."""
    for name, count, what in (("a", M * K, "M * K"), ("b", K * N, "K * N"),
                              ("c", M * N, "M * N")):
        args_.check_int32_count(name, count, what)
    cols = min(32, tiles.threads)                 # bias_grad: BIAS_COLS, ROW_SPLIT
    split = tiles.threads // cols
    args_.check_int32_count("a", M + max(tiles.tile_m, split * ROW_CHUNK),
                            "M + the rows a block reaches past it")
    args_.check_int32_count("b", N + max(tiles.tile_n, cols),
                            "N + the columns a block reaches past it")
    args_.check_int32_count("a", K + tiles.tile_k, "K + TILE_K")
    if -(-M // tiles.tile_m) > args_.CUDA_GRID_YZ_MAX:
        raise ValueError(f"a: expected at most {args_.CUDA_GRID_YZ_MAX} row tiles (a grid "
                         f"dimension) but M = {M} needs {-(-M // tiles.tile_m)} of "
                         f"TILE_M = {tiles.tile_m}")


def _check_2d(name: str, x) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name}: expected 2 dimensions but got {x.ndim} "
                         f"(shape {tuple(x.shape)})")


# ----------------------------------------------------------------------------- launchers

def _program(backend: str, tiles: Tiles, dtype):
    return runtime.build(backend, KERNEL_FILE, defines(tiles, dtype))


def _product(backend: str, d_a, d_b, d_bias, trans_a: bool, trans_b: bool, M: int, N: int,
             K: int, dtype, tiles: Tiles):
    """Launch one product on device arrays (d_bias None: no bias); return the device array of
    C (M, N)."""
    d_c = runtime.empty(backend, (M, N), dtype)
    runtime.launch(_program(backend, tiles, dtype), PRODUCTS[(trans_a, trans_b)],
                   grid=(-(-N // tiles.tile_n), -(-M // tiles.tile_m)), block=(tiles.threads,),
                   args=(d_a, d_b, d_c if d_bias is None else d_bias, d_c, np.int32(M),
                         np.int32(N), np.int32(K), np.int32(d_bias is not None)))
    return d_c


def _bias_grad(backend: str, d_dc, M: int, N: int, dtype, tiles: Tiles):
    """Launch bias_grad on the device array of dc (M, N); return the device array of db."""
    cols = min(32, tiles.threads)                 # BIAS_COLS in the .cu file
    d_db = runtime.empty(backend, (N,), dtype)
    runtime.launch(_program(backend, tiles, dtype), BIAS_KERNEL, grid=(-(-N // cols),),
                   block=(tiles.threads,), args=(d_dc, d_db, np.int32(M), np.int32(N)))
    return d_db


def _empty_product(xp, M: int, N: int, bias, dtype):
    """C (M, N) of a product with nothing to sum (K = 0) or nothing to write: the bias rows."""
    c = xp.zeros((M, N), dtype)
    if bias is not None and M * N:
        c += xp.asarray(bias)[None, :]
    return c


def _stage(backend: str, *arrays):
    """Device copies (None stays None; CuPy arrays pass through)."""
    return tuple(None if x is None else runtime.to_device(backend, x) for x in arrays)


def gemm(a, b, bias=None, *, transpose_a: bool = False, transpose_b: bool = False,
         tiles=None, backend: str = "opencl"):
    """C = op(a) op(b) (+ bias), op the transpose where asked.

    Args:
        a: (M, K), or (K, M) with transpose_a; float32 or float64.
        b: (K, N), or (N, K) with transpose_b; the dtype of a. Not both transposed.
        bias: (N,) added to every row of C, or None.
        tiles: (TILE_M, TILE_N, TILE_K, THREAD_M, THREAD_N) or None (DEFAULT_TILES).
        backend: "opencl" or "cupy".
    Returns:
        c: (M, N), the dtype of a.
    """
    args_.check_backend(backend)
    for name, flag in (("transpose_a", transpose_a), ("transpose_b", transpose_b)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name}: expected a bool but got {type(flag).__name__} ({flag!r})")
    if transpose_a and transpose_b:
        raise ValueError("transpose_a, transpose_b: expected at most one of them but got both; "
                         "compute (b a)^T instead")
    dtype = args_.check_floats(backend, {"a": a, "b": b, "bias": bias})
    _check_2d("a", a)
    _check_2d("b", b)
    M, K = (a.shape[1], a.shape[0]) if transpose_a else a.shape
    if (b.shape[1] if transpose_b else b.shape[0]) != K:
        want = "(N, K)" if transpose_b else "(K, N)"
        raise ValueError(f"b: expected shape {want} with K = {K} (from a, shape "
                         f"{tuple(a.shape)}{' transposed' if transpose_a else ''}) but got "
                         f"{tuple(b.shape)}")
    N = b.shape[0] if transpose_b else b.shape[1]
    if bias is not None:
        args_.check_shape("bias", bias, (N,), "(N,)")
    tiles = check_tiles(tiles, dtype)
    M, N, K = int(M), int(N), int(K)
    _check_sizes(M, N, K, tiles)
    _ready(backend, dtype, tiles)
    xp = args_.array_module(backend, a, b, bias)
    if M * N * K == 0:
        return _empty_product(xp, M, N, bias, dtype)
    return args_.results(xp, _product(backend, *_stage(backend, a, b, bias), bool(transpose_a),
                                      bool(transpose_b), M, N, K, dtype, tiles))[0]


def bias_grad(dc, *, tiles=None, backend: str = "opencl"):
    """db[n] = sum_m dc[m, n], the bias gradient of C = op(A) op(B) + bias.

    Args:
        dc: (M, N) float32 or float64.
        tiles: the tiling whose program runs it (its NUM_THREADS); None: DEFAULT_TILES.
        backend: "opencl" or "cupy".
    Returns:
        db: (N,), the dtype of dc.
    """
    args_.check_backend(backend)
    dtype = args_.check_floats(backend, {"dc": dc})
    _check_2d("dc", dc)
    tiles = check_tiles(tiles, dtype)
    M, N = (int(s) for s in dc.shape)
    _check_sizes(M, N, 0, tiles)
    _ready(backend, dtype, tiles)
    xp = args_.array_module(backend, dc)
    if N == 0 or M == 0:
        return xp.zeros((N,), dtype)
    return args_.results(xp, _bias_grad(backend, *_stage(backend, dc), M, N, dtype, tiles))[0]


def _layer_shapes(backend: str, x, weight, bias) -> tuple[np.dtype, int, int, int]:
    dtype = args_.check_floats(backend, {"x": x, "weight": weight, "bias": bias})
    if x.ndim < 1:
        raise ValueError(f"x: expected shape (..., C_in) but got {tuple(x.shape)}")
    _check_2d("weight", weight)
    if weight.shape[0] != x.shape[-1]:
        raise ValueError(f"weight: expected shape (C_in, C_out) with C_in = {x.shape[-1]} (the "
                         f"last dim of x) but got {tuple(weight.shape)}")
    K, N = (int(s) for s in weight.shape)
    if bias is not None:
        args_.check_shape("bias", bias, (N,), "(C_out,)")
    return dtype, int(x.size) // K if K else int(np.prod(x.shape[:-1])), K, N


def linear_forward(x, weight, bias=None, *, tiles=None, backend: str = "opencl"):
    """y = x W + b on the last dim of x, one gemm_nn launch.

    Args:
        x: (..., C_in) float32 or float64.
        weight: (C_in, C_out), the dtype of x.
        bias: (C_out,) or None.
        tiles: see the module docstring; None: DEFAULT_TILES.
        backend: "opencl" or "cupy".
    Returns:
        y: (..., C_out).
    """
    args_.check_backend(backend)
    dtype, M, K, N = _layer_shapes(backend, x, weight, bias)
    tiles = check_tiles(tiles, dtype)
    _check_sizes(M, N, K, tiles)
    _ready(backend, dtype, tiles)
    xp = args_.array_module(backend, x, weight, bias)
    shape = (*x.shape[:-1], N)
    if M * N * K == 0:
        return _empty_product(xp, M, N, bias, dtype).reshape(shape)
    d_y = _product(backend, *_stage(backend, x.reshape(M, K), weight, bias), False, False, M,
                   N, K, dtype, tiles)
    return args_.results(xp, d_y.reshape(shape))[0]


def linear_backward(dout, x, weight, *, has_bias: bool = False, tiles=None,
                    backend: str = "opencl"):
    """Gradients of y = x W + b: dx = dout W^T (gemm_nt), dW = x^T dout (gemm_tn) and, with
    ``has_bias``, db = dout summed over the rows (bias_grad).

    Args:
        dout: (..., C_out), the upstream gradient.
        x: (..., C_in), the forward's input; weight: (C_in, C_out); one dtype.
        has_bias: whether the layer has a bias (then db is computed).
        tiles: see the module docstring; None: DEFAULT_TILES.
        backend: "opencl" or "cupy".
    Returns:
        (dx (..., C_in), dweight (C_in, C_out), dbias (C_out,) or None without bias).
    """
    args_.check_backend(backend)
    if not isinstance(has_bias, (bool, np.bool_)):
        raise TypeError(f"has_bias: expected a bool but got {type(has_bias).__name__}")
    dtype, M, K, N = _layer_shapes(backend, x, weight, None)
    args_.check_floats(backend, {"x": x, "dout": dout})
    args_.check_shape("dout", dout, (*x.shape[:-1], N), "(..., C_out)")
    tiles = check_tiles(tiles, dtype)
    _check_sizes(M, N, K, tiles)
    _ready(backend, dtype, tiles)
    xp = args_.array_module(backend, dout, x, weight)
    dx, dw = xp.zeros(x.shape, dtype), xp.zeros((K, N), dtype)    # the empty cases
    db = xp.zeros((N,), dtype) if has_bias else None                # no rows to sum
    if M * N:
        d_x, d_w, d_dout = _stage(backend, x.reshape(M, K), weight, dout.reshape(M, N))
        if K:
            dx = _product(backend, d_dout, d_w, None, False, True, M, K, N, dtype,
                          tiles).reshape(x.shape)
            dw = _product(backend, d_x, d_dout, None, True, False, K, N, M, dtype, tiles)
        if has_bias:
            db = _bias_grad(backend, d_dout, M, N, dtype, tiles)
    if xp is np:
        dx, dw = (runtime.to_host(r) for r in (dx, dw))
        db = None if db is None else runtime.to_host(db)
    return dx, dw, db


# ----------------------------------------------------------------------------- bench

# (M, K, N): a square product, and the up-projection of GPT-2 small's MLP on 1024 tokens.
BENCH_SHAPES = {"square": (1024, 1024, 1024), "mlp": (1024, 768, 3072)}


def _inputs(M: int, K: int, N: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)).astype(dtype),
            (rng.standard_normal((K, N)) / np.sqrt(K)).astype(dtype),
            rng.standard_normal(N).astype(dtype), rng.standard_normal((M, N)).astype(dtype))


def bench_kernel(backend: str, pass_: str, M: int, K: int, N: int, dtype: str = "float32"):
    """The layer's forward (with bias) or backward (dx, dW, db) on (M, K) x (K, N), inputs
    made here, waiting for it."""
    x, w, b, dout = _inputs(M, K, N, dtype)
    if backend == "cupy":
        import cupy
        x, w, b, dout = (cupy.asarray(v) for v in (x, w, b, dout))

    def run():
        out = (linear_forward(x, w, b, backend=backend) if pass_ == "forward" else
               linear_backward(dout, x, w, has_bias=True, backend=backend))
        args_.synchronize(backend)
        return out
    return run


def bench_torch(device: str, pass_: str, M: int, K: int, N: int, dtype: str = "float32"):
    """F.linear(x, W^T, b), and its backward through torch.autograd.grad (a graph made here)."""
    import torch
    import torch.nn.functional as F
    x, w, b, dout = (torch.from_numpy(v).to(device) for v in _inputs(M, K, N, dtype))
    params = [v.requires_grad_(pass_ == "backward") for v in (x, w, b)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if pass_ == "forward":
        def run():
            out = F.linear(x, w.T, b)
            sync()
            return out
        return run
    out = F.linear(x, w.T, b)

    def run_backward():
        grads = torch.autograd.grad(out, params, dout, retain_graph=True)
        sync()
        return grads
    return run_backward


BENCH = [{"name": f"linear {pass_} {label} M={M} K={K} N={N}",
          "build": "gpu_cupy.gemm:bench_kernel",
          "kwargs": {"pass_": pass_, "M": M, "K": K, "N": N, "dtype": "float32"},
          "bytes": None,
          "flops": 2 * M * K * N * (1 if pass_ == "forward" else 2),
          "torch": "gpu_cupy.gemm:bench_torch"}
         for label, (M, K, N) in BENCH_SHAPES.items() for pass_ in ("forward", "backward")]
