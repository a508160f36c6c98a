"""Cases for the mixture-of-experts layer (``ref_numpy.moe``) against the dense torch oracle.

Every gate convention, k in {1, 2}, E in {2, 3, 8}, capacity drops in both priority orders and
none, the shared expert on and off, the router bias on and off, the auxiliary losses on (off in
two cases, where the router learns from the gates alone). Every case has N = 37 tokens (a
prime, as (37, C) or (1, 37, C)); a drop case has capacity_factor < 1, so E · capacity < N·k and
some assignment is always dropped.

Why the inputs are drawn away from routing decisions. The layer is piecewise smooth: the top-k
choice and, with drop_priority="gate", which assignment a full expert drops are constant on
regions of input space and jump across their borders. A finite difference whose two points lie
on either side of a border measures the jump, not a derivative; and a token whose choice flips
between float32 and float64 because of rounding makes the float32 comparison meaningless. So
the generator redraws the row of x of every token that is within MARGIN of a decision:

- top-k: the k-th largest logit exceeds the (k+1)-th by at least MARGIN (k < E);
- drop_priority="gate": in every expert that overflows, the last kept gate exceeds the first
  dropped one by at least MARGIN ("position" order depends on the choices alone).

MARGIN = 1e-3 is far beyond what moves a logit: the gradcheck's step (eps = 1e-6 along a random
normal direction) changes a logit by about eps · √C · max|w| ≈ 1e-5, and float32 rounding of
logits of size below 10 by about 1e-6. The margins are asserted again on the drawn inputs, in
both dtypes, by tests/test_moe.py.
"""
from __future__ import annotations

import numpy as np

from equivalence.registry import Case, register
from ref_numpy import moe
from torch_bridge import moe as torch_moe

MARGIN = 1e-3
SHARED_WIDTH = 5


def decision_gaps(x, w_router, b_router, *, k, gate, capacity_factor, drop_priority):
    """The distance of each token from a routing decision, computed directly from the formulas.

    Returns (topk_gap (N,), boundary (list of (gap, token))): topk_gap[t] is the k-th largest
    logit minus the (k+1)-th (inf when k = E); ``boundary`` has, for every overflowing expert
    under drop_priority="gate", the gap between its last kept and first dropped gate and the
    token of that first dropped assignment.
    """
    x2 = x.reshape(-1, x.shape[-1])
    logits = x2 @ w_router + (0.0 if b_router is None else b_router)  # (N, E)
    n, e = logits.shape
    desc = -np.sort(-logits, axis=1)                                   # (N, E)
    topk_gap = desc[:, k - 1] - desc[:, k] if k < e else np.full(n, np.inf)
    boundary = []
    if capacity_factor is not None and drop_priority == "gate":
        chosen = np.argsort(-logits, axis=1, kind="stable")[:, :k]     # (N, k)
        if gate == "topk_softmax":
            # softmax over the chosen logits
            g = np.exp(np.take_along_axis(logits, chosen, axis=1) - desc[:, :1])
            g = g / g.sum(axis=1, keepdims=True)                       # (N, k)
        else:
            # the chosen entries of softmax(l), renormalised over k for "softmax_topk_renorm"
            p = np.exp(logits - desc[:, :1])
            g = np.take_along_axis(p / p.sum(axis=1, keepdims=True), chosen, axis=1)
            if gate == "softmax_topk_renorm":
                g = g / g.sum(axis=1, keepdims=True)                   # (N, k)
        capacity = int(np.ceil(capacity_factor * n * k / e))
        for i in range(e):
            t, s = np.nonzero(chosen == i)
            if t.size > capacity:
                ranked = np.argsort(-g[t, s], kind="stable")
                gi = g[t, s][ranked]
                boundary.append((gi[capacity - 1] - gi[capacity], int(t[ranked[capacity]])))
    return topk_gap, boundary


