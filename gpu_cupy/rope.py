"""Launchers of the RoPE kernels (kernels/rope.cu) on CUDA or OpenCL.

    cos, sin = ref_numpy.rope.rope_tables(inv_freq, positions, dtype=q.dtype)
    q_rot = rope_forward(q, cos, sin, interleaved=False, backend="opencl")
    dq = rope_backward(dq_rot, cos, sin, interleaved=False, backend="opencl")

compute ``rope_forward`` and ``rope_backward`` of ``ref_numpy.rope``: every feature pair of the
first R = 2 · cos.shape[-1] features of each head rotated by its angle (the backward by minus
it), in the half-split or the interleaved convention; the other D − R features pass through.
Positions, offsets, per-row position ids, frequency scalings and the attention factor all live
in the cos/sin tables, built by ``ref_numpy.rope.rope_tables`` (or ``RoPE.tables``) in float64
and cast to the dtype of x. This module validates every argument before anything is compiled or
launched.

Shape letters: B batch, H heads, T positions, D head dim (even), R rotary dim (even,
2 <= R <= D), half = R/2 frequencies.

Arrays: NumPy arrays with backend="opencl"; NumPy or CuPy arrays with backend="cupy" (results
come back as CuPy arrays if any CuPy array went in, asynchronously as in CuPy itself). x and the
tables share one dtype, float32 or float64, and are C-contiguous.
"""
from __future__ import annotations

import numpy as np

from gpu_cupy import arguments as args_
from gpu_cupy import runtime

KERNEL_FILE = "rope.cu"
NUM_THREADS = 256               # threads per block, one output element each
KERNELS = ("rope_forward", "rope_backward")


def defines(dtype) -> dict:
    """The compile-time defines of the program (both kernels) for ``dtype``."""
    return args_.dtype_defines(dtype, NUM_THREADS=NUM_THREADS)


def nvrtc_configs(dtype) -> list[tuple[dict, tuple[str, ...]]]:
    """What ``crosscheck kernels`` compiles: both kernels, once per dtype."""
    return [(defines(dtype), KERNELS)]


def _validate(backend: str, name: str, x, cos, sin, interleaved) -> tuple[np.dtype, bool]:
    """Returns (dtype, whether the tables are per batch row)."""
    args_.check_backend(backend)
    if not isinstance(interleaved, (bool, np.bool_)):
        raise TypeError(f"interleaved: expected a bool but got {type(interleaved).__name__}")
    dtype = args_.check_floats(backend, {name: x, "cos": cos, "sin": sin})
    if x.ndim != 4:
        raise ValueError(f"{name}: expected 4 dimensions (B, H, T, D) but got {x.ndim} "
                         f"(shape {tuple(x.shape)})")
    B, H, T, D = (int(s) for s in x.shape)
    if D % 2:
        raise ValueError(f"{name}: expected an even head dimension D for RoPE but got D = {D} "
                         f"(shape {tuple(x.shape)})")
    if cos.ndim == 2:
        batched = False
        if cos.shape[0] != T:
            raise ValueError(f"cos: expected shape (T, R/2) with T = {T} from {name} but got "
                             f"{tuple(cos.shape)}")
    elif cos.ndim == 3:
        batched = True
        if tuple(cos.shape[:2]) != (B, T):
            raise ValueError(f"cos: expected shape (B, T, R/2) with B = {B}, T = {T} from "
                             f"{name} but got {tuple(cos.shape)}")
    else:
        raise ValueError(f"cos: expected 2 or 3 dimensions, (T, R/2) or (B, T, R/2), but got "
                         f"{cos.ndim} (shape {tuple(cos.shape)})")
    args_.check_shape("sin", sin, tuple(cos.shape), "the shape of cos")
    half = int(cos.shape[-1])
    if half == 0 or 2 * half > D:
        raise ValueError(f"cos: expected 1 to D/2 = {D // 2} frequencies (rotary_dim = 2 x "
                         f"frequencies <= D = {D}) but got {half}")
    args_.check_int32_count(name, int(x.size) + NUM_THREADS - 1,
                            f"its element count + {NUM_THREADS - 1}")
    args_.check_available(backend, dtype)
    return dtype, batched


