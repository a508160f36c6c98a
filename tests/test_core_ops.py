"""The core NumPy ops: known answers, finite differences, torch in float64 and float32, errors.

Ops: softmax, log_softmax, online_softmax, cross_entropy, rmsnorm, layernorm, gelu (both forms),
silu, swiglu, linear, embedding. Each is pushed through one helper (``_run``) that returns its
output and the gradients of sum(out * dout); the torch side uses torch_bridge.oracles under
autograd.
"""
import math

import numpy as np
import pytest

from ref_numpy import (activations, cross_entropy, linear, norms, online_softmax, softmax,
                       swiglu)
from torch_bridge import oracles
from torch_bridge.autograd import run_autograd

SHAPES = [(1,), (7, 13), (3, 5, 97)]


# --- one spec per op: inputs, NumPy forward/backward, torch oracle ---------------------------
# inputs(rng, shape) -> dict; fwd(inputs) -> (out, cache); bwd(dout, cache) -> {name: grad}

def _x(scale=1.0):
    return lambda rng, s: {"x": scale * rng.standard_normal(s)}


def _norm_in(bias):
    def make(rng, s):
        d = {"x": 2 * rng.standard_normal(s) + 0.5, "weight": 1 + 0.3 * rng.standard_normal(s[-1])}
        if bias:
            d["bias"] = rng.standard_normal(s[-1])
        return d
    return make


def _ce_in(rng, s):
    shape = (1, 5) if len(s) == 1 else s          # logits need (N, C[, d...]); (1,) -> N = 1
    t = rng.integers(0, shape[1], size=(shape[0], *shape[2:]))
    t.reshape(-1)[1::3] = -100                     # every third position ignored
    return {"logits": 2 * rng.standard_normal(shape), "targets": t}


def _swiglu_in(rng, s):
    c, f = s[-1], s[-1] + 4
    return {"x": rng.standard_normal(s), "w1": rng.standard_normal((c, f)) / math.sqrt(c),
            "w3": rng.standard_normal((c, f)) / math.sqrt(c),
            "w2": rng.standard_normal((f, c)) / math.sqrt(f)}


def _linear_in(bias):
    def make(rng, s):
        d = {"x": rng.standard_normal(s), "weight": rng.standard_normal((s[-1], 5))}
        if bias:
            d["bias"] = rng.standard_normal(5)
        return d
    return make


def _emb_in(rng, s):
    ids = rng.integers(0, 6, size=s)               # V = 6 < most sizes: repeated ids
    return {"ids": ids, "table": rng.standard_normal((6, 7))}


def _names(*names):
    return lambda grads: dict(zip(names, grads))


