"""Mixture-of-experts router: top-k choice, gate values, capacity, auxiliary losses.

One router serves the layer of ``ref_numpy.moe``. Tokens are the rows of x (N, C) (the layer
flattens (B, T) into N); the router scores every token against every expert,

    l = x W_g + b_g                                  logits (N, E)
    p = softmax(l)                                   router probabilities over all E experts

chooses k experts per token, gives each choice a gate value, decides which choices fit into the
experts' capacity, and adds the auxiliary losses. Shape letters: N tokens, C model width,
E experts, k experts per token, A = N·k assignments.

Choice (no gradient: the choice is piecewise constant in l). The k largest logits of each
token, largest first; on a tie the lower expert index wins. The choice is always made on the
logits, never on p: softmax is strictly increasing, so the choice is the same in exact
arithmetic, but two distinct logits can round to one float32 probability and become a tie.

Gate conventions (``gate=``), for the chosen experts e_0 … e_{k−1} of one token:

    "softmax_topk"         g_s = p_{e_s}                           softmax over all E, then top-k
                           Switch Transformer (Fedus et al. 2021, k = 1), DeepSeekMoE (Dai et
                           al. 2024), Qwen1.5/Qwen2-MoE checkpoints (norm_topk_prob false)
    "softmax_topk_renorm"  g_s = p_{e_s} / Σ_r p_{e_r}             ... then renormalised over k
                           GShard (Lepikhin et al. 2020, top-2), Qwen3-MoE checkpoints
                           (norm_topk_prob true)
    "topk_softmax"         g_s = exp(l_{e_s}) / Σ_r exp(l_{e_r})   top-k of l, softmax over k
                           Shazeer et al. 2017 (Softmax(KeepTopK(H(x), k))), Mixtral (Jiang et
                           al. 2024)

"softmax_topk_renorm" and "topk_softmax" are the same function in exact arithmetic
(exp(l_e) / Σ_r exp(l_{e_r}) = p_e / Σ_r p_{e_r}); they are computed, and differentiated, along
the two routes their models take, and agree to rounding. With k = 1 both give g ≡ 1, so the
router learns only from the auxiliary losses (which is why Switch does not renormalise).

Capacity (``capacity_factor``, None = no drop). Every expert takes at most

    capacity = ceil(capacity_factor · N·k / E)

assignments (Switch Transformer §2.2; the product is a float product). The assignments to one
expert are ranked in a priority order and those ranked capacity or later are dropped:

    "position"  choice rank first, then token position: every token's first choice comes before
                any second choice, and within one choice rank the earlier token wins (GShard's
                top-2 dispatch, Lepikhin et al. 2020, Algorithm 1; Switch for k = 1)
    "gate"      the larger gate value first, ties in "position" order (batch prioritised routing,
                Riquelme et al. 2021, with each assignment's own gate as its priority)

A dropped assignment contributes nothing to the layer's output and receives no gradient (a token
whose every choice is dropped passes through the residual connection outside the layer). Its gate
is still computed, and with "softmax_topk_renorm" or "topk_softmax" it stays in the normaliser of
the token's other gates, which therefore still depend on the dropped expert's logit.

Auxiliary losses, each multiplied by its coefficient and summed into ``aux_loss``:

    balance  L_bal = E · Σ_i f_i P_i                     (Switch Transformer eq. 4-6)
             f_i = (1 / (N·k)) · #{assignments routed to expert i}, before capacity drops,
                 a constant (no gradient: it counts a discrete choice);
             P_i = (1 / N) Σ_t p_{t,i}, the mean router probability (differentiable).
             k-scaling: f is a fraction of the N·k assignments (Σ_i f_i = 1), so L_bal = 1 for
             perfectly balanced routing whatever k is; implementations that count top-k hits per
             token (Σ_i f_i = k, e.g. Hugging Face's load_balancing_loss_func for Mixtral) report
             k times this value.
    z-loss   L_z = (1 / N) Σ_t (log Σ_e exp l_{t,e})²    (ST-MoE, Zoph et al. 2022, eq. 5)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ref_numpy._check import check_cache, check_float, check_same_dtype, check_shape

__all__ = ["GATES", "DROP_PRIORITIES", "Routing", "RoutingStats", "RouterOutput",
           "top_k_experts", "expert_capacity", "assign", "router_forward", "router_backward"]

GATES = ("softmax_topk", "softmax_topk_renorm", "topk_softmax")
DROP_PRIORITIES = ("position", "gate")


@dataclass(frozen=True)
class Routing:
    """Where every assignment goes: the permutation that dispatch and combine use.

    Assignment a = s·N + t is token t's choice of rank s (slot-major, the "position" priority
    order). ``order`` lists the kept assignments grouped by expert (expert 0 first) and, within
    one expert, in priority order; expert e's group is ``order[offsets[e]:offsets[e + 1]]``.
    """
    experts: np.ndarray      # (N, k) int, the chosen experts, largest logit first
    position: np.ndarray     # (N, k) int, rank of the assignment among those of its expert
    kept: np.ndarray         # (N, k) bool, position < capacity (all True without capacity)
    order: np.ndarray        # (A_kept,) int, kept assignments a = s·N + t grouped by expert
    offsets: np.ndarray      # (E + 1,) int, expert e's group is order[offsets[e]:offsets[e + 1]]
    tokens: np.ndarray       # (A_kept,) int, order % N: the token of each kept assignment
    slots: np.ndarray        # (A_kept,) int, order // N: its choice rank
    routed: np.ndarray       # (E,) int, assignments chosen per expert, before drops
    capacity: int | None     # None: no drop


@dataclass(frozen=True)
class RoutingStats:
    """What a training loop logs: plain Python numbers and int arrays."""
    tokens_per_expert: np.ndarray   # (E,) kept assignments per expert
    routed_per_expert: np.ndarray   # (E,) assignments chosen per expert, before drops
    dropped: int                    # assignments dropped by the capacity
    capacity: int | None
    balance_loss: float             # L_bal, before its coefficient
    z_loss: float                   # L_z, before its coefficient


class RouterOutput(NamedTuple):
    gates: np.ndarray        # (N, k) gate values, dropped assignments included
    routing: Routing
    aux_loss: np.ndarray     # () balance_coef · L_bal + z_coef · L_z, dtype of x
    stats: RoutingStats


# ----------------------------------------------------------------------------------------------
# Argument checks (shared with ref_numpy.moe)


def check_k(k, n_experts: int) -> int:
    """k experts per token: an int in [1, E]."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k: expected an int in [1, E] = [1, {n_experts}] but got "
                        f"{type(k).__name__} ({k!r})")
    if not 1 <= k <= n_experts:
        raise ValueError(f"k: expected an int in [1, E] = [1, {n_experts}] but got {k}")
    return int(k)


