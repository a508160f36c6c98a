"""The mixture-of-experts layer: known answers, routing rules, a dense property, errors, bench.

The harness checks every registered ``moe/...`` case against the torch oracle (values and every
gradient, both dtypes) and by finite differences; this file pins what those comparisons take
for granted: the routing (choice, tie-break, drop priority, capacity) worked out by hand, the
agreement of the oracle's routing with the NumPy one, the margins of the case inputs, and the
error messages.
"""
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from equivalence.cases import moe as moe_cases
from equivalence.harness import make_inputs
from equivalence.registry import all_cases
from ref_numpy import moe, moe_router
from torch_bridge import moe as torch_moe

MOE_CASES = all_cases("moe/*")


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def _layer(x, w_router, k=1, e=2, **kw):
    """A layer whose experts see s = x_0 + x_1 and write s · silu(s) into coordinate e."""
    w1 = np.ones((e, 2, 1))
    w2 = np.stack([np.eye(e, 2)[i][None, :] for i in range(e)])         # (E, 1, 2)
    return moe.moe_forward(x, w_router, w1, w1.copy(), w2, k=k, **kw)


# --- known answer -----------------------------------------------------------------------

X3 = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 1.5]])
W_G = np.array([[1.0, 0.0], [0.0, 2.0]])


@pytest.mark.parametrize("priority", ["position", "gate"])
def test_known_answer_two_experts_three_tokens(priority):
    """Switch routing (k = 1, gate = "softmax_topk") of 3 tokens over 2 experts, by hand.

    Router W_g = [[1, 0], [0, 2]], so l_t = (x_t0, 2 x_t1):
        x_0 = (1, 0)     → l_0 = (1, 0)    → expert 0, g_0 = p_00 = σ(1 − 0) = σ(1)
        x_1 = (0, 1)     → l_1 = (0, 2)    → expert 1, g_1 = p_11 = σ(2)
        x_2 = (.5, 1.5)  → l_2 = (.5, 3)   → expert 1, g_2 = p_21 = σ(2.5)
    (for two experts softmax is (σ(l_0 − l_1), σ(l_1 − l_0)).)
    Capacity = ceil(capacity_factor · N·k / E) = ceil(0.5 · 3 · 1 / 2) = ceil(0.75) = 1, so
    expert 1 keeps one of its two assignments:
        "position": token 1 (earlier) is kept, token 2 dropped;
        "gate":     token 2 (σ(2.5) > σ(2)) is kept, token 1 dropped.
    Expert e computes silu(s) · s = s² σ(s) with s = x_t0 + x_t1 (W1 = W3 = 1) and writes it
    into coordinate e (W2_e = unit row e):
        y_0 = (σ(1) · 1² σ(1), 0)
        y_1 = (0, σ(2) · 1² σ(1))  or 0 if dropped
        y_2 = (0, σ(2.5) · 2² σ(2)) or 0 if dropped
    Balance loss, f = routed fractions = (1/3, 2/3) (before drops), P = mean probabilities:
        P_0 = (σ(1) + σ(−2) + σ(−2.5)) / 3,  P_1 = (σ(−1) + σ(2) + σ(2.5)) / 3,
        L_bal = E Σ_i f_i P_i = 2 (P_0 / 3 + 2 P_1 / 3)
    z-loss: L_z = (1/3) Σ_t log(exp l_t0 + exp l_t1)².
    """
    out, _ = _layer(X3, W_G, capacity_factor=0.5, drop_priority=priority, balance_coef=0.1,
                    z_coef=0.01)
    keep1, keep2 = (1.0, 0.0) if priority == "position" else (0.0, 1.0)
    expected = np.array([[_sig(1) * _sig(1), 0.0],
                         [0.0, keep1 * _sig(2) * _sig(1)],
                         [0.0, keep2 * _sig(2.5) * 4 * _sig(2)]])
    np.testing.assert_allclose(out.y, expected, rtol=1e-14, atol=0)
    p0 = (_sig(1) + _sig(-2) + _sig(-2.5)) / 3
    p1 = (_sig(-1) + _sig(2) + _sig(2.5)) / 3
    balance = 2 * (p0 / 3 + 2 * p1 / 3)
    zloss = sum(math.log(math.exp(a) + math.exp(b)) ** 2 for a, b in ((1, 0), (0, 2), (.5, 3))) / 3
    s = out.stats
    assert s.balance_loss == pytest.approx(balance, rel=1e-14)
    assert s.z_loss == pytest.approx(zloss, rel=1e-14)
    assert float(out.aux_loss) == pytest.approx(0.1 * balance + 0.01 * zloss, rel=1e-14)
    assert s.capacity == 1 and s.dropped == 1
    assert s.routed_per_expert.tolist() == [1, 2] and s.tokens_per_expert.tolist() == [1, 1]
    assert out.routing.experts[:, 0].tolist() == [0, 1, 1]
    assert out.routing.kept[:, 0].tolist() == [True, bool(keep1), bool(keep2)]
    assert out.routing.tokens.tolist() == [0, 1 if keep1 else 2]


