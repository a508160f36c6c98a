"""RoPE (ref_numpy.rope): known answers, both conventions and the permutation between them, offsets
and position ids, partial rotary, the backward as the rotation by −θ, transformers' production
implementations, composition with attention, MHA and KV-cache decoding, and bad input.

The transformers tests skip, with the reason, where transformers is not importable.
"""
import math
import re

import numpy as np
import pytest
import torch

from equivalence.harness import check_case
from equivalence.registry import all_cases
from ref_numpy import attention, kv_cache, mha, rope, rope_scaling

TRANSFORMERS_REASON = "transformers is not importable here"


def _transformers(module):
    pytest.importorskip("transformers", reason=TRANSFORMERS_REASON)
    import importlib
    return importlib.import_module(f"transformers.models.{module}")


def _apply(x, positions, *, interleaved=False, rotary_dim=None, inv_freq=None, factor=1.0):
    D = x.shape[-1]
    R = D if rotary_dim is None else rotary_dim
    inv = rope_scaling.default_inv_freq(R) if inv_freq is None else inv_freq
    cos, sin = rope.rope_tables(inv, positions, attention_factor=factor, dtype=x.dtype)
    return rope.rope_forward(x, cos, sin, interleaved=interleaved)


# --- known answers --------------------------------------------------------------------------

@pytest.mark.parametrize("interleaved", [False, True])
def test_position_zero_is_the_identity(interleaved):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 8))
    out, _ = _apply(x, np.zeros(5, dtype=int), interleaved=interleaved)
    np.testing.assert_array_equal(out, x)


def test_known_answer_at_position_one():
    """D = 4, base 10000: θ = (10000^0, 10000^(−2/4)) = (1, 0.01); x = (1, 2, 3, 4) at m = 1.

    half-split pairs (x0, x2) = (1, 3) at angle 1 and (x1, x3) = (2, 4) at angle 0.01:
        (1 cos 1 − 3 sin 1,  2 cos .01 − 4 sin .01,  1 sin 1 + 3 cos 1,  2 sin .01 + 4 cos .01)
    interleaved pairs (x0, x1) = (1, 2) at angle 1 and (x2, x3) = (3, 4) at angle 0.01:
        (cos 1 − 2 sin 1,  sin 1 + 2 cos 1,  3 cos .01 − 4 sin .01,  3 sin .01 + 4 cos .01)
    """
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    c1, s1, c2, s2 = math.cos(1), math.sin(1), math.cos(0.01), math.sin(0.01)
    half, _ = _apply(x, np.array([1]))
    np.testing.assert_allclose(half.ravel(), [c1 - 3 * s1, 2 * c2 - 4 * s2, s1 + 3 * c1,
                                              2 * s2 + 4 * c2], rtol=1e-15)
    inter, _ = _apply(x, np.array([1]), interleaved=True)
    np.testing.assert_allclose(inter.ravel(), [c1 - 2 * s1, s1 + 2 * c1, 3 * c2 - 4 * s2,
                                               3 * s2 + 4 * c2], rtol=1e-15)


def test_tables_are_float64_then_cast_and_carry_the_attention_factor():
    inv = np.array([1.0, 1e-3])
    pos = np.array([0, 100000])
    c64, s64 = rope.rope_tables(inv, pos, attention_factor=1.5)
    np.testing.assert_allclose(c64[1], 1.5 * np.cos([100000.0, 100.0]), rtol=1e-15)
    np.testing.assert_allclose(s64[1], 1.5 * np.sin([100000.0, 100.0]), rtol=1e-15)
    c32, s32 = rope.rope_tables(inv, pos, attention_factor=1.5, dtype=np.float32)
    assert c32.dtype == s32.dtype == np.float32
    np.testing.assert_array_equal(c32, c64.astype(np.float32))


@pytest.mark.parametrize("interleaved", [False, True])
def test_partial_rotary_passes_the_rest_through(interleaved):
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 10))
    out, _ = _apply(x, np.arange(6), interleaved=interleaved, rotary_dim=4)
    np.testing.assert_array_equal(out[..., 4:], x[..., 4:])
    alone, _ = _apply(np.ascontiguousarray(x[..., :4]), np.arange(6), interleaved=interleaved)
    np.testing.assert_allclose(out[..., :4], alone, rtol=0, atol=1e-15)


