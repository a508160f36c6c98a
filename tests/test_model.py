"""The whole model of ``ref_numpy.model``: forward, loss and every gradient against the torch copy
(float64, both families, GQA, tied and untied heads, post-norm, MoE, padding), finite
differences, the parameter count, the initial loss, overfitting one batch, gradient
checkpointing, and bad input. (The harness cases of ``equivalence.cases.model`` get the
full finite-difference gradcheck in ``test_equivalence``.)"""
import dataclasses
import math
import time
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from ref_numpy import model
from ref_numpy.optim import AdamW
from torch_bridge import model as torch_model

SIZES = dict(vocab_size=23, n_layer=2, n_head=4, d_model=16, d_ff=24, max_seq_len=16)
CONFIGS = {
    "llama-gqa-untied": model.ModelConfig(family="llama", n_kv_head=2, **SIZES),
    "llama-mqa-tied": model.ModelConfig(family="llama", n_kv_head=1, tie_embeddings=True,
                                        **SIZES),
    "llama-yarn": model.ModelConfig(family="llama", n_kv_head=2, rope_theta=500.0,
                                    rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                  "original_max_position_embeddings": 4},
                                    **SIZES),
    "llama-moe": model.ModelConfig(family="llama", n_kv_head=2, n_experts=3,
                                   experts_per_token=2, **SIZES),
    "gpt2-tied": model.ModelConfig(family="gpt2", n_kv_head=4, tie_embeddings=True, **SIZES),
    "gpt2-untied": model.ModelConfig(family="gpt2", n_kv_head=4, **SIZES),
    "gpt2-postnorm": model.ModelConfig(family="gpt2", n_kv_head=4, tie_embeddings=True,
                                       norm_position="post", **SIZES),
    "llama-postnorm": model.ModelConfig(family="llama", n_kv_head=2, norm_position="post",
                                        **SIZES),
}


def _params(config, seed=1, noise=0.1):
    rng = np.random.default_rng(seed)
    return {n: p + noise * rng.standard_normal(p.shape)
            for n, p in model.init_params(config, seed, np.float64).items()}


def _batch(config, B=3, T=9, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, (B, T))
    targets = rng.integers(0, config.vocab_size, (B, T))
    targets[0, :3] = model.IGNORE_INDEX                   # a prompt mask
    return ids, targets


def _torch(params, config, ids, targets, **kw):
    tp = {n: torch.from_numpy(a.copy()).requires_grad_(True) for n, a in params.items()}
    kw = {k: None if v is None else torch.from_numpy(v) for k, v in kw.items()}
    logits, loss = torch_model.forward(tp, config, torch.from_numpy(ids),
                                       torch.from_numpy(targets), **kw)
    loss.backward()
    return logits.detach().numpy(), loss.item(), {n: t.grad.numpy() for n, t in tp.items()}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
def test_forward_loss_and_every_gradient_equal_torch_in_float64(name, padded):
    config = CONFIGS[name]
    params = _params(config)
    ids, targets = _batch(config)
    kw = {}
    if padded:   # row 1 has two padding positions on the left
        mask = np.ones(ids.shape, dtype=bool)
        mask[1, :2] = False
        kw = dict(key_mask=mask, position_ids=np.maximum(np.cumsum(mask, axis=1) - 1, 0))
    out, cache = model.model_forward(params, config, ids, targets, **kw)
    grads = model.model_backward(1.0, cache)
    logits, loss, ref = _torch(params, config, ids, targets, **kw)
    assert list(grads) == list(model.param_shapes(config))
    assert np.abs(out.logits - logits).max() <= 1e-10
    assert abs(float(out.loss) - loss) <= 1e-10
    worst = max(np.abs(grads[n] - ref[n]).max() for n in ref)
    assert worst <= 1e-10, worst
    assert all(np.abs(ref[n]).max() > 0 for n in ref if "wpe" not in n)   # every one is used


def test_finite_differences_along_every_parameter_at_once():
    """A directional derivative of the loss along a random direction in all the parameters."""
    config = CONFIGS["gpt2-tied"]
    params, (ids, targets) = _params(config), _batch(config)
    out, cache = model.model_forward(params, config, ids, targets)
    grads = model.model_backward(1.0, cache)
    rng = np.random.default_rng(3)
    v = {n: rng.standard_normal(p.shape) for n, p in params.items()}
    eps = 1e-6

    def loss(sign):
        moved = {n: p + sign * eps * v[n] for n, p in params.items()}
        return float(model.model_forward(moved, config, ids, targets)[0].loss)
    numeric = (loss(1) - loss(-1)) / (2 * eps)
    analytic = sum(float(np.vdot(grads[n], v[n])) for n in params)
    assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(numeric))


