"""``crosscheck bench paged``: paged decode attention and the paged cache's memory.

The workload: ``--sequences`` (32) sequences with lengths drawn uniformly in [1, ``--max-len``]
(2048) from ``--seed``, stored in a ``ref_numpy.paged_kv.PagedKVCache`` of ``--block-size``
(16) by appends in chunks of 64 tokens taken in turn from every sequence (so no sequence's
blocks are contiguous), and one query token per sequence; heads (H, Hkv, D) = ``--heads``.

CPU (the default, NumPy; sides timed by the shared layer, ``equivalence.bench.common``):

1. ``ratios``, ``timings``: one decode step, ``ref_numpy.paged_attention`` walking the page
   tables, against dense decode on the gathered cache: ``ref_numpy.attention`` per sequence on
   its contiguous (1, Hkv, n, D) keys and values, gathered before timing starts. Both run in
   one child, with the same threads.
2. ``memory``: what the paged cache holds (its blocks in use, K and V) against a contiguous
   cache sized to the maximum length for every sequence (what ``ref_numpy.kv_cache.KVCache``
   preallocates), and against the tokens alone; ``usage``: the block manager's figures
   (blocks used, slots unused, internal fragmentation).

``--backend cupy`` (a CUDA GPU): the decode kernels (``gpu_cupy.paged_kv``, v1 and v2) on
device arrays, each timed call synchronised; achieved bandwidth = bytes of K and V read (each
sequence's n positions, once per kv head: the query heads of a group share them) / median time,
next to the device's peak (memory clock x bus width x 2). Without a CUDA device the command
stops and says so. ``--backend opencl`` times the same kernels on PoCL, copies between NumPy and
the OpenCL buffers included, with no peak to compare with.

Quick smoke run: ``crosscheck bench paged --sequences 4 --max-len 64 --heads 2,1,8
--block-size 4 --min-time 0``.
"""
from __future__ import annotations

import numpy as np

from equivalence.bench.common import (Side, add_timing_arguments, check_timing_arguments,
                                      libraries, measure, ratio_row, shape_type,
                                      thread_settings, timing_row)

HERE = "equivalence.bench.paged"
MIB = 2.0 ** 20
CHUNK = 64                    # tokens per append when the cache is filled
DEFAULT_HEADS = {"numpy": (8, 2, 64), "opencl": (8, 2, 64), "cupy": (32, 8, 128)}


def add_arguments(parser) -> None:
    parser.add_argument("--backend", dest="kernels", choices=("numpy", "opencl", "cupy"),
                        default="numpy",
                        help="numpy: NumPy paged vs dense decode and memory (default); "
                             "cupy/opencl: the decode kernels' bandwidth")
    parser.add_argument("--sequences", type=int, default=32, help="sequences (default 32)")
    parser.add_argument("--max-len", type=int, default=2048,
                        help="lengths are uniform in [1, MAX_LEN] (default 2048)")
    parser.add_argument("--heads", type=shape_type("H,Hkv,D"), metavar="H,Hkv,D",
                        help="query heads, kv heads, head dim (default 8,2,64; 32,8,128 with "
                             "--backend cupy)")
    parser.add_argument("--block-size", type=int, default=16, help="positions per block (16)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--kernel-version", type=int, choices=(1, 2), action="append",
                        help="decode kernel version (repeatable; default both)")
    parser.add_argument("--partition-size", type=int, default=None,
                        help="version 2's positions per partition (default: the launcher's)")
    parser.add_argument("--seed", type=int, default=0)
    add_timing_arguments(parser)


# ----------------------------------------------------------------------------- the workload

def draw_lengths(rng, sequences: int, max_len: int) -> np.ndarray:
    return rng.integers(1, max_len + 1, size=sequences)


