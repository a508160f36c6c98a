"""Launchers of the paged KV cache kernels (kernels/paged_kv.cu) on CUDA or OpenCL.

    paged_kv_write(k_new, v_new, k_pool, v_pool, slot_mapping, backend="opencl")   # in place
    k, v = paged_kv_gather(k_pool, v_pool, block_tables, lengths, backend="opencl")
    out = paged_attention_decode(q, k_pool, v_pool, block_tables, lengths, version=2)

compute the functions ``write_kv``, ``gather_kv`` and ``paged_attention_decode`` of
``ref_numpy.paged_attention`` (Kwon et al. 2023, arXiv:2309.06180): the header of the .cu file
says what each kernel does. This module validates every argument before anything is compiled or
launched and dispatches the decode by version number (llm.c dev/cuda style): 1 walks each
sequence's whole context in one block per (head, sequence), 2 splits it into partitions of
``partition_size`` positions and merges them in a second kernel (vLLM's PagedAttention v2).

Shape letters: N pool blocks, BS block size, Hkv kv heads, H query heads (H % Hkv == 0),
D head dim (1 <= D <= MAX_HEAD_DIM), S sequences, M page-table entries per sequence, T new
tokens, L gathered length.

Arrays: NumPy arrays with backend="opencl"; NumPy or CuPy arrays with backend="cupy" (results
come back as CuPy arrays if any CuPy array went in, asynchronously as in CuPy itself). Floats
are float32 or float64, one dtype per call; block_tables, lengths and slot_mapping are int32.
Every array must be C-contiguous: a strided view is rejected rather than copied. The pools'
unused slots may hold anything, NaN included: no kernel reads them, so they are not scanned.
``paged_kv_write`` writes into the pools it is given (a NumPy pool is copied to the device and
the result copied back into it; a CuPy pool is written where it lies).

Shared memory is checked against CUDA's 48 KiB static limit on every backend, PoCL included,
so that a configuration accepted on a CPU also runs on a GPU.
"""
from __future__ import annotations

import numpy as np

from gpu_cupy import runtime
from gpu_cupy.arguments import array_module, check_backend, check_kind, results
from ref_numpy import alibi as alibi_mod
from ref_numpy import paged_attention
from ref_numpy._check import check_positive_int, check_scale
from ref_numpy.attention import check_window

KERNEL_FILE = "paged_kv.cu"
NUM_THREADS = 128              # threads per block for every kernel of the file
MAX_HEAD_DIM = 256             # two output dimensions per thread at most
CUDA_STATIC_SHARED = 48 * 1024
CACHE_KERNELS = ("paged_kv_write", "paged_kv_gather")
DECODE_VERSIONS = {1: ("paged_attention_decode_v1",),
                   2: ("paged_attention_decode_v2_partition", "paged_attention_decode_v2_reduce")}
DEFAULT_PARTITION = 512        # positions per v2 partition (vLLM's), rounded down to whole blocks
_INT32_MAX = 2**31 - 1
_CUDA_GRID_YZ_MAX = 65535      # heads and sequences are grid dimensions y and z


# ----------------------------------------------------------------------------- configuration