# ----------------------------------------------------------------------------- parameters

@settings(max_examples=40, deadline=None)
@given(family=st.sampled_from(model.FAMILIES), n_layer=st.integers(1, 3),
       heads=st.sampled_from([(4, 4), (4, 2), (4, 1), (2, 2)]), head_dim=st.sampled_from([2, 4]),
       d_ff=st.integers(1, 9), vocab=st.integers(2, 30), max_seq_len=st.integers(1, 20),
       tie=st.booleans(), post=st.booleans(), experts=st.integers(0, 3))
def test_param_count_formula_equals_the_sum_of_array_sizes(family, n_layer, heads, head_dim,
                                                           d_ff, vocab, max_seq_len, tie, post,
                                                           experts):
    H, Hkv = heads
    if family == "gpt2":
        Hkv, experts = H, 0
    config = model.ModelConfig(family=family, vocab_size=vocab, n_layer=n_layer, n_head=H,
                               n_kv_head=Hkv, d_model=H * head_dim, d_ff=d_ff,
                               max_seq_len=max_seq_len, tie_embeddings=tie,
                               norm_position="post" if post else "pre", n_experts=experts,
                               experts_per_token=1)
    params = model.init_params(config, 0)
    assert model.param_count(config) == sum(a.size for a in params.values())
    model.check_params(params, config)


def test_param_count_of_the_shipped_configs():
    # GPT-2 tied: V·C + P·C + L·(12·C² + 13·C) + 2·C with F = 4C; Llama: no biases, untied
    V, C, P, L = 512, 128, 128, 4
    assert model.param_count(model.CONFIGS["tiny-gpt2"]) == (V * C + P * C + L * (
        12 * C * C + 13 * C) + 2 * C)
    assert model.param_count(model.CONFIGS["tiny-llama"]) == 2 * V * C + L * (
        2 * C + C * (4 + 4) * 32 + 4 * 32 * C + 3 * C * 344) + C


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_initial_loss_is_log_vocab_within_two_percent(name):
    config = model.CONFIGS[name]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, (4, 64))
    out, _ = model.model_forward(model.init_params(config, 0), config, ids, np.roll(ids, -1, 1))
    assert abs(float(out.loss) / math.log(config.vocab_size) - 1) < 0.02, float(out.loss)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_overfits_one_batch_in_under_100_steps(family):
    config = model.ModelConfig(family=family, vocab_size=64, n_layer=2, n_head=4,
                               n_kv_head=2 if family == "llama" else 4, d_model=32, d_ff=64,
                               max_seq_len=16, tie_embeddings=family == "gpt2")
    params = model.init_params(config, 0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 64, (4, 17))
    x, y = ids[:, :-1], ids[:, 1:]
    opt = AdamW(list(params.values()), lr=1e-2, weight_decay=0.0)
    for step in range(100):
        out, cache = model.model_forward(params, config, x, y)
        if float(out.loss) < 0.1:
            break
        grads = model.model_backward(1.0, cache)
        opt.step([grads[n] for n in params])
    assert float(out.loss) < 0.1, (step, float(out.loss))


# ----------------------------------------------------------------------------- checkpointing

def _fwd_bwd(params, config, x, y, every):
    out, cache = model.model_forward(params, config, x, y, checkpoint_every=every)
    return model.model_backward(1.0, cache)


def test_gradient_checkpointing_gives_identical_gradients_and_a_lower_peak():
    config = model.ModelConfig(family="llama", vocab_size=64, n_layer=4, n_head=4, n_kv_head=2,
                               d_model=32, d_ff=64, max_seq_len=64)
    params = model.init_params(config, 0, np.float64)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 64, (4, 64)), rng.integers(0, 64, (4, 64))
    plain = _fwd_bwd(params, config, x, y, 0)
    peaks, seconds = {}, {}
    for every in (0, 1, 2):
        assert all(np.array_equal(g, plain[n]) for n, g in
                   _fwd_bwd(params, config, x, y, every).items()), every
        tracemalloc.start()
        t0 = time.perf_counter()
        _fwd_bwd(params, config, x, y, every)
        seconds[every] = time.perf_counter() - t0
        peaks[every] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[1] < peaks[2] < peaks[0], peaks
    assert peaks[1] < 0.6 * peaks[0], peaks           # 4 blocks: one block's activations live
    print(f"peak MiB {[round(peaks[k] / 2 ** 20, 2) for k in peaks]}, seconds "
          f"{[round(seconds[k], 3) for k in seconds]} for checkpoint_every 0, 1, 2")


