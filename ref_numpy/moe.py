"""Mixture-of-experts feed-forward layer: top-k routed SwiGLU experts, optional shared expert.

    y_t = Σ_s κ_ts g_ts · FFN_{e_ts}(x_t)  [+ FFN_shared(x_t)]

Shazeer et al. 2017 ("Outrageously Large Neural Networks", arXiv:1701.06538) for the sparsely
gated layer; Switch Transformer (Fedus et al. 2021, arXiv:2101.03961) for capacity and the
load-balancing loss; GShard (Lepikhin et al. 2020, arXiv:2006.16668) for top-2 dispatch;
Mixtral (Jiang et al. 2024, arXiv:2401.04088) for SwiGLU experts with top-2 of 8; DeepSeekMoE
(Dai et al. 2024, arXiv:2401.06066) for the always-on shared expert; ST-MoE (Zoph et al. 2022,
arXiv:2202.08906) for the router z-loss.

For token t: e_ts is its choice of rank s (s = 0 … k − 1), g_ts the gate value and κ_ts ∈ {0, 1}
whether the assignment fits into its expert's capacity; all three come from the router
(``ref_numpy.moe_router``, whose docstring defines the gate conventions, the capacity, the drop
priority and the auxiliary losses). Every expert is the SwiGLU feed-forward of
``ref_numpy.swiglu``, FFN_e(x) = (silu(x W1_e) * (x W3_e)) W2_e, and the layer reuses its forward
and backward on each expert's slice of tokens.

Shape letters: x (..., C) with the leading dims flattened into N tokens; E experts; F the hidden
width of an expert, Fs that of the shared expert; A = N·k assignments. Weights are stored
(in, out) and stacked over experts: W1, W3 (E, C, F), W2 (E, F, C); the router's W_g (C, E).

Dispatch and combine (no loop over tokens): the router's ``Routing`` lists the kept assignments
grouped by expert (``order``, ``offsets``, and their ``tokens`` and ``slots``). For each expert
the layer gathers its tokens' rows of x, runs the expert on that slice and adds the gated result
back into those rows of y. Within one expert a token appears at most once (its k choices are
distinct), so the scatter-add is a plain indexed ``+=``. A dropped assignment is never gathered:
it adds nothing to y and nothing to any gradient but its router's (through the gate
normaliser, see ``moe_router``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ref_numpy import moe_router, swiglu
from ref_numpy._check import check_cache, check_float, check_same_dtype, check_shape
from ref_numpy.moe_router import Routing, RoutingStats

__all__ = ["MoEOutput", "MoEGrads", "moe_forward", "moe_backward"]


class MoEOutput(NamedTuple):
    y: np.ndarray            # (..., C), the layer's output (add the residual outside)
    aux_loss: np.ndarray     # () balance_coef · L_bal + z_coef · L_z, dtype of x
    stats: RoutingStats      # tokens per expert, drops, the raw balance and z losses
    routing: Routing         # the permutation: which assignment went where


class MoEGrads(NamedTuple):
    x: np.ndarray                    # (..., C)
    w_router: np.ndarray             # (C, E)
    b_router: np.ndarray | None      # (E,), None without a router bias
    w1: np.ndarray                   # (E, C, F)
    w3: np.ndarray                   # (E, C, F)
    w2: np.ndarray                   # (E, F, C)
    shared_w1: np.ndarray | None     # (C, Fs), None without a shared expert
    shared_w3: np.ndarray | None     # (C, Fs)
    shared_w2: np.ndarray | None     # (Fs, C)


def _check_weights(x, w_router, w1, w3, w2, shared):
    """Shapes and dtypes of every weight against x (..., C) and against each other."""
    check_float("x", x)
    if x.ndim < 1:
        raise ValueError(f"x: expected shape (..., C) but got {x.shape}")
    c = x.shape[-1]
    for name, w in (("w1", w1), ("w3", w3), ("w2", w2)):
        check_float(name, w, ndim=3)
    check_shape("w1", w1, (None, c, None), f"(E, C, F) with C = {c} from x")
    e, _, f = w1.shape
    if e == 0:
        raise ValueError(f"w1: expected at least one expert but got shape {w1.shape}")
    check_shape("w3", w3, w1.shape, "(E, C, F), the shape of w1")
    check_shape("w2", w2, (e, f, c), "(E, F, C)")
    check_float("w_router", w_router, ndim=2)
    check_shape("w_router", w_router, (c, e), "(C, E)")
    check_same_dtype(x=x, w_router=w_router, w1=w1, w3=w3, w2=w2)
    given = [w is not None for w in shared]
    if any(given) and not all(given):
        missing = [n for n, g in zip(("shared_w1", "shared_w3", "shared_w2"), given) if not g]
        raise ValueError(f"shared_w1, shared_w3, shared_w2: expected all three or none but "
                         f"{', '.join(missing)} missing")
    if all(given):
        s1, s3, s2 = shared
        for name, w in (("shared_w1", s1), ("shared_w3", s3), ("shared_w2", s2)):
            check_float(name, w, ndim=2)
        check_shape("shared_w1", s1, (c, None), f"(C, Fs) with C = {c} from x")
        check_shape("shared_w3", s3, s1.shape, "(C, Fs), the shape of shared_w1")
        check_shape("shared_w2", s2, (s1.shape[1], c), "(Fs, C)")
        check_same_dtype(x=x, shared_w1=s1, shared_w3=s3, shared_w2=s2)


def moe_forward(x: np.ndarray, w_router: np.ndarray, w1: np.ndarray, w3: np.ndarray,
                w2: np.ndarray, *, k: int, b_router: np.ndarray | None = None,
                gate: str = "softmax_topk", capacity_factor: float | None = None,
                drop_priority: str = "position", shared_w1: np.ndarray | None = None,
                shared_w3: np.ndarray | None = None, shared_w2: np.ndarray | None = None,
                balance_coef: float = 0.0, z_coef: float = 0.0) -> tuple[MoEOutput, dict]:
    """Mixture-of-experts layer: y_t = Σ_s κ_ts g_ts FFN_{e_ts}(x_t) [+ FFN_shared(x_t)].

    Args:
        x: (..., C) float32 or float64 tokens.
        w_router: (C, E) router weight; b_router: (E,) router bias or None.
        w1, w3: (E, C, F) gate and up weights of the experts; w2: (E, F, C) down weights.
        k: experts per token, an int in [1, E].
        gate: "softmax_topk", "softmax_topk_renorm" or "topk_softmax" (``moe_router``).
        capacity_factor: capacity = ceil(capacity_factor · N·k / E) per expert; None: no drop.
        drop_priority: "position" or "gate": which assignments a full expert keeps.
        shared_w1, shared_w3 (C, Fs), shared_w2 (Fs, C): an always-on shared expert, or None.
        balance_coef, z_coef: coefficients >= 0 of the load-balancing loss and the z-loss.
    Returns:
        out: :class:`MoEOutput` (y (..., C), aux_loss (), stats, routing).
        cache: {"op": "moe_forward", "x_shape", "router": the cache of
            ``moe_router.router_forward``, "routing", "gates" (N, k), "experts": per expert
            None (no token) or (the cache of ``swiglu_forward`` on its slice, its output
            (n_e, C)), "w1_shape", "w2_shape", "shared": the shared expert's swiglu cache or
            None}.
    """
    shared = (shared_w1, shared_w3, shared_w2)
    _check_weights(x, w_router, w1, w3, w2, shared)
    c = x.shape[-1]
    x2 = x.reshape(-1, c)                                              # (N, C)
    r, router_cache = moe_router.router_forward(
        x2, w_router, b_router, k=k, gate=gate, capacity_factor=capacity_factor,
        drop_priority=drop_priority, balance_coef=balance_coef, z_coef=z_coef)
    rt = r.routing
    y2 = np.zeros_like(x2)                                             # (N, C)
    expert_caches = []
    for e in range(w1.shape[0]):
        lo, hi = rt.offsets[e], rt.offsets[e + 1]
        if lo == hi:
            expert_caches.append(None)
            continue
        tok = rt.tokens[lo:hi]                                         # (n_e,)
        g = r.gates[tok, rt.slots[lo:hi]]                              # (n_e,)
        # FFN_e on the gathered rows
        ye, ce = swiglu.swiglu_forward(x2[tok], w1[e], w3[e], w2[e])  # (n_e, C)
        # y_t += g_ts FFN_e(x_t), one row per token
        y2[tok] += g[:, None] * ye
        expert_caches.append((ce, ye))
    shared_cache = None
    if shared_w1 is not None:
        # y_t += FFN_shared(x_t)
        ys, shared_cache = swiglu.swiglu_forward(x2, shared_w1, shared_w3, shared_w2)
        y2 += ys
    cache = {"op": "moe_forward", "x_shape": x.shape, "router": router_cache, "routing": rt,
             "gates": r.gates, "experts": expert_caches, "w1_shape": w1.shape,
             "w2_shape": w2.shape, "shared": shared_cache}
    return MoEOutput(y2.reshape(x.shape), r.aux_loss, r.stats, rt), cache


def moe_backward(dy: np.ndarray, cache: dict, *, daux=1.0) -> MoEGrads:
    """Gradients of the layer with respect to x, the router and every expert's weights.

    Forward, token t, kept assignments only (κ_ts = 1):

        y_t = Σ_s g_ts FFN_{e_ts}(x_t) + FFN_shared(x_t),   g = gate(l),  l = x W_g + b_g,
        L   = … + daux · aux_loss(l)

    Given dy = ∂L/∂y, line by line:

        y_t ∋ g_ts u_ts,  u_ts = FFN_e(x_t)
            →  dg_ts = ⟨dy_t, u_ts⟩ if κ_ts = 1, else 0     (a dropped assignment is not in y)
            →  du_ts = g_ts dy_t                              (the expert's upstream gradient)
        u_ts = FFN_e(x_t)
            →  dx_t += ∂FFN_e/∂x ᵀ du_ts,  dW1_e, dW3_e, dW2_e += their share
                                                 (``swiglu_backward`` on expert e's slice: its
                                                  weight gradients sum over the slice's rows)
        shared: dx_t += ∂FFN_shared/∂x ᵀ dy_t,  dWs = ``swiglu_backward(dy, ...)``
        g and aux_loss from l, l from x:
            →  dx += ``router_backward(dg, daux)``'s dx, and dW_g, db_g from it
                                                 (its docstring derives the gate, balance-loss
                                                  and z-loss paths; the top-k choice and the
                                                  capacity decision carry no gradient)

    An expert with no kept assignment gets zero weight gradients. Only the kept rows are ever
    gathered, so neither dx nor any expert weight receives gradient through a dropped
    assignment.

    Args:
        dy: (..., C), the gradient of the loss with respect to ``out.y``.
        cache: from :func:`moe_forward`.
        daux: the gradient of the loss with respect to ``out.aux_loss`` (a real scalar; 1 when
            aux_loss is added to the training loss).
    Returns:
        :class:`MoEGrads` (x, w_router, b_router, w1, w3, w2, shared_w1, shared_w3,
        shared_w2), None for a bias or shared expert that was not given.
    """
    check_cache(cache, "moe_forward")
    router_cache, rt, gates = cache["router"], cache["routing"], cache["gates"]
    check_float("dy", dy)
    check_shape("dy", dy, cache["x_shape"], "(..., C), the shape of x")
    check_same_dtype(x=router_cache["x"], dy=dy)
    c = cache["x_shape"][-1]
    dy2 = dy.reshape(-1, c)                                            # (N, C)
    dtype = dy.dtype
    dx2 = np.zeros_like(dy2)                                           # (N, C)
    dgates = np.zeros_like(gates)                                      # (N, k)
    dw1 = np.zeros(cache["w1_shape"], dtype)                           # (E, C, F)
    dw3 = np.zeros(cache["w1_shape"], dtype)                           # (E, C, F)
    dw2 = np.zeros(cache["w2_shape"], dtype)                           # (E, F, C)
    for e, entry in enumerate(cache["experts"]):
        if entry is None:
            continue
        ce, ye = entry
        lo, hi = rt.offsets[e], rt.offsets[e + 1]
        tok, slot = rt.tokens[lo:hi], rt.slots[lo:hi]                  # (n_e,) each
        dye = dy2[tok]                                                 # (n_e, C)
        # dg_ts = ⟨dy_t, u_ts⟩
        dgates[tok, slot] = np.vecdot(dye, ye)
        # du_ts = g_ts dy_t, then back through FFN_e
        g = gates[tok, slot]                                           # (n_e,)
        dxe, dw1[e], dw3[e], dw2[e] = swiglu.swiglu_backward(g[:, None] * dye, ce)
        dx2[tok] += dxe
    shared = (None, None, None)
    if cache["shared"] is not None:
        dxs, *shared = swiglu.swiglu_backward(dy2, cache["shared"])
        dx2 += dxs
    dxr, dw_router, db_router = moe_router.router_backward(dgates, router_cache, daux=daux)
    dx2 += dxr
    return MoEGrads(dx2.reshape(cache["x_shape"]), dw_router, db_router, dw1, dw3, dw2, *shared)