def dot_split(block_size: int, D: int) -> int:
    """Threads per score row (DOT_SPLIT in the .cu file): NUM_THREADS // BS, within 1 .. D."""
    return max(1, min(NUM_THREADS // block_size, D))


def shared_bytes(D: int, block_size: int, itemsize: int) -> int:
    """Static shared memory of a decode block, in bytes, as declared in the .cu file: the query,
    the K tile (rows of stride D + 1), the partial dot products, the scores and m, l, alpha.

    >>> shared_bytes(128, 16, 4)     # (128 + 16 * 129 + 16 * 8 + 16 + 3) * 4
    9356
    """
    reals = D + block_size * (D + 1) + block_size * dot_split(block_size, D) + block_size + 3
    return reals * itemsize


def defines(D: int, block_size: int, dtype) -> dict:
    """The compile-time defines of one program (every kernel of the file)."""
    out = {"HEAD_DIM": D, "BLOCK_SIZE": block_size, "NUM_THREADS": NUM_THREADS}
    if np.dtype(dtype) == np.float64:
        out["REAL_IS_DOUBLE"] = 1
    return out


def default_partition(block_size: int) -> int:
    """DEFAULT_PARTITION rounded down to whole blocks (at least one block).

    >>> default_partition(16), default_partition(24), default_partition(1024)
    (512, 504, 1024)
    """
    return max(1, DEFAULT_PARTITION // block_size) * block_size


def nvrtc_configs(dtype) -> list[tuple[dict, tuple[str, ...]]]:
    """What ``crosscheck kernels`` compiles: every kernel at D in {64, 80, 128} with block size
    16, and at D = 128 with block sizes 32 and 24 (not a power of two)."""
    kernels = CACHE_KERNELS + tuple(k for ks in DECODE_VERSIONS.values() for k in ks)
    return [(defines(D, bs, dtype), kernels)
            for D, bs in ((64, 16), (80, 16), (128, 16), (128, 32), (128, 24))]


# ----------------------------------------------------------------------------- validation

def _floats(backend: str, arrays: dict, nan_checked: tuple[str, ...] = ()) -> np.dtype:
    """float32/float64 arrays of one dtype (that of the first); those named in ``nan_checked``
    may not hold NaN. Returns the dtype."""
    names = list(arrays)
    dtype = np.dtype(arrays[names[0]].dtype)
    for name, x in arrays.items():
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: expected dtype float32 or float64 but got {x.dtype}")
        if x.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} (the dtype of {names[0]}) but got "
                            f"{x.dtype}")
        check_kind(name, x, backend)
        if name in nan_checked and bool((x != x).any()):
            where = np.argwhere(runtime.to_host(x) != runtime.to_host(x))[0]
            raise ValueError(f"{name}: contains NaN (first at index "
                             f"{tuple(int(i) for i in where)})")
    return dtype


def _ints(backend: str, **arrays) -> dict[str, np.ndarray]:
    """Host copies of the int32 index arrays, for the range checks (they are small)."""
    out = {}
    for name, x in arrays.items():
        if x.dtype != np.int32:
            raise TypeError(f"{name}: expected dtype int32 but got {x.dtype}")
        check_kind(name, x, backend)
        out[name] = runtime.to_host(x)
    return out


def _pools(k_pool, v_pool, backend: str) -> tuple[tuple[int, int, int, int], np.dtype]:
    dtype = _floats(backend, {"k_pool": k_pool, "v_pool": v_pool})
    if k_pool.ndim != 4:
        raise ValueError(f"k_pool: expected 4 dimensions (N, Hkv, BS, D) but got {k_pool.ndim} "
                         f"(shape {k_pool.shape})")
    if v_pool.shape != k_pool.shape:
        raise ValueError(f"v_pool: expected shape (N, Hkv, BS, D) = {k_pool.shape} (that of "
                         f"k_pool) but got {v_pool.shape}")
    N, Hkv, BS, D = k_pool.shape
    if min(N, Hkv, BS) < 1 or not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"k_pool: expected N, Hkv, BS >= 1 and head dimension D in "
                         f"1..{MAX_HEAD_DIM} but got shape {k_pool.shape}")
    if k_pool.size > _INT32_MAX:
        raise ValueError(f"k_pool: expected at most {_INT32_MAX} elements (the kernels index "
                         f"with int32) but got {k_pool.size} for shape {k_pool.shape}")
    return (N, Hkv, BS, D), dtype


