"""``crosscheck bench flash --backend cupy|opencl``: speed of the FlashAttention kernels next to
``torch.nn.functional.scaled_dot_product_attention`` on the same shapes.

Throughput uses the FlashAttention papers' FLOP count (Dao 2023, section 4.1): a forward pass
is 4·B·H·T²·D (two matmuls of 2·T²·D per head), halved with a causal mask, and the backward
pass is 2.5x the forward (five matmuls instead of two). TFLOP/s = FLOPs / median time.

- ``--backend cupy`` (a CUDA GPU): CuPy arrays stay on the device; times come from CUDA events.
  torch SDPA runs on the GPU too when ``torch.cuda.is_available()``; with a CPU-only torch its
  columns are left empty and "torch device" says why, rather than timing the CPU at GPU sizes.
  Without a CUDA device the command stops and says so.
- ``--backend opencl`` (PoCL on the CPU): small shapes by default; times are wall clock and
  include the copies between NumPy and the OpenCL buffers; torch runs on the CPU.

Each measurement: one warm-up call (it also builds the program), then the median of
``--repeats`` calls. The backward is timed on its own, after a forward that is not timed.
Example: ``crosscheck bench flash --backend opencl --shape 1,4,4,256,64 --mask causal``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gpu_cupy import flash_attention as gpu_flash
from gpu_cupy import runtime

DEFAULT_SHAPES = {  # (B, H, Hkv, T, D)
    "cupy": [(4, 16, 16, 1024, 64), (4, 16, 16, 4096, 64), (4, 16, 16, 1024, 128),
             (2, 32, 8, 2048, 128)],
    "opencl": [(1, 4, 4, 128, 64), (1, 4, 1, 256, 64)],
}


def _shape(text: str) -> tuple[int, ...]:
    parts = text.split(",")
    if len(parts) != 5 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected B,H,Hkv,T,D (five positive ints) but got "
                                         f"{text!r}")
    return tuple(int(p) for p in parts)


def add_arguments(parser) -> None:
    """Options of the kernel benchmark (``--backend`` itself is added by the CLI)."""
    parser.add_argument("--shape", type=_shape, action="append", metavar="B,H,Hkv,T,D",
                        help="a shape to time (repeatable; default depends on the backend)")
    parser.add_argument("--mask", choices=("none", "causal", "both"), default="both",
                        help="causal mask off, on, or both (default both)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (median)")
    parser.add_argument("--kernel-version", type=int, default=1,
                        choices=sorted(gpu_flash.FORWARD_VERSIONS), help="forward kernel version")


def attention_flops(B: int, H: int, T: int, D: int, causal: bool, backward: bool) -> float:
    """4·B·H·T²·D, x0.5 causal, x2.5 for the backward.

    >>> attention_flops(1, 1, 2, 3, causal=False, backward=False)
    48.0
    """
    flops = 4.0 * B * H * T * T * D
    return flops * (0.5 if causal else 1.0) * (2.5 if backward else 1.0)


def _median_seconds(fn, repeats: int, timer) -> float:
    fn()  # warm-up: builds the program / picks the torch kernel
    return statistics.median(timer(fn) for _ in range(repeats))


def _wall_timer(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cuda_event_timer(fn) -> float:
    import cupy
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / 1e3


def torch_device(backend: str) -> str | None:
    """Where torch SDPA is timed next to the kernels: the CPU next to PoCL, the GPU next to CuPy,
    and nowhere (None) next to CuPy when torch has no CUDA."""
    import torch
    if backend == "opencl":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def _torch_times(q, k, v, dout, causal: bool, repeats: int, device: str) -> tuple[float, float]:
    """(forward s, backward s) of torch SDPA on the same inputs, on ``device``."""
    import torch
    import torch.nn.functional as F
    t = [torch.from_numpy(np.asarray(x)).to(device) for x in (q, k, v, dout)]
    tq, tk, tv = (x.requires_grad_(True) for x in t[:3])
    gqa = tk.shape[1] != tq.shape[1]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def forward():
        out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal, enable_gqa=gqa)
        sync()
        return out

    def timer(fn):
        sync()
        return _wall_timer(fn)

    fwd = _median_seconds(forward, repeats, timer)
    out = forward()
    bwd = _median_seconds(
        lambda: (torch.autograd.grad(out, (tq, tk, tv), t[3], retain_graph=True), sync()),
        repeats, timer)
    return fwd, bwd


def run(args) -> list[dict]:
    """One row per (shape, mask, pass): kernel and torch times and TFLOP/s."""
    backend = getattr(args, "backend", "cupy")
    if backend not in runtime.BACKENDS:
        raise SystemExit(f"bench flash (kernels): --backend must be opencl or cupy, not "
                         f"{backend!r}")
    dtype = np.dtype(getattr(args, "dtype", "float32"))
    ok, why = runtime.available(backend, dtype)
    if not ok:
        if backend == "cupy":
            raise SystemExit(f"bench flash --backend cupy needs a CUDA device and none is "
                             f"available ({why}); use --backend opencl to time the same kernels "
                             f"on the CPU")
        raise SystemExit(f"bench flash --backend {backend}: not available ({why})")
    shapes = getattr(args, "shape", None) or DEFAULT_SHAPES[backend]
    mask = getattr(args, "mask", "both")
    masks = {"none": [False], "causal": [True], "both": [False, True]}[mask]
    repeats = max(1, getattr(args, "repeats", 5))
    version = getattr(args, "kernel_version", 1)
    timer = _cuda_event_timer if backend == "cupy" else _wall_timer
    device = torch_device(backend)
    rows = []
    for B, H, Hkv, T, D in shapes:
        rng = np.random.default_rng(0)
        host = [rng.standard_normal(s, dtype=np.float64).astype(dtype)
                for s in ((B, H, T, D), (B, Hkv, T, D), (B, Hkv, T, D), (B, H, T, D))]
        if backend == "cupy":
            import cupy
            q, k, v, dout = (cupy.asarray(x) for x in host)
        else:
            q, k, v, dout = host
        for causal in masks:
            def forward():
                return gpu_flash.flash_attention_forward(q, k, v, causal=causal, backend=backend,
                                                         version=version)
            out, lse = forward()

            def backward():
                return gpu_flash.flash_attention_backward(q, k, v, out, lse, dout, causal=causal,
                                                          backend=backend)
            times = (_median_seconds(forward, repeats, timer),
                     _median_seconds(backward, repeats, timer))
            torch_times = ((None, None) if device is None
                           else _torch_times(*host, causal, repeats, device))
            for pass_, t_kernel, t_torch in (("forward", times[0], torch_times[0]),
                                             ("backward", times[1], torch_times[1])):
                flops = attention_flops(B, H, T, D, causal, pass_ == "backward")
                rows.append({"backend": backend, "B,H,Hkv,T,D": f"{B},{H},{Hkv},{T},{D}",
                             "causal": causal, "dtype": dtype.name, "pass": pass_,
                             "kernel ms": t_kernel * 1e3,
                             "kernel TFLOP/s": flops / t_kernel / 1e12,
                             "torch ms": None if t_torch is None else t_torch * 1e3,
                             "torch TFLOP/s": None if t_torch is None else flops / t_torch / 1e12,
                             "torch device": device or "not timed: torch has no CUDA"})
    return rows