def _rotate(backend: str, kernel: str, x, cos, sin, interleaved: bool, dtype, batched: bool):
    xp = args_.array_module(backend, x, cos, sin)
    if x.size == 0:
        return xp.zeros(x.shape, dtype)
    B, H, T, D = (int(s) for s in x.shape)
    program = runtime.build(backend, KERNEL_FILE, defines(dtype))
    d_x, d_cos, d_sin = (runtime.to_device(backend, a) for a in (x, cos, sin))
    d_out = runtime.empty(backend, x.shape, dtype)
    i32 = np.int32
    runtime.launch(program, kernel, grid=(-(-x.size // NUM_THREADS),), block=(NUM_THREADS,),
                   args=(d_x, d_cos, d_sin, d_out, i32(x.size), i32(H), i32(T), i32(D),
                         i32(cos.shape[-1]), i32(bool(interleaved)), i32(batched)))
    return args_.results(xp, d_out)[0]


def rope_forward(x, cos, sin, *, interleaved: bool = False, backend: str = "opencl"):
    """Rotate every feature pair of the first R features of x by its angle m·θ_i.

        x'_a = x_a cos − x_b sin,   x'_b = x_a sin + x_b cos

    Args:
        x: (B, H, T, D) queries or keys, float32 or float64, D even.
        cos, sin: (T, R/2) or (B, T, R/2) from ``ref_numpy.rope.rope_tables``, the dtype of x.
        interleaved: pairs (2i, 2i + 1) if True, else (i, i + R/2) (half-split).
        backend: "opencl" or "cupy".
    Returns:
        out: (B, H, T, D) like x.
    """
    dtype, batched = _validate(backend, "x", x, cos, sin, interleaved)
    return _rotate(backend, KERNELS[0], x, cos, sin, interleaved, dtype, batched)


def rope_backward(dout, cos, sin, *, interleaved: bool = False, backend: str = "opencl"):
    """Gradient of RoPE with respect to x: dout rotated by −θ (the transpose of the forward's
    rotation, which the attention factor in the tables scales alike).

    Args:
        dout: (B, H, T, D), the gradient with respect to the rotated x.
        cos, sin: the forward's tables; interleaved: the forward's convention.
        backend: "opencl" or "cupy".
    Returns:
        dx: (B, H, T, D) like dout.
    """
    dtype, batched = _validate(backend, "dout", dout, cos, sin, interleaved)
    return _rotate(backend, KERNELS[1], dout, cos, sin, interleaved, dtype, batched)


# ----------------------------------------------------------------------------- bench

# Llama-style queries: 32 heads of 128 features at 256 positions, full rotary dim, half-split
# (4 MiB of float32).
BENCH_SHAPE = {"B": 1, "H": 32, "T": 256, "D": 128}


def _inputs(B: int, H: int, T: int, D: int, dtype, seed: int = 0):
    from ref_numpy.rope import rope_tables
    rng = np.random.default_rng(seed)
    inv_freq = 10000.0 ** (-np.arange(0, D, 2) / D)
    cos, sin = rope_tables(inv_freq, np.arange(T), dtype=dtype)
    return rng.standard_normal((B, H, T, D)).astype(dtype), cos, sin


def bench_kernel(backend: str, pass_: str, B: int, H: int, T: int, D: int,
                 dtype: str = "float32"):
    """One forward or backward rotation (inputs and tables made here), waiting for it."""
    x, cos, sin = _inputs(B, H, T, D, dtype)
    if backend == "cupy":
        import cupy
        x, cos, sin = cupy.asarray(x), cupy.asarray(cos), cupy.asarray(sin)
    fn = rope_forward if pass_ == "forward" else rope_backward

    def run():
        out = fn(x, cos, sin, backend=backend)
        args_.synchronize(backend)
        return out
    return run


def bench_torch(device: str, pass_: str, B: int, H: int, T: int, D: int,
                dtype: str = "float32"):
    """The half-split rotation as Hugging Face writes it, x cos + rotate_half(x) sin (the
    backward is the same formula with -sin)."""
    import torch
    x, cos, sin = (torch.from_numpy(v).to(device) for v in _inputs(B, H, T, D, dtype))
    cos, sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)      # (T, D)
    if pass_ == "backward":
        sin = -sin
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        out = x * cos + torch.cat([-x2, x1], -1) * sin
        sync()
        return out
    return run


BENCH = [{"name": f"rope {pass_} B={BENCH_SHAPE['B']} H={BENCH_SHAPE['H']} "
                  f"T={BENCH_SHAPE['T']} D={BENCH_SHAPE['D']}",
          "build": "gpu_cupy.rope:bench_kernel",
          "kwargs": {"pass_": pass_, **BENCH_SHAPE, "dtype": "float32"},
          # x read, out written; the tables (T x D/2 each) are small beside them
          "bytes": 2 * 4 * BENCH_SHAPE["B"] * BENCH_SHAPE["H"] * BENCH_SHAPE["T"]
                   * BENCH_SHAPE["D"],
          "flops": None, "torch": "gpu_cupy.rope:bench_torch"}
         for pass_ in ("forward", "backward")]
