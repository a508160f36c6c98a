"""Cases for the core ops: softmax, log-softmax, online softmax, cross-entropy, RMSNorm,
LayerNorm, GELU, SiLU, SwiGLU, linear and embedding.

Shapes are odd or prime on purpose ((1,), (7, 13), (3, 5, 97)), and include a single position
(T = 1). Each op is referenced through its module (``softmax.softmax_backward``) so that a test
can monkeypatch it and watch the harness fail.
"""
from __future__ import annotations

import numpy as np

from equivalence.registry import Case, register, single
from ref_numpy import (activations, cross_entropy, linear, norms, online_softmax, softmax,
                       swiglu)
from torch_bridge import oracles


def _normal(*shape, scale=1.0):
    return lambda rng: {"x": scale * rng.standard_normal(shape)}


def _with_neginf(shape, *, dead_rows=()):
    """Normal rows with ~1/4 of the entries -inf (one finite entry kept per row), plus fully -inf
    rows at ``dead_rows`` (indices into the flattened rows)."""
    def make(rng):
        x = 3.0 * rng.standard_normal(shape)
        rows = x.reshape(-1, shape[-1])
        rows[rng.random(rows.shape) < 0.25] = -np.inf
        rows[:, 0] = 3.0 * rng.standard_normal(rows.shape[0])
        rows[list(dead_rows)] = -np.inf
        return {"x": x}
    return make


# --- softmax and log-softmax ----------------------------------------------------------------

def _softmax_case(name, inputs, axis=-1):
    register(Case(
        name=name, inputs=inputs,
        forward=lambda i: single(softmax.softmax_forward(i["x"], axis=axis)),
        backward=lambda d, c: {"x": softmax.softmax_backward(d["out"], c)},
        torch=lambda t: {"out": oracles.softmax(t["x"], axis)},
        grad_wrt=("x",)))


def _log_softmax_case(name, inputs, axis=-1):
    register(Case(
        name=name, inputs=inputs,
        forward=lambda i: single(softmax.log_softmax_forward(i["x"], axis=axis)),
        backward=lambda d, c: {"x": softmax.log_softmax_backward(d["out"], c)},
        torch=lambda t: {"out": oracles.log_softmax(t["x"], axis)},
        grad_wrt=("x",)))


_softmax_case("softmax/axis-1/(1,)", _normal(1))
_softmax_case("softmax/axis-1/(7, 13)", _normal(7, 13, scale=3.0))
_softmax_case("softmax/axis1/(3, 5, 97)", _normal(3, 5, 97, scale=3.0), axis=1)
_softmax_case("softmax/axis0/(7, 13)", _normal(7, 13), axis=0)
_softmax_case("softmax/neginf/(4, 9)", _with_neginf((4, 9)))
_log_softmax_case("log_softmax/axis-1/(1,)", _normal(1))
_log_softmax_case("log_softmax/axis-1/(7, 13)", _normal(7, 13, scale=3.0))
_log_softmax_case("log_softmax/axis1/(3, 5, 97)", _normal(3, 5, 97, scale=3.0), axis=1)
_log_softmax_case("log_softmax/neginf/(4, 9)", _with_neginf((4, 9)))


# --- online softmax (oracle: torch softmax; fully -inf rows -> zeros) ----------------------

def _online_case(name, inputs, block_size, axis=-1):
    register(Case(
        name=name, inputs=inputs,
        forward=lambda i: single(online_softmax.online_softmax_forward(
            i["x"], axis=axis, block_size=block_size)),
        backward=lambda d, c: {"x": online_softmax.online_softmax_backward(d["out"], c)},
        torch=lambda t: {"out": oracles.masked_softmax(t["x"], axis)},
        grad_wrt=("x",)))


_online_case("online_softmax/block1/(7, 13)", _normal(7, 13, scale=3.0), 1)
_online_case("online_softmax/block4/(3, 5, 97)", _normal(3, 5, 97, scale=3.0), 4)
_online_case("online_softmax/block128/(7, 13)", _normal(7, 13, scale=3.0), 128)
_online_case("online_softmax/block2/(1,)", _normal(1), 2)
_online_case("online_softmax/block3/axis0/(11, 5)", _normal(11, 5), 3, axis=0)
_online_case("online_softmax/masked/block3/(5, 11)", _with_neginf((5, 11), dead_rows=(1, 4)), 3)