SPECS = {
    "softmax": (_x(3.0), lambda i: softmax.softmax_forward(i["x"]),
                lambda d, c: {"x": softmax.softmax_backward(d, c)},
                lambda t: oracles.softmax(t["x"])),
    "softmax-axis0": (_x(3.0), lambda i: softmax.softmax_forward(i["x"], axis=0),
                      lambda d, c: {"x": softmax.softmax_backward(d, c)},
                      lambda t: oracles.softmax(t["x"], 0)),
    "log_softmax": (_x(3.0), lambda i: softmax.log_softmax_forward(i["x"]),
                    lambda d, c: {"x": softmax.log_softmax_backward(d, c)},
                    lambda t: oracles.log_softmax(t["x"])),
    "online_softmax-b1": (_x(3.0), lambda i: online_softmax.online_softmax_forward(i["x"],
                                                                                   block_size=1),
                          lambda d, c: {"x": online_softmax.online_softmax_backward(d, c)},
                          lambda t: oracles.softmax(t["x"])),
    "online_softmax-b7": (_x(3.0), lambda i: online_softmax.online_softmax_forward(i["x"],
                                                                                   block_size=7),
                          lambda d, c: {"x": online_softmax.online_softmax_backward(d, c)},
                          lambda t: oracles.softmax(t["x"])),
    "cross_entropy-mean": (_ce_in, lambda i: cross_entropy.cross_entropy_forward(
                               i["logits"], i["targets"]),
                           lambda d, c: {"logits": cross_entropy.cross_entropy_backward(d, c)},
                           lambda t: oracles.cross_entropy(t["logits"], t["targets"])),
    "cross_entropy-sum": (_ce_in, lambda i: cross_entropy.cross_entropy_forward(
                              i["logits"], i["targets"], reduction="sum"),
                          lambda d, c: {"logits": cross_entropy.cross_entropy_backward(d, c)},
                          lambda t: oracles.cross_entropy(t["logits"], t["targets"],
                                                          reduction="sum")),
    "cross_entropy-none": (_ce_in, lambda i: cross_entropy.cross_entropy_forward(
                               i["logits"], i["targets"], reduction="none"),
                           lambda d, c: {"logits": cross_entropy.cross_entropy_backward(d, c)},
                           lambda t: oracles.cross_entropy(t["logits"], t["targets"],
                                                           reduction="none")),
    "rmsnorm": (_norm_in(False), lambda i: norms.rmsnorm_forward(i["x"], i["weight"]),
                lambda d, c: _names("x", "weight")(norms.rmsnorm_backward(d, c)),
                lambda t: oracles.rmsnorm(t["x"], t["weight"])),
    "layernorm-bias": (_norm_in(True),
                       lambda i: norms.layernorm_forward(i["x"], i["weight"], i["bias"]),
                       lambda d, c: _names("x", "weight", "bias")(norms.layernorm_backward(d, c)),
                       lambda t: oracles.layernorm(t["x"], t["weight"], t["bias"])),
    "layernorm-nobias": (_norm_in(False), lambda i: norms.layernorm_forward(i["x"], i["weight"]),
                         lambda d, c: _names("x", "weight")(norms.layernorm_backward(d, c)[:2]),
                         lambda t: oracles.layernorm(t["x"], t["weight"])),
    "gelu-none": (_x(3.0), lambda i: activations.gelu_forward(i["x"]),
                  lambda d, c: {"x": activations.gelu_backward(d, c)},
                  lambda t: oracles.gelu(t["x"])),
    "gelu-tanh": (_x(3.0), lambda i: activations.gelu_forward(i["x"], approximate="tanh"),
                  lambda d, c: {"x": activations.gelu_backward(d, c)},
                  lambda t: oracles.gelu(t["x"], "tanh")),
    "silu": (_x(3.0), lambda i: activations.silu_forward(i["x"]),
             lambda d, c: {"x": activations.silu_backward(d, c)},
             lambda t: oracles.silu(t["x"])),
    "swiglu": (_swiglu_in, lambda i: swiglu.swiglu_forward(i["x"], i["w1"], i["w3"], i["w2"]),
               lambda d, c: _names("x", "w1", "w3", "w2")(swiglu.swiglu_backward(d, c)),
               lambda t: oracles.swiglu(t["x"], t["w1"], t["w3"], t["w2"])),
    "linear-bias": (_linear_in(True),
                    lambda i: linear.linear_forward(i["x"], i["weight"], i["bias"]),
                    lambda d, c: _names("x", "weight", "bias")(linear.linear_backward(d, c)),
                    lambda t: oracles.linear(t["x"], t["weight"], t["bias"])),
    "linear-nobias": (_linear_in(False), lambda i: linear.linear_forward(i["x"], i["weight"]),
                      lambda d, c: _names("x", "weight")(linear.linear_backward(d, c)[:2]),
                      lambda t: oracles.linear(t["x"], t["weight"])),
    "embedding": (_emb_in, lambda i: linear.embedding_forward(i["ids"], i["table"]),
                  lambda d, c: {"table": linear.embedding_backward(d, c)},
                  lambda t: oracles.embedding(t["ids"], t["table"])),
}


def _inputs(op, shape, dtype=np.float64, seed=0):
    raw = SPECS[op][0](np.random.default_rng(seed), shape)
    return {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in raw.items()}


def _run(op, inputs, dout):
    """NumPy output and gradients of sum(out * dout) for every float input."""
    _, fwd, bwd, _ = SPECS[op]
    out, cache = fwd(inputs)
    return out, bwd(dout, cache)


def _dout(op, inputs, dtype=np.float64, seed=1):
    out, _ = SPECS[op][1](inputs)
    return np.random.default_rng(seed).standard_normal(np.shape(out)).astype(dtype)


def _float_names(inputs):
    return tuple(k for k, v in inputs.items() if v.dtype.kind == "f")


# --- finite differences (central), independent of the harness gradcheck ----------------------

