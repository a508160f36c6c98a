"""Torch oracle for the mixture-of-experts layer of ``ref_numpy.moe``: a dense loop over experts.

Same conventions as ``ref_numpy.moe_router`` (gate conventions, tie-break, capacity, drop
priority, auxiliary losses), written the simple way and without sorting:

- choice: rank_te = #{j : l_tj > l_te} + #{j < e : l_tj = l_te}; expert e is chosen iff
  rank_te < k, and rank_te is its slot (so the lower index wins a tie);
- gates as a dense (N, E) matrix G, zero outside the chosen experts;
- capacity: the position of assignment (t, e) in expert e is the number of assignments (t', e)
  that come before it in priority order, counted by comparing every pair of tokens;
- output: y = Σ_e (G ⊙ kept)[:, e] · FFN_e(x), every expert run on every token.

The choice and the capacity decision are computed from the same logits under ``no_grad`` and
then held constant: the gradient flows only through G, the router probabilities and the
experts, as in the NumPy layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from torch_bridge.oracles import swiglu


def expert_rank(logits: torch.Tensor) -> torch.Tensor:
    """(N, E) int: how many experts come before e for token t (larger logit, or equal logit and
    lower index)."""
    li, lj = logits[:, :, None], logits[:, None, :]                    # (N, E, 1), (N, 1, E)
    e = torch.arange(logits.shape[1], device=logits.device)
    lower = e[None, :] < e[:, None]                                    # (E, E): j < e
    return ((lj > li) | ((lj == li) & lower)).sum(dim=2)               # (N, E)


def dense_gates(logits: torch.Tensor, chosen: torch.Tensor, gate: str) -> torch.Tensor:
    """(N, E) gate matrix from the logits, zero outside ``chosen`` (N, E) bool; differentiable."""
    if gate == "topk_softmax":
        return F.softmax(logits.masked_fill(~chosen, float("-inf")), dim=1)
    if gate not in ("softmax_topk", "softmax_topk_renorm"):
        raise ValueError(f"gate: unknown convention {gate!r}")
    g = F.softmax(logits, dim=1) * chosen
    return g / g.sum(dim=1, keepdim=True) if gate == "softmax_topk_renorm" else g


def kept_mask(rank: torch.Tensor, chosen: torch.Tensor, gates: torch.Tensor,
              capacity: int | None, drop_priority: str) -> torch.Tensor:
    """(N, E) bool: the chosen assignments that fit into their expert's capacity.

    Assignment (t', e) comes before (t, e) when its slot is lower, or the slot is equal and
    t' < t ("position"); with "gate", a larger gate comes first and equal gates fall back to
    that order.
    """
    if capacity is None:
        return chosen
    n = rank.shape[0]
    t = torch.arange(n, device=rank.device)
    key = rank * n + t[:, None]                                        # (N, E) slot-major
    earlier = key[:, None, :] < key[None, :, :]                        # (N', N, E)
    if drop_priority == "gate":
        g1, g2 = gates[:, None, :], gates[None, :, :]
        earlier = (g1 > g2) | ((g1 == g2) & earlier)
    elif drop_priority != "position":
        raise ValueError(f"drop_priority: unknown order {drop_priority!r}")
    position = (earlier & chosen[:, None, :]).sum(dim=0)               # (N, E)
    return chosen & (position < capacity)


def route(logits: torch.Tensor, k: int, gate: str, capacity_factor: float | None,
          drop_priority: str) -> dict:
    """The discrete routing decision, without gradient: "chosen" and "kept" (N, E) bool, "rank"
    (N, E) slot of each expert, "capacity" (int or None)."""
    n, e = logits.shape
    with torch.no_grad():
        l = logits.detach()
        rank = expert_rank(l)
        chosen = rank < k
        capacity = None if capacity_factor is None else math.ceil(capacity_factor * n * k / e)
        kept = kept_mask(rank, chosen, dense_gates(l, chosen, gate), capacity, drop_priority)
    return {"chosen": chosen, "kept": kept, "rank": rank, "capacity": capacity}


def moe(x: torch.Tensor, w_router: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
        w2: torch.Tensor, *, k: int, b_router: torch.Tensor | None = None,
        gate: str = "softmax_topk", capacity_factor: float | None = None,
        drop_priority: str = "position", shared_w1: torch.Tensor | None = None,
        shared_w3: torch.Tensor | None = None, shared_w2: torch.Tensor | None = None,
        balance_coef: float = 0.0, z_coef: float = 0.0) -> dict:
    """{"y": (..., C), "aux_loss": (), "kept": (N, E) bool, "chosen": (N, E) bool}, with the
    arguments of ``ref_numpy.moe.moe_forward``; autograd differentiates y and aux_loss."""
    c = x.shape[-1]
    x2 = x.reshape(-1, c)                                              # (N, C)
    n, e = x2.shape[0], w1.shape[0]
    logits = x2 @ w_router                                             # (N, E)
    if b_router is not None:
        logits = logits + b_router
    r = route(logits, k, gate, capacity_factor, drop_priority)
    combine = dense_gates(logits, r["chosen"], gate) * r["kept"]       # (N, E)
    y = torch.zeros_like(x2)
    for i in range(e):
        y = y + combine[:, i:i + 1] * swiglu(x2, w1[i], w3[i], w2[i])
    if shared_w1 is not None:
        y = y + swiglu(x2, shared_w1, shared_w3, shared_w2)
    f = r["chosen"].sum(dim=0).to(x.dtype) / (n * k)                   # (E,), constant
    balance = e * (f * F.softmax(logits, dim=1).mean(dim=0)).sum()
    zloss = torch.logsumexp(logits, dim=1).pow(2).mean()
    return {"y": y.reshape(x.shape), "aux_loss": balance_coef * balance + z_coef * zloss,
            "kept": r["kept"], "chosen": r["chosen"]}
