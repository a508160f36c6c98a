"""``crosscheck bench attention``: NumPy attention against torch, forward + backward.

Every figure is one forward + backward on the same float inputs, measured by the shared layer
(``equivalence.bench.common``: NumPy sides in one fresh child, torch sides in another, the same
thread count for both, warm-up, repeats, median with min and max).

1. Scaled dot-product attention at (B, H, T, D) = ``--shape`` (default (4, 8, 512, 64)), without
   a mask and causal. ``ref_numpy.attention`` (batched) against
   - torch autograd of the same math (S = scale·QKᵀ, masked_fill, softmax, PV, then backward):
     the fair algorithmic comparison, target <= 1.0;
   - ``F.scaled_dot_product_attention``, what a user would call instead: the headline,
     target <= 2.0.
   Torch's gradients are taken with ``torch.autograd.grad``, so no ``.grad`` accumulation is
   timed.
2. Multi-head self-attention at (B, T, C, H) = ``--mha-shape`` (default (4, 512, 512, 8)),
   causal: ``ref_numpy.mha`` fused against ``torch.nn.MultiheadAttention`` (the headline),
   against torch autograd of the same math (one projection, heads, attention, output
   projection), and against the per-head loop of ``ref_numpy.mha``.

``--threads 1 2`` measures at both thread counts in one invocation. Quick smoke run:
``crosscheck bench attention --shape 1,2,32,8 --mha-shape 1,16,8,2 --min-time 0``.
"""
from __future__ import annotations

import argparse
import math

import numpy as np

from equivalence.bench.common import (Side, add_timing_arguments, check_timing_arguments,
                                      measure, ratio_row, shape_type, thread_settings,
                                      timing_row)

HERE = "equivalence.bench.attention"
SAME_MATH_TARGET = 1.0      # NumPy / torch autograd of the same math
SDPA_TARGET = 2.0           # NumPy / F.scaled_dot_product_attention


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", type=shape_type("B,H,T,D"), default=(4, 8, 512, 64),
                        metavar="B,H,T,D", help="SDPA shape (default 4,8,512,64)")
    parser.add_argument("--mha-shape", type=shape_type("B,T,C,H"), default=(4, 512, 512, 8),
                        metavar="B,T,C,H", help="MHA shape (default 4,512,512,8)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--part", choices=("sdpa", "mha", "all"), default="all")
    parser.add_argument("--seed", type=int, default=0)
    add_timing_arguments(parser)


# ----------------------------------------------------------------------------- builders
# Each runs in a bench child: it makes the inputs and returns the callable that is timed.

def _sdpa_arrays(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(4)]   # q, k, v, dout


def numpy_sdpa(shape, dtype, causal, seed):
    from ref_numpy import attention
    q, k, v, dout = _sdpa_arrays(shape, dtype, seed)

    def run():
        out, cache = attention.attention_forward(q, k, v, causal=causal)
        return attention.attention_backward(dout, cache)
    return run


def _torch_sdpa_inputs(shape, dtype, seed):
    import torch
    q, k, v, dout = (torch.from_numpy(a) for a in _sdpa_arrays(shape, dtype, seed))
    return [t.requires_grad_(True) for t in (q, k, v)], dout


def torch_sdpa_math(shape, dtype, causal, seed):
    import torch
    (q, k, v), dout = _torch_sdpa_inputs(shape, dtype, seed)
    T, D = shape[2], shape[3]
    blocked = ~torch.ones(T, T, dtype=torch.bool).tril()
    scale = 1.0 / math.sqrt(D)

    def run():
        s = (q @ k.transpose(-1, -2)) * scale
        if causal:
            s = s.masked_fill(blocked, float("-inf"))
        out = torch.softmax(s, dim=-1) @ v
        return torch.autograd.grad(out, (q, k, v), dout)
    return run


def torch_sdpa(shape, dtype, causal, seed):
    import torch
    import torch.nn.functional as F
    (q, k, v), dout = _torch_sdpa_inputs(shape, dtype, seed)

    def run():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return torch.autograd.grad(out, (q, k, v), dout)
    return run


def _mha_arrays(shape, dtype, seed):
    B, T, C, H = shape
    rng = np.random.default_rng(seed + 1)
    return {"x": rng.standard_normal((B, T, C)).astype(dtype),
            "w_qkv": (rng.standard_normal((C, 3 * C)) / math.sqrt(C)).astype(dtype),
            "b_qkv": (0.1 * rng.standard_normal(3 * C)).astype(dtype),
            "w_o": (rng.standard_normal((C, C)) / math.sqrt(C)).astype(dtype),
            "b_o": (0.1 * rng.standard_normal(C)).astype(dtype),
            "dy": rng.standard_normal((B, T, C)).astype(dtype)}


def numpy_mha(shape, dtype, seed, form):
    from ref_numpy import mha
    a = _mha_arrays(shape, dtype, seed)
    fwd, bwd = {"fused": (mha.mha_forward, mha.mha_backward),
                "per_head": (mha.mha_forward_per_head, mha.mha_backward_per_head)}[form]
    weights = (a["x"], a["w_qkv"], a["b_qkv"], a["w_o"], a["b_o"])

    def run():
        y, cache = fwd(*weights, n_head=shape[3], causal=True)
        return bwd(a["dy"], cache)
    return run