def test_position_priority_puts_every_first_choice_before_any_second():
    """k = 2 of 2 experts, capacity ceil(0.5 · 3·2 / 2) = 2. Logits (2, 1), (1, 2), (2, 1):
    expert 0 is the first choice of tokens 0 and 2 and the second choice of token 1. In
    "position" order (choice rank first, GShard) expert 0 keeps tokens 0 and 2 and drops
    token 1's second choice; token order alone would have kept tokens 0 and 1."""
    out, _ = _layer(np.array([[2.0, 0.5], [1.0, 1.0], [2.0, 0.5]]), np.eye(2) * [1.0, 2.0], k=2,
                    capacity_factor=0.5)
    r = out.routing
    assert r.experts.tolist() == [[0, 1], [1, 0], [0, 1]]
    assert r.position.tolist() == [[0, 1], [0, 2], [1, 2]]
    assert r.kept.tolist() == [[True, True], [True, False], [True, False]]
    assert r.offsets.tolist() == [0, 2, 4]
    assert list(zip(r.tokens.tolist(), r.slots.tolist())) == [(0, 0), (2, 0), (1, 0), (0, 1)]


# --- tie-break --------------------------------------------------------------------------

@pytest.mark.parametrize("logits, k, expected", [
    ([[0.0, 0.0, 0.0, 0.0]], 1, [[0]]),
    ([[0.0, 0.0, 0.0, 0.0]], 2, [[0, 1]]),
    ([[1.0, 3.0, 3.0, 0.0]], 1, [[1]]),
    ([[1.0, 3.0, 3.0, 0.0]], 2, [[1, 2]]),
    ([[5.0, 1.0, 1.0, 1.0]], 2, [[0, 1]]),
    ([[-0.0, 0.0, -1.0]], 1, [[0]]),
])
def test_a_tie_goes_to_the_lower_expert_index_in_numpy_and_in_the_oracle(logits, k, expected):
    logits = np.array(logits)
    assert moe_router.top_k_experts(logits, k).tolist() == expected
    rank = torch_moe.expert_rank(torch.from_numpy(logits)).numpy()
    chosen = [np.flatnonzero(rank[0] == s).tolist() for s in range(k)]
    assert [sum(chosen, [])] == expected


def test_equal_gates_fall_back_to_position_order():
    """Every logit 0: all tokens choose expert 0 with the same gate 1/2, so "gate" priority
    keeps the earliest tokens, as "position" does; the oracle agrees."""
    x = np.zeros((5, 2))
    for priority in ("position", "gate"):
        out, _ = _layer(x, np.zeros((2, 2)), capacity_factor=0.5, drop_priority=priority)
        assert out.routing.kept[:, 0].tolist() == [True, True, False, False, False]
        r = torch_moe.route(torch.zeros(5, 2, dtype=torch.float64), 1, "softmax_topk", 0.5,
                            priority)
        assert r["kept"][:, 0].tolist() == [True, True, False, False, False]


# --- gate conventions -------------------------------------------------------------------

