"""``crosscheck bench attention``: NumPy attention vs torch, and fused vs per-head MHA, timed.

Every figure is the wall time of one forward + backward, taken after one warm-up run of the same
call (``--repeat N`` takes the best of N runs instead of one). Rows:

1. Scaled dot-product attention at (B, H, T, D) = ``--shape`` (default (4, 8, 512, 64)), float32,
   without a mask and causal: ``ref_numpy.attention`` (batched) against torch CPU autograd of the
   same math (S = scale·QKᵀ, masked_fill, softmax, PV, then ``backward``). Target (issue 3):
   NumPy <= 1.5x torch (the ``met`` column). For context, also torch's fused
   ``F.scaled_dot_product_attention``. Torch's gradients are taken with ``torch.autograd.grad``,
   so no ``.grad`` accumulation is timed.
2. Multi-head self-attention at (B, T, C, H) = ``--mha-shape`` (default (4, 512, 512, 8)),
   causal: the fused form (one projection, one batched attention) against the per-head loop, and
   against ``torch.nn.MultiheadAttention`` under autograd.

Threads: torch's intra-op pool and NumPy's OpenBLAS pool are separate; each row reports both
sizes. ``--threads N`` sets both (torch.set_num_threads and OpenBLAS's own setter, found through
ctypes in the loaded library). On a machine whose cores are busy with other work, OpenBLAS's
spinning worker threads lose much more than torch's pool does: ``--threads 1`` then gives the
steadier comparison. Quick smoke run:
``crosscheck bench attention --shape 1 2 32 8 --mha-shape 1 16 8 2``.
"""
from __future__ import annotations

import argparse
import ctypes
import math
import os
import time

import numpy as np

from ref_numpy import attention, mha


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", type=int, nargs=4, default=[4, 8, 512, 64],
                        metavar=("B", "H", "T", "D"), help="SDPA shape (default 4 8 512 64)")
    parser.add_argument("--mha-shape", type=int, nargs=4, default=[4, 512, 512, 8],
                        metavar=("B", "T", "C", "H"), help="MHA shape (default 4 512 512 8)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeat", type=int, default=1,
                        help="timed runs after the warm-up; the best is reported (default 1)")
    parser.add_argument("--part", choices=("sdpa", "mha", "all"), default="all")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both torch and NumPy's OpenBLAS (default: unchanged)")
    parser.add_argument("--seed", type=int, default=0)


_OPENBLAS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_",
             "scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads",
             "openblas_set_num_threads", "openblas_get_num_threads")


def _openblas():
    """(set, get) functions of the OpenBLAS that NumPy loaded, or None (non-Linux, other BLAS)."""
    if not os.path.exists("/proc/self/maps"):
        return None
    with open("/proc/self/maps") as f:
        paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower()})
    for path in paths:
        lib = ctypes.CDLL(path)
        for setter, getter in zip(_OPENBLAS[::2], _OPENBLAS[1::2]):
            if hasattr(lib, setter) and hasattr(lib, getter):
                return getattr(lib, setter), getattr(lib, getter)
    return None


def _threads(n: int | None) -> str:
    """Set both thread pools to ``n`` (None: leave them); describe the sizes in use."""
    import torch

    blas = _openblas()
    if n is not None:
        if n < 1:
            raise SystemExit(f"--threads: expected an int >= 1 but got {n}")
        torch.set_num_threads(n)
        if blas is not None:
            blas[0](ctypes.c_int(n))
    nblas = str(blas[1]()) if blas is not None else "?"
    return f"torch {torch.get_num_threads()}, OpenBLAS {nblas}"


def _time(fn, repeat: int) -> float:
    """Seconds of one call: one warm-up call, then the best of ``repeat`` timed calls."""
    fn()
    best = math.inf
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _row(op, mask, shape, dtype, cand, cand_s, ref, ref_s, target=None) -> dict:
    """One table row; ``target`` is the largest allowed ratio, if the row has one."""
    ratio = cand_s / ref_s
    return {"op": op, "mask": mask, "shape": shape, "dtype": dtype, "candidate": cand,
            "candidate_s": cand_s, "reference": ref, "reference_s": ref_s, "ratio": ratio,
            "target": "-" if target is None else f"<= {target}",
            "met": "-" if target is None else ("yes" if ratio <= target else "no")}


