"""Launcher of the fused AdamW step (kernels/adamw.cu) on CUDA or OpenCL.

    flat, offsets = flatten([w1, b1, w2])                   # the parameters end to end
    m, v = np.zeros_like(flat), np.zeros_like(flat)
    adamw_step(flat, flatten(grads)[0], m, v, offsets, step=1, lr=[1e-2, 3e-3, 1e-2],
               weight_decay=[0.1, 0.0, 0.1], backend="opencl")   # one launch, in place
    w1, b1, w2 = unflatten(flat, offsets, shapes)

performs one step of ``ref_numpy.optim.AdamW`` (and so of ``torch.optim.AdamW``) on every
parameter at once: the parameters and their state live in flat buffers, segment s of which is
``offsets[s] .. offsets[s + 1] - 1``, and every hyper-parameter may be given per segment, so
parameter groups with their own lr, weight decay, betas and eps, and arrays at different step
counts, are updated by the same launch. The header of the .cu file gives the update. This module
validates every argument before anything is compiled or launched and forms each segment's
scalars (bias corrections included) in float64, rounding them once to the buffers' dtype, as
torch rounds its Python-float scalars.

Shape letters: P elements in all, S segments (parameter arrays).

Arrays: param, grad, exp_avg, exp_avg_sq (and max_exp_avg_sq with amsgrad) are (P,), one
dtype, float32 or float64, C-contiguous, each its own memory; offsets is (S + 1,) int32 with
offsets[0] = 0, offsets[S] = P, nondecreasing (a segment may be empty). With backend="opencl"
they are NumPy arrays, copied to the device and back into the same arrays; with backend="cupy"
they are all NumPy or all CuPy arrays, CuPy ones updated on the device, asynchronously as in
CuPy itself. Values are not scanned: an inf or NaN in a gradient spreads into that element's
state and parameter, as in torch.
"""
from __future__ import annotations

import numpy as np

from gpu_cupy import arguments as args_
from gpu_cupy import runtime

KERNEL_FILE = "adamw.cu"
NUM_THREADS = 256               # threads per block, one element each
KERNELS = ("adamw_step",)
# The columns of a segment's coefficient row, in the order of the C_* defines of adamw.cu.
COEFFICIENTS = ("1-lr*weight_decay", "1-beta1", "beta2", "1-beta2", "lr/(1-beta1^t)",
                "sqrt(1-beta2^t)", "eps")


def defines(dtype) -> dict:
    """The compile-time defines of the program for ``dtype``."""
    return args_.dtype_defines(dtype, NUM_THREADS=NUM_THREADS)


def nvrtc_configs(dtype) -> list[tuple[dict, tuple[str, ...]]]:
    """What ``crosscheck kernels`` compiles: the kernel, once per dtype."""
    return [(defines(dtype), KERNELS)]


# ----------------------------------------------------------------------------- flat buffers

def flatten(arrays, dtype=None):
    """(flat (P,), offsets (S + 1,) int32): the arrays end to end, in order, as one buffer.

    >>> flat, offsets = flatten([np.ones((2, 3)), np.zeros(0), np.full(2, 7.0)])
    >>> flat.tolist(), offsets.tolist()
    ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 7.0, 7.0], [0, 6, 6, 8])
    """
    arrays = [np.asarray(a) for a in arrays]
    if not arrays:
        raise ValueError("arrays: expected at least one array but got none")
    dtype = np.dtype(dtype or arrays[0].dtype)
    offsets = np.zeros(len(arrays) + 1, np.int64)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    args_.check_int32_count("arrays", int(offsets[-1]), "their total element count")
    flat = np.empty(int(offsets[-1]), dtype)
    for a, lo, hi in zip(arrays, offsets[:-1], offsets[1:]):
        flat[lo:hi] = a.reshape(-1)
    return flat, offsets.astype(np.int32)


