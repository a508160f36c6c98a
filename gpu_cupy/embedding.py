"""Launchers of the embedding kernels (kernels/embedding.cu) on CUDA or OpenCL.

    out = embedding_forward(ids, table, backend="opencl")           # table[ids]
    dtable = embedding_backward(dout, ids, V, backend="opencl")     # scatter-add, deterministic

compute ``embedding_forward`` and ``embedding_backward`` of ``ref_numpy.linear``. The backward
needs no floating-point atomics: this module sorts the positions by id (NumPy on the host for
NumPy ids, CuPy on the device for CuPy ids) and the kernel gives each element of dtable one
owner, which adds that id's gradient rows in position order (the header of the .cu file says
why). Two launches, or a launch and the NumPy copy, agree bit for bit. Every argument is
validated before anything is compiled or launched, the ids' range included.

Shape letters: V vocabulary rows, C embedding width, (...) the shape of ids, n its size.

Arrays: NumPy arrays with backend="opencl"; NumPy or CuPy arrays with backend="cupy" (results
come back as CuPy arrays if any CuPy array went in, asynchronously as in CuPy itself). ids are
int32 (the kernels read ``int``); table and dout are float32 or float64, one dtype; every array
is C-contiguous.
"""
from __future__ import annotations

import numpy as np

from gpu_cupy import arguments as args_
from gpu_cupy import runtime

KERNEL_FILE = "embedding.cu"
NUM_THREADS = 256               # threads per block, one output element each
KERNELS = ("embedding_forward", "embedding_backward")


def defines(dtype) -> dict:
    """The compile-time defines of the program (both kernels) for ``dtype``."""
    return args_.dtype_defines(dtype, NUM_THREADS=NUM_THREADS)


def nvrtc_configs(dtype) -> list[tuple[dict, tuple[str, ...]]]:
    """What ``crosscheck kernels`` compiles: both kernels, once per dtype."""
    return [(defines(dtype), KERNELS)]


# ----------------------------------------------------------------------------- validation

def _check_ids(backend: str, ids, V: int) -> None:
    """int32, C-contiguous, every id in [0, V)."""
    args_.check_int32(backend, "ids", ids)
    if ids.size == 0:
        return
    bad = (ids < 0) | (ids >= V)
    if bool(bad.any()):
        where = np.argwhere(runtime.to_host(bad))[0]
        idx = tuple(int(i) for i in where)
        raise ValueError(f"ids: expected values in [0, {V}) (the rows of the table) but got "
                         f"{int(runtime.to_host(ids)[idx])} at index {idx}")


def _check_counts(n: int, V: int, C: int) -> None:
    # Each grid's last block forms element indices up to count + NUM_THREADS - 2.
    args_.check_int32_count("ids", n * C + NUM_THREADS - 1,
                            f"ids.size * C + {NUM_THREADS - 1}")
    args_.check_int32_count("table", V * C + NUM_THREADS - 1, f"V * C + {NUM_THREADS - 1}")