def test_renormalised_softmax_equals_topk_softmax_values_and_gradients():
    """p_e / Σ_chosen p = exp(l_e) / Σ_chosen exp(l): the two conventions are one function,
    computed and differentiated along different routes."""
    rng = np.random.default_rng(3)
    i = moe_cases._inputs((37,), 8, 6, 8, 2, gate="topk_softmax", capacity_factor=0.75,
                          drop_priority="position", bias=True, shared=False)(rng)
    dy = rng.standard_normal(i["x"].shape)
    runs = []
    for gate in ("softmax_topk_renorm", "topk_softmax"):
        out, cache = moe.moe_forward(i["x"], i["w_router"], i["w1"], i["w3"], i["w2"], k=2,
                                     b_router=i["b_router"], gate=gate, capacity_factor=0.75,
                                     balance_coef=0.1, z_coef=0.01)
        runs.append((out, moe.moe_backward(dy, cache, daux=0.5)))
    (a, ga), (b, gb) = runs
    np.testing.assert_allclose(a.y, b.y, rtol=1e-13, atol=1e-15)
    for name in ("x", "w_router", "b_router", "w1", "w3", "w2"):
        np.testing.assert_allclose(getattr(ga, name), getattr(gb, name), rtol=1e-12,
                                   atol=1e-14, err_msg=name)


def test_k1_renormalised_gates_are_one_and_pass_no_gradient():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((11, 4)), rng.standard_normal((4, 3))
    r, cache = moe_router.router_forward(x, w, k=1, gate="softmax_topk_renorm")
    assert (r.gates == 1.0).all()
    dx, dw, db = moe_router.router_backward(rng.standard_normal((11, 1)), cache)
    assert not dx.any() and not dw.any() and db is None


# --- dispatch and combine: the dense property --------------------------------------------

small = st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0])   # coarse values: ties happen


def _dense_reference(x, w_router, w1, w3, w2, k, gate):
    """Σ_e G_te FFN_e(x_t) over every expert and token, G from the definitions (rank by
    comparison, lower index first on a tie)."""
    logits = x @ w_router                                              # (N, E)
    e = logits.shape[1]
    idx = np.arange(e)
    ahead = (logits[:, None, :] > logits[:, :, None]) | (
        (logits[:, None, :] == logits[:, :, None]) & (idx[None, :] < idx[:, None]))
    chosen = ahead.sum(axis=2) < k                                     # (N, E)
    if gate == "topk_softmax":
        g = np.where(chosen, np.exp(logits - logits.max(axis=1, keepdims=True)), 0.0)
        g = g / g.sum(axis=1, keepdims=True)
    else:
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        g = np.where(chosen, p / p.sum(axis=1, keepdims=True), 0.0)
        if gate == "softmax_topk_renorm":
            g = g / g.sum(axis=1, keepdims=True)
    y = np.zeros_like(x)
    for i in range(e):
        a, b = x @ w1[i], x @ w3[i]
        y += g[:, i:i + 1] * ((a / (1 + np.exp(-a)) * b) @ w2[i])
    return y


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 12), c=st.integers(1, 4), f=st.integers(1, 3),
       e=st.integers(1, 8), gate=st.sampled_from(moe_router.GATES))
def test_without_capacity_the_layer_is_the_dense_gated_sum_of_its_experts(data, n, c, f, e,
                                                                          gate):
    k = data.draw(st.integers(1, min(e, 3)), label="k")
    arr = lambda *shape: np.array(data.draw(st.lists(small, min_size=math.prod(shape),
                                                     max_size=math.prod(shape))),
                                  dtype=np.float64).reshape(shape)
    x, w_router = arr(n, c), arr(c, e)
    w1, w3, w2 = arr(e, c, f), arr(e, c, f), arr(e, f, c)
    out, _ = moe.moe_forward(x, w_router, w1, w3, w2, k=k, gate=gate)
    np.testing.assert_allclose(out.y, _dense_reference(x, w_router, w1, w3, w2, k, gate),
                               rtol=1e-12, atol=1e-12)
    assert out.stats.dropped == 0 and out.stats.tokens_per_expert.sum() == n * k


# --- routing of the registered cases ------------------------------------------------------

def _forward(case, inputs):
    outs, cache = case.forward(inputs)
    return cache


