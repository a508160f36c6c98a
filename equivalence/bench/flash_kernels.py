"""``crosscheck bench flash --backend cupy|opencl``: the FlashAttention kernels next to
``torch.nn.functional.scaled_dot_product_attention`` on the same shapes.

Throughput uses the FlashAttention papers' FLOP count (Dao 2023, section 4.1): a forward pass
is 4·B·H·T²·D (two matmuls of 2·T²·D per head), halved with a causal mask, and the backward
pass is 2.5x the forward (five matmuls instead of two). TFLOP/s = FLOPs / median time.

Timing goes through the shared layer (``equivalence.bench.common``): the kernel sides run in one
fresh child, the torch sides in another, each with warm-up (which also builds the programs),
repeats and the median. Every timed call waits for its work to finish (a stream synchronise on
CUDA), so wall time is device time plus one synchronisation, small next to a kernel of a
millisecond or more. The backward is timed on its own, after a forward made in the builder.

- ``--backend cupy`` (a CUDA GPU): CuPy arrays stay on the device. torch SDPA runs on the GPU too
  when ``torch.cuda.is_available()``; with a CPU-only torch its columns are left empty and
  "torch device" says why, rather than timing the CPU at GPU sizes. Without a CUDA device the
  command stops and says so.
- ``--backend opencl`` (PoCL on the CPU): small shapes by default; times include the copies
  between NumPy and the OpenCL buffers; torch runs on the CPU.

Example: ``crosscheck bench flash --backend opencl --shape 1,4,4,256,64 --mask causal``.
"""
from __future__ import annotations

import numpy as np

from equivalence.bench.common import (Side, check_timing_arguments, libraries, measure,
                                      shape_type, thread_settings)
from gpu_cupy import flash_attention as gpu_flash
from gpu_cupy import runtime

HERE = "equivalence.bench.flash_kernels"
DEFAULT_SHAPES = {  # (B, H, Hkv, T, D)
    "cupy": [(4, 16, 16, 1024, 64), (4, 16, 16, 4096, 64), (4, 16, 16, 1024, 128),
             (2, 32, 8, 2048, 128)],
    "opencl": [(1, 4, 4, 128, 64), (1, 4, 1, 256, 64)],
}


def add_arguments(parser) -> None:
    """Options of the kernel benchmark (``--backend`` and the timing options come from
    ``crosscheck bench flash`` itself)."""
    parser.add_argument("--shape", type=shape_type("B,H,Hkv,T,D"), action="append",
                        metavar="B,H,Hkv,T,D",
                        help="a shape to time (repeatable; default depends on the backend)")
    parser.add_argument("--mask", choices=("none", "causal", "both"), default="both",
                        help="causal mask off, on, or both (default both)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--kernel-version", type=int, default=1,
                        choices=sorted(gpu_flash.FORWARD_VERSIONS), help="forward kernel version")


def attention_flops(B: int, H: int, T: int, D: int, causal: bool, backward: bool) -> float:
    """4·B·H·T²·D, x0.5 causal, x2.5 for the backward.

    >>> attention_flops(1, 1, 2, 3, causal=False, backward=False)
    48.0
    """
    flops = 4.0 * B * H * T * T * D
    return flops * (0.5 if causal else 1.0) * (2.5 if backward else 1.0)


def torch_device(backend: str) -> str | None:
    """Where torch SDPA is timed next to the kernels: the CPU next to PoCL, the GPU next to CuPy,
    and nowhere (None) next to CuPy when torch has no CUDA."""
    import torch
    if backend == "opencl":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


# ----------------------------------------------------------------------------- builders

def _host_arrays(shape, dtype):
    B, H, Hkv, T, D = shape
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s, dtype=np.float64).astype(dtype)
            for s in ((B, H, T, D), (B, Hkv, T, D), (B, Hkv, T, D), (B, H, T, D))]