def workload(sequences, max_len, heads, block_size, dtype, seed):
    """(cache, q (S, H, D), block_tables, lengths): the cache filled as the module docstring
    says."""
    from ref_numpy.paged_kv import PagedKVCache
    H, Hkv, D = heads
    rng = np.random.default_rng(seed)
    lengths = draw_lengths(rng, sequences, max_len)
    blocks = int(sum(-(-n // block_size) for n in lengths))
    cache = PagedKVCache(blocks, block_size, Hkv, D, dtype=dtype)
    ids = [cache.add_sequence() for _ in lengths]
    for start in range(0, int(lengths.max()), CHUNK):
        for s, n in zip(ids, lengths):
            t = min(CHUNK, int(n) - start)
            if t > 0:
                cache.append(s, *rng.standard_normal((2, t, Hkv, D), dtype=np.float64)
                             .astype(dtype))
    q = rng.standard_normal((sequences, H, D)).astype(dtype)
    tables, lens = cache.batch(ids)
    return cache, q, tables, lens


def _workload(kw):
    return workload(kw["sequences"], kw["max_len"], tuple(kw["heads"]), kw["block_size"],
                    np.dtype(kw["dtype"]), kw["seed"])


def numpy_paged(**kw):
    from ref_numpy import paged_attention
    cache, q, tables, lengths = _workload(kw)
    return lambda: paged_attention.paged_attention_decode(q, cache.k_pool, cache.v_pool,
                                                          tables, lengths)


def numpy_dense(**kw):
    from ref_numpy import attention
    cache, q, tables, lengths = _workload(kw)
    caches = [cache.gather(s) for s in cache.sequences]              # (Hkv, n, D) each, untimed

    def run():
        return [attention.attention_forward(q[s][None, :, None], k[None], v[None],
                                            causal=True)[0]
                for s, (k, v) in enumerate(caches)]
    return run


def kernel_decode(backend, version, partition_size, **kw):
    from gpu_cupy import paged_kv as gpu_paged
    cache, q, tables, lengths = _workload(kw)
    arrays = (q, cache.k_pool, cache.v_pool, tables, lengths)
    sync = lambda: None  # noqa: E731
    if backend == "cupy":
        import cupy
        arrays = tuple(cupy.asarray(x) for x in arrays)
        sync = cupy.cuda.get_current_stream().synchronize
    part = {"partition_size": partition_size} if version == 2 else {}

    def run():
        out = gpu_paged.paged_attention_decode(*arrays, version=version, backend=backend,
                                               **part)
        sync()
        return out
    return run


# ----------------------------------------------------------------------------- the bench

def _check(args) -> None:
    check_timing_arguments(args)
    for name in ("sequences", "max_len", "block_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an int >= 1 but got "
                             f"{getattr(args, name)}")
    H, Hkv, D = args.heads
    if H % Hkv:
        raise ValueError(f"--heads: expected H divisible by Hkv but got H = {H}, Hkv = {Hkv}")


def memory_tables(cache, lengths, heads, max_len, dtype) -> dict[str, list[dict]]:
    """``memory``: bytes held by the paged cache, by a contiguous one sized to max_len and by
    the tokens alone; ``usage``: the block manager's figures."""
    _, Hkv, D = heads
    per_position = 2 * Hkv * D * np.dtype(dtype).itemsize            # K and V
    u = cache.usage()
    contiguous = len(lengths) * max_len * per_position
    held = {"paged (blocks in use)": u["blocks_used"] * cache.block_size * per_position,
            f"contiguous ({len(lengths)} x {max_len} positions)": contiguous,
            "the tokens alone": int(np.sum(lengths)) * per_position}
    return {"memory": [{"cache": name, "MiB": n / MIB, "vs contiguous": n / contiguous}
                       for name, n in held.items()],
            "usage": [{"sequences": len(lengths), "block size": cache.block_size,
                       "tokens": u["tokens"], "blocks used": u["blocks_used"],
                       "slots unused": u["slots_unused"], "fragmentation": u["fragmentation"]}]}


def _numpy(args, sizes) -> dict[str, list[dict]]:
    cache, _, _, lengths = _workload(sizes)
    shape = (f"S={args.sequences}, n~U[1, {args.max_len}], (H, Hkv, D)={tuple(args.heads)}, "
             f"BS={args.block_size}")
    timings, ratios = [], []
    for threads in thread_settings(args):
        paged, dense = measure([Side("numpy paged decode", f"{HERE}:numpy_paged", sizes),
                                Side("numpy dense decode on the gathered cache",
                                     f"{HERE}:numpy_dense", sizes)], args, threads)
        ctx = dict(op="decode step", shape=shape, dtype=args.dtype)
        timings += [timing_row(t, **ctx) for t in (paged, dense)]
        ratios.append(ratio_row(paged, dense, "paged / dense", **ctx))
    return {"ratios": ratios, "timings": timings,
            **memory_tables(cache, lengths, args.heads, args.max_len, args.dtype)}


def peak_bandwidth() -> float | None:
    """The CUDA device's peak memory bandwidth in bytes/s (memory clock x bus width x 2, DDR),
    or None when the device does not report them."""
    import cupy
    attrs = cupy.cuda.Device().attributes
    clock_khz, bus_bits = attrs.get("MemoryClockRate"), attrs.get("GlobalMemoryBusWidth")
    if not clock_khz or not bus_bits:
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8


def _kernels(args, sizes) -> dict[str, list[dict]]:
    from gpu_cupy import runtime
    backend = args.kernels
    ok, why = runtime.available(backend, args.dtype)
    if not ok:
        if backend == "cupy":
            raise SystemExit(f"bench paged --backend cupy needs a CUDA device and none is "
                             f"available ({why}); use --backend opencl to time the same kernels "
                             f"on the CPU, or no --backend for the NumPy figures")
        raise SystemExit(f"bench paged --backend {backend}: not available ({why})")
    _, Hkv, D = args.heads
    lengths = draw_lengths(np.random.default_rng(args.seed), args.sequences, args.max_len)
    read = int(lengths.sum()) * 2 * Hkv * D * np.dtype(args.dtype).itemsize
    peak = peak_bandwidth() if backend == "cupy" else None
    versions = args.kernel_version or [1, 2]
    rows = []
    for threads in thread_settings(args):
        timed = measure([Side(f"kernel v{v}", f"{HERE}:kernel_decode",
                              dict(backend=backend, version=v,
                                   partition_size=args.partition_size, **sizes))
                         for v in versions], args, threads)
        for v, t in zip(versions, timed):
            rows.append({"backend": backend, "version": v,
                         "shape": f"S={args.sequences}, (H, Hkv, D)={tuple(args.heads)}, "
                                  f"BS={args.block_size}",
                         "dtype": args.dtype, "K/V MiB read": read / MIB,
                         "ms": t.median * 1e3, "spread": t.spread,
                         "GB/s": read / t.median / 1e9,
                         "peak GB/s": None if peak is None else peak / 1e9,
                         "of peak": None if peak is None else read / t.median / peak,
                         "threads": "default" if threads is None else threads,
                         "libraries": libraries(t.runtime)})
    return {"kernels": rows}


def run(args) -> dict[str, list[dict]]:
    """NumPy: tables ``ratios``, ``timings``, ``memory``, ``usage``; --backend cupy|opencl:
    ``kernels``."""
    if args.heads is None:
        args.heads = DEFAULT_HEADS[args.kernels]
    _check(args)
    sizes = dict(sequences=args.sequences, max_len=args.max_len, heads=list(args.heads),
                 block_size=args.block_size, dtype=args.dtype, seed=args.seed)
    if args.kernels == "numpy":
        return _numpy(args, sizes)
    return _kernels(args, sizes)