def test_offsets_and_position_ids_pick_rows_of_one_table():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 8))
    full, _ = _apply(np.concatenate([x, x], axis=2), np.arange(8))
    offset, _ = _apply(x, rope.rope_positions(4, offset=4))
    np.testing.assert_allclose(offset, full[:, :, 4:], rtol=0, atol=1e-14)
    ids = np.array([[4, 5, 6, 7], [0, 1, 2, 3]])
    per_row, _ = _apply(x, rope.rope_positions(4, position_ids=ids, batch=2))
    np.testing.assert_allclose(per_row[0], full[0, :, 4:], rtol=0, atol=1e-14)
    np.testing.assert_allclose(per_row[1], full[1, :, :4], rtol=0, atol=1e-14)


# --- the backward ---------------------------------------------------------------------------

@pytest.mark.parametrize("interleaved", [False, True])
def test_backward_is_the_adjoint_and_the_rotation_by_minus_theta(interleaved):
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((2, 2, 3, 7, 12))
    inv = rope_scaling.default_inv_freq(8)
    cos, sin = rope.rope_tables(inv, np.arange(3, 10), attention_factor=1.2)
    out, cache = rope.rope_forward(x, cos, sin, interleaved=interleaved)
    dx = rope.rope_backward(y, cache)
    # <M x, y> = <x, Mᵀ y>
    assert np.sum(out * y) == pytest.approx(np.sum(x * dx), rel=1e-13)
    # Mᵀ = the forward with sin -> −sin
    minus, _ = rope.rope_forward(y, cos, -sin, interleaved=interleaved)
    np.testing.assert_array_equal(dx, minus)
    # with attention factor 1 the rotation is orthogonal: the backward undoes the forward
    cos1, sin1 = rope.rope_tables(inv, np.arange(3, 10))
    out1, cache1 = rope.rope_forward(x, cos1, sin1, interleaved=interleaved)
    np.testing.assert_allclose(rope.rope_backward(out1, cache1), x, rtol=0, atol=1e-14)


def _case(name):
    (case,) = [c for c in all_cases(name) if c.name == name]
    return case


def test_harness_catches_a_backward_that_rotates_the_wrong_way(monkeypatch):
    case = _case("rope/half/gqa/offset5/B1_H6_Hkv2_T7_D40_R24")
    assert all(r.passed for r in check_case(case, "float64"))

    def same_way(dout, cache):           # Mᵀ replaced by M: the sign of sin not flipped
        return rope.rope_forward(dout, cache["cos"], cache["sin"],
                                 interleaved=cache["interleaved"])[0]

    monkeypatch.setattr(rope, "rope_backward", same_way)
    failed = {(r.backend, r.tensor) for r in check_case(case, "float64") if not r.passed}
    assert {("numpy", "grad q"), ("numpy", "grad k"), ("gradcheck", "q"),
            ("gradcheck", "k")} <= failed
    assert ("numpy", "q_rot") not in failed


@pytest.mark.parametrize("name", ["rope/half/plain/B1_H2_Hkv1_T97_D64_R64",
                                  "rope/interleaved/position_ids/B2_H4_Hkv2_T7_D64_R32"])
def test_harness_catches_the_other_convention(monkeypatch, name):
    case = _case(name)
    real = rope.rope_forward
    monkeypatch.setattr(rope, "rope_forward", lambda x, cos, sin, *, interleaved=False:
                        real(x, cos, sin, interleaved=not interleaved))
    failed = {(r.backend, r.tensor) for r in check_case(case, "float64") if not r.passed}
    assert ("numpy", "q_rot") in failed and ("numpy", "k_rot") in failed


# --- the two conventions and the checkpoint permutation -------------------------------------

