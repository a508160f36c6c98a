"""Launchers of the cross-entropy kernels (kernels/cross_entropy.cu) on CUDA or OpenCL.

    loss = cross_entropy_forward(logits, targets, reduction="mean", backend="opencl")
    loss, dlogits = cross_entropy_fused(logits, targets, dloss, reduction="mean")

compute ``ref_numpy.cross_entropy`` (torch's ``F.cross_entropy``) for logits (N, C) with the
classes last, as a language model's (B·T, V): ``ignore_index`` targets contribute nothing and are
not counted in the mean; the mean over no valid target is 0 with zero gradient (torch: NaN).
``cross_entropy_fused`` is llm.c's fused classifier: the loss and dL/dlogits for the upstream
gradient ``dloss`` in one kernel, without storing the probabilities. The header of the .cu file
says what each kernel does. Every argument is validated before anything is compiled or
launched; the targets are copied to the host for the range check and the count of valid ones.

Arrays: logits (N, C) float32/float64; targets (N,) int32 (class ids in [0, C) or
``ignore_index``); dloss of shape () for "mean"/"sum" and (N,) for "none", the logits' dtype.
NumPy arrays with backend="opencl"; NumPy or CuPy arrays with backend="cupy" (results come back
as CuPy arrays if any CuPy array went in). Every array must be C-contiguous. Logits are not
scanned for NaN or +inf (see ``gpu_cupy.softmax``); -inf is a masked class.
"""
from __future__ import annotations

import numpy as np

from gpu_cupy import runtime
from gpu_cupy.arguments import array_module, check_backend, results
from gpu_cupy.softmax import INT32_MAX, NUM_THREADS, check_array, check_rows, defines, ready

KERNEL_FILE = "cross_entropy.cu"
KERNELS = ("cross_entropy_forward", "cross_entropy_fused", "cross_entropy_reduce")
REDUCTIONS = ("mean", "sum", "none")


def shared_bytes(kernel: str, itemsize: int) -> int:
    """Static shared memory of a block of ``kernel``, in bytes, as declared in the .cu file:
    two arrays of NUM_THREADS reals for the online normaliser's (m, l), one for the reduce.

    >>> shared_bytes("cross_entropy_fused", 8), shared_bytes("cross_entropy_reduce", 8)
    (4096, 2048)
    """
    return (1 if kernel == KERNELS[2] else 2) * NUM_THREADS * itemsize


def nvrtc_configs(dtype) -> list[tuple[dict, tuple[str, ...]]]:
    """What ``crosscheck kernels`` compiles: every kernel at the launcher's NUM_THREADS."""
    return [(defines(dtype), KERNELS)]


# ----------------------------------------------------------------------------- validation

def _validate(logits, targets, ignore_index, reduction, backend):
    """Check everything the kernels depend on; return (N, C, dtype, number of valid targets)."""
    check_backend(backend)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS} but got {reduction!r}")
    check_array("logits", logits, backend)
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise ValueError(f"logits: expected shape (N, C) with C >= 1, the classes last (a "
                         f"language model's (B*T, V)), but got {tuple(logits.shape)}")
    check_rows("logits", logits, backend)
    N, C = logits.shape
    check_array("targets", targets, backend, kinds=(np.int32,))
    if tuple(targets.shape) != (N,):
        raise ValueError(f"targets: expected shape (N,) = ({N},) but got {tuple(targets.shape)}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an int but got {type(ignore_index).__name__}")
    if not -INT32_MAX - 1 <= ignore_index <= INT32_MAX:
        raise ValueError(f"ignore_index: expected an int32 value but got {ignore_index}")
    host = runtime.to_host(targets)
    valid = host != ignore_index
    bad = valid & ((host < 0) | (host >= C))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"targets: expected class ids in [0, {C}) or ignore_index="
                         f"{ignore_index} but got {int(host[i])} at index {i}")
    return N, C, np.dtype(logits.dtype), int(valid.sum())


def _dloss(dloss, reduction: str, N: int, dtype, backend: str):
    check_array("dloss", dloss, backend, dtype)
    want = (N,) if reduction == "none" else ()
    if tuple(dloss.shape) != want:
        raise ValueError(f"dloss: expected shape {want} for reduction={reduction!r} but got "
                         f"{tuple(dloss.shape)}")


def _launch(logits, targets, dloss, ignore_index, reduction, backend):
    """The forward (dloss None) or the fused pass; returns (loss, dlogits or None)."""
    N, C, dtype, n_valid = _validate(logits, targets, ignore_index, reduction, backend)
    kernel = KERNELS[0] if dloss is None else KERNELS[1]
    if dloss is not None:
        _dloss(dloss, reduction, N, dtype, backend)
    ready(backend, dtype, shared_bytes(kernel, dtype.itemsize))
    xp = array_module(backend, logits, targets, *(() if dloss is None else (dloss,)))
    scale = 1.0 / max(n_valid, 1) if reduction == "mean" else 1.0
    if N == 0:
        loss = xp.zeros((0,) if reduction == "none" else (), dtype)
        return loss, (None if dloss is None else xp.zeros((0, C), dtype))
    program = runtime.build(backend, KERNEL_FILE, defines(dtype))
    real, i32 = dtype.type, np.int32
    d_logits, d_targets = (runtime.to_device(backend, a) for a in (logits, targets))
    d_losses = runtime.empty(backend, (N,), dtype)
    if dloss is None:
        runtime.launch(program, kernel, grid=(N,), block=(NUM_THREADS,),
                       args=(d_logits, d_targets, d_losses, i32(C), i32(ignore_index)))
        d_dlogits = None
    else:
        d_dloss = runtime.to_device(backend, dloss.reshape(-1))
        d_dlogits = runtime.empty(backend, (N, C), dtype)
        runtime.launch(program, kernel, grid=(N,), block=(NUM_THREADS,),
                       args=(d_logits, d_targets, d_dloss,
                             i32(1 if reduction == "none" else 0),
                             real(1.0 if reduction == "none" else scale), d_losses, d_dlogits,
                             i32(C), i32(ignore_index)))
    if reduction == "none":
        d_loss = d_losses
    else:
        d_loss = runtime.empty(backend, (), dtype)
        runtime.launch(program, KERNELS[2], grid=(1,), block=(NUM_THREADS,),
                       args=(d_losses, d_loss, i32(N), real(scale)))
    if d_dlogits is None:
        return results(xp, d_loss)[0], None
    return results(xp, d_loss, d_dlogits)


