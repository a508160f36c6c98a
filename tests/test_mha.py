"""Multi-head attention (ref_numpy.mha): known answer, per-head == fused (forward and every
weight gradient), torch.nn.MultiheadAttention with the weights copied across, GQA/MQA against
SDPA with enable_gqa, the repeat_kv / sum_kv_groups adjoint pair, and the error messages."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ref_numpy import attention, mha

GRADS = ("dx", "dw_qkv", "db_qkv", "dw_o", "db_o")


def _weights(rng, B, T, C, H, Hkv, dtype=np.float64, bias=True):
    D = C // H
    E = (H + 2 * Hkv) * D
    x = rng.standard_normal((B, T, C))
    w_qkv = rng.standard_normal((C, E)) / math.sqrt(C)
    b_qkv = 0.1 * rng.standard_normal(E) if bias else None
    w_o = rng.standard_normal((H * D, C)) / math.sqrt(H * D)
    b_o = 0.1 * rng.standard_normal(C) if bias else None
    return tuple(None if a is None else a.astype(dtype) for a in (x, w_qkv, b_qkv, w_o, b_o))


def test_known_answer_one_head_causal():
    # C = D = 1, identity projections: q = k = v = x = (1, 2); scale = 1.
    x = np.array([[[1.0], [2.0]]])
    w_qkv, w_o = np.ones((1, 3)), np.ones((1, 1))
    for fwd in (mha.mha_forward, mha.mha_forward_per_head):
        y, _ = fwd(x, w_qkv, None, w_o, None, n_head=1, causal=True)
        # row 0 sees key 0 only: y0 = v0 = 1; row 1: scores 2·(1, 2) = (2, 4)
        e2 = math.exp(2.0)
        np.testing.assert_allclose(y[0, :, 0], [1.0, (1 + 2 * e2) / (1 + e2)], atol=1e-15)


CONFIGS = {
    "T1": dict(B=2, T=1, C=12, H=3, causal=True),
    "plain_H3": dict(B=2, T=7, C=12, H=3),
    "causal_H6": dict(B=1, T=11, C=24, H=6, causal=True),
    "padding": dict(B=2, T=9, C=12, H=2, causal=True, lengths=[9, 4]),
    "gqa_H6_Hkv3": dict(B=2, T=7, C=24, H=6, Hkv=3, causal=True),
    "gqa_H6_Hkv2": dict(B=1, T=13, C=24, H=6, Hkv=2),
    "mqa_H6_Hkv1": dict(B=2, T=5, C=24, H=6, Hkv=1, causal=True, lengths=[5, 2]),
    "float_mask": dict(B=1, T=6, C=8, H=2, mask="float"),
    "no_bias": dict(B=2, T=5, C=8, H=2, bias=False, causal=True),
}


def _run(cfg, fwd, bwd, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    H = cfg["H"]
    Hkv = cfg.get("Hkv", H)
    ws = _weights(rng, cfg["B"], cfg["T"], cfg["C"], H, Hkv, dtype, cfg.get("bias", True))
    kw = dict(n_head=H, n_kv_head=Hkv, causal=cfg.get("causal", False))
    if "lengths" in cfg:
        kw["key_mask"] = attention.key_mask_from_lengths(cfg["lengths"], cfg["T"])
    if cfg.get("mask") == "float":
        kw["mask"] = rng.standard_normal((cfg["T"], cfg["T"])).astype(dtype)
    y, cache = fwd(*ws, **kw)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return [y] + list(bwd(dy, cache))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_per_head_equals_fused_float64(config):
    fused = _run(CONFIGS[config], mha.mha_forward, mha.mha_backward)
    heads = _run(CONFIGS[config], mha.mha_forward_per_head, mha.mha_backward_per_head)
    for name, a, b in zip(("y",) + GRADS, heads, fused):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape and a.dtype == np.float64, name
        assert np.abs(a - b).max() <= 1e-12, name


@pytest.mark.parametrize("config", ["padding", "gqa_H6_Hkv2"])
def test_per_head_equals_fused_float32(config):
    fused = _run(CONFIGS[config], mha.mha_forward, mha.mha_backward, np.float32)
    heads = _run(CONFIGS[config], mha.mha_forward_per_head, mha.mha_backward_per_head, np.float32)
    for name, a, b in zip(("y",) + GRADS, heads, fused):
        assert a.dtype == np.float32, name
        assert np.abs(a - b).max() / np.abs(b).max() <= 1e-6, name


@pytest.mark.parametrize("causal, lengths, bias", [(False, None, True), (True, None, True),
                                                    (True, [9, 5], True), (False, [6, 9], False)])
def test_matches_torch_multihead_attention_with_weights_copied(causal, lengths, bias):
    B, T, C, H = 2, 9, 12, 3
    rng = np.random.default_rng(1)
    x, w_qkv, b_qkv, w_o, b_o = _weights(rng, B, T, C, H, H, bias=bias)
    key_mask = None if lengths is None else attention.key_mask_from_lengths(lengths, T)
    y, cache = mha.mha_forward(x, w_qkv, b_qkv, w_o, b_o, n_head=H, causal=causal,
                               key_mask=key_mask)
    dy = rng.standard_normal(y.shape)
    dx, dw_qkv, db_qkv, dw_o, db_o = mha.mha_backward(dy, cache)

    m = torch.nn.MultiheadAttention(C, H, bias=bias, batch_first=True, dtype=torch.float64)
    with torch.no_grad():                       # torch stores W^T: nn.Linear computes x @ W^T
        m.in_proj_weight.copy_(torch.from_numpy(w_qkv.T))
        m.out_proj.weight.copy_(torch.from_numpy(w_o.T))
        if bias:
            m.in_proj_bias.copy_(torch.from_numpy(b_qkv))
            m.out_proj.bias.copy_(torch.from_numpy(b_o))
    tx = torch.from_numpy(x).requires_grad_(True)
    attn_mask = ~torch.ones(T, T, dtype=torch.bool).tril() if causal else None   # True = blocked
    kpm = None if key_mask is None else torch.from_numpy(~key_mask)               # True = pad
    ty, _ = m(tx, tx, tx, attn_mask=attn_mask, key_padding_mask=kpm, need_weights=False)
    ty.backward(torch.from_numpy(dy))

    def close(a, t):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=0, atol=1e-12)

    close(y, ty)
    close(dx, tx.grad)
    close(dw_qkv, m.in_proj_weight.grad.T)
    close(dw_o, m.out_proj.weight.grad.T)
    if bias:
        close(db_qkv, m.in_proj_bias.grad)
        close(db_o, m.out_proj.bias.grad)
    else:
        assert db_qkv is None and db_o is None


@pytest.mark.parametrize("Hkv", [6, 3, 2, 1])
def test_gqa_matches_torch_sdpa_enable_gqa(Hkv):
    B, T, C, H = 2, 7, 24, 6
    rng = np.random.default_rng(2)
    ws = _weights(rng, B, T, C, H, Hkv)
    y, cache = mha.mha_forward(*ws, n_head=H, n_kv_head=Hkv, causal=True)
    dy = rng.standard_normal(y.shape)
    grads = mha.mha_backward(dy, cache)

    tw = [torch.from_numpy(a).requires_grad_(True) for a in ws]
    tx, tw_qkv, tb_qkv, tw_o, tb_o = tw
    D = C // H
    qkv = tx @ tw_qkv + tb_qkv
    q = qkv[..., : H * D].reshape(B, T, H, D).transpose(1, 2)
    k = qkv[..., H * D: (H + Hkv) * D].reshape(B, T, Hkv, D).transpose(1, 2)
    v = qkv[..., (H + Hkv) * D:].reshape(B, T, Hkv, D).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # Tq = Tk
    ty = o.transpose(1, 2).reshape(B, T, H * D) @ tw_o + tb_o
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), atol=1e-12)
    for name, g, t in zip(GRADS, grads, tw):
        np.testing.assert_allclose(g, t.grad.numpy(), atol=1e-12, err_msg=name)


def test_repeat_kv_and_sum_kv_groups_are_adjoint():
    rng = np.random.default_rng(3)
    kv = rng.standard_normal((2, 3, 5, 4))
    g = rng.standard_normal((2, 6, 5, 4))
    rep = mha.repeat_kv(kv, 2)
    np.testing.assert_array_equal(rep[:, 4], kv[:, 2])
    np.testing.assert_array_equal(rep[:, 5], kv[:, 2])
    # <repeat(kv), g> == <kv, sum_groups(g)>
    assert np.sum(rep * g) == pytest.approx(np.sum(kv * mha.sum_kv_groups(g, 3)), rel=1e-13)


def test_mha_t97_is_finite_and_float32_preserved():
    rng = np.random.default_rng(4)
    ws = _weights(rng, 1, 97, 16, 2, 1, np.float32)
    y, cache = mha.mha_forward(*ws, n_head=2, n_kv_head=1, causal=True)
    grads = mha.mha_backward(np.ones_like(y), cache)
    assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    assert all(np.isfinite(g).all() for g in grads)


R = np.random.default_rng(5)
X = R.standard_normal((2, 5, 12))
W_QKV = R.standard_normal((12, 36))
B_QKV = R.standard_normal(36)
W_O = R.standard_normal((12, 12))
B_O = R.standard_normal(12)


@pytest.mark.parametrize("fwd", [mha.mha_forward, mha.mha_forward_per_head])
@pytest.mark.parametrize("args, kw, error, message", [
    ((X, R.standard_normal((12, 35)), None, W_O, None), dict(n_head=3), ValueError,
     r"w_qkv: expected shape \(C, \(H \+ 2·Hkv\)·D\) = \(12, 9·D\) but got \(12, 35\)"),
    ((X, W_QKV, B_QKV, W_O, B_O), dict(n_head=3, n_kv_head=2), ValueError,
     r"n_kv_head: expected a divisor of n_head = 3 but got 2"),
    ((X, W_QKV, B_QKV, R.standard_normal((12, 11)), B_O), dict(n_head=3), ValueError,
     r"w_o: expected shape \(H·D, C\) \(12, 12\) but got \(12, 11\)"),
    ((X, W_QKV, B_QKV[:-1], W_O, B_O), dict(n_head=3), ValueError,
     r"b_qkv: expected shape \(E,\) \(36,\) but got \(35,\)"),
    ((X, W_QKV, B_QKV, W_O, B_O.astype(np.float32)), dict(n_head=3), TypeError,
     r"b_o: expected dtype float64 \(the dtype of x\) but got float32"),
    ((X[0], W_QKV, B_QKV, W_O, B_O), dict(n_head=3), ValueError,
     r"x: expected 3 dimensions but got 2"),
    ((X, W_QKV, B_QKV, W_O, B_O), dict(n_head=0), ValueError,
     r"n_head: expected an int >= 1 but got 0"),
    ((X, W_QKV, B_QKV, W_O, B_O), dict(n_head=3, mask=np.ones((1, 1, 5, 5), dtype=bool)),
     ValueError, r"mask: expected a \(T, T\) array but got \(1, 1, 5, 5\)"),
    ((X, W_QKV, B_QKV, W_O, B_O), dict(n_head=3, key_mask=np.ones((2, 4), dtype=bool)),
     ValueError, r"key_mask: expected shape \(B, Tk\) \(2, 5\) but got \(2, 4\)"),
])
def test_bad_input_is_a_clear_error(fwd, args, kw, error, message):
    with pytest.raises(error, match=message):
        fwd(*args, **kw)


@pytest.mark.parametrize("fwd, bwd", [(mha.mha_forward, mha.mha_backward),
                                      (mha.mha_forward_per_head, mha.mha_backward_per_head)])
def test_bad_dy_is_a_clear_error(fwd, bwd):
    y, cache = fwd(X, W_QKV, B_QKV, W_O, B_O, n_head=3)
    with pytest.raises(ValueError, match=r"dy: expected shape \(B, T, C\), the shape of y "
                                         r"\(2, 5, 12\) but got \(2, 5, 11\)"):
        bwd(np.ones((2, 5, 11)), cache)


def test_gqa_helper_errors():
    with pytest.raises(ValueError, match=r"n_rep: expected an int >= 1 but got 0"):
        mha.repeat_kv(np.ones((1, 2, 3, 4)), 0)
    with pytest.raises(ValueError, match=r"n_kv_head: expected an int that divides H = 6 but "
                                         r"got 4"):
        mha.sum_kv_groups(np.ones((1, 6, 3, 4)), 4)