def check_choice(name: str, value, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed} but got {value!r}")
    return value


def check_capacity_factor(capacity_factor) -> float | None:
    """None (no drop) or a finite real number > 0."""
    if capacity_factor is None:
        return None
    if isinstance(capacity_factor, bool) or not isinstance(
            capacity_factor, (int, float, np.integer, np.floating)):
        raise TypeError(f"capacity_factor: expected a number > 0 or None (no drop) but got "
                        f"{type(capacity_factor).__name__} ({capacity_factor!r})")
    if not (math.isfinite(capacity_factor) and capacity_factor > 0):
        raise ValueError(f"capacity_factor: expected a number > 0 or None (no drop) but got "
                         f"{capacity_factor!r}")
    return float(capacity_factor)


def check_coef(name: str, value) -> float:
    """An auxiliary-loss coefficient: a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a finite number >= 0 but got "
                        f"{type(value).__name__} ({value!r})")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0 but got {value!r}")
    return float(value)


def check_daux(daux, dtype) -> np.floating:
    """The upstream gradient of ``aux_loss``: a finite real scalar (or a 0-d / one-element
    array), returned in ``dtype`` so that it does not promote the float32 arithmetic."""
    value = np.asarray(daux)
    if value.size != 1 or not (np.issubdtype(value.dtype, np.floating)
                               or np.issubdtype(value.dtype, np.integer)) or value.dtype == bool:
        raise TypeError(f"daux: expected a real scalar (the gradient of aux_loss) but got "
                        f"{daux!r}")
    if not np.isfinite(value).all():
        raise ValueError(f"daux: expected a finite scalar but got {daux!r}")
    return dtype.type(value.reshape(()))


# ----------------------------------------------------------------------------------------------
# The discrete part: choice, capacity, priority order (no gradient)


def top_k_experts(logits: np.ndarray, k: int) -> np.ndarray:
    """The k largest logits of each row, largest first; a tie goes to the lower expert index.

    >>> top_k_experts(np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]]), 2).tolist()
    [[1, 2], [0, 1]]
    """
    # a stable sort of −l keeps equal logits in index order
    return np.argsort(-logits, axis=-1, kind="stable")[:, :k]       # (N, k)


def expert_capacity(n_tokens: int, k: int, n_experts: int, capacity_factor) -> int | None:
    """ceil(capacity_factor · N·k / E) assignments per expert; None when capacity_factor is None.

    >>> expert_capacity(37, 2, 3, 0.75)
    19
    """
    capacity_factor = check_capacity_factor(capacity_factor)
    if capacity_factor is None:
        return None
    return math.ceil(capacity_factor * n_tokens * k / n_experts)


def assign(experts: np.ndarray, gates: np.ndarray, n_experts: int, capacity: int | None,
           drop_priority: str = "position") -> Routing:
    """Rank the assignments of each expert in priority order and keep the first ``capacity``.

    Assignment a = s·N + t (slot-major) is already in "position" order; "gate" order is a stable
    sort of the gates, largest first, so equal gates keep "position" order. A stable sort of the
    experts of the assignments, taken in priority order, groups them by expert without
    reordering a group; an assignment's rank in its group is its position.

    >>> r = assign(np.array([[1], [0], [1], [1]]), np.array([[.6], [.9], [.8], [.7]]), 2, 2)
    >>> r.position[:, 0].tolist(), r.kept[:, 0].tolist(), r.tokens.tolist()
    ([0, 0, 1, 2], [True, True, True, False], [1, 0, 2])
    >>> assign(np.array([[1], [0], [1], [1]]), np.array([[.6], [.9], [.8], [.7]]), 2, 2,
    ...        "gate").tokens.tolist()
    [1, 2, 3]

    Args:
        experts: (N, k) int, the chosen experts (:func:`top_k_experts`).
        gates: (N, k) gate values (read only for ``drop_priority="gate"``).
        n_experts: E.
        capacity: assignments per expert, or None (keep everything).
        drop_priority: "position" or "gate" (see the module docstring).
    Returns:
        :class:`Routing`.
    """
    check_choice("drop_priority", drop_priority, DROP_PRIORITIES)
    n, k = experts.shape
    e_flat = experts.T.reshape(-1)                                     # (A,) slot-major
    if drop_priority == "position":
        priority = np.arange(n * k)                                    # (A,)
    else:
        priority = np.argsort(-gates.T.reshape(-1), kind="stable")     # (A,)
    # group by expert, priority order inside each group
    order = priority[np.argsort(e_flat[priority], kind="stable")]     # (A,)
    routed = np.bincount(e_flat, minlength=n_experts)                 # (E,)
    starts = np.cumsum(routed) - routed                               # (E,)
    rank = np.empty(n * k, dtype=np.int64)                            # (A,)
    # rank in the group = place in ``order`` − the group's start
    rank[order] = np.arange(n * k) - np.repeat(starts, routed)
    position = rank.reshape(k, n).T                                    # (N, k)
    kept = np.ones((n, k), bool) if capacity is None else position < capacity
    kept_order = order[kept.T.reshape(-1)[order]]                      # (A_kept,)
    per_expert = routed if capacity is None else np.minimum(routed, capacity)
    offsets = np.concatenate(([0], np.cumsum(per_expert)))            # (E + 1,)
    return Routing(experts=experts, position=position, kept=kept, order=kept_order,
                   offsets=offsets, tokens=kept_order % n, slots=kept_order // n,
                   routed=routed, capacity=capacity)


# ----------------------------------------------------------------------------------------------
# The router op


def router_forward(x: np.ndarray, w_router: np.ndarray, b_router: np.ndarray | None = None, *,
                   k: int, gate: str = "softmax_topk", capacity_factor: float | None = None,
                   drop_priority: str = "position", balance_coef: float = 0.0,
                   z_coef: float = 0.0) -> tuple[RouterOutput, dict]:
    """Router logits, top-k choice, gate values, capacity and auxiliary losses.

        l = x W_g + b_g,  p = softmax(l),  chosen = top-k of l,  g = gate(l | chosen),
        aux_loss = balance_coef · E Σ_i f_i P_i + z_coef · (1/N) Σ_t lse(l_t)²

    Args:
        x: (N, C) float32 or float64 tokens.
        w_router: (C, E) router weight, dtype of x.
        b_router: (E,) router bias, or None.
        k: experts per token, an int in [1, E].
        gate: one of :data:`GATES` (see the module docstring).
        capacity_factor: a number > 0, or None for no drop.
        drop_priority: "position" or "gate".
        balance_coef, z_coef: coefficients >= 0 of the two auxiliary losses.
    Returns:
        out: :class:`RouterOutput` (gates (N, k), routing, aux_loss (), stats).
        cache: {"op": "router_forward", "x", "w_router", "has_bias", "p" (N, E), "lse" (N,),
            "experts" (N, k), "gates" (N, k), "norm" (N, 1) the renormaliser Σ_r p_{e_r} (or
            None), "gate", "f" (E,), "balance_coef", "z_coef"}.
    """
    check_float("x", x, ndim=2)
    check_float("w_router", w_router, ndim=2)
    n, c = x.shape
    if n == 0:
        raise ValueError(f"x: expected at least one token but got shape {x.shape}")
    check_shape("w_router", w_router, (c, None), "(C, E)")
    e = w_router.shape[1]
    if e == 0:
        raise ValueError(f"w_router: expected at least one expert but got shape {w_router.shape}")
    check_same_dtype(x=x, w_router=w_router)
    if b_router is not None:
        check_float("b_router", b_router, ndim=1)
        check_shape("b_router", b_router, (e,), "(E,)")
        check_same_dtype(x=x, b_router=b_router)
    k = check_k(k, e)
    check_choice("gate", gate, GATES)
    check_choice("drop_priority", drop_priority, DROP_PRIORITIES)
    capacity = expert_capacity(n, k, e, capacity_factor)
    balance_coef = check_coef("balance_coef", balance_coef)
    z_coef = check_coef("z_coef", z_coef)
    dt = x.dtype.type

    logits = x @ w_router                                              # (N, E)
    if b_router is not None:
        logits += b_router
    # p = softmax(l) = exp(l − m) / Σ exp(l − m),  m = max_e l
    m = logits.max(axis=1, keepdims=True)                              # (N, 1)
    ex = np.exp(logits - m)                                            # (N, E)
    z = ex.sum(axis=1, keepdims=True)                                  # (N, 1)
    p = ex / z                                                         # (N, E)
    # lse_t = m_t + log Σ_e exp(l_te − m_t)
    lse = (m + np.log(z))[:, 0]                                        # (N,)
    experts = top_k_experts(logits, k)                                 # (N, k)
    norm = None
    if gate == "topk_softmax":
        # g = softmax over the chosen logits; slot 0 holds their maximum
        lc = np.take_along_axis(logits, experts, axis=1)               # (N, k)
        ec = np.exp(lc - lc[:, :1])                                    # (N, k)
        gates = ec / ec.sum(axis=1, keepdims=True)                     # (N, k)
    else:
        # g_s = p_{e_s}
        gates = np.take_along_axis(p, experts, axis=1)                 # (N, k)
        if gate == "softmax_topk_renorm":
            # g_s = p_{e_s} / Σ_r p_{e_r}
            norm = gates.sum(axis=1, keepdims=True)                    # (N, 1)
            gates = gates / norm
    routing = assign(experts, gates, e, capacity, drop_priority)
    # f_i = #{assignments routed to i} / (N·k), a constant
    f = (routing.routed / (n * k)).astype(x.dtype)                     # (E,)
    # L_bal = E Σ_i f_i P_i,  P_i = (1/N) Σ_t p_ti
    balance = dt(e) * np.dot(f, p.mean(axis=0))
    # L_z = (1/N) Σ_t lse_t²
    zloss = np.mean(lse * lse)
    aux = np.asarray(dt(balance_coef) * balance + dt(z_coef) * zloss, dtype=x.dtype)
    kept_per_expert = np.bincount(experts[routing.kept], minlength=e)
    stats = RoutingStats(tokens_per_expert=kept_per_expert, routed_per_expert=routing.routed,
                         dropped=int(n * k - routing.kept.sum()), capacity=capacity,
                         balance_loss=float(balance), z_loss=float(zloss))
    cache = {"op": "router_forward", "x": x, "w_router": w_router,
             "has_bias": b_router is not None, "p": p, "lse": lse, "experts": experts,
             "gates": gates, "norm": norm, "gate": gate, "f": f, "balance_coef": balance_coef,
             "z_coef": z_coef}
    return RouterOutput(gates, routing, aux, stats), cache


def router_backward(dgates: np.ndarray, cache: dict, *, daux=1.0,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of the router with respect to x, W_g and b_g.

    Upstream: dg (N, k) = ∂L/∂g (the layer passes 0 for dropped assignments) and
    daux = ∂L/∂aux_loss (1 when aux_loss is added to the training loss). The choice and f are
    constants, so every path runs through p, l or the chosen entries of l. For one token, with
    chosen experts e_s and ⟨a, b⟩ a sum over its k slots:

    Gates (one of):
        g_s = p_{e_s}                  ∂g_s/∂p_{e_r} = δ_sr
            →  dp_{e_s} = dg_s
        g_s = p_{e_s} / Z,  Z = Σ_r p_{e_r}
                                       ∂g_s/∂p_{e_r} = δ_sr / Z − p_{e_s} / Z² = (δ_sr − g_s) / Z
            →  dp_{e_r} = Σ_s dg_s (δ_sr − g_s) / Z = (dg_r − ⟨dg, g⟩) / Z
        g = softmax(l_{e_0}, …, l_{e_{k−1}})
                                       ∂g_s/∂l_{e_r} = g_s (δ_sr − g_r)
            →  dl_{e_r} = g_r (dg_r − ⟨dg, g⟩)       (no path through p)
      Unchosen experts get nothing from the gates.
    Balance loss, L_bal = E Σ_i f_i (1/N) Σ_t p_ti:
            →  dp_ti += daux · balance_coef · E f_i / N
    Softmax over all E, p = softmax(l), ∂p_j/∂l_i = p_j (δ_ij − p_i):
            →  dl_i = Σ_j dp_j p_j (δ_ij − p_i) = p_i (dp_i − Σ_j dp_j p_j)
    z-loss, L_z = (1/N) Σ_t lse_t², ∂lse_t/∂l_ti = p_ti:
            →  dl_ti += daux · z_coef · 2 lse_t p_ti / N
    Logits, l = x W_g + b_g:
            →  dx = dl W_gᵀ,   dW_g = xᵀ dl,   db_g = Σ_t dl_t

    Args:
        dgates: (N, k), the gradient of the loss with respect to ``out.gates``.
        cache: from :func:`router_forward`.
        daux: the gradient of the loss with respect to ``out.aux_loss`` (a real scalar).
    Returns:
        (dx (N, C), dw_router (C, E), db_router (E,) or None without a bias).
    """
    check_cache(cache, "router_forward")
    x, w, p, lse = cache["x"], cache["w_router"], cache["p"], cache["lse"]
    experts, gates = cache["experts"], cache["gates"]
    check_float("dgates", dgates, ndim=2)
    check_shape("dgates", dgates, gates.shape, "(N, k), the shape of the gates")
    check_same_dtype(x=x, dgates=dgates)
    daux = check_daux(daux, x.dtype)
    dt = x.dtype.type
    n, e = p.shape
    dp = np.zeros_like(p)                                              # (N, E)
    dl = np.zeros_like(p)                                              # (N, E)
    # ⟨dg, g⟩ per token
    dg_g = np.sum(dgates * gates, axis=1, keepdims=True)               # (N, 1)
    if cache["gate"] == "topk_softmax":
        # dl_{e_r} = g_r (dg_r − ⟨dg, g⟩)
        np.put_along_axis(dl, experts, gates * (dgates - dg_g), axis=1)
    elif cache["gate"] == "softmax_topk_renorm":
        # dp_{e_r} = (dg_r − ⟨dg, g⟩) / Z
        np.put_along_axis(dp, experts, (dgates - dg_g) / cache["norm"], axis=1)
    else:
        # dp_{e_s} = dg_s
        np.put_along_axis(dp, experts, dgates, axis=1)
    # dp_ti += daux · α · E f_i / N
    dp += daux * dt(cache["balance_coef"] * e / n) * cache["f"]
    # dl_i += p_i (dp_i − Σ_j dp_j p_j)
    dl += p * (dp - np.sum(dp * p, axis=1, keepdims=True))
    # dl_ti += daux · β · 2 lse_t p_ti / N
    dl += (daux * dt(2.0 * cache["z_coef"] / n) * lse)[:, None] * p
    dx = dl @ w.T                                                      # (N, C)
    dw = x.T @ dl                                                      # (C, E)
    db = dl.sum(axis=0) if cache["has_bias"] else None                 # (E,)
    return dx, dw, db
