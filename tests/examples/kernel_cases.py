"""A user's kernel as a candidate: scaled_tanh.cu on OpenCL against NumPy and torch autograd.

    crosscheck run --cases tests/examples/kernel_cases.py        # values, both dtypes
    crosscheck sanitize --cases tests/examples/kernel_cases.py   # under Oclgrind
"""
from pathlib import Path

import numpy as np
import torch

from equivalence import register
from gpu_cupy import runtime

KERNEL = str(Path(__file__).with_name("scaled_tanh.cu"))
THREADS, A, B = 16, 1.5, 0.7


def launch(kernel, x, *more, source=KERNEL):
    """Run one kernel of ``source`` over the elements of x (and ``more`` arrays like it)."""
    defines = {"NUM_THREADS": THREADS, **({"REAL_IS_DOUBLE": 1} if x.dtype == np.float64 else {})}
    program = runtime.build("opencl", source, defines)
    out = runtime.empty("opencl", x.shape, x.dtype)
    arrays = [runtime.to_device("opencl", np.ascontiguousarray(a)) for a in (x, *more)]
    runtime.launch(program, kernel, grid=(-(-x.size // THREADS),), block=(THREADS,),
                   args=(*arrays, out, x.dtype.type(A), x.dtype.type(B), np.int32(x.size)))
    return runtime.to_host(out)


def kernel_forward(x):                 # the candidate: same signatures as the NumPy pair
    return launch("scaled_tanh_forward", x), x


def kernel_backward(dout, x):
    return launch("scaled_tanh_backward", x, dout)


def forward(x):                        # NumPy: y = a tanh(b x)
    return A * np.tanh(B * x), x


def backward(dy, x):                   # dy/dx = a b (1 − tanh²(b x))
    return dy * A * B * (1 - np.tanh(B * x) ** 2)


register("my/scaled_tanh_kernel", forward, backward, cache=True,
         inputs=lambda rng: {"x": rng.standard_normal(37)},
         torch_fn=lambda x: A * torch.tanh(B * x),
         candidates={"opencl": (kernel_forward, kernel_backward)})