@pytest.mark.parametrize("D, R", [(8, 8), (40, 24)])
def test_the_conventions_agree_under_the_permutation(D, R):
    x = np.random.default_rng(4).standard_normal((2, 3, 7, D))
    perm = rope.half_split_permutation(D, R)
    inter, _ = _apply(x, np.arange(7) + 11, interleaved=True, rotary_dim=R)
    half, _ = _apply(np.ascontiguousarray(x[..., perm]), np.arange(7) + 11, rotary_dim=R)
    np.testing.assert_allclose(half, inter[..., perm], rtol=0, atol=1e-14)


def _mha_weights(rng, C, H, Hkv, D):
    E = (H + 2 * Hkv) * D
    return (rng.standard_normal((C, E)) / np.sqrt(C), 0.1 * rng.standard_normal(E),
            rng.standard_normal((H * D, C)) / np.sqrt(H * D), 0.1 * rng.standard_normal(C))


@pytest.mark.parametrize("H, Hkv, D, R", [(4, 4, 8, 8), (6, 2, 8, 4), (3, 1, 16, 10)])
def test_a_permuted_interleaved_checkpoint_gives_equal_scores_and_outputs(H, Hkv, D, R):
    rng = np.random.default_rng(5)
    B, T, C = 2, 9, 24
    x = rng.standard_normal((B, T, C))
    w_qkv, b_qkv, w_o, b_o = _mha_weights(rng, C, H, Hkv, D)
    w_half, b_half = rope.permute_qkv_to_half_split(w_qkv, b_qkv, H, Hkv, R)
    inter = rope.RoPE(D, rotary_dim=R, interleaved=True)
    half = rope.RoPE(D, rotary_dim=R)
    pos = np.arange(T)
    scores = []
    for w, b, r in ((w_qkv, b_qkv, inter), (w_half, b_half, half)):
        q, k, _ = mha.project_qkv(x, w, b, H, Hkv)
        q, k, _ = rope.rope_qk(q, k, r, pos)
        scores.append(q @ np.repeat(k, H // Hkv, axis=1).swapaxes(-1, -2))   # (B, H, T, T)
    np.testing.assert_allclose(scores[1], scores[0], rtol=0, atol=1e-13)
    # the unpermuted weights under the other convention give other scores
    q, k, _ = mha.project_qkv(x, w_qkv, b_qkv, H, Hkv)
    q, k, _ = rope.rope_qk(q, k, half, pos)
    assert np.abs(q @ np.repeat(k, H // Hkv, axis=1).swapaxes(-1, -2) - scores[0]).max() > 0.1
    y_inter, _ = mha.mha_forward(x, w_qkv, b_qkv, w_o, b_o, n_head=H, n_kv_head=Hkv,
                                 causal=True, rope=inter)
    y_half, _ = mha.mha_forward(x, w_half, b_half, w_o, b_o, n_head=H, n_kv_head=Hkv,
                                causal=True, rope=half)
    np.testing.assert_allclose(y_half, y_inter, rtol=0, atol=1e-13)


def test_permutation_is_the_one_of_the_llama_conversion_script():
    """transformers' convert_llama_weights_to_hf.py permutes wq (H·D, C) and wk (Hkv·D, C), in
    torch's (out, in) layout, by w.view(heads, D // 2, 2, C).transpose(1, 2).reshape(-1, C);
    ours acts on the columns of the (C, E) fused projection and leaves wv alone."""
    H, Hkv, D, C = 4, 2, 6, 5

    def permute(w, heads):
        return w.view(heads, D // 2, 2, C).transpose(1, 2).reshape(heads * D, C)

    rng = torch.Generator().manual_seed(0)
    wq, wk, wv = (torch.randn(n * D, C, generator=rng, dtype=torch.float64) for n in (H, Hkv, Hkv))
    w_qkv = torch.cat([wq, wk, wv]).T.numpy()                          # (C, E)
    ours, _ = rope.permute_qkv_to_half_split(w_qkv, None, H, Hkv)
    expected = torch.cat([permute(wq, H), permute(wk, Hkv), wv]).T.numpy()
    np.testing.assert_array_equal(ours, expected)


# --- transformers' production implementations -----------------------------------------------

def _hf_tables(cos, sin):
    """Our (.., T, R/2) tables in transformers' (B, T, R) layout: each angle twice."""
    return (torch.from_numpy(np.concatenate([cos, cos], -1)),
            torch.from_numpy(np.concatenate([sin, sin], -1)))


@pytest.mark.parametrize("positions", [np.arange(7) + 3, np.array([[0, 1, 2, 3, 4, 5, 6],
                                                                   [0, 0, 0, 1, 2, 3, 4]])])
def test_half_split_equals_transformers_llama_apply_rotary_pos_emb(positions):
    llama = _transformers("llama.modeling_llama")
    rng = np.random.default_rng(6)
    q, k = rng.standard_normal((2, 4, 7, 64)), rng.standard_normal((2, 2, 7, 64))
    r = rope.RoPE(64, scaling={"rope_type": "yarn", "factor": 4.0,
                               "original_max_position_embeddings": 4})
    ours_q, ours_k, _ = rope.rope_qk(q, k, r, positions)
    cos, sin = r.tables(positions)
    c, s = _hf_tables(np.broadcast_to(cos, (2, *cos.shape[-2:])),
                      np.broadcast_to(sin, (2, *sin.shape[-2:])))
    hf_q, hf_k = llama.apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(k), c, s)
    np.testing.assert_allclose(ours_q, hf_q.numpy(), rtol=0, atol=1e-14)
    np.testing.assert_allclose(ours_k, hf_k.numpy(), rtol=0, atol=1e-14)


def test_partial_rotary_equals_transformers_gpt_neox():
    neox = _transformers("gpt_neox.modeling_gpt_neox")
    rng = np.random.default_rng(7)
    q, k = rng.standard_normal((2, 2, 2, 5, 40))
    cos, sin = rope.rope_tables(rope_scaling.default_inv_freq(24), np.arange(5) + 9)
    ours, _ = rope.rope_forward(q, cos, sin)
    c, s = _hf_tables(cos[None], sin[None])
    hf_q, _ = neox.apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(k), c, s)
    np.testing.assert_allclose(ours, hf_q.numpy(), rtol=0, atol=1e-14)


def test_interleaved_equals_transformers_gptj():
    gptj = _transformers("gptj.modeling_gptj")
    x = np.random.default_rng(8).standard_normal((2, 3, 6, 16))    # (B, H, T, D)
    cos, sin = rope.rope_tables(rope_scaling.default_inv_freq(16), np.arange(6) + 2)
    ours, _ = rope.rope_forward(x, cos, sin, interleaved=True)
    # GPT-J takes (B, T, H, D) and (B, T, R/2) tables
    xt = torch.from_numpy(x).transpose(1, 2)
    hf = gptj.apply_rotary_pos_emb(xt, torch.from_numpy(sin[None]), torch.from_numpy(cos[None]))
    np.testing.assert_allclose(ours, hf.transpose(1, 2).numpy(), rtol=0, atol=1e-14)


def test_tables_match_transformers_llama_rotary_embedding_to_float32():
    llama = _transformers("llama.modeling_llama")
    from transformers import LlamaConfig
    cfg = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=256, num_attention_heads=2, head_dim=128,
                         max_position_embeddings=131072, rope_parameters=dict(cfg))
    pos = np.array([[0, 1, 2, 1000, 8191]])
    x = torch.zeros(1, 5, 128, dtype=torch.float32)
    hf_cos, hf_sin = llama.LlamaRotaryEmbedding(config)(x, torch.from_numpy(pos))
    cos, sin = rope.RoPE(128, scaling=cfg).tables(pos[0], np.float32)
    # transformers forms m·θ in float32: an angle error of ~m·2⁻²⁴
    np.testing.assert_allclose(np.concatenate([cos, cos], -1), hf_cos[0].numpy(), rtol=0,
                               atol=2e-3)
    np.testing.assert_allclose(np.concatenate([sin, sin], -1), hf_sin[0].numpy(), rtol=0,
                               atol=2e-3)
    np.testing.assert_allclose(cos[:3], hf_cos[0, :3, :64].numpy(), rtol=0, atol=1e-6)


# --- composition with attention, MHA and the KV cache ---------------------------------------

@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("H, Hkv", [(4, 4), (6, 2), (6, 1)])
def test_cached_attention_with_rope_equals_rope_then_one_causal_forward(H, Hkv, interleaved):
    rng = np.random.default_rng(9)
    T, D = 13, 16
    q = rng.standard_normal((2, H, T, D))
    k, v = rng.standard_normal((2, 2, Hkv, T, D))
    r = rope.RoPE(D, rotary_dim=12, interleaved=interleaved,
                  scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8})
    qr, kr, _ = rope.rope_qk(q, k, r, np.arange(T))
    full, _ = attention.attention_forward(qr, kr, v, causal=True)
    cache = kv_cache.KVCache(2, Hkv, T, D)
    outs, start = [], 0
    for t in (4, 1, 1, 7):
        sl = slice(start, start + t)
        outs.append(kv_cache.cached_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], cache,
                                              rope=r))
        start += t
    assert np.abs(np.concatenate(outs, axis=2) - full).max() <= 1e-12