def kernel(backend, shape, causal, dtype, version, pass_):
    """The kernels' forward or backward (after a forward made here)."""
    q, k, v, dout = _host_arrays(shape, dtype)
    sync = lambda: None  # noqa: E731
    if backend == "cupy":
        import cupy
        q, k, v, dout = (cupy.asarray(x) for x in (q, k, v, dout))
        sync = cupy.cuda.get_current_stream().synchronize

    def forward():
        result = gpu_flash.flash_attention_forward(q, k, v, causal=causal, backend=backend,
                                                   version=version)
        sync()
        return result
    if pass_ == "forward":
        return forward
    out, lse = forward()

    def backward():
        grads = gpu_flash.flash_attention_backward(q, k, v, out, lse, dout, causal=causal,
                                                   backend=backend)
        sync()
        return grads
    return backward


def torch_sdpa(device, shape, causal, dtype, pass_):
    """torch SDPA's forward or backward (after a forward made here) on ``device``."""
    import torch
    import torch.nn.functional as F
    t = [torch.from_numpy(x).to(device) for x in _host_arrays(shape, dtype)]
    q, k, v = (x.requires_grad_(True) for x in t[:3])
    gqa = k.shape[1] != q.shape[1]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def forward():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
        sync()
        return out
    if pass_ == "forward":
        return forward
    out = forward()

    def backward():
        grads = torch.autograd.grad(out, (q, k, v), t[3], retain_graph=True)
        sync()
        return grads
    return backward


# ----------------------------------------------------------------------------- the bench

def run(args) -> dict[str, list[dict]]:
    """One row per (shape, mask, pass): kernel and torch times, TFLOP/s, their ratio."""
    backend = getattr(args, "backend", "cupy")
    if backend not in runtime.BACKENDS:
        raise SystemExit(f"bench flash (kernels): --backend must be opencl or cupy, not "
                         f"{backend!r}")
    check_timing_arguments(args)
    dtype = np.dtype(getattr(args, "dtype", "float32"))
    ok, why = runtime.available(backend, dtype)
    if not ok:
        if backend == "cupy":
            raise SystemExit(f"bench flash --backend cupy needs a CUDA device and none is "
                             f"available ({why}); use --backend opencl to time the same kernels "
                             f"on the CPU")
        raise SystemExit(f"bench flash --backend {backend}: not available ({why})")
    shapes = getattr(args, "shape", None) or DEFAULT_SHAPES[backend]
    masks = {"none": [False], "causal": [True], "both": [False, True]}[args.mask]
    device = torch_device(backend)
    configs = [(shape, causal, pass_) for shape in shapes for causal in masks
               for pass_ in ("forward", "backward")]
    rows = []
    for threads in thread_settings(args):
        kernel_t = measure([Side(f"kernel {p}", f"{HERE}:kernel",
                                 dict(backend=backend, shape=list(s), causal=c,
                                      dtype=dtype.name, version=args.kernel_version, pass_=p))
                            for s, c, p in configs], args, threads)
        torch_t = ([None] * len(configs) if device is None else
                   measure([Side(f"torch {p}", f"{HERE}:torch_sdpa",
                                 dict(device=device, shape=list(s), causal=c, dtype=dtype.name,
                                      pass_=p))
                            for s, c, p in configs], args, threads))
        for (shape, causal, pass_), kt, tt in zip(configs, kernel_t, torch_t):
            B, H, Hkv, T, D = shape
            flops = attention_flops(B, H, T, D, causal, pass_ == "backward")
            rows.append({"backend": backend, "B,H,Hkv,T,D": ",".join(map(str, shape)),
                         "causal": causal, "dtype": dtype.name, "pass": pass_,
                         "threads": "default" if threads is None else threads,
                         "kernel ms": kt.median * 1e3, "kernel spread": kt.spread,
                         "kernel TFLOP/s": flops / kt.median / 1e12,
                         "torch ms": None if tt is None else tt.median * 1e3,
                         "torch TFLOP/s": None if tt is None else flops / tt.median / 1e12,
                         "torch spread": None if tt is None else tt.spread,
                         "kernel / torch": None if tt is None else kt.median / tt.median,
                         "torch device": device or "not timed: torch has no CUDA",
                         "libraries": libraries(kt.runtime)})
    return {"kernels": rows}