# --- cross-entropy ------------------------------------------------------------------------

def _ce_inputs(n, c, *extra, ignored=0.0):
    """Logits (n, c, *extra) and targets (n, *extra); a share ``ignored`` of targets is -100
    (at least one target always stays valid)."""
    def make(rng):
        logits = 2.0 * rng.standard_normal((n, c, *extra))
        targets = rng.integers(0, c, size=(n, *extra))
        flat = targets.reshape(-1)
        flat[rng.random(flat.size) < ignored] = -100
        flat[0] = rng.integers(0, c)
        return {"logits": logits, "targets": targets}
    return make


def _ce_case(name, inputs, reduction):
    register(Case(
        name=name, inputs=inputs,
        forward=lambda i: single(cross_entropy.cross_entropy_forward(
            i["logits"], i["targets"], reduction=reduction), "loss"),
        backward=lambda d, c: {"logits": cross_entropy.cross_entropy_backward(d["loss"], c)},
        torch=lambda t: {"loss": oracles.cross_entropy(t["logits"], t["targets"],
                                                       reduction=reduction)},
        grad_wrt=("logits",)))


_ce_case("cross_entropy/mean/(7, 13)", _ce_inputs(7, 13), "mean")
_ce_case("cross_entropy/sum/(7, 13)", _ce_inputs(7, 13), "sum")
_ce_case("cross_entropy/mean/ignored/(16, 11)", _ce_inputs(16, 11, ignored=0.4), "mean")
_ce_case("cross_entropy/sum/ignored/(16, 11)", _ce_inputs(16, 11, ignored=0.4), "sum")
_ce_case("cross_entropy/none/ignored/(5, 7)", _ce_inputs(5, 7, ignored=0.4), "none")
_ce_case("cross_entropy/mean/ignored/(3, 5, 4)", _ce_inputs(3, 5, 4, ignored=0.3), "mean")
_ce_case("cross_entropy/mean/(1, 97)", _ce_inputs(1, 97), "mean")


# --- RMSNorm and LayerNorm ----------------------------------------------------------------

def _norm_inputs(*shape, bias=False):
    def make(rng):
        c = shape[-1]
        out = {"x": 2.0 * rng.standard_normal(shape) + 0.5,
               "weight": 1.0 + 0.3 * rng.standard_normal(c)}
        if bias:
            out["bias"] = rng.standard_normal(c)
        return out
    return make


def _rmsnorm_case(*shape, dtypes=("float64", "float32")):
    register(Case(
        name=f"rmsnorm/{shape}", inputs=_norm_inputs(*shape),
        forward=lambda i: single(norms.rmsnorm_forward(i["x"], i["weight"], eps=1e-6)),
        backward=lambda d, c: dict(zip(("x", "weight"), norms.rmsnorm_backward(d["out"], c))),
        torch=lambda t: {"out": oracles.rmsnorm(t["x"], t["weight"], eps=1e-6)},
        grad_wrt=("x", "weight"), dtypes=dtypes))


def _layernorm_case(*shape, bias):
    names = ("x", "weight", "bias") if bias else ("x", "weight")
    register(Case(
        name=f"layernorm/{'bias' if bias else 'nobias'}/{shape}",
        inputs=_norm_inputs(*shape, bias=bias),
        forward=lambda i: single(norms.layernorm_forward(i["x"], i["weight"], i.get("bias"),
                                                         eps=1e-5)),
        backward=lambda d, c: dict(zip(names, norms.layernorm_backward(d["out"], c))),
        torch=lambda t: {"out": oracles.layernorm(t["x"], t["weight"], t.get("bias"),
                                                  eps=1e-5)},
        grad_wrt=names))


# C = 1: y = w x / sqrt(x^2 + eps) and dx = g eps r^3, which is O(eps / x^2) while the two terms
# the backward subtracts are O(1): float32 (torch's included) returns rounding noise there, so
# this shape is checked in float64 only.
_rmsnorm_case(1, dtypes=("float64",))
_rmsnorm_case(1, 1, 5)
_rmsnorm_case(7, 13)
_rmsnorm_case(3, 5, 97)
_layernorm_case(7, 13, bias=True)
_layernorm_case(3, 5, 97, bias=False)
_layernorm_case(2, 1, 6, bias=True)


