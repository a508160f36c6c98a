"""Cases for the FlashAttention kernels (gpu_cupy.flash_attention) on OpenCL (PoCL) and CuPy.

Names read ``flash_gpu/<variant>/B.._H.._Hkv.._Tq.._Tk.._D.. Br.. Bc..``, where Br, Bc are the
kernels' tile sizes ("auto" = the launcher's defaults); the NumPy copy runs
``ref_numpy.flash_attention`` with the same tiles when given. Outputs compared: ``out`` and the
log-sum-exp ``lse`` (forward only: ``dout_for=("out",)``), and the gradients of q, k, v.

The shapes cover the kernel issue's list: T in {1, 17, 97, 256}, (Tq, Tk) = (13, 29) and
(29, 13) (fully masked rows), D in {16, 40, 64, 128, 192, 256}, causal on and off, H = 4 with
Hkv in {4, 2, 1}, and tiles that are not powers of two. FlashAttention's own test matrix and
bar, which are stricter, run in ``equivalence.fa_accuracy``.

Oracle: ``F.scaled_dot_product_attention`` with an explicit bottom-right causal mask and
``enable_gqa`` (torch_bridge.attention.sdpa), ``torch.logsumexp`` for lse. float32 baseline: the
naive ``ref_numpy.attention`` in float32 (the bar: a kernel's float32 error against float64 at
most 2x the naive float32 error). No finite-difference check here: the NumPy copy is the same
``ref_numpy.flash_attention`` that the ``flash/`` cases gradcheck.
"""
from __future__ import annotations

import numpy as np

from equivalence.registry import Case, register
from gpu_cupy import flash_attention as gpu_flash
from ref_numpy import attention, flash_attention
from torch_bridge import attention as oracle


def _kernel_backend(backend: str, causal: bool, block_q, block_k):
    """(inputs, douts) -> (outputs, grads) through the kernels on ``backend``."""
    def run(inputs, douts):
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        out, lse = gpu_flash.flash_attention_forward(q, k, v, causal=causal, block_q=block_q,
                                                     block_k=block_k, backend=backend)
        if douts is None:
            return {"out": out, "lse": lse}, None
        dq, dk, dv = gpu_flash.flash_attention_backward(q, k, v, out, lse, douts["out"],
                                                        causal=causal, block_q=block_q,
                                                        block_k=block_k, backend=backend)
        return {"out": out, "lse": lse}, {"q": dq, "k": dk, "v": dv}
    return run


def _naive_float32(causal: bool):
    """The plain same-precision implementation: ``ref_numpy.attention`` (naive, (Tq, Tk))."""
    def run(inputs, douts):
        out, cache = attention.attention_forward(inputs["q"], inputs["k"], inputs["v"],
                                                 causal=causal)
        if douts is None:
            return {"out": out, "lse": cache["lse"]}, None
        dq, dk, dv, _ = attention.attention_backward(douts["out"], cache)
        return {"out": out, "lse": cache["lse"]}, {"q": dq, "k": dk, "v": dv}
    return run


def make_flash_gpu_case(variant: str, B: int, H: int, Hkv: int, Tq: int, Tk: int, D: int, *,
                        causal: bool, block_q: int | None = None, block_k: int | None = None,
                        dtypes: tuple[str, ...] = ("float64", "float32")) -> Case:
    """The case ``flash_gpu/<variant>/<sizes> Br.. Bc..`` with the opencl and cupy backends
    (not registered: ``equivalence.sanitize`` builds its own small ones)."""
    tiles = {} if block_q is None else {"block_q": block_q, "block_k": block_k}

    def inputs(rng):
        return {"q": rng.standard_normal((B, H, Tq, D)),
                "k": rng.standard_normal((B, Hkv, Tk, D)),
                "v": rng.standard_normal((B, Hkv, Tk, D))}

    def forward(i):
        out, cache = flash_attention.flash_attention_forward(i["q"], i["k"], i["v"],
                                                             causal=causal, **tiles)
        return {"out": out, "lse": cache["lse"]}, cache

    def backward(d, cache):
        dq, dk, dv = flash_attention.flash_attention_backward(d["out"], cache)
        return {"q": dq, "k": dk, "v": dv}

    def torch_fn(t):
        return {"out": oracle.sdpa(t["q"], t["k"], t["v"], causal=causal),
                "lse": oracle.attention_lse(t["q"], t["k"], t["v"], causal=causal)}

    tile_name = f"Br{block_q} Bc{block_k}" if tiles else "Br,Bc auto"
    return Case(
        name=f"flash_gpu/{variant}/B{B}_H{H}_Hkv{Hkv}_Tq{Tq}_Tk{Tk}_D{D} {tile_name}",
        inputs=inputs, forward=forward, backward=backward, grad_wrt=("q", "k", "v"),
        torch=torch_fn, dout_for=("out",),
        backends={name: _kernel_backend(name, causal, block_q, block_k)
                  for name in ("opencl", "cupy")},
        baseline32=_naive_float32(causal), gradcheck=False, dtypes=dtypes)


# With Tq = Tk = 1 every probability is exactly 1, so the exact dq and dk are 0 and so is the
# float32 bar: the kernels must give exact zeros there (their Drow is summed like dP). Tiles fit
# 48 KiB of shared memory in float64 (CUDA's static limit, which the launcher enforces on every
# backend; tests/test_gpu_flash_attention.py checks this table).
BOTH = ("float64", "float32")
#         variant          B  H Hkv   Tq   Tk    D  causal  block_q block_k  dtypes
SHAPES = [("T=1",          2, 4, 2,    1,   1,  16, True,   None, None,     BOTH),
          ("decode",       2, 4, 2,    1,  17,  16, True,      1,    5,     BOTH),
          ("full",         1, 4, 4,   17,  17,  40, False,     5,    7,     BOTH),
          ("causal-tq<tk", 1, 4, 1,   13,  29,  16, True,      6,   10,     BOTH),
          ("causal-tq>tk", 1, 4, 4,   29,  13,  64, True,     12,    5,     BOTH),
          ("gqa-causal",   1, 4, 2,   97,  97,  64, True,   None, None,     BOTH),
          ("gqa-full",     1, 4, 2,   97,  97, 128, False,    12,    6,     BOTH),
          ("mqa-causal",   1, 4, 1,  256, 256, 128, True,   None, None,     BOTH),
          ("full",         1, 4, 4,  256, 256,  16, False,    40,   24,     BOTH),
          ("mqa-full",     1, 4, 1,   23,  17, 192, False,     6,    3,     BOTH),
          ("gqa-causal",   1, 4, 2,   37,  45, 256, True,   None, None,     BOTH)]
for _variant, *_sizes, _causal, _block_q, _block_k, _dtypes in SHAPES:
    register(make_flash_gpu_case(_variant, *_sizes, causal=_causal, block_q=_block_q,
                                 block_k=_block_k, dtypes=_dtypes))