@pytest.mark.parametrize("chunks", [[1] * 9, [4, 5], [2, 1, 6]])
def test_mha_decode_with_rope_and_gqa_equals_one_causal_mha_forward(chunks):
    rng = np.random.default_rng(10)
    B, T, C, H, Hkv, D = 2, 9, 24, 6, 2, 8
    x = rng.standard_normal((B, T, C))
    weights = _mha_weights(rng, C, H, Hkv, D)
    r = rope.RoPE(D, scaling={"rope_type": "yarn", "factor": 4.0,
                              "original_max_position_embeddings": 4})
    full, _ = mha.mha_forward(x, *weights, n_head=H, n_kv_head=Hkv, causal=True, rope=r)
    cache = kv_cache.KVCache(B, Hkv, T, D)
    outs, start = [], 0
    for t in chunks:
        outs.append(kv_cache.mha_decode(x[:, start:start + t], *weights, cache, n_head=H,
                                        n_kv_head=Hkv, rope=r))
        start += t
    assert np.abs(np.concatenate(outs, axis=1) - full).max() <= 1e-12


def test_dynamic_ntk_decoding_past_the_trained_length_differs_from_one_forward():
    """The documented limit: cached keys keep the frequencies of the length they were rotated at."""
    rng = np.random.default_rng(11)
    B, T, C, H, D = 1, 12, 16, 2, 8
    x = rng.standard_normal((B, T, C))
    weights = _mha_weights(rng, C, H, H, D)
    r = rope.RoPE(D, scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=6)
    full, _ = mha.mha_forward(x, *weights, n_head=H, causal=True, rope=r)
    cache = kv_cache.KVCache(B, H, T, D)
    steps = [kv_cache.mha_decode(x[:, t:t + 1], *weights, cache, n_head=H, rope=r)
             for t in range(T)]
    got = np.concatenate(steps, axis=1)
    assert np.abs(got[:, :6] - full[:, :6]).max() > 1e-3       # full forward scaled every key
    short, _ = mha.mha_forward(x[:, :6], *weights, n_head=H, causal=True, rope=r)
    np.testing.assert_allclose(got[:, :6], short, rtol=0, atol=1e-12)