def _sdpa_rows(args) -> list[dict]:
    import torch
    import torch.nn.functional as F

    B, H, T, D = args.shape
    rng = np.random.default_rng(args.seed)
    q, k, v, dout = (rng.standard_normal((B, H, T, D)).astype(args.dtype) for _ in range(4))
    tq, tk, tv = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (q, k, v))
    tdout = torch.from_numpy(dout)
    scale = 1.0 / math.sqrt(D)
    blocked = ~torch.ones(T, T, dtype=torch.bool).tril()
    shape = f"(B, H, T, D) = {tuple(args.shape)}"
    rows = []
    for causal in (False, True):
        def numpy_fb():
            out, cache = attention.attention_forward(q, k, v, causal=causal)
            attention.attention_backward(dout, cache)

        def torch_fb():
            s = (tq @ tk.transpose(-1, -2)) * scale
            if causal:
                s = s.masked_fill(blocked, float("-inf"))
            out = torch.softmax(s, dim=-1) @ tv
            torch.autograd.grad(out, (tq, tk, tv), tdout)

        def torch_sdpa_fb():
            out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
            torch.autograd.grad(out, (tq, tk, tv), tdout)

        mask = "causal" if causal else "none"
        t_np = _time(numpy_fb, args.repeat)
        t_torch = _time(torch_fb, args.repeat)
        t_sdpa = _time(torch_sdpa_fb, args.repeat)
        rows.append(_row("sdpa fwd+bwd", mask, shape, args.dtype, "numpy batched", t_np,
                         "torch autograd, same math", t_torch, 1.5))
        rows.append(_row("sdpa fwd+bwd", mask, shape, args.dtype, "numpy batched", t_np,
                         "torch F.scaled_dot_product_attention", t_sdpa))
    return rows


def _mha_rows(args) -> list[dict]:
    import torch

    B, T, C, H = args.mha_shape
    if C % H:
        raise SystemExit(f"--mha-shape: expected C divisible by H but got C = {C}, H = {H}")
    rng = np.random.default_rng(args.seed + 1)
    dt = args.dtype
    x = rng.standard_normal((B, T, C)).astype(dt)
    w_qkv = (rng.standard_normal((C, 3 * C)) / math.sqrt(C)).astype(dt)
    b_qkv = (0.1 * rng.standard_normal(3 * C)).astype(dt)
    w_o = (rng.standard_normal((C, C)) / math.sqrt(C)).astype(dt)
    b_o = (0.1 * rng.standard_normal(C)).astype(dt)
    dy = rng.standard_normal((B, T, C)).astype(dt)
    weights = (x, w_qkv, b_qkv, w_o, b_o)

    def numpy_fb(fwd, bwd):
        def run():
            y, cache = fwd(*weights, n_head=H, causal=True)
            bwd(dy, cache)
        return run

    module = torch.nn.MultiheadAttention(C, H, batch_first=True,
                                         dtype=getattr(torch, dt))
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.from_numpy(w_qkv.T.copy()))
        module.in_proj_bias.copy_(torch.from_numpy(b_qkv))
        module.out_proj.weight.copy_(torch.from_numpy(w_o.T.copy()))
        module.out_proj.bias.copy_(torch.from_numpy(b_o))
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    blocked = ~torch.ones(T, T, dtype=torch.bool).tril()

    def torch_fb():
        y, _ = module(tx, tx, tx, attn_mask=blocked, need_weights=False)
        torch.autograd.grad(y, (tx, *module.parameters()), torch.from_numpy(dy))

    shape = f"(B, T, C, H) = {tuple(args.mha_shape)}"
    t_fused = _time(numpy_fb(mha.mha_forward, mha.mha_backward), args.repeat)
    t_heads = _time(numpy_fb(mha.mha_forward_per_head, mha.mha_backward_per_head), args.repeat)
    t_torch = _time(torch_fb, args.repeat)
    return [_row("mha fwd+bwd", "causal", shape, dt, "numpy fused", t_fused,
                 "numpy per-head loop", t_heads),
            _row("mha fwd+bwd", "causal", shape, dt, "numpy fused", t_fused,
                 "torch nn.MultiheadAttention", t_torch)]


def run(args) -> list[dict]:
    """Rows: see the module docstring. Plain JSON-able values."""
    import torch

    blas = _openblas()
    before = (torch.get_num_threads(), blas[1]() if blas is not None else None)
    threads = _threads(args.threads)
    rows = []
    try:
        if args.part in ("sdpa", "all"):
            rows += _sdpa_rows(args)
        if args.part in ("mha", "all"):
            rows += _mha_rows(args)
    finally:  # leave both pools as they were
        torch.set_num_threads(before[0])
        if blas is not None:
            blas[0](ctypes.c_int(before[1]))
    for r in rows:
        r["threads"] = threads
    return rows
