"""Launchers of the activation kernels (kernels/elementwise.cu) on CUDA or OpenCL.

    y = gelu_forward(x, approximate="tanh", backend="opencl")
    dx = gelu_backward(dout, x, approximate="tanh", backend="opencl")
    y, dx = silu_forward(x), silu_backward(dout, x)
    h = swiglu_gate_forward(a, b)                    # silu(a) * b
    da, db = swiglu_gate_backward(dh, a, b)

compute the functions of ``ref_numpy.activations`` (GELU in both forms, SiLU) and the gate
h = silu(a) ⊙ b of ``ref_numpy.swiglu``, elementwise on arrays of any shape, with the same
formulas in the tails (the header of the .cu file says which). This module validates every
argument before anything is compiled or launched.

Arrays: NumPy arrays with backend="opencl"; NumPy or CuPy arrays with backend="cupy" (results
come back as CuPy arrays if any CuPy array went in, asynchronously as in CuPy itself). All
arrays of a call share one shape and one dtype, float32 or float64, and are C-contiguous; NaN
and infinities are values like any other (gelu(NaN) is NaN), so they are not scanned for.
"""
from __future__ import annotations

import numpy as np

from gpu_cupy import arguments as args_
from gpu_cupy import runtime

KERNEL_FILE = "elementwise.cu"
NUM_THREADS = 256               # threads per block, one element each
GELU_FORMS = ("none", "tanh")   # torch's names for the erf form and the tanh form
GELU_KERNELS = {"none": ("gelu_erf_forward", "gelu_erf_backward"),
                "tanh": ("gelu_tanh_forward", "gelu_tanh_backward")}
SILU_KERNELS = ("silu_forward", "silu_backward")
GATE_KERNELS = ("swiglu_gate_forward", "swiglu_gate_backward")
KERNELS = GELU_KERNELS["none"] + GELU_KERNELS["tanh"] + SILU_KERNELS + GATE_KERNELS


def defines(dtype) -> dict:
    """The compile-time defines of the program (every kernel of the file) for ``dtype``."""
    return args_.dtype_defines(dtype, NUM_THREADS=NUM_THREADS)


def nvrtc_configs(dtype) -> list[tuple[dict, tuple[str, ...]]]:
    """What ``crosscheck kernels`` compiles: every kernel, once per dtype."""
    return [(defines(dtype), KERNELS)]


# ----------------------------------------------------------------------------- validation

def _validate(backend: str, arrays: dict) -> tuple[np.dtype, int]:
    """Same shape, one float dtype, C-contiguous, within int32; the backend usable."""
    args_.check_backend(backend)
    dtype = args_.check_floats(backend, arrays)
    names = list(arrays)
    shape = tuple(arrays[names[0]].shape)
    for name in names[1:]:
        args_.check_shape(name, arrays[name], shape, f"the shape of {names[0]}")
    n = int(arrays[names[0]].size)
    # The last block's threads form indices up to n + NUM_THREADS - 2.
    args_.check_int32_count(names[0], n + NUM_THREADS - 1,
                            f"its element count + {NUM_THREADS - 1}")
    args_.check_available(backend, dtype)
    return dtype, n


def _check_form(approximate) -> None:
    if approximate not in GELU_FORMS:
        raise ValueError(f"approximate: expected one of {GELU_FORMS} but got {approximate!r}")


