"""Launchers of the FlashAttention kernels (kernels/flash_attention.cu) on CUDA or OpenCL.

    out, lse = flash_attention_forward(q, k, v, causal=True, backend="opencl")
    dq, dk, dv = flash_attention_backward(q, k, v, out, lse, dout, causal=True, backend="opencl")

compute the same function as ``ref_numpy.flash_attention`` (Dao et al. 2022, arXiv:2205.14135;
Dao 2023, arXiv:2307.08691), with the tiles of that module mapped onto GPU blocks: the header of
the .cu file says what each kernel does and why the backward is split into a dK/dV pass and a dQ
pass. This module validates every argument before anything is compiled or launched, chooses the
tile sizes, and dispatches the forward by version number (llm.c dev/cuda style).

Shape letters:
    B    batch
    H    query heads;  Hkv  key/value heads, H % Hkv == 0 (query head h uses kv head h // G)
    G    query heads per kv head, H // Hkv (GQA)
    Tq   query positions;  Tk  key/value positions
    D    head dimension, 1 <= D <= 256 (MAX_HEAD_DIM)

Causal masking is bottom-right aligned: query i may attend key j iff j <= i + (Tk - Tq). A row
that sees no key outputs zeros, has lse = -inf and passes zero gradient.

Arrays: NumPy arrays with backend="opencl"; NumPy or CuPy arrays with backend="cupy" (results
come back as the kind that went in). All inputs share one dtype, float32 or float64, and must be
C-contiguous: a strided view is rejected rather than copied behind the caller's back. CuPy
results are asynchronous, as in CuPy itself: the call returns once the kernels are queued on the
current stream, and they are complete when the result is read (``.get()``, ``cupy.asnumpy``) or
after ``cupy.cuda.get_current_stream().synchronize()`` (time them with CUDA events). NumPy
results are always complete.

Tile sizes are checked against CUDA's 48 KiB static shared-memory limit on every backend, PoCL
included (its device offers far more), so that a tiling accepted on a CPU also runs on a GPU.
"""
from __future__ import annotations

import math

import numpy as np

from gpu_cupy import runtime
from ref_numpy._check import check_float, check_positive_int

KERNEL_FILE = "flash_attention.cu"
NUM_THREADS = 128            # threads per block for every kernel of the family
MAX_HEAD_DIM = 256           # the largest D the tile, register and test budgets cover
MAX_ACCUMULATORS = 32        # register accumulators per thread per kernel (keeps spills at zero)
# Every accumulator is a compensated (Kahan) sum: a value and its compensation, two registers.
REGISTERS_PER_SUM = 2
CUDA_STATIC_SHARED = 48 * 1024  # static shared memory per block on every CUDA GPU
FORWARD_VERSIONS = {1: "flash_attention_forward_v1"}
BACKWARD_KERNELS = ("flash_attention_backward_rows", "flash_attention_backward_dkdv",
                    "flash_attention_backward_dq")
_BLOCK_CANDIDATES = (64, 32, 16, 8, 4, 2)
_INT32_MAX = 2**31 - 1
_CUDA_GRID_YZ_MAX = 65535    # H (or Hkv) and B are grid dimensions y and z
NVRTC_HEAD_DIMS = (64, 128, 192, 256)  # the head dims ``crosscheck kernels`` reports


# ----------------------------------------------------------------------------- tile budget

def shared_bytes(pass_: str, D: int, block_q: int, block_k: int, itemsize: int) -> int:
    """Static shared memory of one block, in bytes, as declared in the .cu file.

    Tile rows have stride D + 1. Forward: Q, K, V tiles, the (Br, Bc) score tile and four row
    statistics (m, l and l's compensation, alpha). Backward: the largest of its kernels, dK/dV
    (Q, dO, K, V tiles, P and dS tiles) and its row kernel's five row vectors (lse, and psum
    and Drow's sums, each with a compensation).

    >>> shared_bytes("forward", 64, 32, 32, 4)   # ((32 + 2*32) * 65 + 32*32 + 4*32) * 4
    29568
    """
    rows = D + 1
    if pass_ == "forward":
        reals = (block_q + 2 * block_k) * rows + block_q * block_k + 4 * block_q
    elif pass_ == "backward":
        reals = (2 * block_q + 2 * block_k) * rows + 2 * block_q * block_k + 5 * block_q
    else:
        raise ValueError(f"pass_: expected 'forward' or 'backward' but got {pass_!r}")
    return reals * itemsize