def _inputs(shape, c, f, e, k, *, gate, capacity_factor, drop_priority, bias, shared):
    def make(rng):
        d = {"x": rng.standard_normal((*shape, c)),
             "w_router": 0.7 * rng.standard_normal((c, e)),
             "w1": rng.standard_normal((e, c, f)) / np.sqrt(c),
             "w3": rng.standard_normal((e, c, f)) / np.sqrt(c),
             "w2": rng.standard_normal((e, f, c)) / np.sqrt(f)}
        if bias:
            d["b_router"] = 0.3 * rng.standard_normal(e)
        if shared:
            d["shared_w1"] = rng.standard_normal((c, SHARED_WIDTH)) / np.sqrt(c)
            d["shared_w3"] = rng.standard_normal((c, SHARED_WIDTH)) / np.sqrt(c)
            d["shared_w2"] = rng.standard_normal((SHARED_WIDTH, c)) / np.sqrt(SHARED_WIDTH)
        x2 = d["x"].reshape(-1, c)
        for _ in range(200):  # redraw the rows of tokens near a decision until none is
            topk_gap, boundary = decision_gaps(
                d["x"], d["w_router"], d.get("b_router"), k=k, gate=gate,
                capacity_factor=capacity_factor, drop_priority=drop_priority)
            near = set(np.flatnonzero(topk_gap < MARGIN).tolist())
            near |= {t for gap, t in boundary if gap < MARGIN}
            if not near:
                return d
            rows = sorted(near)
            x2[rows] = rng.standard_normal((len(rows), c))
        raise RuntimeError("moe case inputs: tokens stay within MARGIN of a routing decision")
    return make


def _case(gate, k, e, *, capacity_factor=None, drop_priority="position", shared=False,
          bias=False, aux=True, shape=(37,), c=8, f=6):
    kw = dict(k=k, gate=gate, capacity_factor=capacity_factor, drop_priority=drop_priority,
              balance_coef=0.1 if aux else 0.0, z_coef=0.01 if aux else 0.0)
    names = ("x", "w_router", *(("b_router",) if bias else ()), "w1", "w3", "w2",
             *(("shared_w1", "shared_w3", "shared_w2") if shared else ()))
    weights = ("b_router", "shared_w1", "shared_w3", "shared_w2")

    def forward(i):
        out, cache = moe.moe_forward(i["x"], i["w_router"], i["w1"], i["w3"], i["w2"],
                                     **{n: i.get(n) for n in weights}, **kw)
        return ({"y": out.y, "aux_loss": out.aux_loss} if aux else {"y": out.y}), cache

    def backward(d, cache):
        grads = moe.moe_backward(d["y"], cache, daux=d["aux_loss"] if aux else 0.0)
        return {n: getattr(grads, n) for n in names}

    def oracle(t):
        out = torch_moe.moe(t["x"], t["w_router"], t["w1"], t["w3"], t["w2"],
                            **{n: t.get(n) for n in weights}, **kw)
        return {"y": out["y"], "aux_loss": out["aux_loss"]} if aux else {"y": out["y"]}

    drop = "nodrop" if capacity_factor is None else f"drop{capacity_factor:g}-{drop_priority}"
    parts = [gate, f"k{k}", f"E{e}", drop, "shared" if shared else "noshared",
             "aux" if aux else "noaux", *(("bias",) if bias else ())]
    register(Case(
        name=f"moe/{'/'.join(parts)}/{(*shape, c)} F={f}",
        inputs=_inputs(shape, c, f, e, k, gate=gate, capacity_factor=capacity_factor,
                       drop_priority=drop_priority, bias=bias, shared=shared),
        forward=forward, backward=backward, torch=oracle, grad_wrt=names))


# Switch Transformer: k = 1, no renormalisation, with and without capacity
_case("softmax_topk", 1, 8, shape=(1, 37))
_case("softmax_topk", 1, 3, capacity_factor=0.75, bias=True)
# DeepSeekMoE-style: top-2 of the full softmax, a shared expert, gate-priority drops
_case("softmax_topk", 2, 8, capacity_factor=0.75, drop_priority="gate", shared=True)
_case("softmax_topk", 2, 2, aux=False)                     # k = E: every expert, every token
# GShard top-2 with renormalisation; with drops the dropped gate stays in the normaliser
_case("softmax_topk_renorm", 2, 3, capacity_factor=0.75)
_case("softmax_topk_renorm", 2, 8, capacity_factor=0.75, drop_priority="gate", shared=True,
      bias=True)
_case("softmax_topk_renorm", 2, 8, shared=True, bias=True, aux=False, shape=(1, 37))
# k = 1 renormalised: g = 1, the router learns from the auxiliary losses alone
_case("softmax_topk_renorm", 1, 2, capacity_factor=0.75)
# Mixtral: top-2 of the logits, softmax over the two
_case("topk_softmax", 2, 8, shape=(1, 37))
_case("topk_softmax", 2, 3, capacity_factor=0.75, shared=True, bias=True)
_case("topk_softmax", 2, 2, capacity_factor=0.75, drop_priority="gate")
_case("topk_softmax", 1, 3, shared=True)