def torch_mha_math(shape, dtype, seed):
    import torch
    B, T, C, H = shape
    D = C // H
    t = {n: torch.from_numpy(v) for n, v in _mha_arrays(shape, dtype, seed).items()}
    params = [t[n].requires_grad_(True) for n in ("x", "w_qkv", "b_qkv", "w_o", "b_o")]
    x, w_qkv, b_qkv, w_o, b_o = params
    blocked = ~torch.ones(T, T, dtype=torch.bool).tril()

    def run():
        q, k, v = (x @ w_qkv + b_qkv).split(C, dim=-1)                   # (B, T, C) each
        q, k, v = (z.reshape(B, T, H, D).transpose(1, 2) for z in (q, k, v))   # (B, H, T, D)
        s = ((q @ k.transpose(-1, -2)) / math.sqrt(D)).masked_fill(blocked, float("-inf"))
        o = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        y = o @ w_o + b_o
        return torch.autograd.grad(y, params, t["dy"])
    return run


def torch_mha_module(shape, dtype, seed):
    import torch
    B, T, C, H = shape
    a = _mha_arrays(shape, dtype, seed)
    module = torch.nn.MultiheadAttention(C, H, batch_first=True, dtype=getattr(torch, dtype))
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.from_numpy(a["w_qkv"].T.copy()))
        module.in_proj_bias.copy_(torch.from_numpy(a["b_qkv"]))
        module.out_proj.weight.copy_(torch.from_numpy(a["w_o"].T.copy()))
        module.out_proj.bias.copy_(torch.from_numpy(a["b_o"]))
    x = torch.from_numpy(a["x"]).requires_grad_(True)
    dy = torch.from_numpy(a["dy"])
    blocked = ~torch.ones(T, T, dtype=torch.bool).tril()
    wrt = (x, *module.parameters())

    def run():
        y, _ = module(x, x, x, attn_mask=blocked, need_weights=False)
        return torch.autograd.grad(y, wrt, dy)
    return run


# ----------------------------------------------------------------------------- the bench

def _check(args) -> None:
    check_timing_arguments(args)
    B, T, C, H = args.mha_shape
    if C % H:
        raise ValueError(f"--mha-shape: expected C divisible by H but got C = {C}, H = {H}")


def _sdpa(args, threads, timings, ratios) -> None:
    common = dict(shape=list(args.shape), dtype=args.dtype, seed=args.seed)
    masks = {"none": False, "causal": True}
    np_sides = [Side("numpy batched", f"{HERE}:numpy_sdpa", {**common, "causal": c})
                for c in masks.values()]
    torch_sides = [Side(label, f"{HERE}:{fn}", {**common, "causal": c})
                   for c in masks.values()
                   for label, fn in (("torch autograd, same math", "torch_sdpa_math"),
                                     ("torch F.scaled_dot_product_attention", "torch_sdpa"))]
    np_t = measure(np_sides, args, threads)
    torch_t = measure(torch_sides, args, threads)
    shape = f"(B, H, T, D) = {tuple(args.shape)}"
    for i, mask in enumerate(masks):
        ctx = dict(op="sdpa fwd+bwd", mask=mask, shape=shape, dtype=args.dtype)
        same, sdpa = torch_t[2 * i], torch_t[2 * i + 1]
        timings += [timing_row(t, **ctx) for t in (np_t[i], same, sdpa)]
        ratios.append(ratio_row(np_t[i], sdpa, "user's pick (headline)", SDPA_TARGET, **ctx))
        ratios.append(ratio_row(np_t[i], same, "same math", SAME_MATH_TARGET, **ctx))


def _mha(args, threads, timings, ratios) -> None:
    common = dict(shape=list(args.mha_shape), dtype=args.dtype, seed=args.seed)
    np_t = measure([Side("numpy mha fused", f"{HERE}:numpy_mha", {**common, "form": "fused"}),
                    Side("numpy mha per-head loop", f"{HERE}:numpy_mha",
                         {**common, "form": "per_head"})], args, threads)
    torch_t = measure([Side("torch autograd, same math", f"{HERE}:torch_mha_math", common),
                       Side("torch nn.MultiheadAttention", f"{HERE}:torch_mha_module", common)],
                      args, threads)
    ctx = dict(op="mha fwd+bwd", mask="causal", shape=f"(B, T, C, H) = {tuple(args.mha_shape)}",
               dtype=args.dtype)
    timings += [timing_row(t, **ctx) for t in (*np_t, *torch_t)]
    fused, per_head = np_t
    same, module = torch_t
    ratios.append(ratio_row(fused, module, "user's pick (headline)", **ctx))
    ratios.append(ratio_row(fused, same, "same math", **ctx))
    ratios.append(ratio_row(fused, per_head, "fused vs per-head", **ctx))


def run(args) -> dict[str, list[dict]]:
    """Tables ``timings`` (one row per side) and ``ratios`` (one row per comparison)."""
    _check(args)
    timings, ratios = [], []
    for threads in thread_settings(args):
        if args.part in ("sdpa", "all"):
            _sdpa(args, threads, timings, ratios)
        if args.part in ("mha", "all"):
            _mha(args, threads, timings, ratios)
    return {"ratios": ratios, "timings": timings}