def accumulators(pass_: str, D: int, block_q: int, block_k: int) -> int:
    """Register accumulators per thread: a (Br, D) tile of O or dQ spread over NUM_THREADS
    threads, and in the backward also the (Bc, D) tiles of dK and dV; each element is a
    compensated sum of REGISTERS_PER_SUM registers.

    >>> accumulators("forward", 128, 16, 32), accumulators("backward", 128, 16, 8)
    (32, 32)
    """
    per_q = REGISTERS_PER_SUM * -(-block_q * D // NUM_THREADS)
    if pass_ == "forward":
        return per_q
    return max(per_q, 2 * REGISTERS_PER_SUM * -(-block_k * D // NUM_THREADS))


def default_blocks(pass_: str, D: int, dtype) -> tuple[int, int]:
    """The (block_q, block_k) used when none is given: the largest tiles among 64, 32, 16, 8,
    4, 2 (preferring more work per block, then a taller query tile) that fit the accumulator
    budget and 48 KiB of shared memory, the CUDA static limit, so both runtimes tile alike.

    >>> default_blocks("forward", 64, np.float32), default_blocks("backward", 128, np.float64)
    ((32, 32), (16, 4))
    >>> default_blocks("forward", 256, np.float64), default_blocks("backward", 256, np.float64)
    ((8, 4), (8, 2))
    """
    itemsize = np.dtype(dtype).itemsize
    fits = [(bq, bk) for bq in _BLOCK_CANDIDATES for bk in _BLOCK_CANDIDATES
            if accumulators(pass_, D, bq, bk) <= MAX_ACCUMULATORS
            and shared_bytes(pass_, D, bq, bk, itemsize) <= CUDA_STATIC_SHARED]
    return max(fits, key=lambda t: (t[0] * t[1], t[0]))


def defines(pass_: str, D: int, block_q: int, block_k: int, dtype) -> dict:
    """The compile-time defines of one program of this family (one pass, one tiling)."""
    out = {"HEAD_DIM": D, "BLOCK_Q": block_q, "BLOCK_K": block_k, "NUM_THREADS": NUM_THREADS,
           {"forward": "FLASH_FORWARD", "backward": "FLASH_BACKWARD"}[pass_]: 1}
    if np.dtype(dtype) == np.float64:
        out["REAL_IS_DOUBLE"] = 1
    return out


def nvrtc_configs(dtype) -> list[tuple[dict, tuple[str, ...]]]:
    """What ``crosscheck kernels`` compiles: (defines, kernels reported) for the default tiles
    of each pass at D = 64, 128, 192 and 256."""
    configs = []
    for D in NVRTC_HEAD_DIMS:
        fwd = default_blocks("forward", D, dtype)
        bwd = default_blocks("backward", D, dtype)
        configs.append((defines("forward", D, *fwd, dtype), tuple(FORWARD_VERSIONS.values())))
        configs.append((defines("backward", D, *bwd, dtype), BACKWARD_KERNELS))
    return configs


def check_blocks(pass_: str, D: int, block_q: int, block_k: int, dtype) -> None:
    """Raise ValueError unless (block_q, block_k) fits the budgets of ``pass_`` on every backend:
    at most MAX_ACCUMULATORS register accumulators per thread and at most CUDA_STATIC_SHARED
    bytes of shared memory. The shared-memory bar is CUDA's even on PoCL, whose device allows
    far more, so that any tiling accepted on a CPU also runs on a GPU.

    >>> check_blocks("backward", 256, 8, 4, np.float64)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: block_q, block_k: the backward pass needs 50176 bytes of shared memory ...
    """
    acc = accumulators(pass_, D, block_q, block_k)
    if acc > MAX_ACCUMULATORS:
        raise ValueError(f"block_q, block_k: expected at most {MAX_ACCUMULATORS} register "
                         f"accumulators per thread but block_q={block_q}, block_k={block_k}, "
                         f"D={D} need {acc} in the {pass_} pass; use smaller tiles")
    need = shared_bytes(pass_, D, block_q, block_k, np.dtype(dtype).itemsize)
    if need > CUDA_STATIC_SHARED:
        raise ValueError(f"block_q, block_k: the {pass_} pass needs {need} bytes of shared memory "
                         f"with block_q={block_q}, block_k={block_k}, D={D}, {np.dtype(dtype)} "
                         f"but at most {CUDA_STATIC_SHARED} are allowed (CUDA's static limit, "
                         f"checked on every backend so that a tiling accepted here also runs on "
                         f"a GPU); use smaller tiles")


# ----------------------------------------------------------------------------- validation

def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


def _check_array(name: str, x, backend: str):
    """A float32/float64, 4-D (or 3-D for lse), C-contiguous array without NaN: a NumPy array,
    or with backend="cupy" a NumPy or a CuPy array."""
    ndim = 3 if name == "lse" else 4
    if _is_cupy(x):
        if backend != "cupy":
            raise TypeError(f"{name}: expected a numpy.ndarray for backend={backend!r} but got "
                            f"a cupy.ndarray")
        import cupy
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: expected dtype float32 or float64 but got {x.dtype}")
        if x.ndim != ndim:
            raise ValueError(f"{name}: expected {ndim} dimensions but got {x.ndim} "
                             f"(shape {x.shape})")
        if bool(cupy.isnan(x).any()):  # the same check as check_float's, on the device
            idx = tuple(int(i) for i in cupy.argwhere(cupy.isnan(x))[0].get())
            raise ValueError(f"{name}: contains NaN (first at index {idx})")
    else:
        check_float(name, x, ndim=ndim)
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array but got strides {x.strides} "
                         f"for shape {x.shape}; pass np.ascontiguousarray({name}) explicitly")
    return x


def _validate(pass_: str, backend: str, arrays: dict, causal, scale, block_q, block_k):
    """Check everything a launch depends on; return (dims, dtype, scale, block_q, block_k)."""
    if backend not in runtime.BACKENDS:
        raise ValueError(f"backend: expected one of {list(runtime.BACKENDS)} but got {backend!r}")
    for name, x in arrays.items():
        _check_array(name, x, backend)
    names = list(arrays)
    dtype = arrays["q"].dtype
    for name in names[1:]:
        if arrays[name].dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} (the dtype of q) but got "
                            f"{arrays[name].dtype}")
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    want_kv = (B, Hkv, Tk, D)
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k: expected shape (B, Hkv, Tk, D) = ({B}, *, *, {D}) but got "
                         f"{tuple(k.shape)}")
    if tuple(v.shape) != want_kv:
        raise ValueError(f"v: expected shape (B, Hkv, Tk, D) = {want_kv} (that of k) but got "
                         f"{tuple(v.shape)}")
    for name in ("out", "dout"):
        if name in arrays and tuple(arrays[name].shape) != (B, H, Tq, D):
            raise ValueError(f"{name}: expected shape (B, H, Tq, D) = {(B, H, Tq, D)} (that of "
                             f"q) but got {tuple(arrays[name].shape)}")
    if "lse" in arrays and tuple(arrays["lse"].shape) != (B, H, Tq):
        raise ValueError(f"lse: expected shape (B, H, Tq) = {(B, H, Tq)} but got "
                         f"{tuple(arrays['lse'].shape)}")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"k: expected a number of kv heads Hkv that divides H = {H} but got "
                         f"Hkv = {Hkv}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"q: expected head dimension D in 1..{MAX_HEAD_DIM} (the kernels keep "
                         f"a (tile, D) accumulator in registers) but got D = {D}")
    for name, x in arrays.items():
        if x.size > _INT32_MAX:
            raise ValueError(f"{name}: expected at most {_INT32_MAX} elements (the kernels index "
                             f"with int32) but got {x.size} for shape {tuple(x.shape)}")
    if max(B, H) > _CUDA_GRID_YZ_MAX:
        raise ValueError(f"q: expected B and H at most {_CUDA_GRID_YZ_MAX} (grid dimensions) "
                         f"but got B = {B}, H = {H}")
    # Row indices (b * H + h) * Tq + q0 + r of the backward stay below B*H*Tq + block_q.
    if B * H * Tq + NUM_THREADS > _INT32_MAX:
        raise ValueError(f"q: expected B*H*Tq + {NUM_THREADS} <= {_INT32_MAX} (a row index "
                         f"of the backward is an int32) but got B*H*Tq = {B * H * Tq}")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal: expected a bool but got {type(causal).__name__} ({causal!r})")
    finfo = np.finfo(dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)) \
            or not math.isfinite(scale) or abs(float(scale)) > float(finfo.max):
        raise ValueError(f"scale: expected a finite number representable in {dtype} "
                         f"(|scale| <= {finfo.max}) or None but got {scale!r}")
    if block_q is None and block_k is None:
        block_q, block_k = default_blocks(pass_, D, dtype)
    elif block_q is None or block_k is None:
        raise ValueError(f"block_q, block_k: expected both or neither but got block_q={block_q}, "
                         f"block_k={block_k}")
    block_q = check_positive_int("block_q", block_q)
    block_k = check_positive_int("block_k", block_k)
    # Tile loops compute q0 + BLOCK_Q and k0 + BLOCK_K (q0 < Tq, k0 < Tk) in int32.
    if max(Tq + block_q, Tk + block_k) > _INT32_MAX:
        raise ValueError(f"block_q, block_k: expected Tq + block_q and Tk + block_k <= "
                         f"{_INT32_MAX} (tile ends are int32) but got Tq + block_q = "
                         f"{Tq + block_q}, Tk + block_k = {Tk + block_k}")
    check_blocks(pass_, D, block_q, block_k, dtype)
    ok, why = runtime.available(backend, dtype)
    if not ok:
        raise RuntimeError(f"backend={backend!r} is not available: {why}")
    need = shared_bytes(pass_, D, block_q, block_k, dtype.itemsize)
    limit = runtime.device(backend).shared_mem_bytes
    if need > limit:  # a device below CUDA's 48 KiB (some OpenCL devices have 32 KiB)
        raise ValueError(f"block_q, block_k: the {pass_} pass needs {need} bytes of shared memory "
                         f"with block_q={block_q}, block_k={block_k}, D={D}, {dtype} but the "
                         f"device allows {limit}; use smaller tiles")
    return (B, H, Hkv, Tq, Tk, D), dtype, float(scale), block_q, block_k