def _ready(backend: str, dtype, D: int, block_size: int) -> None:
    """The shared-memory budget, then the backend itself."""
    need = shared_bytes(D, block_size, np.dtype(dtype).itemsize)
    if need > CUDA_STATIC_SHARED:
        raise ValueError(f"k_pool: decode attention needs {need} bytes of shared memory with "
                         f"block size {block_size}, D={D}, {np.dtype(dtype)} but at most "
                         f"{CUDA_STATIC_SHARED} are allowed (CUDA's static limit, checked on "
                         f"every backend); use smaller blocks")
    ok, why = runtime.available(backend, dtype)
    if not ok:
        raise RuntimeError(f"backend={backend!r} is not available: {why}")
    limit = runtime.device(backend).shared_mem_bytes
    if need > limit:
        raise ValueError(f"k_pool: decode attention needs {need} bytes of shared memory with "
                         f"block size {block_size}, D={D}, {np.dtype(dtype)} but the device "
                         f"allows {limit}; use smaller blocks")


def _grid_yz(name: str, **dims) -> None:
    for what, n in dims.items():
        if n > _CUDA_GRID_YZ_MAX:
            raise ValueError(f"{name}: expected {what} at most {_CUDA_GRID_YZ_MAX} (a grid "
                             f"dimension) but got {n}")


def _program(backend: str, D: int, block_size: int, dtype):
    return runtime.build(backend, KERNEL_FILE, defines(D, block_size, dtype))


# ----------------------------------------------------------------------------- launchers

def paged_kv_write(k_new, v_new, k_pool, v_pool, slot_mapping, *, backend: str = "opencl"):
    """Scatter T new tokens' keys and values into their slots of the pools, in place.

        pool[slot // BS, :, slot % BS, :] = new[t]   for each t with slot = slot_mapping[t] >= 0

    Args:
        k_new, v_new: (T, Hkv, D), the pools' dtype, no NaN.
        k_pool, v_pool: (N, Hkv, BS, D) float32/float64, written in place.
        slot_mapping: (T,) int32, slot = block · BS + offset in [0, N · BS) or negative (skip);
            no slot twice (two writers of one slot would race).
        backend: "opencl" or "cupy".

    Returns:
        (k_pool, v_pool), the arrays given, updated (CuPy pools: once the kernel has run).
    """
    check_backend(backend)
    (N, Hkv, BS, D), dtype = _pools(k_pool, v_pool, backend)
    _floats(backend, {"k_pool": k_pool, "k_new": k_new, "v_new": v_new},
            nan_checked=("k_new", "v_new"))
    if k_new.ndim != 3 or k_new.shape[1:] != (Hkv, D):
        raise ValueError(f"k_new: expected shape (T, Hkv, D) = (*, {Hkv}, {D}) but got "
                         f"{k_new.shape}")
    if v_new.shape != k_new.shape:
        raise ValueError(f"v_new: expected shape {k_new.shape} (that of k_new) but got "
                         f"{v_new.shape}")
    T = k_new.shape[0]
    slots = _ints(backend, slot_mapping=slot_mapping)["slot_mapping"]
    paged_attention.check_slot_mapping(slots, T, N * BS)
    _ready(backend, dtype, D, BS)
    if T == 0:
        return k_pool, v_pool
    program = _program(backend, D, BS, dtype)
    d_k_new, d_v_new, d_slots = (runtime.to_device(backend, x)
                                 for x in (k_new, v_new, slot_mapping))
    d_k_pool, d_v_pool = (runtime.to_device(backend, x) for x in (k_pool, v_pool))
    runtime.launch(program, CACHE_KERNELS[0], grid=(T,), block=(NUM_THREADS,),
                   args=(d_k_new, d_v_new, d_k_pool, d_v_pool, d_slots, np.int32(Hkv)))
    for pool, device in ((k_pool, d_k_pool), (v_pool, d_v_pool)):
        if device is not pool:  # a host pool: copy the result back into it
            np.copyto(pool, runtime.to_host(device))
    return k_pool, v_pool