def cross_entropy_forward(logits, targets, *, ignore_index: int = -100,
                          reduction: str = "mean", backend: str = "opencl"):
    """The cross-entropy of ``targets`` under softmax(logits), one block per row.

        L = reduce_n(log sum_j exp(logits[n, j]) - logits[n, t_n]),  ignored positions excluded

    Args:
        logits: (N, C) float32/float64, finite or -inf (a masked class).
        targets: (N,) int32, each in [0, C) or ``ignore_index``.
        ignore_index: the target value of a position to skip (an int32).
        reduction: "mean" (over the valid targets; 0 if there are none), "sum" or "none".
        backend: "opencl" or "cupy".

    Returns:
        loss: () for "mean"/"sum", (N,) for "none" (0 at ignored positions); dtype of logits.
    """
    return _launch(logits, targets, None, ignore_index, reduction, backend)[0]


def cross_entropy_fused(logits, targets, dloss, *, ignore_index: int = -100,
                        reduction: str = "mean", backend: str = "opencl"):
    """The loss and its gradient with respect to the logits in one kernel (llm.c's fused
    classifier).

        dlogits[n, :] = g_n (softmax(logits[n]) - onehot(t_n)),
        g_n = dloss_n ("none"), dloss ("sum"), dloss / valid count ("mean"); 0 where ignored

    Args:
        logits, targets, ignore_index, reduction, backend: as :func:`cross_entropy_forward`.
        dloss: the upstream gradient dL/dloss, () for "mean"/"sum", (N,) for "none"; the
            logits' dtype.

    Returns:
        (loss, dlogits): loss as :func:`cross_entropy_forward`, dlogits (N, C).
    """
    if dloss is None:
        raise TypeError("dloss: expected an array (the upstream gradient) but got None; use "
                        "cross_entropy_forward for the loss alone")
    return _launch(logits, targets, dloss, ignore_index, reduction, backend)


# ----------------------------------------------------------------------------- bench

BENCH_SHAPE = (256, 50257)     # (N, V): GPT-2's vocabulary


def _bench_inputs(shape, dtype):
    rng = np.random.default_rng(0)
    N, V = shape
    return (rng.standard_normal((N, V)).astype(dtype),
            rng.integers(0, V, size=N).astype(np.int32), np.ones((), dtype))


def bench_kernel(backend: str, op: str, shape, dtype: str):
    """``crosscheck bench kernels``: one launch of ``op`` ("forward" or "fused", mean
    reduction) on (N, V) logits, synchronised."""
    logits, targets, dloss = _bench_inputs(shape, dtype)
    sync = lambda: None  # noqa: E731
    if backend == "cupy":
        import cupy
        logits, targets, dloss = (cupy.asarray(a) for a in (logits, targets, dloss))
        sync = cupy.cuda.get_current_stream().synchronize
    if op == "forward":
        call = lambda: cross_entropy_forward(logits, targets, backend=backend)  # noqa: E731
    else:
        call = lambda: cross_entropy_fused(logits, targets, dloss, backend=backend)  # noqa: E731

    def run():
        result = call()
        sync()
        return result
    return run


def bench_torch(device: str, op: str, shape, dtype: str):
    """The same op in torch on ``device``: F.cross_entropy, and for "fused" its forward and
    backward through autograd."""
    import torch
    import torch.nn.functional as F
    logits, targets, _ = (torch.from_numpy(a).to(device) for a in _bench_inputs(shape, dtype))
    targets = targets.long()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if op == "forward":
        call = lambda: F.cross_entropy(logits, targets)  # noqa: E731
    else:
        logits.requires_grad_(True)

        def call():
            loss = F.cross_entropy(logits, targets)
            return loss, torch.autograd.grad(loss, logits)

    def run():
        result = call()
        sync()
        return result
    return run


# Bytes: the logits read once (and for "fused" dlogits written once); targets and losses are
# N values, left out.
BENCH = [{"name": f"cross_entropy {op} {BENCH_SHAPE[0]}x{BENCH_SHAPE[1]}",
          "build": "gpu_cupy.cross_entropy:bench_kernel",
          "kwargs": {"op": op, "shape": list(BENCH_SHAPE), "dtype": "float32"},
          "bytes": (1 if op == "forward" else 2) * BENCH_SHAPE[0] * BENCH_SHAPE[1] * 4,
          "flops": None, "torch": "gpu_cupy.cross_entropy:bench_torch"}
         for op in ("forward", "fused")]