# ----------------------------------------------------------------------------- bad input

def test_token_ids_beyond_the_vocabulary_are_an_error_naming_them():
    config = CONFIGS["llama-gqa-untied"]
    ids = np.array([[1, 2, 23]])
    with pytest.raises(ValueError, match=r"ids: expected token ids in \[0, 23\) \(vocab_size\) "
                                         r"but got 23 at index \(0, 2\)"):
        model.model_forward(_params(config), config, ids)


def test_a_sequence_longer_than_the_learned_positions_is_an_error():
    config = CONFIGS["gpt2-tied"]
    with pytest.raises(ValueError, match=r"at most max_seq_len = 16 positions \(the rows of the "
                                         r"learned position table transformer.wpe.weight\) but "
                                         r"got T = 17"):
        model.model_forward(_params(config), config, np.zeros((1, 17), dtype=np.int64))
    # RoPE has no table: Llama runs past max_seq_len
    llama = CONFIGS["llama-gqa-untied"]
    model.model_forward(_params(llama), llama, np.zeros((1, 17), dtype=np.int64))


def test_parameters_that_disagree_with_the_config_are_errors_naming_them():
    config = CONFIGS["llama-gqa-untied"]
    ids = np.zeros((1, 3), dtype=np.int64)
    params = _params(config)
    name = "model.layers.1.self_attn.k_proj.weight"
    bad = dict(params, **{name: params[name][:, :4]})
    with pytest.raises(ValueError, match=rf"{name}: expected shape \(16, 8\) but got \(16, 4\)"):
        model.model_forward(bad, config, ids)
    missing = {n: p for n, p in params.items() if n != name}
    with pytest.raises(ValueError, match=rf"params: '{name}' is missing"):
        model.model_forward(missing, config, ids)
    with pytest.raises(ValueError, match=r"params: 'extra' is not a parameter of this config"):
        model.model_forward(dict(params, extra=np.zeros(3)), config, ids)
    mixed = dict(params, **{name: params[name].astype(np.float32)})
    with pytest.raises(TypeError, match=rf"{name}: expected dtype float64"):
        model.model_forward(mixed, config, ids)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"config: unknown key 'n_layers'"):
        model.ModelConfig.from_dict({**CONFIGS["gpt2-tied"].to_dict(), "n_layers": 2})
    assert model.ModelConfig.from_dict(CONFIGS["llama-yarn"].to_dict()) == CONFIGS["llama-yarn"]
    with pytest.raises(ValueError, match=r"n_kv_head: GPT-2 has no such option"):
        model.ModelConfig(family="gpt2", n_head=4, n_kv_head=2)
    with pytest.raises(ValueError, match=r"n_kv_head: expected a divisor of n_head = 4"):
        model.ModelConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match=r"family: expected one of"):
        model.ModelConfig(family="bert")
    with pytest.raises(ValueError, match=r"scaling: keys \['factr'\] are not read"):
        model.ModelConfig(rope_scaling={"rope_type": "linear", "factr": 2.0})


def test_backward_without_a_loss_needs_dlogits():
    config = CONFIGS["gpt2-tied"]
    params = _params(config)
    out, cache = model.model_forward(params, config, np.zeros((1, 3), dtype=np.int64))
    assert out.loss is None
    with pytest.raises(ValueError, match=r"dloss: the forward computed no loss"):
        model.model_backward(1.0, cache)
    grads = model.model_backward(None, cache, dlogits=np.ones_like(out.logits))
    assert set(grads) == set(params)
    replaced = dataclasses.replace(config, vocab_size=24)
    with pytest.raises(ValueError, match=r"params: 'transformer.wte.weight'|transformer.wte"):
        model.model_forward(params, replaced, np.zeros((1, 3), dtype=np.int64))