@pytest.mark.parametrize("case", MOE_CASES, ids=[c.name for c in MOE_CASES])
def test_case_routing_is_the_oracles_in_both_dtypes_and_far_from_every_decision(case):
    decisions = []
    for dtype in ("float64", "float32"):
        inputs = make_inputs(case, 0, dtype)
        cache = _forward(case, inputs)
        rt, rc = cache["routing"], cache["router"]
        n, e = rc["p"].shape
        kept = np.zeros((n, e), bool)
        chosen = np.zeros((n, e), bool)
        np.put_along_axis(chosen, rt.experts, True, axis=1)
        np.put_along_axis(kept, rt.experts, rt.kept, axis=1)
        t = {name: torch.from_numpy(v.astype(np.float64)) for name, v in inputs.items()}
        logits = t["x"].reshape(n, -1) @ t["w_router"] + (t["b_router"] if "b_router" in t
                                                           else 0)
        kw = _case_settings(case)
        r = torch_moe.route(logits, kw["k"], kw["gate"], kw["capacity_factor"],
                            kw["drop_priority"])
        assert np.array_equal(r["chosen"].numpy(), chosen) and np.array_equal(
            r["kept"].numpy(), kept), dtype
        decisions.append((rt.experts.tolist(), rt.kept.tolist()))
        gap, boundary = moe_cases.decision_gaps(
            inputs["x"].astype(np.float64), inputs["w_router"].astype(np.float64),
            None if "b_router" not in inputs else inputs["b_router"].astype(np.float64), **kw)
        assert gap.min() >= moe_cases.MARGIN / 2
        assert all(g >= moe_cases.MARGIN / 2 for g, _ in boundary)
        if kw["capacity_factor"] is not None:
            assert cache["routing"].kept.sum() < rt.experts.size, "a drop case drops nothing"
    assert decisions[0] == decisions[1], "float32 and float64 route differently"


def _case_settings(case):
    """k, gate, capacity_factor and drop_priority of a registered case, read from its name."""
    parts = case.name.split("/")
    gate, k, drop = parts[1], int(parts[2][1:]), parts[4]
    if drop == "nodrop":
        return dict(k=k, gate=gate, capacity_factor=None, drop_priority="position")
    factor, priority = drop[len("drop"):].split("-")
    return dict(k=k, gate=gate, capacity_factor=float(factor), drop_priority=priority)