def sort_positions(ids, V: int):
    """(order (n,) int32, offsets (V + 1,) int32): the positions of the flattened ids sorted
    by id, then by position, and where each id's run starts; on the device for CuPy ids.

    >>> order, offsets = sort_positions(np.array([2, 0, 2, 1], np.int32), 4)
    >>> order.tolist(), offsets.tolist()
    ([1, 3, 0, 2], [0, 1, 2, 4, 4])
    """
    xp = args_.array_module("cupy" if args_.is_cupy(ids) else "opencl", ids)
    flat = ids.reshape(-1).astype(xp.int64)
    n = flat.size
    keys = xp.sort(flat * n + xp.arange(n, dtype=xp.int64))   # distinct: the order is unique
    order = (keys % max(n, 1)).astype(xp.int32)
    offsets = xp.searchsorted(keys // max(n, 1), xp.arange(V + 1, dtype=xp.int64))
    return order, offsets.astype(xp.int32)


# ----------------------------------------------------------------------------- launchers

def embedding_forward(ids, table, *, backend: str = "opencl"):
    """Look up one table row per id: out[..., :] = table[ids[...], :].

    Args:
        ids: (...) int32, every id in [0, V).
        table: (V, C) float32 or float64.
        backend: "opencl" or "cupy".
    Returns:
        out: (..., C), the dtype of table.
    """
    args_.check_backend(backend)
    dtype = args_.check_floats(backend, {"table": table})
    if table.ndim != 2:
        raise ValueError(f"table: expected 2 dimensions (V, C) but got {table.ndim} "
                         f"(shape {tuple(table.shape)})")
    V, C = (int(s) for s in table.shape)
    _check_ids(backend, ids, V)
    n = int(ids.size)
    _check_counts(n, V, C)
    args_.check_available(backend, dtype)
    xp = args_.array_module(backend, ids, table)
    shape = (*ids.shape, C)
    if n * C == 0:
        return xp.zeros(shape, dtype)
    program = runtime.build(backend, KERNEL_FILE, defines(dtype))
    d_ids, d_table = runtime.to_device(backend, ids), runtime.to_device(backend, table)
    d_out = runtime.empty(backend, shape, dtype)
    runtime.launch(program, KERNELS[0], grid=(-(-(n * C) // NUM_THREADS),),
                   block=(NUM_THREADS,), args=(d_ids, d_table, d_out, np.int32(n), np.int32(C)))
    return args_.results(xp, d_out)[0]


def embedding_backward(dout, ids, num_embeddings: int, *, backend: str = "opencl"):
    """Gradient of the lookup with respect to the table, deterministic and without atomics.

        dtable[v, :] = sum over positions p with ids[p] = v of dout[p, :]   (0 if v is unused)

    Args:
        dout: (..., C) float32 or float64, (...) the shape of ids.
        ids: (...) int32, the forward's ids, every id in [0, num_embeddings).
        num_embeddings: V, the table's rows.
        backend: "opencl" or "cupy".
    Returns:
        dtable: (V, C), the dtype of dout.
    """
    args_.check_backend(backend)
    if isinstance(num_embeddings, bool) or not isinstance(num_embeddings, (int, np.integer)) \
            or num_embeddings < 1:
        raise ValueError(f"num_embeddings: expected an int >= 1 but got {num_embeddings!r}")
    V = int(num_embeddings)
    dtype = args_.check_floats(backend, {"dout": dout})
    args_.check_int32(backend, "ids", ids)
    if dout.ndim != ids.ndim + 1 or tuple(dout.shape[:-1]) != tuple(ids.shape):
        raise ValueError(f"dout: expected shape (..., C) with (...) = {tuple(ids.shape)} (the "
                         f"shape of ids) but got {tuple(dout.shape)}")
    _check_ids(backend, ids, V)
    C = int(dout.shape[-1])
    n = int(ids.size)
    _check_counts(n, V, C)
    args_.check_available(backend, dtype)
    xp = args_.array_module(backend, dout, ids)
    if n * C == 0:  # no gradient row: every row of dtable is zero
        return xp.zeros((V, C), dtype)
    order, offsets = sort_positions(ids, V)
    program = runtime.build(backend, KERNEL_FILE, defines(dtype))
    d_order, d_offsets, d_dout = (runtime.to_device(backend, x) for x in (order, offsets, dout))
    d_dtable = runtime.empty(backend, (V, C), dtype)
    runtime.launch(program, KERNELS[1], grid=(-(-(V * C) // NUM_THREADS),),
                   block=(NUM_THREADS,),
                   args=(d_order, d_offsets, d_dout, d_dtable, np.int32(V), np.int32(C)))
    return args_.results(xp, d_dtable)[0]


# ----------------------------------------------------------------------------- bench

# A GPT-2 sized table and a batch of 8 x 1024 tokens.
BENCH_SHAPE = {"n": 8 * 1024, "V": 50257, "C": 768}


def _inputs(n: int, V: int, C: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=n).astype(np.int32)
    return ids, rng.standard_normal((V, C)).astype(dtype), rng.standard_normal((n, C)).astype(
        dtype)


def bench_kernel(backend: str, pass_: str, n: int, V: int, C: int, dtype: str = "float32"):
    """One lookup or one backward (inputs made here), waiting for it."""
    ids, table, dout = _inputs(n, V, C, dtype)
    if backend == "cupy":
        import cupy
        ids, table, dout = cupy.asarray(ids), cupy.asarray(table), cupy.asarray(dout)

    def run():
        out = (embedding_forward(ids, table, backend=backend) if pass_ == "forward" else
               embedding_backward(dout, ids, V, backend=backend))
        args_.synchronize(backend)
        return out
    return run


def bench_torch(device: str, pass_: str, n: int, V: int, C: int, dtype: str = "float32"):
    """F.embedding, and its backward through torch.autograd.grad (a graph made here)."""
    import torch
    import torch.nn.functional as F
    ids, table, dout = _inputs(n, V, C, dtype)
    ids = torch.from_numpy(ids.astype(np.int64)).to(device)
    table = torch.from_numpy(table).to(device).requires_grad_(pass_ == "backward")
    dout = torch.from_numpy(dout).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if pass_ == "forward":
        def run():
            out = F.embedding(ids, table)
            sync()
            return out
        return run
    out = F.embedding(ids, table)

    def run_backward():
        grad = torch.autograd.grad(out, table, dout, retain_graph=True)
        sync()
        return grad
    return run_backward


def _bytes(pass_: str, n: int, V: int, C: int) -> int:
    """float32 bytes moved: the forward reads n rows and writes n; the backward reads n rows of
    dout and writes all V rows of dtable (ids and the sort not counted)."""
    return 4 * C * (2 * n if pass_ == "forward" else n + V)


BENCH = [{"name": f"embedding {pass_} n={BENCH_SHAPE['n']} V={BENCH_SHAPE['V']} "
                  f"C={BENCH_SHAPE['C']}",
          "build": "gpu_cupy.embedding:bench_kernel",
          "kwargs": {"pass_": pass_, **BENCH_SHAPE, "dtype": "float32"},
          "bytes": _bytes(pass_, **BENCH_SHAPE), "flops": None,
          "torch": "gpu_cupy.embedding:bench_torch"}
         for pass_ in ("forward", "backward")]