# ----------------------------------------------------------------------------- launchers

def _xp(backend: str, arrays: dict):
    """The array module results are returned in: CuPy if CuPy arrays went in, else NumPy."""
    if backend == "cupy" and any(_is_cupy(x) for x in arrays.values()):
        import cupy
        return cupy
    return np


def _blocks(n: int, size: int) -> int:
    return -(-n // size)


def flash_attention_forward(q, k, v, *, causal: bool = False, scale: float | None = None,
                            block_q: int | None = None, block_k: int | None = None,
                            backend: str = "opencl", version: int = 1):
    """Exact attention by tiles with an online softmax, on the GPU (or on a CPU via PoCL).

        S = scale * Q K^T + mask,   lse_i = log sum_j exp(S_ij),   O = exp(S - lse) V

    Args:
        q: (B, H, Tq, D) queries, float32 or float64, C-contiguous.
        k: (B, Hkv, Tk, D) keys, same dtype; H % Hkv == 0.
        v: (B, Hkv, Tk, D) values, same dtype.
        causal: bottom-right aligned causal mask (query i sees key j iff j <= i + Tk - Tq).
        scale: multiplies Q K^T, finite and representable in the input dtype; default
            1 / sqrt(D).
        block_q, block_k: query / key rows per tile, any positive ints within the register and
            shared-memory budgets (``check_blocks``: 48 KiB of shared memory on every backend,
            so that a tiling accepted on PoCL also runs on CUDA); both None picks the defaults.
        backend: "opencl" or "cupy".
        version: forward kernel version (FORWARD_VERSIONS).

    Returns:
        out: (B, H, Tq, D) and lse: (B, H, Tq) log-sum-exp of the scaled, masked scores (-inf
        for rows that see no key), both in the input dtype; CuPy arrays (still being computed
        until read or synchronised) if CuPy arrays went in.
    """
    if version not in FORWARD_VERSIONS:
        raise ValueError(f"version: expected one of {sorted(FORWARD_VERSIONS)} but got {version!r}")
    arrays = {"q": q, "k": k, "v": v}
    (B, H, Hkv, Tq, Tk, D), dtype, scale, block_q, block_k = _validate(
        "forward", backend, arrays, causal, scale, block_q, block_k)
    xp = _xp(backend, arrays)
    if q.size == 0 or Tk == 0:  # nothing to launch; rows without keys are fully masked
        return xp.zeros(q.shape, dtype), xp.full((B, H, Tq), -np.inf, dtype)
    program = runtime.build(backend, KERNEL_FILE, defines("forward", D, block_q, block_k, dtype))
    d_q, d_k, d_v = (runtime.to_device(backend, x) for x in (q, k, v))
    d_out = runtime.empty(backend, (B, H, Tq, D), dtype)
    d_lse = runtime.empty(backend, (B, H, Tq), dtype)
    real, i32 = dtype.type, np.int32
    runtime.launch(program, FORWARD_VERSIONS[version], grid=(_blocks(Tq, block_q), H, B),
                   block=(NUM_THREADS,),
                   args=(d_q, d_k, d_v, d_out, d_lse, i32(H), i32(Hkv), i32(Tq), i32(Tk),
                         real(scale), i32(bool(causal))))
    if xp is np:
        return runtime.to_host(d_out), runtime.to_host(d_lse)
    return d_out, d_lse


def flash_attention_backward(q, k, v, out, lse, dout, *, causal: bool = False,
                             scale: float | None = None, block_q: int | None = None,
                             block_k: int | None = None, backend: str = "opencl"):
    """Gradients of attention from the forward's out and lse, recomputing P tile by tile.

    With P = exp(S - lse) / psum recomputed, psum_i = sum_j exp(S_ij - lse_i) and
    Drow_i = sum_j P_ij dP_ij (a kernel over the rows first; psum cancels the rounding of the
    saved lse, and Drow summed from the same dP as the gradients makes dP - Drow exactly 0 where
    a row sees a single key):

        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - Drow),   dQ = scale dS K,   dK = scale dS^T Q

    dK and dV are summed over the query heads that share a kv head (GQA). One kernel owns each
    key tile (dK, dV), another each query tile (dQ), so no two blocks write the same element.

    Args:
        q, k, v: the forward's inputs, shapes as in ``flash_attention_forward``.
        out: (B, H, Tq, D) and lse: (B, H, Tq), the forward's results (same dtype).
        dout: (B, H, Tq, D) upstream gradient dL/dO.
        causal, scale: as in the forward (must match it).
        block_q, block_k: tile sizes of the backward (need not match the forward's).
        backend: "opencl" or "cupy".

    Returns:
        dq: (B, H, Tq, D), dk: (B, Hkv, Tk, D), dv: (B, Hkv, Tk, D) in the input dtype; CuPy
        arrays (asynchronous, as the forward's) if CuPy arrays went in.
    """
    arrays = {"q": q, "k": k, "v": v, "out": out, "lse": lse, "dout": dout}
    (B, H, Hkv, Tq, Tk, D), dtype, scale, block_q, block_k = _validate(
        "backward", backend, arrays, causal, scale, block_q, block_k)
    xp = _xp(backend, arrays)
    if q.size == 0 or Tk == 0:  # no visible key anywhere: every gradient is zero
        return xp.zeros(q.shape, dtype), xp.zeros(k.shape, dtype), xp.zeros(v.shape, dtype)
    program = runtime.build(backend, KERNEL_FILE, defines("backward", D, block_q, block_k, dtype))
    d_q, d_k, d_v, d_out, d_lse, d_dout = (runtime.to_device(backend, x)
                                           for x in (q, k, v, out, lse, dout))
    d_drow = runtime.empty(backend, (B, H, Tq), dtype)
    d_psum = runtime.empty(backend, (B, H, Tq), dtype)
    d_dq = runtime.empty(backend, (B, H, Tq, D), dtype)
    d_dk = runtime.empty(backend, (B, Hkv, Tk, D), dtype)
    d_dv = runtime.empty(backend, (B, Hkv, Tk, D), dtype)
    real, i32 = dtype.type, np.int32
    sizes = (i32(H), i32(Hkv), i32(Tq), i32(Tk), real(scale), i32(bool(causal)))
    rows_kernel, dkdv_kernel, dq_kernel = BACKWARD_KERNELS
    runtime.launch(program, rows_kernel, grid=(_blocks(Tq, block_q), H, B), block=(NUM_THREADS,),
                   args=(d_q, d_k, d_v, d_dout, d_lse, d_drow, d_psum) + sizes)
    runtime.launch(program, dkdv_kernel, grid=(_blocks(Tk, block_k), Hkv, B),
                   block=(NUM_THREADS,),
                   args=(d_q, d_k, d_v, d_dout, d_lse, d_drow, d_psum, d_dk, d_dv) + sizes)
    runtime.launch(program, dq_kernel, grid=(_blocks(Tq, block_q), H, B), block=(NUM_THREADS,),
                   args=(d_q, d_k, d_v, d_dout, d_lse, d_drow, d_psum, d_dq) + sizes)
    if xp is np:
        return runtime.to_host(d_dq), runtime.to_host(d_dk), runtime.to_host(d_dv)
    return d_dq, d_dk, d_dv