def _run(backend: str, kernel: str, inputs: list, n_outputs: int, dtype, n: int):
    """Launch ``kernel`` over the n elements of ``inputs``; return its outputs, in the kind of
    array that went in, with the shape of the first input."""
    xp = args_.array_module(backend, *inputs)
    shape = tuple(inputs[0].shape)
    if n == 0:
        return tuple(xp.zeros(shape, dtype) for _ in range(n_outputs))
    program = runtime.build(backend, KERNEL_FILE, defines(dtype))
    ins = [runtime.to_device(backend, x) for x in inputs]
    outs = [runtime.empty(backend, shape, dtype) for _ in range(n_outputs)]
    runtime.launch(program, kernel, grid=(-(-n // NUM_THREADS),), block=(NUM_THREADS,),
                   args=(*ins, *outs, np.int32(n)))
    return args_.results(xp, *outs)


# ----------------------------------------------------------------------------- launchers

def gelu_forward(x, approximate: str = "none", *, backend: str = "opencl"):
    """GELU elementwise, as F.gelu(x, approximate=...).

        "none": y = x Phi(x) = x erfc(-x / sqrt 2) / 2
        "tanh": y = x sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)

    Args:
        x: (...) float32 or float64.
        approximate: "none" (erf form) or "tanh".
        backend: "opencl" or "cupy".
    Returns:
        y: (...) like x.
    """
    _check_form(approximate)
    dtype, n = _validate(backend, {"x": x})
    return _run(backend, GELU_KERNELS[approximate][0], [x], 1, dtype, n)[0]


def gelu_backward(dout, x, approximate: str = "none", *, backend: str = "opencl"):
    """dx = dout · dy/dx of GELU at x (the derivation is in ``ref_numpy.activations``).

    Args:
        dout: (...) the upstream gradient, like x.
        x: (...) the forward's input, float32 or float64.
        approximate: the forward's form, "none" or "tanh".
        backend: "opencl" or "cupy".
    Returns:
        dx: (...) like x.
    """
    _check_form(approximate)
    dtype, n = _validate(backend, {"x": x, "dout": dout})
    return _run(backend, GELU_KERNELS[approximate][1], [x, dout], 1, dtype, n)[0]


def silu_forward(x, *, backend: str = "opencl"):
    """y = x sigmoid(x) elementwise, as F.silu. x: (...) float32 or float64; y like x."""
    dtype, n = _validate(backend, {"x": x})
    return _run(backend, SILU_KERNELS[0], [x], 1, dtype, n)[0]


def silu_backward(dout, x, *, backend: str = "opencl"):
    """dx = dout · s (1 + x (1 − s)), s = sigmoid(x); dout and x (...) alike."""
    dtype, n = _validate(backend, {"x": x, "dout": dout})
    return _run(backend, SILU_KERNELS[1], [x, dout], 1, dtype, n)[0]


def swiglu_gate_forward(a, b, *, backend: str = "opencl"):
    """The SwiGLU gate h = silu(a) ⊙ b (a = x W1 the gate branch, b = x W3 the linear one).

    Args:
        a, b: (...) float32 or float64, one shape.
        backend: "opencl" or "cupy".
    Returns:
        h: (...) like a.
    """
    dtype, n = _validate(backend, {"a": a, "b": b})
    return _run(backend, GATE_KERNELS[0], [a, b], 1, dtype, n)[0]


def swiglu_gate_backward(dh, a, b, *, backend: str = "opencl"):
    """Gradients of h = silu(a) ⊙ b: da = dh ⊙ b ⊙ silu'(a), db = dh ⊙ silu(a).

    Args:
        dh: (...) the upstream gradient; a, b: the forward's inputs; one shape and dtype.
        backend: "opencl" or "cupy".
    Returns:
        (da, db), each like a.
    """
    dtype, n = _validate(backend, {"a": a, "b": b, "dh": dh})
    return _run(backend, GATE_KERNELS[1], [a, b, dh], 2, dtype, n)


# ----------------------------------------------------------------------------- bench

BENCH_ELEMENTS = 1 << 20        # 4 MiB per float32 array
# Arrays each op reads and writes: the forward x -> y (a, b -> h), the backward x, dy -> dx
# (a, b, dh -> da, db).
_ARRAYS = {"gelu": (2, 3), "silu": (2, 3), "swiglu_gate": (3, 5)}


def _inputs(op: str, n: int, dtype, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    count = 2 if op == "swiglu_gate" else 1
    return [(3 * rng.standard_normal(n)).astype(dtype) for _ in range(count + 1)]


def bench_kernel(backend: str, op: str, pass_: str, n: int, dtype: str = "float32",
                 approximate: str = "none"):
    """One launch of ``op``'s forward or backward on n elements (inputs made here), waiting
    for it; the callable a BENCH entry times."""
    *ins, dout = _inputs(op, n, dtype)
    if backend == "cupy":
        import cupy
        ins, dout = [cupy.asarray(x) for x in ins], cupy.asarray(dout)
    if op == "gelu":
        fwd = lambda: gelu_forward(ins[0], approximate, backend=backend)  # noqa: E731
        bwd = lambda: gelu_backward(dout, ins[0], approximate, backend=backend)  # noqa: E731
    elif op == "silu":
        fwd = lambda: silu_forward(ins[0], backend=backend)  # noqa: E731
        bwd = lambda: silu_backward(dout, ins[0], backend=backend)  # noqa: E731
    else:
        fwd = lambda: swiglu_gate_forward(*ins, backend=backend)  # noqa: E731
        bwd = lambda: swiglu_gate_backward(dout, *ins, backend=backend)  # noqa: E731
    fn = fwd if pass_ == "forward" else bwd

    def run():
        out = fn()
        args_.synchronize(backend)
        return out
    return run


def bench_torch(device: str, op: str, pass_: str, n: int, dtype: str = "float32",
                approximate: str = "none"):
    """The same op in torch on ``device``: F.gelu, F.silu, F.silu(a) * b, and for the backward
    torch.autograd.grad through a graph made here."""
    import torch
    import torch.nn.functional as F
    *ins, dout = (torch.from_numpy(x).to(device) for x in _inputs(op, n, dtype))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ins = [x.requires_grad_(pass_ == "backward") for x in ins]
    if op == "gelu":
        f = lambda: F.gelu(ins[0], approximate=approximate)  # noqa: E731
    elif op == "silu":
        f = lambda: F.silu(ins[0])  # noqa: E731
    else:
        f = lambda: F.silu(ins[0]) * ins[1]  # noqa: E731
    if pass_ == "forward":
        def run():
            out = f()
            sync()
            return out
        return run
    out = f()

    def run_backward():
        grads = torch.autograd.grad(out, ins, dout, retain_graph=True)
        sync()
        return grads
    return run_backward


def _bench_entry(op: str, pass_: str, approximate: str = "none") -> dict:
    kwargs = {"op": op, "pass_": pass_, "n": BENCH_ELEMENTS, "dtype": "float32"}
    name = op
    if op == "gelu":
        kwargs["approximate"] = approximate
        name = f"gelu_{'erf' if approximate == 'none' else 'tanh'}"
    return {"name": f"{name} {pass_} n={BENCH_ELEMENTS}",
            "build": "gpu_cupy.elementwise:bench_kernel", "kwargs": kwargs,
            "bytes": _ARRAYS[op][pass_ == "backward"] * BENCH_ELEMENTS * 4, "flops": None,
            "torch": "gpu_cupy.elementwise:bench_torch"}


BENCH = [_bench_entry(op, pass_, form)
         for op, form in (("gelu", "none"), ("gelu", "tanh"), ("silu", "none"),
                          ("swiglu_gate", "none"))
         for pass_ in ("forward", "backward")]
