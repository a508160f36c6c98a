"""``crosscheck bench moe``: the NumPy mixture-of-experts layer against torch, forward + backward.

One forward + backward of the layer (router, top-k gates, SwiGLU experts, balance loss and
z-loss) at (T, C, E, k, F) = ``--shape`` (default (4096, 512, 8, 2, 1024): T tokens, width C,
E experts, k per token, expert hidden width F), no capacity drop, measured by the shared layer
(``equivalence.bench.common``: NumPy in one fresh child, torch in another, the same threads).
``ref_numpy.moe`` (sorted dispatch: gather each expert's tokens, run it, scatter-add) against

- the torch oracle of ``torch_bridge.moe``: a dense loop in which every expert runs on every
  token and a mask keeps its share (E / k times the expert FLOPs), target <= 1.5;
- what a user would write in torch: ``topk``, ``argsort`` by expert, ``index_select`` each
  expert's tokens and ``index_add`` the gated outputs back (the same FLOPs as NumPy): the
  headline.

Torch's gradients are taken with ``torch.autograd.grad`` for x and every weight, with upstream
gradients dy and 1 for the auxiliary loss. Quick smoke run:
``crosscheck bench moe --shape 37,8,3,2,6 --min-time 0``.
"""
from __future__ import annotations

import argparse
import math

import numpy as np

from equivalence.bench.common import (Side, add_timing_arguments, check_timing_arguments,
                                      measure, ratio_row, shape_type, thread_settings,
                                      timing_row)
from ref_numpy.moe_router import GATES

HERE = "equivalence.bench.moe"
DENSE_TARGET = 1.5          # NumPy / the torch dense loop
BALANCE_COEF, Z_COEF = 1e-2, 1e-3   # ST-MoE's defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", type=shape_type("T,C,E,k,F"), default=(4096, 512, 8, 2, 1024),
                        metavar="T,C,E,k,F", help="tokens, width, experts, experts per token, "
                                                  "expert hidden width (default 4096,512,8,2,1024)")
    parser.add_argument("--gate", choices=GATES, default="topk_softmax",
                        help="gate convention (default topk_softmax, Mixtral's)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    add_timing_arguments(parser)


# ----------------------------------------------------------------------------- builders
# Each runs in a bench child: it makes the inputs and returns the callable that is timed.

def _arrays(shape, dtype, seed):
    T, C, E, k, F = shape
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((T, C)).astype(dtype),
            "w_router": (rng.standard_normal((C, E)) / math.sqrt(C)).astype(dtype),
            "w1": (rng.standard_normal((E, C, F)) / math.sqrt(C)).astype(dtype),
            "w3": (rng.standard_normal((E, C, F)) / math.sqrt(C)).astype(dtype),
            "w2": (rng.standard_normal((E, F, C)) / math.sqrt(F)).astype(dtype),
            "dy": rng.standard_normal((T, C)).astype(dtype)}


def numpy_moe(shape, dtype, gate, seed):
    from ref_numpy import moe
    a = _arrays(shape, dtype, seed)

    def run():
        out, cache = moe.moe_forward(a["x"], a["w_router"], a["w1"], a["w3"], a["w2"],
                                     k=shape[3], gate=gate, balance_coef=BALANCE_COEF,
                                     z_coef=Z_COEF)
        return moe.moe_backward(a["dy"], cache)
    return run


def _torch_inputs(shape, dtype, seed):
    import torch
    a = {n: torch.from_numpy(v) for n, v in _arrays(shape, dtype, seed).items()}
    params = [a[n].requires_grad_(True) for n in ("x", "w_router", "w1", "w3", "w2")]
    return params, a["dy"], torch.ones((), dtype=a["dy"].dtype)


def torch_dense(shape, dtype, gate, seed):
    import torch
    from torch_bridge import moe as torch_moe
    params, dy, one = _torch_inputs(shape, dtype, seed)
    x, w_router, w1, w3, w2 = params

    def run():
        out = torch_moe.moe(x, w_router, w1, w3, w2, k=shape[3], gate=gate,
                            balance_coef=BALANCE_COEF, z_coef=Z_COEF)
        return torch.autograd.grad((out["y"], out["aux_loss"]), params, (dy, one))
    return run


def torch_sorted(shape, dtype, gate, seed):
    """The layer as a torch user writes it: sort the assignments by expert, index_select,
    index_add."""
    import torch
    import torch.nn.functional as F
    params, dy, one = _torch_inputs(shape, dtype, seed)
    x, w_router, w1, w3, w2 = params
    T, C, E, k, _ = shape

    def run():
        logits = x @ w_router                                          # (T, E)
        probs = F.softmax(logits, dim=1)
        top_l, top_e = logits.topk(k, dim=1)                           # (T, k)
        if gate == "topk_softmax":
            gates = F.softmax(top_l, dim=1)
        else:
            gates = probs.gather(1, top_e)
            if gate == "softmax_topk_renorm":
                gates = gates / gates.sum(dim=1, keepdim=True)
        flat = top_e.reshape(-1)                                       # (T·k,)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=E)
        tokens, g = order // k, gates.reshape(-1)[order]
        y = torch.zeros_like(x)
        start = 0
        for e, n in enumerate(counts.tolist()):
            idx = tokens[start:start + n]
            xe = x.index_select(0, idx)
            ye = (F.silu(xe @ w1[e]) * (xe @ w3[e])) @ w2[e]
            y = y.index_add(0, idx, ye * g[start:start + n, None])
            start += n
        f = counts.to(x.dtype) / (T * k)
        aux = (BALANCE_COEF * E * (f * probs.mean(dim=0)).sum()
               + Z_COEF * torch.logsumexp(logits, dim=1).pow(2).mean())
        return torch.autograd.grad((y, aux), params, (dy, one))
    return run


# ----------------------------------------------------------------------------- the bench

def _check(args) -> None:
    check_timing_arguments(args)
    _, _, E, k, _ = args.shape
    if k > E:
        raise ValueError(f"--shape: expected k <= E but got k = {k}, E = {E}")


def run(args) -> dict[str, list[dict]]:
    """Tables ``ratios`` (one row per comparison) and ``timings`` (one row per side)."""
    _check(args)
    common = dict(shape=list(args.shape), dtype=args.dtype, gate=args.gate, seed=args.seed)
    ctx = dict(op="moe fwd+bwd", shape=f"(T, C, E, k, F) = {tuple(args.shape)}",
               gate=args.gate, dtype=args.dtype)
    timings, ratios = [], []
    for threads in thread_settings(args):
        (mine,) = measure([Side("numpy moe, sorted dispatch", f"{HERE}:numpy_moe", common)],
                          args, threads)
        dense, user = measure(
            [Side("torch oracle, dense loop", f"{HERE}:torch_dense", common),
             Side("torch index_select/index_add", f"{HERE}:torch_sorted", common)],
            args, threads)
        timings += [timing_row(t, **ctx) for t in (mine, dense, user)]
        ratios.append(ratio_row(mine, user, "user's pick (headline)", **ctx))
        ratios.append(ratio_row(mine, dense, "dense loop", DENSE_TARGET, **ctx))
    return {"ratios": ratios, "timings": timings}