def unflatten(flat, offsets, shapes) -> list:
    """The segments of ``flat`` reshaped to ``shapes`` (views, not copies).

    >>> [a.tolist() for a in unflatten(np.arange(5.0), np.array([0, 2, 5]), [(2,), (3, 1)])]
    [[0.0, 1.0], [[2.0], [3.0], [4.0]]]
    """
    shapes = [tuple(s) for s in shapes]
    if len(shapes) != len(offsets) - 1:
        raise ValueError(f"shapes: expected {len(offsets) - 1} shapes (one per segment) but got "
                         f"{len(shapes)}")
    out = []
    for s, (lo, hi, shape) in enumerate(zip(offsets[:-1], offsets[1:], shapes)):
        if int(np.prod(shape)) != hi - lo:
            raise ValueError(f"shapes[{s}]: expected {hi - lo} elements (segment {s}) but got "
                             f"shape {shape}")
        out.append(flat[int(lo):int(hi)].reshape(shape))
    return out


# ----------------------------------------------------------------------------- validation

def _per_segment(name: str, value, S: int) -> np.ndarray:
    """``value`` (a number, or one per segment) as (S,) float64, each finite and >= 0; a
    message names the segment (``lr[1]``) when a sequence was given."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number or a sequence of {S} numbers but got "
                        f"{value!r}") from None
    if a.ndim == 0:
        a = np.full(S, float(a))
    elif a.shape != (S,):
        raise ValueError(f"{name}: expected a number or {S} numbers (one per segment) but got "
                         f"shape {a.shape}")
    for s, x in enumerate(a):
        if not (np.isfinite(x) and x >= 0):
            where = f"[{s}]" if np.ndim(value) else ""
            raise ValueError(f"{name}{where}: expected a finite value >= 0 but got {float(x)!r}")
    return a


def _betas(betas, S: int) -> tuple[np.ndarray, np.ndarray]:
    """(beta1 (S,), beta2 (S,)) from a pair or S pairs, each in [0, 1)."""
    try:
        a = np.asarray(betas, dtype=np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape not in ((2,), (S, 2)):
        raise ValueError(f"betas: expected a pair (beta1, beta2) or {S} pairs, shape (S, 2), "
                         f"but got {betas!r}")
    for index in np.ndindex(a.shape):
        x = float(a[index])
        if not 0.0 <= x < 1.0:   # False for NaN too
            raise ValueError(f"betas{list(index)}: expected a value in [0, 1) but got {x!r}")
    a = np.broadcast_to(a, (S, 2))
    return a[:, 0], a[:, 1]


def _steps(step, S: int) -> np.ndarray:
    a = np.asarray(step)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"step: expected an int or {S} ints (the step t of each segment, from "
                        f"1) but got {step!r}")
    a = np.broadcast_to(a, (S,)) if a.ndim == 0 else a
    if a.shape != (S,):
        raise ValueError(f"step: expected an int or {S} ints (one per segment) but got shape "
                         f"{a.shape}")
    if (a < 1).any():
        s = int(np.argmax(a < 1))
        raise ValueError(f"step: expected every step >= 1 (the first step is 1) but got "
                         f"{int(a[s])} for segment {s}")
    return a.astype(np.int64)


def _check_offsets(backend: str, offsets, P: int) -> int:
    """int32 (S + 1,), S >= 1, from 0 to P, nondecreasing. Returns S."""
    args_.check_int32(backend, "offsets", offsets)
    if offsets.ndim != 1 or offsets.shape[0] < 2:
        raise ValueError(f"offsets: expected shape (S + 1,) with S >= 1 segments but got "
                         f"{tuple(offsets.shape)}")
    host = runtime.to_host(offsets)
    if host[0] != 0 or host[-1] != P:
        raise ValueError(f"offsets: expected offsets[0] = 0 and offsets[-1] = P = {P} (the "
                         f"length of param) but got {int(host[0])} and {int(host[-1])}")
    steps = np.diff(host.astype(np.int64))
    if (steps < 0).any():
        s = int(np.argmax(steps < 0))
        raise ValueError(f"offsets: expected nondecreasing offsets but got offsets[{s}] = "
                         f"{int(host[s])} > offsets[{s + 1}] = {int(host[s + 1])}")
    return int(host.shape[0]) - 1


def _may_share(x, y) -> bool:
    if args_.is_cupy(x) and args_.is_cupy(y):
        import cupy
        return bool(cupy.may_share_memory(x, y))
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
        return bool(np.may_share_memory(x, y))
    return False


def _check_buffers(backend: str, buffers: dict) -> tuple[np.dtype, int]:
    """One float dtype, 1-D of one length, C-contiguous, one kind (all NumPy or all CuPy), no
    two sharing memory. Returns (dtype, P)."""
    dtype = args_.check_floats(backend, buffers)
    names = list(buffers)
    first = buffers[names[0]]
    if first.ndim != 1:
        raise ValueError(f"{names[0]}: expected a flat buffer of shape (P,) but got shape "
                         f"{tuple(first.shape)}; pass flatten(arrays)[0]")
    P = int(first.shape[0])
    for name in names[1:]:
        args_.check_shape(name, buffers[name], (P,), f"the shape of {names[0]}")
    kinds = {args_.is_cupy(x) for x in buffers.values()}
    if len(kinds) > 1:
        raise TypeError(f"{', '.join(names)}: expected all NumPy or all CuPy arrays (they are "
                        f"updated in place) but got a mix")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _may_share(buffers[a], buffers[b]):
                raise ValueError(f"{b}: expected memory of its own but it shares memory with "
                                 f"{a}")
    # The last block's threads form indices up to P + NUM_THREADS - 2.
    args_.check_int32_count(names[0], P + NUM_THREADS - 1, f"P + {NUM_THREADS - 1}")
    return dtype, P


def coefficients(S: int, step, lr, betas, eps, weight_decay) -> np.ndarray:
    """The (S, 7) float64 table of each segment's scalars, columns as ``COEFFICIENTS``, after
    the hyper-parameters are checked (every one a number or one per segment).

    >>> coefficients(1, 1, 0.1, (0.9, 0.99), 1e-8, 0.5).round(6).tolist()
    [[0.95, 0.1, 0.99, 0.01, 1.0, 0.1, 0.0]]
    """
    steps = _steps(step, S)
    lr = _per_segment("lr", lr, S)
    beta1, beta2 = _betas(betas, S)
    eps = _per_segment("eps", eps, S)
    wd = _per_segment("weight_decay", weight_decay, S)
    table = np.empty((S, len(COEFFICIENTS)))
    for s in range(S):   # Python floats, as torch forms them: lr / (1 - beta1 ** t), ...
        t, g, b1, b2 = int(steps[s]), float(lr[s]), float(beta1[s]), float(beta2[s])
        table[s] = (1 - g * float(wd[s]), 1 - b1, b2, 1 - b2, g / (1 - b1 ** t),
                    (1 - b2 ** t) ** 0.5, float(eps[s]))
    return table


# ----------------------------------------------------------------------------- launcher

def adamw_step(param, grad, exp_avg, exp_avg_sq, offsets, step, *, lr=1e-3, betas=(0.9, 0.999),
               eps=1e-8, weight_decay=1e-2, max_exp_avg_sq=None, maximize: bool = False,
               backend: str = "opencl") -> None:
    """One AdamW step of every segment, in place, in one launch (torch.optim.AdamW's update).

    Args:
        param: (P,) float32 or float64, the parameters end to end (see :func:`flatten`).
        grad: (P,) their gradients.
        exp_avg, exp_avg_sq: (P,) the first and second moments (zeros before step 1).
        offsets: (S + 1,) int32, segment s is param[offsets[s]:offsets[s + 1]].
        step: the step t >= 1 this update is, an int or (S,) ints (bias corrections use it).
        lr, eps, weight_decay: >= 0, a number or (S,) numbers. Defaults as torch's.
        betas: (beta1, beta2) in [0, 1), or (S, 2) pairs.
        max_exp_avg_sq: (P,) the running max of exp_avg_sq, for amsgrad; None: no amsgrad.
        maximize: ascend (the gradient's sign flipped) if True.
        backend: "opencl" or "cupy".
    Returns:
        None: param, exp_avg, exp_avg_sq (and max_exp_avg_sq) hold the new values.
    """
    args_.check_backend(backend)
    if not isinstance(maximize, (bool, np.bool_)):
        raise TypeError(f"maximize: expected a bool but got {type(maximize).__name__}")
    buffers = {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    if max_exp_avg_sq is not None:
        buffers["max_exp_avg_sq"] = max_exp_avg_sq
    dtype, P = _check_buffers(backend, buffers)
    if args_.is_cupy(offsets) != args_.is_cupy(param):
        raise TypeError("offsets: expected the kind of array param is (NumPy or CuPy) but got "
                        f"{type(offsets).__module__}.{type(offsets).__name__}")
    S = _check_offsets(backend, offsets, P)
    table = coefficients(S, step, lr, betas, eps, weight_decay).astype(dtype)
    args_.check_available(backend, dtype)
    if P == 0:
        return None
    on_host = isinstance(param, np.ndarray)
    program = runtime.build(backend, KERNEL_FILE, defines(dtype))
    names = list(buffers)
    # CuPy buffers are updated where they are; NumPy ones through device copies.
    device = ({n: runtime.to_device(backend, x) for n, x in buffers.items()} if on_host
              else buffers)
    d_offsets = runtime.to_device(backend, offsets) if on_host else offsets
    d_coef = runtime.to_device(backend, table)
    d_max = device.get("max_exp_avg_sq", device["exp_avg_sq"])   # never touched without amsgrad
    runtime.launch(program, KERNELS[0], grid=(-(-P // NUM_THREADS),), block=(NUM_THREADS,),
                   args=(device["param"], device["grad"], device["exp_avg"],
                         device["exp_avg_sq"], d_max, d_offsets, d_coef, np.int32(S),
                         np.int32(P), np.int32(max_exp_avg_sq is not None),
                         np.int32(bool(maximize))))
    if on_host:   # copy the updated buffers back into the caller's arrays
        for n in names:
            if n != "grad":
                np.copyto(buffers[n], runtime.to_host(device[n]))
    return None


# ----------------------------------------------------------------------------- bench

# Nine float32 arrays of 105 to 786432 elements, 2.7M in all (GPT-2 small's weight matrices
# are 0.6M to 2.4M elements).
BENCH_SHAPES = [(768, 1024), (1024,), (1024, 768), (333, 997), (1021,), (512, 257), (3, 5, 7),
                (640, 1029), (257,)]


def _inputs(shapes, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    return ([rng.standard_normal(s).astype(dtype) for s in shapes],
            [rng.standard_normal(s).astype(dtype) for s in shapes])


def bench_kernel(backend: str, shapes, dtype: str = "float32"):
    """One fused step of every array (flat buffers made here, state from step 1), waiting."""
    params, grads = _inputs([tuple(s) for s in shapes], dtype)
    flat, offsets = flatten(params)
    g = flatten(grads)[0]
    m, v = np.zeros_like(flat), np.zeros_like(flat)
    if backend == "cupy":
        import cupy
        flat, g, m, v, offsets = (cupy.asarray(x) for x in (flat, g, m, v, offsets))
    count = [0]

    def run():
        count[0] += 1
        adamw_step(flat, g, m, v, offsets, count[0], lr=1e-4, weight_decay=0.1,
                   backend=backend)
        args_.synchronize(backend)
    return run


def bench_torch(device: str, shapes, dtype: str = "float32"):
    """torch.optim.AdamW's default implementation over the same arrays on ``device``."""
    import torch
    params, grads = _inputs([tuple(s) for s in shapes], dtype)
    ps = [torch.from_numpy(p).to(device) for p in params]
    for p, g in zip(ps, grads):
        p.grad = torch.from_numpy(g).to(device)
    opt = torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.1)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        opt.step()
        sync()
    return run


_P = sum(int(np.prod(s)) for s in BENCH_SHAPES)
# Bytes: param, grad, exp_avg, exp_avg_sq read, param, exp_avg, exp_avg_sq written.
BENCH = [{"name": f"adamw_step {len(BENCH_SHAPES)} arrays P={_P}",
          "build": "gpu_cupy.adamw:bench_kernel",
          "kwargs": {"shapes": [list(s) for s in BENCH_SHAPES], "dtype": "float32"},
          "bytes": 7 * 4 * _P, "flops": None, "torch": "gpu_cupy.adamw:bench_torch"}]