def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f at x: g_k = (f(x + eps e_k) - f(x - eps e_k)) / 2 eps."""
    g = np.zeros_like(x)
    for k in range(x.size):
        e = np.zeros_like(x)
        e.flat[k] = eps
        g.flat[k] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 1, 6)], ids=str)
@pytest.mark.parametrize("op", list(SPECS))
def test_backward_matches_finite_differences(op, shape):
    inputs = _inputs(op, shape)
    dout = _dout(op, inputs)
    _, grads = _run(op, inputs, dout)
    for name in _float_names(inputs):
        def loss(v, name=name):
            out, _ = SPECS[op][1]({**inputs, name: v})
            return float(np.sum(out * dout))
        num = numeric_grad(loss, inputs[name])
        np.testing.assert_allclose(grads[name], num, rtol=1e-5, atol=1e-7,
                                   err_msg=f"{op} grad {name}")


# --- torch autograd: float64 to 1e-10, float32 close to the float64 answer -------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", list(SPECS))
def test_matches_torch_float64(op, shape):
    inputs = _inputs(op, shape)
    dout = _dout(op, inputs)
    out, grads = _run(op, inputs, dout)
    names = _float_names(inputs)
    t_out, t_grads = run_autograd(lambda t: {"out": SPECS[op][3](t)}, inputs, names,
                                  {"out": dout})
    assert out.dtype == np.float64 and out.shape == t_out["out"].shape
    np.testing.assert_allclose(out, t_out["out"], rtol=0, atol=1e-10, err_msg=f"{op} out")
    for n in names:
        assert grads[n].shape == inputs[n].shape
        np.testing.assert_allclose(grads[n], t_grads[n], rtol=0, atol=1e-10,
                                   err_msg=f"{op} grad {n}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", list(SPECS))
def test_float32_is_preserved_and_close_to_float64(op, shape):
    inputs32 = _inputs(op, shape, np.float32)
    inputs64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v)
                for k, v in inputs32.items()}
    dout32 = _dout(op, inputs32, np.float32)
    out32, g32 = _run(op, inputs32, dout32)
    out64, g64 = _run(op, inputs64, dout32.astype(np.float64))
    pairs = [("out", out32, out64)] + [(f"grad {n}", g32[n], g64[n]) for n in g32]
    for name, a, b in pairs:
        assert a.dtype == np.float32, f"{op} {name}: dtype {a.dtype}"
        if (op, tuple(shape), name) == ("rmsnorm", (1,), "grad x"):
            continue  # with C = 1 the exact dx is O(eps) from O(1) terms: float64-only case
        # a sanity bar (the 2x-baseline bar is the harness's): 2**-16 = 128 float32 epsilons
        # of the tensor's own scale
        scale = float(np.abs(b).max())
        assert np.abs(a - b).max() <= 2.0 ** -16 * scale, f"{op} {name}"


# --- known answers (hand-computed) -----------------------------------------------------------

def test_softmax_known_answer():
    # exp(0) : exp(log 3) = 1 : 3
    y, c = softmax.softmax_forward(np.array([0.0, math.log(3.0)]))
    np.testing.assert_allclose(y, [0.25, 0.75], rtol=1e-15)
    # dx = y * (dout - <dout, y>) with dout = [1, 0]: [.25 * .75, .75 * -.25]
    np.testing.assert_allclose(softmax.softmax_backward(np.array([1.0, 0.0]), c),
                               [0.1875, -0.1875], rtol=1e-15)


def test_log_softmax_known_answer():
    z, c = softmax.log_softmax_forward(np.array([[0.0, math.log(3.0)]]))
    np.testing.assert_allclose(z, [[math.log(0.25), math.log(0.75)]], rtol=1e-15)
    # dx = dout - p * sum(dout) with dout = [1, 1]: 1 - 2p
    np.testing.assert_allclose(softmax.log_softmax_backward(np.ones((1, 2)), c), [[0.5, -0.5]],
                               atol=1e-15)


def test_softmax_large_logits_do_not_overflow():
    # exp(1000) overflows; with the max subtracted the answer is exact
    y, _ = softmax.softmax_forward(np.array([1000.0, 1000.0 + math.log(3.0)]))
    np.testing.assert_allclose(y, [0.25, 0.75], rtol=1e-12)
    z, _ = softmax.log_softmax_forward(np.array([-1000.0, 0.0]))
    assert z[1] == 0.0 and z[0] == -1000.0


def test_online_softmax_known_answer_and_state():
    m, l = online_softmax.block_state(np.array([0.0, math.log(3.0)]))
    assert m == pytest.approx(math.log(3.0)) and l == pytest.approx(4.0 / 3.0)
    # merge of [0] -> (0, 1) and [log 3] -> (log 3, 1): l = 1 * exp(-log 3) + 1 = 4/3
    m2, l2 = online_softmax.merge_states(np.array(0.0), np.array(1.0),
                                         np.array(math.log(3.0)), np.array(1.0))
    assert m2 == pytest.approx(math.log(3.0)) and l2 == pytest.approx(4.0 / 3.0)
    y, _ = online_softmax.online_softmax_forward(np.array([0.0, math.log(3.0)]), block_size=1)
    np.testing.assert_allclose(y, [0.25, 0.75], rtol=1e-15)


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 13, 14, 1000])
def test_online_softmax_equals_softmax_at_any_block_size(block_size):
    x = 4 * np.random.default_rng(3).standard_normal((3, 5, 13))
    ref, _ = softmax.softmax_forward(x, axis=1)
    y, _ = online_softmax.online_softmax_forward(x, axis=1, block_size=block_size)
    np.testing.assert_allclose(y, ref, rtol=1e-14, atol=1e-16)


def test_masked_entries_and_fully_masked_rows():
    x = np.array([[0.0, -np.inf, math.log(3.0)],
                  [-np.inf, -np.inf, -np.inf]])
    dout = np.array([[1.0, 2.0, 0.0], [1.0, 2.0, 3.0]])
    for fwd, bwd in [(softmax.softmax_forward, softmax.softmax_backward),
                     (lambda v: online_softmax.online_softmax_forward(v, block_size=2),
                      online_softmax.online_softmax_backward)]:
        y, c = fwd(x)
        np.testing.assert_allclose(y, [[0.25, 0.0, 0.75], [0.0, 0.0, 0.0]], rtol=1e-15)
        dx = bwd(dout, c)
        # live row: y * (dout - <dout, y>) = [.25 * .75, 0, .75 * -.25]; dead row: 0
        np.testing.assert_allclose(dx, [[0.1875, 0.0, -0.1875], [0.0, 0.0, 0.0]], atol=1e-15)
    z, c = softmax.log_softmax_forward(x)
    np.testing.assert_allclose(z, [[math.log(0.25), -np.inf, math.log(0.75)], [-np.inf] * 3])
    dx = softmax.log_softmax_backward(dout, c)
    # live row: dout - p * sum(dout) = [1 - .75, 2 - 0, 0 - 2.25]; dead row: 0
    np.testing.assert_allclose(dx, [[0.25, 2.0, -2.25], [0.0, 0.0, 0.0]], atol=1e-15)


def test_online_softmax_merge_of_two_empty_states_stays_empty():
    m, l = online_softmax.merge_states(np.array(-np.inf), np.array(0.0),
                                       np.array(-np.inf), np.array(0.0))
    assert m == -np.inf and l == 0.0


def test_cross_entropy_known_answer():
    logits = np.array([[0.0, math.log(3.0)], [5.0, 1.0], [0.0, math.log(3.0)]])
    targets = np.array([1, -100, 0])
    loss, c = cross_entropy.cross_entropy_forward(logits, targets)
    # mean over the two valid rows of -log p: (-log .75 - log .25) / 2
    assert loss.shape == () and float(loss) == pytest.approx(
        -(math.log(0.75) + math.log(0.25)) / 2, rel=1e-15)
    g = cross_entropy.cross_entropy_backward(np.array(1.0), c)
    # (p - onehot) / 2 on valid rows, 0 on the ignored row
    np.testing.assert_allclose(g, [[0.125, -0.125], [0.0, 0.0], [-0.375, 0.375]], atol=1e-15)
    total, c = cross_entropy.cross_entropy_forward(logits, targets, reduction="sum")
    assert float(total) == pytest.approx(-(math.log(0.75) + math.log(0.25)), rel=1e-15)
    per, _ = cross_entropy.cross_entropy_forward(logits, targets, reduction="none")
    np.testing.assert_allclose(per, [-math.log(0.75), 0.0, -math.log(0.25)], rtol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_all_ignored_is_zero_with_zero_gradient(reduction):
    logits = np.random.default_rng(0).standard_normal((4, 3))
    loss, c = cross_entropy.cross_entropy_forward(logits, np.full(4, -100), reduction=reduction)
    assert float(loss) == 0.0
    assert not np.any(cross_entropy.cross_entropy_backward(np.array(1.0), c))


def test_cross_entropy_custom_ignore_index_matches_torch():
    rng = np.random.default_rng(5)
    inputs = {"logits": rng.standard_normal((6, 4, 3)), "targets": rng.integers(0, 4, (6, 3))}
    dout = np.array(0.7)
    loss, c = cross_entropy.cross_entropy_forward(inputs["logits"], inputs["targets"],
                                                  ignore_index=2)
    g = cross_entropy.cross_entropy_backward(dout, c)
    t_out, t_g = run_autograd(
        lambda t: {"loss": oracles.cross_entropy(t["logits"], t["targets"], ignore_index=2)},
        inputs, ("logits",), {"loss": dout})
    assert abs(float(loss) - float(t_out["loss"])) <= 1e-12
    np.testing.assert_allclose(g, t_g["logits"], rtol=0, atol=1e-12)


def test_rmsnorm_known_answer():
    # mean(3^2, 4^2) = 12.5, so y = [3, 4] / sqrt(12.5) * [1, 2]
    y, c = norms.rmsnorm_forward(np.array([3.0, 4.0]), np.array([1.0, 2.0]), eps=0.0)
    r = 1 / math.sqrt(12.5)
    np.testing.assert_allclose(y, [3 * r, 8 * r], rtol=1e-15)
    dx, dw = norms.rmsnorm_backward(np.array([1.0, 0.0]), c)
    np.testing.assert_allclose(dw, [3 * r, 0.0], rtol=1e-15)
    # dx = r (g - xhat mean(g xhat)), g = [1, 0], xhat = [3r, 4r], mean(g xhat) = 1.5 r
    np.testing.assert_allclose(dx, [r * (1 - 3 * r * 1.5 * r), -r * 4 * r * 1.5 * r], rtol=1e-14)


def test_layernorm_known_answer():
    # mu = 2, var = 1: xhat = [-1, 1]; y = xhat * [2, 3] + [1, 1]
    y, c = norms.layernorm_forward(np.array([1.0, 3.0]), np.array([2.0, 3.0]),
                                   np.array([1.0, 1.0]), eps=0.0)
    np.testing.assert_allclose(y, [-1.0, 4.0], rtol=1e-15)
    dx, dw, db = norms.layernorm_backward(np.array([1.0, 1.0]), c)
    np.testing.assert_allclose(dw, [-1.0, 1.0])
    np.testing.assert_allclose(db, [1.0, 1.0])
    # g = [2, 3], mean g = 2.5, mean(g xhat) = 0.5: dx = [2 - 2.5 + 0.5, 3 - 2.5 - 0.5]
    np.testing.assert_allclose(dx, [0.0, 0.0], atol=1e-15)


@pytest.mark.parametrize("eps", [0.5, 1e-3])
def test_norm_eps_placement_matches_torch(eps):
    # a large eps makes a wrong placement (outside the sqrt, or on the std) visible
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal(5), rng.standard_normal(5)
    inputs = {"x": x, "weight": w, "bias": b}
    y, _ = norms.rmsnorm_forward(x, w, eps=eps)
    t, _ = run_autograd(lambda t: {"y": oracles.rmsnorm(t["x"], t["weight"], eps)}, inputs)
    np.testing.assert_allclose(y, t["y"], rtol=0, atol=1e-12)
    y, _ = norms.layernorm_forward(x, w, b, eps=eps)
    t, _ = run_autograd(lambda t: {"y": oracles.layernorm(t["x"], t["weight"], t["bias"], eps)},
                        inputs)
    np.testing.assert_allclose(y, t["y"], rtol=0, atol=1e-12)


def test_gelu_and_silu_known_answers():
    x = np.array([0.0, 1.0])
    y, c = activations.gelu_forward(x)
    # gelu(1) = Phi(1) = 0.5 (1 + erf(1 / sqrt 2)); gelu'(0) = Phi(0) = 1/2
    np.testing.assert_allclose(y, [0.0, 0.5 * (1 + math.erf(1 / math.sqrt(2)))], rtol=1e-15)
    np.testing.assert_allclose(activations.gelu_backward(np.ones(2), c)[0], 0.5)
    y, c = activations.gelu_forward(x, approximate="tanh")
    u = math.sqrt(2 / math.pi) * (1 + 0.044715)
    np.testing.assert_allclose(y, [0.0, 0.5 * (1 + math.tanh(u))], rtol=1e-15)
    np.testing.assert_allclose(activations.gelu_backward(np.ones(2), c)[0], 0.5)
    y, c = activations.silu_forward(x)
    np.testing.assert_allclose(y, [0.0, 1 / (1 + math.exp(-1))], rtol=1e-15)
    s = 1 / (1 + math.exp(-1))
    np.testing.assert_allclose(activations.silu_backward(np.ones(2), c), [0.5, s * (2 - s)],
                               rtol=1e-15)


def test_sigmoid_and_silu_keep_every_float32_digit_in_both_tails():
    # exact values by math.exp in float64 at the float32 inputs
    z = np.linspace(-80, 80, 641).astype(np.float32)
    exact = np.array([1 / (1 + math.exp(-float(v))) for v in z])
    assert _worst_ulps(activations.sigmoid(z), exact) <= 4
    y, _ = activations.silu_forward(z)                 # z sigmoid(z): one more rounding
    nonzero = z != 0
    assert _worst_ulps(y[nonzero] / z[nonzero], exact[nonzero]) <= 6


def test_gelu_tanh_float32_derivative_keeps_its_digits_in_the_right_tail():
    # d/dx 0.5 x (1 + tanh u) = 0.5 (1 + tanh u) + 0.5 x u' / cosh(u)^2, in float64 by math,
    # with 0.5 (1 + tanh u) as 1 / (1 + exp(-2u)) and 1 / cosh^2, neither of which cancels;
    # 1 - sigmoid(2u) in place of sigmoid(-2u) is 30 ulps off here, 1 - tanh(u)^2 20 ulps.
    # (For x < 0 the float32 rounding of u itself, |2u| x eps, bounds the relative accuracy;
    # the left tail is the test below.)
    x = np.linspace(0, 9, 361).astype(np.float32)
    c = math.sqrt(2 / math.pi)
    exact = []
    for v in map(float, x):
        u = c * (v + 0.044715 * v ** 3)
        exact.append(1 / (1 + math.exp(-2 * u))
                     + 0.5 * v * c * (1 + 3 * 0.044715 * v * v) / math.cosh(u) ** 2)
    _, cache = activations.gelu_forward(x, approximate="tanh")
    got = activations.gelu_backward(np.ones_like(x), cache)
    assert _worst_ulps(got, np.array(exact)) <= 6


def _worst_ulps(got, ref) -> float:
    """max |got - ref| / |ref| of a float32 result, in units of 2**-24 (half float32's eps)."""
    assert got.dtype == np.float32
    ulp = float(np.finfo(np.float32).eps) / 2
    return float(np.max(np.abs(got.astype(np.float64) - ref) / np.abs(ref))) / ulp


def test_gelu_tanh_float32_far_left_tail_keeps_its_sign():
    # at x = -5.3 the exact derivative is -1.6e-7; 1 - tanh(u)^2 in float32 would give -1.2e-6
    x = np.array([-5.3], np.float32)
    _, c32 = activations.gelu_forward(x, approximate="tanh")
    _, c64 = activations.gelu_forward(x.astype(np.float64), approximate="tanh")
    d32 = activations.gelu_backward(np.ones(1, np.float32), c32)
    d64 = activations.gelu_backward(np.ones(1), c64)
    np.testing.assert_allclose(d32, d64, rtol=1e-5)


def test_swiglu_known_answer():
    # C = F = 1: a = 2, b = 6, out = silu(2) * 6 * 0.5
    x, w1, w3, w2 = (np.array([[v]]) for v in (2.0, 1.0, 3.0, 0.5))
    out, c = swiglu.swiglu_forward(x, w1, w3, w2)
    sig = 1 / (1 + math.exp(-2))
    silu2 = 2 * sig
    np.testing.assert_allclose(out, [[3 * silu2]], rtol=1e-15)
    dx, dw1, dw3, dw2 = swiglu.swiglu_backward(np.ones((1, 1)), c)
    dsilu = sig * (1 + 2 * (1 - sig))
    # dh = 0.5; da = dh * b * silu'(a) = 3 silu'(2); db = dh * silu(2)
    np.testing.assert_allclose(dw2, [[6 * silu2]], rtol=1e-15)
    np.testing.assert_allclose(dw1, [[2 * 3 * dsilu]], rtol=1e-15)
    np.testing.assert_allclose(dw3, [[2 * 0.5 * silu2]], rtol=1e-15)
    np.testing.assert_allclose(dx, [[3 * dsilu * 1 + 0.5 * silu2 * 3]], rtol=1e-15)


def test_linear_known_answer():
    x = np.array([[1.0, 2.0]])
    w = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 3.0]])
    y, c = linear.linear_forward(x, w, np.ones(3))
    np.testing.assert_array_equal(y, [[2.0, 3.0, 9.0]])
    dx, dw, db = linear.linear_backward(np.ones((1, 3)), c)
    np.testing.assert_array_equal(dx, [[3.0, 4.0]])
    np.testing.assert_array_equal(dw, [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    np.testing.assert_array_equal(db, [1.0, 1.0, 1.0])
    assert linear.linear_backward(np.ones((1, 3)), linear.linear_forward(x, w)[1])[2] is None


def test_embedding_known_answer_with_repeated_ids():
    table = np.arange(6.0).reshape(3, 2)
    ids = np.array([[2, 0], [2, 2]])
    y, c = linear.embedding_forward(ids, table)
    np.testing.assert_array_equal(y, [[[4, 5], [0, 1]], [[4, 5], [4, 5]]])
    dout = np.array([[[1.0, 10.0], [2.0, 20.0]], [[3.0, 30.0], [4.0, 40.0]]])
    # row 2 is used three times and collects 1 + 3 + 4; row 1 is never used
    np.testing.assert_array_equal(linear.embedding_backward(dout, c),
                                  [[2.0, 20.0], [0.0, 0.0], [8.0, 80.0]])


# --- errors: every promised message ---------------------------------------------------------

F64 = np.zeros((2, 3))


@pytest.mark.parametrize("call, exc, match", [
    # mismatched shapes
    (lambda: norms.rmsnorm_forward(F64, np.ones(4)), ValueError,
     r"weight: expected shape \(C,\) \(3,\) but got \(4,\)"),
    (lambda: norms.layernorm_forward(F64, np.ones(3), np.ones(2)), ValueError,
     r"bias: expected shape \(C,\) \(3,\) but got \(2,\)"),
    (lambda: linear.linear_forward(F64, np.ones((4, 5))), ValueError,
     r"weight: expected shape \(C_in, C_out\) \(3, \*\) but got \(4, 5\)"),
    (lambda: linear.linear_forward(F64, np.ones((3, 5)), np.ones(4)), ValueError,
     r"bias: expected shape \(C_out,\) \(5,\) but got \(4,\)"),
    (lambda: swiglu.swiglu_forward(F64, np.ones((3, 4)), np.ones((3, 4)), np.ones((3, 4))),
     ValueError, r"w2: expected shape \(F, C\) \(4, 3\) but got \(3, 4\)"),
    (lambda: swiglu.swiglu_forward(F64, np.ones((3, 4)), np.ones((3, 5)), np.ones((4, 3))),
     ValueError, r"w3: expected shape \(C, F\) \(3, 4\) but got \(3, 5\)"),
    (lambda: cross_entropy.cross_entropy_forward(F64, np.zeros(3, int)), ValueError,
     r"targets: expected shape \(N,\) \(2,\) but got \(3,\)"),
    (lambda: cross_entropy.cross_entropy_forward(np.zeros(3), np.zeros(3, int)), ValueError,
     r"logits: expected shape \(N, C\) or \(N, C, d...\) but got \(3,\)"),
    (lambda: softmax.softmax_backward(np.ones((3, 2)), softmax.softmax_forward(F64)[1]),
     ValueError, r"dout: expected shape \(2, 3\) but got \(3, 2\)"),
    (lambda: linear.embedding_backward(np.ones((2, 5)), linear.embedding_forward(
        np.array([0, 1]), np.ones((3, 4)))[1]), ValueError,
     r"dout: expected shape \(\.\.\., C\) \(2, 4\) but got \(2, 5\)"),
    # wrong dtypes
    (lambda: softmax.softmax_forward(F64.astype(np.float16)), TypeError,
     "x: expected dtype float32 or float64 but got float16"),
    (lambda: norms.rmsnorm_forward(F64, np.ones(3, np.float32)), TypeError,
     "weight: expected dtype float64 .the dtype of x. but got float32"),
    (lambda: linear.linear_forward(F64.astype(np.float32), np.ones((3, 2))), TypeError,
     "weight: expected dtype float32 .the dtype of x. but got float64"),
    (lambda: activations.silu_backward(np.ones((2, 3), np.float32),
                                       activations.silu_forward(F64)[1]), TypeError,
     "dout: expected dtype float64 .the dtype of x. but got float32"),
    (lambda: cross_entropy.cross_entropy_forward(F64, np.zeros(2)), TypeError,
     "targets: expected an integer dtype but got float64"),
    (lambda: linear.embedding_forward(np.array([0.0, 1.0]), np.ones((3, 4))), TypeError,
     "ids: expected an integer dtype but got float64"),
    (lambda: softmax.softmax_forward([[1.0, 2.0]]), TypeError,
     "x: expected a numpy.ndarray but got list"),
    # integer arrays where floats are needed
    (lambda: softmax.softmax_forward(np.arange(3)), TypeError,
     "x: expected dtype float32 or float64 but got int64"),
    (lambda: activations.gelu_forward(np.arange(3)), TypeError,
     "x: expected dtype float32 or float64 but got int64"),
    (lambda: linear.embedding_forward(np.array([0]), np.ones((3, 4), int)), TypeError,
     "table: expected dtype float32 or float64 but got int64"),
    # NaN in inputs
    (lambda: softmax.softmax_forward(np.array([1.0, np.nan])), ValueError,
     r"x: contains NaN \(first at index \(1,\)\)"),
    (lambda: online_softmax.online_softmax_forward(np.array([[1.0], [np.nan]])), ValueError,
     r"x: contains NaN \(first at index \(1, 0\)\)"),
    (lambda: cross_entropy.cross_entropy_forward(np.array([[np.nan, 1.0]]), np.array([0])),
     ValueError, r"logits: contains NaN"),
    (lambda: norms.layernorm_forward(F64, np.array([1.0, np.nan, 1.0])), ValueError,
     r"weight: contains NaN \(first at index \(1,\)\)"),
    (lambda: swiglu.swiglu_forward(F64, np.full((3, 4), np.nan), np.ones((3, 4)),
                                   np.ones((4, 3))), ValueError, r"w1: contains NaN"),
    # values outside the domain
    (lambda: softmax.softmax_forward(np.array([1.0, np.inf])), ValueError,
     r"x: contains \+inf \(first at index \(1,\)\)"),
    (lambda: linear.embedding_forward(np.array([[0, 3]]), np.ones((3, 4))), ValueError,
     r"ids: expected values in \[0, 3\) \(the rows of table\) but got 3 at index \(0, 1\)"),
    (lambda: linear.embedding_forward(np.array([-1]), np.ones((3, 4))), ValueError,
     r"ids: expected values in \[0, 3\) .* but got -1 at index \(0,\)"),
    (lambda: cross_entropy.cross_entropy_forward(F64, np.array([0, 3])), ValueError,
     r"targets: expected class ids in \[0, 3\) or ignore_index=-100 but got 3 at index \(1,\)"),
    (lambda: cross_entropy.cross_entropy_forward(F64, np.array([0, 1]), reduction="avg"),
     ValueError, r"reduction: expected one of \('mean', 'sum', 'none'\) but got 'avg'"),
    (lambda: activations.gelu_forward(F64, approximate="erf"), ValueError,
     r"approximate: expected one of \('none', 'tanh'\) but got 'erf'"),
    (lambda: softmax.softmax_forward(F64, axis=2), ValueError,
     r"axis: expected a value in \[-2, 2\) for a 2-d input but got 2"),
    (lambda: online_softmax.online_softmax_forward(F64, block_size=0), ValueError,
     "block_size: expected an int >= 1 but got 0"),
    (lambda: norms.rmsnorm_forward(F64, np.ones(3), eps=-1.0), ValueError,
     "eps: expected a number >= 0 but got -1.0"),
    (lambda: norms.rmsnorm_forward(np.array([[1.0, 2.0], [0.0, 0.0]]), np.ones(2), eps=0.0),
     ValueError, r"x: row \(1,\) has mean square 0 and eps=0.0; expected eps > 0 or a row that "
                 r"is not all zeros"),
    (lambda: norms.layernorm_forward(np.full((2, 3, 4), 2.0), np.ones(4), eps=0.0), ValueError,
     r"x: row \(0, 0\) has variance 0 and eps=0.0; expected eps > 0 or a row that is not "
     r"constant"),
])
def test_bad_input_raises_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