def test_mha_rope_position_ids_and_the_backward_with_rope():
    rng = np.random.default_rng(12)
    B, T, C, H, D = 2, 5, 12, 3, 4
    x = rng.standard_normal((B, T, C))
    weights = _mha_weights(rng, C, H, H, D)
    r = rope.RoPE(D)
    ids = np.array([[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]])
    y_ids, _ = mha.mha_forward(x, *weights, n_head=H, causal=True, rope=r, position_ids=ids)
    y, cache = mha.mha_forward(x, *weights, n_head=H, causal=True, rope=r)
    np.testing.assert_allclose(y_ids[0], y[0], rtol=0, atol=1e-14)
    # causal attention with RoPE is shift invariant: row 1 at 3 … 7 equals row 1 at 0 … 4
    np.testing.assert_allclose(y_ids[1], y[1], rtol=0, atol=1e-13)
    grads = mha.mha_backward(rng.standard_normal(y.shape), cache)
    assert all(g is not None and np.isfinite(g).all() for g in grads)


# --- bad input ------------------------------------------------------------------------------

X = np.zeros((1, 2, 3, 8))
COS, SIN = rope.rope_tables(np.ones(4), np.arange(3))


@pytest.mark.parametrize("call, error, message", [
    (lambda: rope.rope_forward(np.zeros((1, 2, 3, 7)), COS[:, :3], SIN[:, :3]), ValueError,
     "x: expected an even head dimension D for RoPE but got D = 7"),
    (lambda: rope.rope_forward(X, *rope.rope_tables(np.ones(5), np.arange(3))), ValueError,
     "cos: expected 1 to D/2 = 4 frequencies (rotary_dim = 2 x frequencies <= D = 8) but got 5"),
    (lambda: rope.rope_forward(X, COS[:2], SIN[:2]), ValueError,
     "cos: expected shape (T, R/2) with T = 3 from x (3, *) but got (2, 4)"),
    (lambda: rope.rope_forward(X, COS, SIN[:, :2]), ValueError,
     "sin: expected shape the shape of cos (3, 4) but got (3, 2)"),
    (lambda: rope.rope_forward(X.astype(np.float32), COS, SIN), TypeError,
     "cos: expected dtype float32 (the dtype of x) but got float64"),
    (lambda: rope.rope_forward(X, COS, SIN, interleaved="yes"), TypeError,
     "interleaved: expected a bool but got str"),
    (lambda: rope.RoPE(7), ValueError, "head_dim: expected an even int for RoPE but got 7"),
    (lambda: rope.RoPE(8, rotary_dim=10), ValueError,
     "rotary_dim: expected an even int in [2, head_dim] = [2, 8] but got 10"),
    (lambda: rope.RoPE(8, rotary_dim=5), ValueError,
     "rotary_dim: expected an even int in [2, head_dim] = [2, 8] but got 5"),
    (lambda: rope.RoPE(8, scaling={"type": "linear", "factor": 0}), ValueError,
     "factor: expected a number > 0 but got 0"),
    (lambda: rope.rope_tables(np.ones(2), np.array([0, -1])), ValueError,
     "positions: expected ints >= 0 but got -1"),
    (lambda: rope.rope_positions(3, position_ids=np.zeros((2, 4), dtype=int), batch=2),
     ValueError, "position_ids: expected shape (B, T) (2, 3) but got (2, 4)"),
    (lambda: rope.rope_positions(3, offset=2, position_ids=np.zeros((1, 3), dtype=int)),
     ValueError, "offset: expected 0 with position_ids"),
    (lambda: rope.rope_qk(X, X, rope.RoPE(16), np.arange(3)), ValueError,
     "rope: expected head_dim = D = 8 (the head dim of q) but got 16"),
    (lambda: rope.rope_qk(X, X, {"head_dim": 8}, np.arange(3)), TypeError,
     "rope: expected a ref_numpy.rope.RoPE but got dict"),
    (lambda: rope.half_split_permutation(8, 6 + 4), ValueError, "rotary_dim: expected an even"),
    (lambda: mha.mha_forward(np.zeros((1, 3, 4)), np.zeros((4, 12)), None, np.zeros((4, 4)),
                             None, n_head=1, position_ids=np.zeros((1, 3), dtype=int)),
     ValueError, "position_ids: given without rope"),
])
def test_bad_input_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_bad_dout_and_a_rope_error_leave_the_cache_unchanged():
    _, cache = rope.rope_forward(X, COS, SIN)
    with pytest.raises(ValueError, match=re.escape("dout: expected shape (B, H, T, D), the "
                                                   "shape of x (1, 2, 3, 8) but got (1, 2, 3, 4)")):
        rope.rope_backward(np.zeros((1, 2, 3, 4)), cache)
    kv = kv_cache.KVCache(1, 2, 4, 8)
    with pytest.raises(ValueError, match="rope: expected head_dim"):
        kv_cache.cached_attention(X, X, X, kv, rope=rope.RoPE(4))
    assert kv.length == 0