def test_the_permutation_lists_each_experts_kept_assignments_in_priority_order():
    case = next(c for c in MOE_CASES if "drop0.75-gate" in c.name)
    cache = _forward(case, make_inputs(case, 0, "float64"))
    rt, gates = cache["routing"], cache["gates"]
    assert rt.offsets[-1] == rt.order.size == rt.kept.sum()
    n = rt.experts.shape[0]
    assert np.array_equal(rt.tokens, rt.order % n) and np.array_equal(rt.slots, rt.order // n)
    for e in range(rt.routed.size):
        tok, slot = (a[rt.offsets[e]:rt.offsets[e + 1]] for a in (rt.tokens, rt.slots))
        assert (rt.experts[tok, slot] == e).all() and rt.kept[tok, slot].all()
        assert rt.position[tok, slot].tolist() == list(range(tok.size))
        assert (np.diff(gates[tok, slot]) <= 0).all()            # "gate": largest first
        assert tok.size == min(rt.routed[e], rt.capacity)


def test_dropped_tokens_output_zero_and_their_upstream_gradient_reaches_nothing():
    """A token whose every assignment is dropped outputs 0 (its residual carries it) and its dy
    reaches no expert and no gate, so changing that dy changes no gradient at all."""
    case = next(c for c in MOE_CASES if "/drop" in c.name and "noshared" in c.name
                and "/k1/" in c.name)
    inputs = make_inputs(case, 0, "float64")
    outs, cache = case.forward(inputs)
    gone = ~cache["routing"].kept.any(axis=1)
    assert gone.any()
    assert not outs["y"][gone].any()
    rng = np.random.default_rng(5)
    d = {"y": rng.standard_normal(outs["y"].shape), "aux_loss": np.array(0.3)}
    before = case.backward(d, cache)
    d["y"][gone] += 10.0
    after = case.backward(d, cache)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_stats_count_every_assignment():
    case = next(c for c in MOE_CASES if "drop0.75-position" in c.name and "/k2/" in c.name)
    i = make_inputs(case, 0, "float64")
    out, _ = moe.moe_forward(i["x"], i["w_router"], i["w1"], i["w3"], i["w2"], k=2,
                             gate="softmax_topk_renorm", capacity_factor=0.75)
    s = out.stats
    n, e = i["x"].reshape(-1, i["x"].shape[-1]).shape[0], i["w1"].shape[0]
    assert s.routed_per_expert.sum() == n * 2 and s.capacity == math.ceil(0.75 * n * 2 / e)
    assert s.tokens_per_expert.sum() == n * 2 - s.dropped and s.dropped > 0
    assert (s.tokens_per_expert <= s.capacity).all()
    assert isinstance(s.balance_loss, float) and isinstance(s.z_loss, float)
    assert float(out.aux_loss) == 0.0 and out.aux_loss.dtype == np.float64


def test_float32_in_float32_out():
    case = MOE_CASES[0]
    i = make_inputs(case, 0, "float32")
    outs, cache = case.forward(i)
    grads = case.backward({"y": np.ones_like(outs["y"]), "aux_loss": np.array(1.0)}, cache)
    assert all(v.dtype == np.float32 for v in (*outs.values(), *grads.values()))


# --- bad input --------------------------------------------------------------------------

def _good(**override):
    rng = np.random.default_rng(0)
    args = {"x": rng.standard_normal((2, 3, 4)), "w_router": rng.standard_normal((4, 3)),
            "w1": rng.standard_normal((3, 4, 5)), "w3": rng.standard_normal((3, 4, 5)),
            "w2": rng.standard_normal((3, 5, 4)), "k": 2}
    args.update(override)
    return args


def _call(**override):
    a = _good(**override)
    return moe.moe_forward(a.pop("x"), a.pop("w_router"), a.pop("w1"), a.pop("w3"),
                           a.pop("w2"), **a)


@pytest.mark.parametrize("override, error, message", [
    ({"k": 4}, ValueError, "k: expected an int in [1, E] = [1, 3] but got 4"),
    ({"k": 0}, ValueError, "k: expected an int in [1, E] = [1, 3] but got 0"),
    ({"k": 1.0}, TypeError, "k: expected an int in [1, E] = [1, 3] but got float (1.0)"),
    ({"capacity_factor": 0}, ValueError,
     "capacity_factor: expected a number > 0 or None (no drop) but got 0"),
    ({"capacity_factor": -1.25}, ValueError,
     "capacity_factor: expected a number > 0 or None (no drop) but got -1.25"),
    ({"capacity_factor": float("inf")}, ValueError,
     "capacity_factor: expected a number > 0 or None (no drop) but got inf"),
    ({"capacity_factor": "1"}, TypeError,
     "capacity_factor: expected a number > 0 or None (no drop) but got str ('1')"),
    ({"w1": np.zeros((3, 5, 5))}, ValueError,
     "w1: expected shape (E, C, F) with C = 4 from x (*, 4, *) but got (3, 5, 5)"),
    ({"w3": np.zeros((3, 4, 6))}, ValueError,
     "w3: expected shape (E, C, F), the shape of w1 (3, 4, 5) but got (3, 4, 6)"),
    ({"w3": np.zeros((2, 4, 5))}, ValueError,
     "w3: expected shape (E, C, F), the shape of w1 (3, 4, 5) but got (2, 4, 5)"),
    ({"w2": np.zeros((3, 4, 5))}, ValueError,
     "w2: expected shape (E, F, C) (3, 5, 4) but got (3, 4, 5)"),
    ({"w2": np.zeros((2, 5, 4))}, ValueError,
     "w2: expected shape (E, F, C) (3, 5, 4) but got (2, 5, 4)"),
    ({"w1": np.zeros((4, 5))}, ValueError, "w1: expected 3 dimensions but got 2 (shape (4, 5))"),
    ({"w_router": np.zeros((4, 2))}, ValueError,
     "w_router: expected shape (C, E) (4, 3) but got (4, 2)"),
    ({"w_router": np.zeros((5, 3))}, ValueError,
     "w_router: expected shape (C, E) (4, 3) but got (5, 3)"),
    ({"w_router": np.zeros((4, 3), np.float32)}, TypeError,
     "w_router: expected dtype float64 (the dtype of x) but got float32"),
    ({"b_router": np.zeros(2)}, ValueError, "b_router: expected shape (E,) (3,) but got (2,)"),
    ({"gate": "softmax"}, ValueError,
     "gate: expected one of ('softmax_topk', 'softmax_topk_renorm', 'topk_softmax') "
     "but got 'softmax'"),
    ({"drop_priority": "random"}, ValueError,
     "drop_priority: expected one of ('position', 'gate') but got 'random'"),
    ({"balance_coef": -0.1}, ValueError,
     "balance_coef: expected a finite number >= 0 but got -0.1"),
    ({"z_coef": float("nan")}, ValueError, "z_coef: expected a finite number >= 0 but got nan"),
    ({"shared_w1": np.zeros((4, 2))}, ValueError,
     "shared_w1, shared_w3, shared_w2: expected all three or none but shared_w3, shared_w2 "
     "missing"),
    ({"shared_w1": np.zeros((4, 2)), "shared_w3": np.zeros((4, 2)),
      "shared_w2": np.zeros((3, 4))}, ValueError,
     "shared_w2: expected shape (Fs, C) (2, 4) but got (3, 4)"),
    ({"x": np.zeros((0, 4))}, ValueError, "x: expected at least one token but got shape (0, 4)"),
])
def test_bad_arguments_are_named(override, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        _call(**override)


def test_bad_upstream_gradients_are_named():
    out, cache = _call()
    with pytest.raises(ValueError, match=re.escape(
            "dy: expected shape (..., C), the shape of x (2, 3, 4) but got (2, 4)")):
        moe.moe_backward(np.zeros((2, 4)), cache)
    with pytest.raises(TypeError, match=re.escape(
            "daux: expected a real scalar (the gradient of aux_loss) but got array")):
        moe.moe_backward(np.zeros((2, 3, 4)), cache, daux=np.zeros(2))
    with pytest.raises(ValueError, match=re.escape("daux: expected a finite scalar but got inf")):
        moe.moe_backward(np.zeros((2, 3, 4)), cache, daux=float("inf"))


# --- bench --------------------------------------------------------------------------------

def test_bench_moe_runs_at_a_tiny_size():
    from equivalence.bench import moe as bench
    from equivalence.cli import build_parser
    argv = ["bench", "moe", "--shape", "37,8,3,2,6", "--gate", "softmax_topk_renorm",
            "--threads", "1", "--repeats", "2", "--warmup", "0", "--min-time", "0"]
    tables = bench.run(build_parser(argv).parse_args(argv))
    assert list(tables) == ["ratios", "timings"]
    timings = {r["side"]: r for r in tables["timings"]}
    assert list(timings) == ["numpy moe, sorted dispatch", "torch oracle, dense loop",
                             "torch index_select/index_add"]
    for r in timings.values():
        assert 0 < r["min s"] <= r["median s"] <= r["max s"] and r["threads"] == 1
    assert "torch" not in timings["numpy moe, sorted dispatch"]["libraries"]
    user, dense = tables["ratios"]
    assert user["comparison"] == "user's pick (headline)" and user["target"] == "-"
    assert user["peer"] == "torch index_select/index_add"
    assert dense["comparison"] == "dense loop" and dense["target"] == "<= 1.5"
    assert dense["peer"] == "torch oracle, dense loop"
    for r in (user, dense):
        assert r["ratio"] == pytest.approx(timings[r["candidate"]]["median s"]
                                           / timings[r["peer"]]["median s"])
    assert dense["met"] == ("yes" if dense["ratio"] <= 1.5 else "NO")


def test_bench_sides_compute_the_same_gradients():
    """The three timed callables return the same gradients (float64, small shape), so the bench
    compares equal work."""
    from equivalence.bench import moe as bench
    kw = dict(shape=[37, 8, 3, 2, 6], dtype="float64", gate="topk_softmax", seed=1)
    mine = bench.numpy_moe(**kw)()
    for side in (bench.torch_dense, bench.torch_sorted):
        for a, b in zip((mine.x, mine.w_router, mine.w1, mine.w3, mine.w2), side(**kw)()):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)