# --- GELU and SiLU ------------------------------------------------------------------------

def _gelu_case(approximate, *shape):
    register(Case(
        name=f"gelu/{approximate}/{shape}", inputs=_normal(*shape, scale=3.0),
        forward=lambda i: single(activations.gelu_forward(i["x"], approximate=approximate)),
        backward=lambda d, c: {"x": activations.gelu_backward(d["out"], c)},
        torch=lambda t: {"out": oracles.gelu(t["x"], approximate)},
        grad_wrt=("x",)))


def _silu_case(*shape):
    register(Case(
        name=f"silu/{shape}", inputs=_normal(*shape, scale=3.0),
        forward=lambda i: single(activations.silu_forward(i["x"])),
        backward=lambda d, c: {"x": activations.silu_backward(d["out"], c)},
        torch=lambda t: {"out": oracles.silu(t["x"])},
        grad_wrt=("x",)))


_gelu_case("none", 7, 13)
_gelu_case("tanh", 7, 13)
_gelu_case("none", 3, 5, 97)
_gelu_case("tanh", 1)
_silu_case(3, 5, 97)
_silu_case(1)


# --- SwiGLU feed-forward ------------------------------------------------------------------

def _swiglu_case(b, t, c, f):
    def make(rng):
        return {"x": rng.standard_normal((b, t, c)),
                "w1": rng.standard_normal((c, f)) / np.sqrt(c),
                "w3": rng.standard_normal((c, f)) / np.sqrt(c),
                "w2": rng.standard_normal((f, c)) / np.sqrt(f)}
    names = ("x", "w1", "w3", "w2")
    register(Case(
        name=f"swiglu/{(b, t, c)}/F={f}", inputs=make,
        forward=lambda i: single(swiglu.swiglu_forward(i["x"], i["w1"], i["w3"], i["w2"])),
        backward=lambda d, cache: dict(zip(names, swiglu.swiglu_backward(d["out"], cache))),
        torch=lambda t: {"out": oracles.swiglu(t["x"], t["w1"], t["w3"], t["w2"])},
        grad_wrt=names))


_swiglu_case(2, 1, 8, 12)
_swiglu_case(3, 7, 13, 19)


# --- linear and embedding -----------------------------------------------------------------

def _linear_case(x_shape, c_out, *, bias):
    def make(rng):
        c_in = x_shape[-1]
        out = {"x": rng.standard_normal(x_shape),
               "weight": rng.standard_normal((c_in, c_out)) / np.sqrt(c_in)}
        if bias:
            out["bias"] = rng.standard_normal(c_out)
        return out
    names = ("x", "weight", "bias") if bias else ("x", "weight")
    register(Case(
        name=f"linear/{'bias' if bias else 'nobias'}/{x_shape}->{c_out}", inputs=make,
        forward=lambda i: single(linear.linear_forward(i["x"], i["weight"], i.get("bias"))),
        backward=lambda d, c: dict(zip(names, linear.linear_backward(d["out"], c))),
        torch=lambda t: {"out": oracles.linear(t["x"], t["weight"], t.get("bias"))},
        grad_wrt=names))


def _embedding_case(ids_shape, v, c):
    def make(rng):
        ids = rng.integers(0, v, size=ids_shape)
        flat = ids.reshape(-1)
        flat[-1] = flat[0]                   # at least one repeated id whenever ids has 2+ entries
        return {"ids": ids, "table": rng.standard_normal((v, c))}
    register(Case(
        name=f"embedding/{ids_shape}/V={v},C={c}", inputs=make,
        forward=lambda i: single(linear.embedding_forward(i["ids"], i["table"])),
        backward=lambda d, cache: {"table": linear.embedding_backward(d["out"], cache)},
        torch=lambda t: {"out": oracles.embedding(t["ids"], t["table"])},
        grad_wrt=("table",)))


_linear_case((7, 13), 5, bias=True)
_linear_case((3, 5, 97), 11, bias=False)
_linear_case((1,), 3, bias=True)
_embedding_case((2, 9), 7, 5)
_embedding_case((1,), 3, 4)
_embedding_case((3, 4, 5), 11, 13)
