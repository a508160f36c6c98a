"""Every cache names the forward that made it, and every backward refuses any other cache.

``out, cache = X_forward(...)`` puts ``cache["op"] = "X_forward"``; ``X_backward(dout, cache)``
checks it before reading anything else, so a cache handed to the wrong backward is a TypeError
naming both ops, not a KeyError or a silently wrong gradient (rmsnorm_backward on a layernorm
cache, or softmax_backward on a log_softmax cache, used to return numbers). The table OPS holds
one small float64 call of every forward; the last tests check that it lists every public forward
and backward of ref_numpy, so that a new op cannot be left out.
"""
import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

import ref_numpy
from ref_numpy import (activations, attention, cross_entropy, flash_attention, linear, mha, norms,
                       online_softmax, positional, rope, softmax, swiglu)
from ref_numpy import moe, moe_router
from ref_numpy import model, model_blocks


@dataclass(frozen=True)
class Op:
    module: object
    forward: Callable
    backward: Callable
    make_inputs: Callable       # rng -> (args, kwargs) of the forward
    make_dout: Callable         # (rng, out) -> dout of the backward

    @property
    def name(self) -> str:
        return self.forward.__name__


def _like(rng, out):
    return rng.standard_normal(out.shape)


def _x(rng):
    return (rng.standard_normal((2, 3, 4)),), {}


def _norm(bias):
    def make(rng):
        args = (rng.standard_normal((2, 3, 4)), 1 + 0.1 * rng.standard_normal(4))
        return args + ((rng.standard_normal(4),) if bias else ()), {}
    return make


def _ce(rng):
    return (rng.standard_normal((3, 5)), np.array([0, 4, -100])), {}


def _swiglu(rng):
    return (rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 6)),
            rng.standard_normal((4, 6)), rng.standard_normal((6, 4))), {}


def _linear(rng):
    return (rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5)),
            rng.standard_normal(5)), {}


def _embedding(rng):
    return (np.array([[0, 2, 2], [5, 1, 0]]), rng.standard_normal((6, 4))), {}


def _qkv(**kwargs):
    """GQA (H = 2, Hkv = 1), Tq = 3, Tk = 5, D = 4."""
    def make(rng):
        return (rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 1, 5, 4)),
                rng.standard_normal((1, 1, 5, 4))), dict(kwargs)
    return make


def _sdpa(rng):
    args, kw = _qkv(causal=True)(rng)
    return args, dict(kw, bias=rng.standard_normal((3, 5)))


def _rope(rng):
    """B = 1, H = 2, T = 3, D = 6, rotary_dim 4 (2 frequencies), positions 5, 6, 7."""
    cos, sin = rope.rope_tables(np.array([1.0, 0.01]), np.arange(5, 8))
    return (rng.standard_normal((1, 2, 3, 6)), cos, sin), {}


def _learned_position(rng):
    return (rng.standard_normal((6, 4)), np.array([[0, 1, 2], [0, 0, 5]])), {}


def _mha(rng):
    """B = 2, T = 3, C = 8, H = 2, Hkv = 1, D = 4, E = (H + 2·Hkv)·D = 16."""
    return (rng.standard_normal((2, 3, 8)), rng.standard_normal((8, 16)) / 3,
            rng.standard_normal(16), rng.standard_normal((8, 8)) / 3,
            rng.standard_normal(8)), dict(n_head=2, n_kv_head=1, causal=True)


def _moe_router(rng):
    """N = 5 tokens, C = 4, E = 3, k = 2, capacity drops."""
    return (rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)), \
        dict(k=2, gate="softmax_topk_renorm", capacity_factor=0.75, balance_coef=0.1, z_coef=0.01)


def _moe(rng):
    """x (2, 3, 4), E = 3 experts of F = 5, k = 2, a shared expert of Fs = 2, capacity drops."""
    return (rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 3)),
            rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5)),
            rng.standard_normal((3, 5, 4))), dict(
        k=2, gate="topk_softmax", capacity_factor=0.75, shared_w1=rng.standard_normal((4, 2)),
        shared_w3=rng.standard_normal((4, 2)), shared_w2=rng.standard_normal((2, 4)),
        balance_coef=0.1, z_coef=0.01)


def _tiny_model():
    """Llama, one block, C = 4, H = 2, Hkv = 1, V = 11."""
    return model.ModelConfig(family="llama", vocab_size=11, n_layer=1, n_head=2, n_kv_head=1,
                             d_model=4, d_ff=6, max_seq_len=8)


def _block(rng):
    config = _tiny_model()
    weights = model_blocks.block_weights(model.init_params(config, 0, np.float64), config, 0)
    return (rng.standard_normal((2, 3, 4)), weights, config), dict(rope=config.rope())


def _model(rng):
    config = _tiny_model()
    return (model.init_params(config, 0, np.float64), config, np.array([[1, 2, 3]]),
            np.array([[2, 3, -100]])), {}