def paged_kv_gather(k_pool, v_pool, block_tables, lengths, *, max_len: int | None = None,
                    backend: str = "opencl"):
    """Contiguous caches from the page tables, zero past each length.

        k[s, :, t] = k_pool[block_tables[s, t // BS], :, t % BS]   for t < lengths[s], else 0

    Args:
        k_pool, v_pool: (N, Hkv, BS, D) float32/float64.
        block_tables: (S, M) int32, the first ceil(lengths[s] / BS) entries of row s in [0, N).
        lengths: (S,) int32, each in [0, M · BS].
        max_len: L, the gathered length (default max(lengths)), at least max(lengths).
        backend: "opencl" or "cupy".

    Returns:
        k, v: (S, Hkv, L, D), the pools' dtype.
    """
    check_backend(backend)
    (N, Hkv, BS, D), dtype = _pools(k_pool, v_pool, backend)
    host = _ints(backend, block_tables=block_tables, lengths=lengths)
    paged_attention.check_block_tables(host["block_tables"], host["lengths"], N, BS)
    S, M = block_tables.shape
    longest = int(host["lengths"].max(initial=0))
    L = longest if max_len is None else max_len
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < longest:
        raise ValueError(f"max_len: expected an int >= max(lengths) = {longest} but got "
                         f"{max_len!r}")
    L = int(L)
    if S * Hkv * L * D > _INT32_MAX or L + BS > _INT32_MAX:
        raise ValueError(f"max_len: expected S * Hkv * L * D <= {_INT32_MAX} (the kernels index "
                         f"with int32) but got {S} * {Hkv} * {L} * {D}")
    _grid_yz("block_tables", sequences=S)
    _ready(backend, dtype, D, BS)
    xp = array_module(backend, k_pool, v_pool, block_tables, lengths)
    if S * L == 0:
        return xp.zeros((S, Hkv, L, D), dtype), xp.zeros((S, Hkv, L, D), dtype)
    program = _program(backend, D, BS, dtype)
    d_k_pool, d_v_pool, d_tables, d_lengths = (runtime.to_device(backend, x) for x in
                                               (k_pool, v_pool, block_tables, lengths))
    d_k, d_v = (runtime.empty(backend, (S, Hkv, L, D), dtype) for _ in range(2))
    runtime.launch(program, CACHE_KERNELS[1], grid=(-(-L // BS), Hkv, S), block=(NUM_THREADS,),
                   args=(d_k_pool, d_v_pool, d_tables, d_lengths, d_k, d_v, np.int32(Hkv),
                         np.int32(M), np.int32(L)))
    return results(xp, d_k, d_v)


def paged_attention_decode(q, k_pool, v_pool, block_tables, lengths, *, scale=None,
                           alibi: bool = False, window: int | None = None, version: int = 1,
                           partition_size: int | None = None, backend: str = "opencl"):
    """Decode attention of one query per sequence through the page tables.

        out[s, h] = softmax_j(scale q[s, h] . k_j - m_h (n - 1 - j)) v_j,  j visible in s

    Args:
        q: (S, H, D) float32/float64, the newest token's queries (no NaN); H % Hkv == 0.
        k_pool, v_pool: (N, Hkv, BS, D), dtype of q.
        block_tables: (S, M) int32; lengths: (S,) int32 in [1, M · BS] (the query is at
            position lengths[s] - 1 and its key is in the cache).
        scale: multiplies q·k; default 1/√D.
        alibi: add the ALiBi bias -m_h (n - 1 - j) of ``ref_numpy.alibi`` for H heads.
        window: an int >= 1: only the last ``window`` positions are visible.
        version: 1 (one block per head and sequence) or 2 (partitions, then a reduce).
        partition_size: version 2's positions per partition, a positive multiple of BS
            (default ``default_partition(BS)``).
        backend: "opencl" or "cupy".

    Returns:
        out: (S, H, D), dtype of q.
    """
    if version not in DECODE_VERSIONS:
        raise ValueError(f"version: expected one of {sorted(DECODE_VERSIONS)} but got "
                         f"{version!r}")
    check_backend(backend)
    (N, Hkv, BS, D), dtype = _pools(k_pool, v_pool, backend)
    _floats(backend, {"k_pool": k_pool, "q": q}, nan_checked=("q",))
    if q.ndim != 3 or q.shape[2] != D or q.shape[1] % Hkv:
        raise ValueError(f"q: expected shape (S, H, D) with D = {D} and H divisible by Hkv = "
                         f"{Hkv} but got {q.shape}")
    S, H, _ = q.shape
    host = _ints(backend, block_tables=block_tables, lengths=lengths)
    if not isinstance(alibi, (bool, np.bool_)):
        raise TypeError(f"alibi: expected a bool but got {type(alibi).__name__} ({alibi!r})")
    if version == 2 and partition_size is None:
        partition_size = default_partition(BS)
    if version == 1 and partition_size is not None:
        raise ValueError(f"partition_size: version 1 has no partitions but got "
                         f"partition_size={partition_size!r}; use version=2")
    paged_attention.check_block_tables(host["block_tables"], host["lengths"], N, BS, min_length=1)
    if block_tables.shape[0] != S:
        raise ValueError(f"block_tables: expected one row per sequence of q ({S}) but got "
                         f"{block_tables.shape[0]}")
    scale = check_scale(scale, D)
    if abs(scale) > float(np.finfo(dtype).max):
        raise ValueError(f"scale: expected a finite number representable in {dtype} but got "
                         f"{scale!r}")
    if window is not None:
        check_window(window)
    P = 0 if version == 1 else check_positive_int("partition_size", partition_size)
    if P % BS:
        raise ValueError(f"partition_size: expected a multiple of the block size {BS} but got "
                         f"{P}")
    _grid_yz("q", sequences=S, heads=H)
    # A window or a partition at least as long as every context changes nothing: both are
    # clipped to the longest context (in whole blocks), which keeps them int32 in the kernels.
    longest = int(host["lengths"].max(initial=1))
    window = 0 if window is None else min(int(window), longest)
    P = min(P, -(-longest // BS) * BS)
    max_partitions = -(-longest // P) if P else 1
    if S * H * max_partitions * D > _INT32_MAX:
        raise ValueError(f"partition_size: expected S * H * partitions * D <= {_INT32_MAX} "
                         f"(the partial outputs are indexed with int32) but got {S} * {H} * "
                         f"{max_partitions} * {D}")
    _ready(backend, dtype, D, BS)
    xp = array_module(backend, q, k_pool, v_pool, block_tables, lengths)
    if S == 0:
        return xp.zeros((0, H, D), dtype)
    program = _program(backend, D, BS, dtype)
    slopes = (alibi_mod.alibi_slopes(H) if alibi else np.zeros(H)).astype(dtype)
    d_q, d_k_pool, d_v_pool, d_tables, d_lengths, d_slopes = (
        runtime.to_device(backend, x) for x in (q, k_pool, v_pool, block_tables, lengths, slopes))
    d_out = runtime.empty(backend, (S, H, D), dtype)
    real, i32 = dtype.type, np.int32
    M = block_tables.shape[1]
    head = (d_q, d_k_pool, d_v_pool, d_tables, d_lengths, d_slopes)
    if version == 1:
        runtime.launch(program, DECODE_VERSIONS[1][0], grid=(1, H, S), block=(NUM_THREADS,),
                       args=head + (d_out, i32(H), i32(Hkv), i32(M), real(scale),
                                    i32(window)))
        return results(xp, d_out)[0]
    partition, reduce = DECODE_VERSIONS[2]
    d_max, d_sum = (runtime.empty(backend, (S, H, max_partitions), dtype) for _ in range(2))
    d_part = runtime.empty(backend, (S, H, max_partitions, D), dtype)
    runtime.launch(program, partition, grid=(max_partitions, H, S), block=(NUM_THREADS,),
                   args=head + (d_max, d_sum, d_part, i32(H), i32(Hkv), i32(M), real(scale),
                                i32(window), i32(P // BS), i32(max_partitions)))
    runtime.launch(program, reduce, grid=(1, H, S), block=(NUM_THREADS,),
                   args=(d_max, d_sum, d_part, d_lengths, d_out, i32(H), i32(max_partitions),
                         i32(P), i32(window)))
    return results(xp, d_out)[0]