OPS = [
    Op(softmax, softmax.softmax_forward, softmax.softmax_backward, _x, _like),
    Op(softmax, softmax.log_softmax_forward, softmax.log_softmax_backward, _x, _like),
    Op(online_softmax, online_softmax.online_softmax_forward,
       online_softmax.online_softmax_backward, _x, _like),
    Op(cross_entropy, cross_entropy.cross_entropy_forward, cross_entropy.cross_entropy_backward,
       _ce, lambda rng, out: np.array(rng.standard_normal())),
    Op(norms, norms.rmsnorm_forward, norms.rmsnorm_backward, _norm(False), _like),
    Op(norms, norms.layernorm_forward, norms.layernorm_backward, _norm(True), _like),
    Op(activations, activations.gelu_forward, activations.gelu_backward, _x, _like),
    Op(activations, activations.silu_forward, activations.silu_backward, _x, _like),
    Op(swiglu, swiglu.swiglu_forward, swiglu.swiglu_backward, _swiglu, _like),
    Op(linear, linear.linear_forward, linear.linear_backward, _linear, _like),
    Op(linear, linear.embedding_forward, linear.embedding_backward, _embedding, _like),
    Op(attention, attention.attention_forward, attention.attention_backward, _sdpa, _like),
    Op(attention, attention.attention_forward_loop, attention.attention_backward_loop, _sdpa,
       _like),
    Op(attention, attention.attention_forward_einsum, attention.attention_backward_einsum, _sdpa,
       _like),
    Op(mha, mha.mha_forward, mha.mha_backward, _mha, _like),
    Op(mha, mha.mha_forward_per_head, mha.mha_backward_per_head, _mha, _like),
    Op(rope, rope.rope_forward, rope.rope_backward, _rope, _like),
    Op(positional, positional.learned_position_forward, positional.learned_position_backward,
       _learned_position, _like),
    Op(flash_attention, flash_attention.flash_attention_forward,
       flash_attention.flash_attention_backward, _qkv(causal=True, block_q=2, block_k=2), _like),
    Op(moe_router, moe_router.router_forward, moe_router.router_backward, _moe_router,
       lambda rng, out: rng.standard_normal(out.gates.shape)),
    Op(moe, moe.moe_forward, moe.moe_backward, _moe,
       lambda rng, out: rng.standard_normal(out.y.shape)),
    Op(model_blocks, model_blocks.block_forward, model_blocks.block_backward, _block, _like),
    Op(model, model.model_forward, model.model_backward, _model,
       lambda rng, out: np.array(rng.standard_normal())),
]
BY_NAME = {op.name: op for op in OPS}


def _run(op: Op):
    """(cache, dout) of one forward call on small float64 inputs."""
    rng = np.random.default_rng(0)
    args, kwargs = op.make_inputs(rng)
    out, cache = op.forward(*args, **kwargs)
    return cache, op.make_dout(rng, out)


def _arrays(grads):
    """The gradient arrays a backward returned (one array, or a tuple with None for no bias;
    a dict of gradients by name counts as its values)."""
    grads = grads if isinstance(grads, tuple) else (grads,)
    flat = [v for g in grads for v in (g.values() if isinstance(g, dict) else [g])]
    return [g for g in flat if g is not None]


@pytest.mark.parametrize("name", list(BY_NAME))
def test_each_backward_works_on_its_own_cache(name):
    op = BY_NAME[name]
    cache, dout = _run(op)
    assert cache["op"] == name
    grads = _arrays(op.backward(dout, cache))
    assert grads and all(isinstance(g, np.ndarray) and g.dtype == np.float64
                         and np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("maker, taker", [(a, b) for a in BY_NAME for b in BY_NAME if a != b],
                         ids=lambda name: name)
def test_a_backward_refuses_the_cache_of_another_forward(maker, taker):
    foreign, _ = _run(BY_NAME[maker])
    _, dout = _run(BY_NAME[taker])           # a dout of the right shape for the taker
    message = f"cache: expected the cache of {taker} but got the cache of {maker}"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        BY_NAME[taker].backward(dout, foreign)


@pytest.mark.parametrize("name", list(BY_NAME))
def test_a_backward_refuses_what_is_not_a_forward_cache(name):
    op = BY_NAME[name]
    cache, dout = _run(op)
    prefix = f"cache: expected the cache of {name} (a dict from that function) but got "
    # the whole (out, cache) pair of the forward, a common slip
    with pytest.raises(TypeError, match=f"^{re.escape(prefix + 'tuple')}$"):
        op.backward(dout, (dout, cache))
    with pytest.raises(TypeError, match=f"^{re.escape(prefix + 'NoneType')}$"):
        op.backward(dout, None)
    anonymous = {k: v for k, v in cache.items() if k != "op"}
    with pytest.raises(TypeError, match=re.escape(prefix + "a dict without an 'op' entry")):
        op.backward(dout, anonymous)


def _public(kind: str) -> set[str]:
    """Every public function of a ref_numpy module whose name contains ``_forward``/``_backward``
    (attention_backward_loop and mha_backward_per_head included), as "module.name"."""
    found = set()
    for info in pkgutil.iter_modules(ref_numpy.__path__):
        module = importlib.import_module(f"ref_numpy.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if f"_{kind}" in name and not name.startswith("_") and fn.__module__ == module.__name__:
                found.add(f"{module.__name__}.{name}")
    return found


def test_the_table_lists_every_backward_and_forward_of_ref_numpy():
    for kind in ("backward", "forward"):
        listed = {f"{op.module.__name__}.{getattr(op, kind).__name__}" for op in OPS}
        assert _public(kind) == listed, kind
    for op in OPS:   # the pairs match by name: X_forward[_tail] with X_backward[_tail]
        assert op.backward.__name__ == op.name.replace("_forward", "_backward"), op.name
