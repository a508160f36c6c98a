"""Scaled dot-product attention (ref_numpy.attention): known answers, the three implementations
against each other, masks, fully masked rows, dropout, bias gradients, GQA, and every error.

The comparison with torch autograd and the finite-difference gradcheck of every variant run
through the harness (equivalence/cases/attention.py, tests/test_equivalence.py); the last tests
here show that the harness catches a wrong attention backward.
"""
import math

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from equivalence.harness import check_case
from equivalence.registry import all_cases
from ref_numpy import attention
from ref_numpy.mha import repeat_kv, sum_kv_groups

IMPLS = {
    "batched": (attention.attention_forward, attention.attention_backward),
    "loop": (attention.attention_forward_loop, attention.attention_backward_loop),
    "einsum": (attention.attention_forward_einsum, attention.attention_backward_einsum),
}


def _qkv(rng, B, H, Hkv, Tq, Tk, D, dtype=np.float64):
    return (rng.standard_normal((B, H, Tq, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Tk, D)).astype(dtype),
            rng.standard_normal((B, Hkv, Tk, D)).astype(dtype))


# --- known answers ----------------------------------------------------------------------------

def test_known_answer_forward_and_backward():
    # One query, two keys, D = 1, scale = 1: scores (0, ln 3) -> P = (1/4, 3/4).
    q = np.array([[[[1.0]]]])
    k = np.array([[[[0.0], [math.log(3.0)]]]])
    v = np.array([[[[4.0], [8.0]]]])
    for name, (fwd, bwd) in IMPLS.items():
        out, cache = fwd(q, k, v, scale=1.0)
        assert out[0, 0, 0, 0] == pytest.approx(0.25 * 4 + 0.75 * 8, abs=1e-14), name
        assert cache["lse"][0, 0, 0] == pytest.approx(math.log(4.0), abs=1e-14)
        dq, dk, dv, dbias = bwd(np.ones_like(out), cache)
        # dV = P; dP = v = (4, 8); rowsum(dP P) = 7; dS = P (dP - 7) = (-3/4, 3/4)
        np.testing.assert_allclose(dv[0, 0, :, 0], [0.25, 0.75], atol=1e-14)
        np.testing.assert_allclose(dk[0, 0, :, 0], [-0.75, 0.75], atol=1e-14)   # dS * q
        assert dq[0, 0, 0, 0] == pytest.approx(0.75 * math.log(3.0), abs=1e-14)  # dS . k
        assert dbias is None


def test_known_answer_causal_first_row_copies_the_first_value():
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, 1, 1, 1, 4, 4, 3)
    out, cache = attention.attention_forward(q, k, v, causal=True)
    np.testing.assert_allclose(out[0, 0, 0], v[0, 0, 0], rtol=0, atol=1e-15)
    assert cache["lse"][0, 0, 0] == pytest.approx(q[0, 0, 0] @ k[0, 0, 0] / math.sqrt(3))


def test_lse_and_probabilities_against_scipy():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 2, 2, 2, 5, 7, 4)
    allowed = rng.random((2, 2, 5, 7)) < 0.6
    allowed[1, 0, 2] = False                           # a fully masked row
    out, cache = attention.attention_forward(q, k, v, mask=allowed, scale=0.7)
    s = np.where(allowed, 0.7 * q @ k.swapaxes(-1, -2), -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = logsumexp(s, axis=-1)
        p = np.nan_to_num(softmax(s, axis=-1))
    np.testing.assert_allclose(cache["lse"], lse, rtol=1e-13, atol=1e-13)
    assert cache["lse"][1, 0, 2] == -np.inf
    np.testing.assert_allclose(cache["p"], p, atol=1e-14)
    np.testing.assert_allclose(out, p @ v, atol=1e-13)


# --- masks ------------------------------------------------------------------------------------

def test_causal_mask_pictures_bottom_right():
    np.testing.assert_array_equal(attention.causal_mask(3, 5).astype(int),
                                  [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(attention.causal_mask(5, 3).astype(int),
                                  [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(attention.causal_mask(1, 4), [[True] * 4])


def test_window_mask_band_and_causal():
    np.testing.assert_array_equal(attention.window_mask(4, 4, 2).astype(int),
                                  [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]])
    # causal sliding window of 3 keys, Tq = 2 < Tk = 6: query positions 4 and 5
    np.testing.assert_array_equal(attention.window_mask(2, 6, 3, causal=True).astype(int),
                                  [[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])


def test_key_mask_from_lengths_and_attention_mask_combination():
    km = attention.key_mask_from_lengths([3, 0], 4)
    np.testing.assert_array_equal(km, [[1, 1, 1, 0], [0, 0, 0, 0]])
    allowed = attention.attention_mask(2, 1, 4, 4, causal=True, key_mask=km)
    assert allowed.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(allowed[0, 0].astype(int),
                                  [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]])
    assert not allowed[1].any()
    assert attention.attention_mask(2, 1, 4, 4) is None


@pytest.mark.parametrize("name", list(IMPLS))
def test_fully_masked_rows_output_zero_lse_neginf_zero_grad_and_no_nan(name):
    fwd, bwd = IMPLS[name]
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, 2, 4, 2, 9, 5, 8)             # causal with Tq > Tk: rows 0..3 empty
    km = attention.key_mask_from_lengths([5, 0], 5)   # batch row 1: every key is padding
    bias = rng.standard_normal((1, 4, 9, 5))
    with np.errstate(invalid="raise", over="raise"):
        out, cache = fwd(q, k, v, causal=True, key_mask=km, bias=bias)
        dq, dk, dv, dbias = bwd(rng.standard_normal(out.shape), cache)
    for a in (out, dq, dk, dv, dbias):
        assert np.isfinite(a).all()
    assert (out[:, :, :4] == 0).all() and (out[1] == 0).all()
    assert (cache["lse"][:, :, :4] == -np.inf).all() and (cache["lse"][1] == -np.inf).all()
    assert np.isfinite(cache["lse"][0, :, 4:]).all()
    assert (dq[:, :, :4] == 0).all() and (dq[1] == 0).all()
    assert (dk[1] == 0).all() and (dv[1] == 0).all()
    assert (dbias[0, :, :4] == 0).all()


def test_all_neginf_additive_row_is_fully_masked():
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 1, 1, 1, 3, 4, 2)
    m = np.zeros((3, 4))
    m[1] = -np.inf
    out, cache = attention.attention_forward(q, k, v, mask=m)
    assert (out[0, 0, 1] == 0).all() and cache["lse"][0, 0, 1] == -np.inf
    assert np.isfinite(out).all()


def test_padded_keys_get_no_attention_and_no_gradient():
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, 2, 3, 3, 6, 7, 5)
    km = attention.key_mask_from_lengths([7, 4], 7)
    out, cache = attention.attention_forward(q, k, v, key_mask=km)
    assert (cache["p"][1, :, :, 4:] == 0).all()
    _, dk, dv, _ = attention.attention_backward(rng.standard_normal(out.shape), cache)
    assert (dk[1, :, 4:] == 0).all() and (dv[1, :, 4:] == 0).all()
    # the padded keys' values do not matter
    v2 = v.copy()
    v2[1, :, 4:] = 1e6
    np.testing.assert_array_equal(attention.attention_forward(q, k, v2, key_mask=km)[0], out)


def test_bool_mask_equals_additive_neginf_mask():
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, 2, 2, 1, 5, 6, 4)
    allowed = rng.random((2, 1, 5, 6)) < 0.5
    a = attention.attention_forward(q, k, v, mask=allowed)[0]
    b = attention.attention_forward(q, k, v, mask=np.where(allowed, 0.0, -np.inf))[0]
    np.testing.assert_allclose(a, b, atol=1e-15)


# --- the three implementations agree ----------------------------------------------------------

CONFIGS = {
    "T1": dict(shape=(2, 2, 2, 1, 1, 8)),
    "T1_causal": dict(shape=(2, 2, 2, 1, 1, 8), causal=True),
    "13x29_D40_causal": dict(shape=(1, 2, 2, 13, 29, 40), causal=True),
    "29x13_D59_causal": dict(shape=(1, 2, 2, 29, 13, 59), causal=True),
    "29x13_D59": dict(shape=(1, 1, 1, 29, 13, 59)),
    "T97_D59_causal": dict(shape=(1, 1, 1, 97, 97, 59), causal=True),
    "H6_Hkv6": dict(shape=(1, 6, 6, 7, 9, 8), causal=True),
    "H6_Hkv3": dict(shape=(1, 6, 3, 7, 9, 8), causal=True),
    "H6_Hkv2": dict(shape=(1, 6, 2, 7, 9, 8)),
    "H6_Hkv1": dict(shape=(1, 6, 1, 7, 9, 8), causal=True),
    "padding": dict(shape=(2, 2, 1, 9, 11, 8), lengths=[11, 0]),
    "window_boolmask": dict(shape=(2, 3, 1, 9, 9, 8), window=3, mask="bool"),
    "floatmask": dict(shape=(1, 2, 2, 7, 7, 8), mask="float"),
    "bias_TqTk": dict(shape=(2, 2, 2, 7, 9, 8), bias=(7, 9)),
    "bias_1H": dict(shape=(2, 2, 2, 7, 9, 8), bias=(1, 2, 7, 9), causal=True),
    "bias_B1": dict(shape=(2, 2, 2, 7, 9, 8), bias=(2, 1, 7, 9)),
    "dropout": dict(shape=(1, 2, 2, 6, 6, 8), dropout_p=0.3, causal=True),
    "scale": dict(shape=(1, 2, 1, 5, 6, 8), scale=0.3),
    "B3_H4_Hkv2_bias_B1": dict(shape=(3, 4, 2, 5, 7, 8), bias=(3, 1, 5, 7), causal=True,
                               lengths=[7, 3, 5]),
}


def _run_config(impl, cfg, dtype, seed=0):
    rng = np.random.default_rng(seed)
    B, H, Hkv, Tq, Tk, D = cfg["shape"]
    q, k, v = _qkv(rng, B, H, Hkv, Tq, Tk, D, dtype)
    kw = dict(causal=cfg.get("causal", False), window=cfg.get("window"),
              scale=cfg.get("scale"))
    if "lengths" in cfg:
        kw["key_mask"] = attention.key_mask_from_lengths(cfg["lengths"], Tk)
    if cfg.get("mask") == "bool":
        kw["mask"] = rng.random((B, H, Tq, Tk)) < 0.7
    elif cfg.get("mask") == "float":
        m = rng.standard_normal((Tq, Tk))
        m[rng.random((Tq, Tk)) < 0.3] = -np.inf
        kw["mask"] = m.astype(dtype)
    if "bias" in cfg:
        kw["bias"] = rng.standard_normal(cfg["bias"]).astype(dtype)
    if "dropout_p" in cfg:
        kw.update(dropout_p=cfg["dropout_p"], seed=7)
    dout = rng.standard_normal((B, H, Tq, D)).astype(dtype)
    fwd, bwd = IMPLS[impl]
    out, cache = fwd(q, k, v, **kw)
    grads = bwd(dout, cache)
    return [out, cache["lse"], cache["p"]] + [g for g in grads if g is not None]


@pytest.mark.parametrize("impl", ["loop", "einsum"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_implementations_agree_float64(impl, config):
    ref = _run_config("batched", CONFIGS[config], np.float64)
    got = _run_config(impl, CONFIGS[config], np.float64)
    assert len(got) == len(ref)
    for name, g, r in zip(["out", "lse", "p", "dq", "dk", "dv", "dbias"], got, ref):
        assert g.shape == r.shape and g.dtype == np.float64, name
        finite = np.isfinite(r)
        np.testing.assert_array_equal(np.isfinite(g), finite, err_msg=name)
        np.testing.assert_array_equal(g[~finite], r[~finite], err_msg=name)
        assert np.abs(g[finite] - r[finite]).max(initial=0) <= 1e-12, name


@pytest.mark.parametrize("slab_rows", [0, 1, 2])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_slabs_of_batch_rows_and_single_groups_agree(monkeypatch, config, slab_rows):
    # every config fits one slab by default; a smaller SLAB_BYTES makes slabs of 1 or 2 batch
    # rows (B = 3: a short last slab), and 0 rows one (batch row, kv head) group per matmul
    cfg = CONFIGS[config]
    ref = _run_config("batched", cfg, np.float64)
    B, H, Hkv, Tq, Tk, D = cfg["shape"]
    monkeypatch.setattr(attention, "SLAB_BYTES", max(slab_rows * H * Tq * Tk * 8, 1))
    got = _run_config("batched", cfg, np.float64)
    for name, g, r in zip(["out", "lse", "p", "dq", "dk", "dv", "dbias"], got, ref):
        finite = np.isfinite(r)
        np.testing.assert_array_equal(np.isfinite(g), finite, err_msg=name)
        assert np.abs(g[finite] - r[finite]).max(initial=0) <= 1e-13, name


@pytest.mark.parametrize("impl", ["loop", "einsum"])
@pytest.mark.parametrize("config", ["13x29_D40_causal", "H6_Hkv2", "padding", "bias_1H",
                                    "dropout", "window_boolmask"])
def test_implementations_agree_float32(impl, config):
    ref = _run_config("batched", CONFIGS[config], np.float32)
    got = _run_config(impl, CONFIGS[config], np.float32)
    for name, g, r in zip(["out", "lse", "p", "dq", "dk", "dv", "dbias"], got, ref):
        assert g.dtype == np.float32, name
        finite = np.isfinite(r)
        rel = np.abs(g[finite] - r[finite]).max(initial=0) / np.abs(r[finite]).max(initial=1)
        assert rel <= 1e-6, (name, rel)


# --- GQA equals the repeat-interleave picture ------------------------------------------------

@pytest.mark.parametrize("Hkv", [6, 3, 2, 1])
def test_gqa_equals_repeated_kv_heads_and_sums_grads_over_groups(Hkv):
    rng = np.random.default_rng(6)
    q, k, v = _qkv(rng, 2, 6, Hkv, 5, 8, 4)
    G = 6 // Hkv
    out, cache = attention.attention_forward(q, k, v, causal=True)
    out_r, cache_r = attention.attention_forward(q, repeat_kv(k, G), repeat_kv(v, G),
                                                 causal=True)
    np.testing.assert_allclose(out, out_r, atol=1e-14)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv, _ = attention.attention_backward(dout, cache)
    dq_r, dk_r, dv_r, _ = attention.attention_backward(dout, cache_r)
    np.testing.assert_allclose(dq, dq_r, atol=1e-13)
    np.testing.assert_allclose(dk, sum_kv_groups(dk_r, Hkv), atol=1e-13)
    np.testing.assert_allclose(dv, sum_kv_groups(dv_r, Hkv), atol=1e-13)


# --- bias gradient, scale, dropout ------------------------------------------------------------

def test_dbias_is_reduced_over_broadcast_axes():
    rng = np.random.default_rng(7)
    B, H, Tq, Tk = 2, 3, 4, 5
    q, k, v = _qkv(rng, B, H, 1, Tq, Tk, 4)
    full = rng.standard_normal((B, H, Tq, Tk))
    dout = rng.standard_normal((B, H, Tq, 4))
    # the same values given as a full bias and as broadcast biases give the same forward, and
    # the broadcast bias's gradient is the sum of the full one over the broadcast axes
    b2 = full[0, 0]
    _, c = attention.attention_forward(q, k, v, bias=np.broadcast_to(b2, full.shape).copy())
    dfull = attention.attention_backward(dout, c)[3]
    for bias, want in ((b2, dfull.sum(axis=(0, 1))),
                       (b2[None, None], dfull.sum(axis=(0, 1), keepdims=True)),
                       (np.broadcast_to(b2, (1, H, Tq, Tk)).copy(), dfull.sum(0, keepdims=True)),
                       (np.broadcast_to(b2, (B, 1, Tq, Tk)).copy(), dfull.sum(1, keepdims=True))):
        _, c = attention.attention_forward(q, k, v, bias=bias)
        dbias = attention.attention_backward(dout, c)[3]
        assert dbias.shape == bias.shape
        np.testing.assert_allclose(dbias, want, atol=1e-13)


def test_default_scale_is_one_over_sqrt_d_and_scale_overrides_it():
    rng = np.random.default_rng(8)
    q, k, v = _qkv(rng, 1, 2, 2, 3, 4, 9)
    a = attention.attention_forward(q, k, v)[0]
    b = attention.attention_forward(q, k, v, scale=1 / 3)[0]
    c = attention.attention_forward(q, k, v, scale=0.9)[0]
    np.testing.assert_allclose(a, b, atol=1e-15)
    assert np.abs(a - c).max() > 1e-3


def test_dropout_known_answer_seed_reproducible_and_mask_equivalent():
    rng = np.random.default_rng(9)
    q, k, v = _qkv(rng, 2, 2, 2, 5, 6, 3)
    p = 0.4
    out1, c1 = attention.attention_forward(q, k, v, dropout_p=p, seed=11)
    out2, _ = attention.attention_forward(q, k, v, dropout_p=p, seed=11)
    out3, _ = attention.attention_forward(q, k, v, dropout_p=p, seed=12)
    keep = attention.dropout_keep_mask((2, 2, 5, 6), p, 11)
    out4, _ = attention.attention_forward(q, k, v, dropout_p=p, dropout_mask=keep)
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(out1, out4)
    np.testing.assert_array_equal(c1["keep"], keep)
    assert np.abs(out1 - out3).max() > 1e-3
    P = softmax(q @ k.swapaxes(-1, -2) / math.sqrt(3), axis=-1)
    np.testing.assert_allclose(out1, (P * keep / (1 - p)) @ v, atol=1e-14)
    # lse is before dropout
    np.testing.assert_allclose(c1["lse"], logsumexp(q @ k.swapaxes(-1, -2) / math.sqrt(3), -1))


def test_dropout_keep_mask_rate():
    keep = attention.dropout_keep_mask((200, 500), 0.25, 0)
    n = keep.size
    assert abs(keep.mean() - 0.75) < 5 * math.sqrt(0.25 * 0.75 / n)


def test_dropout_backward_only_through_kept_entries():
    rng = np.random.default_rng(10)
    q, k, v = _qkv(rng, 1, 1, 1, 4, 5, 3)
    keep = np.ones((1, 1, 4, 5), dtype=bool)
    keep[0, 0, :, 2] = False                           # key 2 dropped for every query
    out, c = attention.attention_forward(q, k, v, dropout_p=0.5, dropout_mask=keep)
    _, _, dv, _ = attention.attention_backward(rng.standard_normal(out.shape), c)
    assert (dv[0, 0, 2] == 0).all() and (dv[0, 0, [0, 1, 3, 4]] != 0).all()


# --- dtype, empty queries ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(IMPLS))
def test_float32_is_preserved(name):
    fwd, bwd = IMPLS[name]
    rng = np.random.default_rng(11)
    q, k, v = _qkv(rng, 1, 2, 1, 3, 4, 5, np.float32)
    bias = rng.standard_normal((3, 4)).astype(np.float32)
    out, c = fwd(q, k, v, causal=True, bias=bias)
    grads = bwd(np.ones_like(out), c)
    assert out.dtype == c["lse"].dtype == c["p"].dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads)


def test_no_queries_gives_empty_output_and_zero_key_grads():
    rng = np.random.default_rng(12)
    _, k, v = _qkv(rng, 1, 2, 1, 0, 3, 4)
    q = np.zeros((1, 2, 0, 4))
    out, c = attention.attention_forward(q, k, v, causal=True)
    assert out.shape == (1, 2, 0, 4) and c["lse"].shape == (1, 2, 0)
    dq, dk, dv, _ = attention.attention_backward(np.zeros_like(out), c)
    assert dq.shape == (1, 2, 0, 4) and (dk == 0).all() and (dv == 0).all()


# --- bad input --------------------------------------------------------------------------------

def _bad(**overrides):
    rng = np.random.default_rng(13)
    q, k, v = _qkv(rng, 2, 6, 3, 5, 7, 8)
    args = dict(q=q, k=k, v=v)
    args.update(overrides)
    return attention.attention_forward(args.pop("q"), args.pop("k"), args.pop("v"), **args)


R = np.random.default_rng(14)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(k=R.standard_normal((2, 3, 7, 9))), ValueError,
     r"k: expected shape \(B, Hkv, Tk, D\) with B = 2, D = 8 from q \(2, \*, \*, 8\) but got "
     r"\(2, 3, 7, 9\)"),
    (dict(v=R.standard_normal((2, 3, 6, 8))), ValueError,
     r"v: expected shape \(B, Hkv, Tk, D\), the shape of k \(2, 3, 7, 8\) but got \(2, 3, 6, 8\)"),
    (dict(k=R.standard_normal((2, 4, 7, 8)), v=R.standard_normal((2, 4, 7, 8))), ValueError,
     r"k: expected a number of key/value heads Hkv that divides the number of query heads "
     r"H = 6 but got Hkv = 4"),
    (dict(k=R.standard_normal((2, 3, 0, 8)), v=R.standard_normal((2, 3, 0, 8))), ValueError,
     r"k: expected at least one key position but got Tk = 0"),
    (dict(q=R.standard_normal((2, 6, 5))), ValueError, r"q: expected 4 dimensions but got 3"),
    (dict(v=R.standard_normal((2, 3, 7, 8)).astype(np.float32)), TypeError,
     r"v: expected dtype float64 \(the dtype of q\) but got float32"),
    (dict(q=np.full((2, 6, 5, 8), np.nan)), ValueError, r"q: contains NaN"),
    (dict(mask=np.ones((5, 6), dtype=bool)), ValueError,
     r"mask: expected shape \(Tq, Tk\) = \(5, 7\) or \(B\|1, H\|1, Tq, Tk\) = "
     r"\(2\|1, 6\|1, 5, 7\) but got \(5, 6\)"),
    (dict(mask=np.ones((2, 3, 5, 7), dtype=bool)), ValueError, r"mask: expected shape"),
    (dict(mask=np.ones((5, 7), dtype=np.float32)), TypeError,
     r"mask: expected dtype float64 \(the dtype of q\) but got float32"),
    (dict(mask=np.ones((5, 7), dtype=np.int64)), TypeError,
     r"mask: expected dtype float32 or float64 but got int64"),
    (dict(mask=[[True]]), TypeError, r"mask: expected a numpy.ndarray \(bool or float\) but "
                                      r"got list"),
    (dict(bias=np.full((5, 7), np.inf)), ValueError, r"bias: contains \+inf"),
    (dict(bias=np.zeros((6, 5, 7))), ValueError, r"bias: expected shape \(Tq, Tk\)"),
    (dict(key_mask=np.ones((2, 6), dtype=bool)), ValueError,
     r"key_mask: expected shape \(B, Tk\) \(2, 7\) but got \(2, 6\)"),
    (dict(key_mask=np.ones((2, 7))), TypeError, r"key_mask: expected a bool ndarray"),
    (dict(window=0), ValueError, r"window: expected an int >= 1 but got 0"),
    (dict(window=2.5), TypeError, r"window: expected an int >= 1 or None but got float"),
    (dict(causal=1), TypeError, r"causal: expected a bool but got int"),
    (dict(scale=float("inf")), ValueError, r"scale: expected a finite float or None"),
    (dict(dropout_p=1.0, seed=0), ValueError,
     r"dropout_p: expected a float in \[0, 1\) but got 1.0"),
    (dict(dropout_p=0.1), ValueError, r"dropout_p = 0.1: expected a dropout_mask or a seed"),
    (dict(dropout_p=0.1, seed=0, dropout_mask=np.ones((2, 6, 5, 7), dtype=bool)), ValueError,
     r"dropout_mask and seed: expected one of them but got both"),
    (dict(dropout_mask=np.ones((2, 6, 5, 7), dtype=bool)), ValueError,
     r"dropout_mask: given but dropout_p = 0"),
    (dict(dropout_p=0.1, dropout_mask=np.ones((2, 6, 5, 6), dtype=bool)), ValueError,
     r"dropout_mask: expected shape \(B, H, Tq, Tk\) \(2, 6, 5, 7\) but got \(2, 6, 5, 6\)"),
    (dict(seed=3), ValueError, r"seed: given but dropout_p = 0"),
])
def test_bad_input_is_a_clear_error(overrides, error, message):
    with pytest.raises(error, match=message):
        _bad(**overrides)


@pytest.mark.parametrize("name", list(IMPLS))
def test_bad_dout_is_a_clear_error(name):
    fwd, bwd = IMPLS[name]
    rng = np.random.default_rng(15)
    q, k, v = _qkv(rng, 1, 2, 1, 3, 4, 5)
    out, c = fwd(q, k, v)
    with pytest.raises(ValueError, match=r"dout: expected shape \(B, H, Tq, D\), the shape of "
                                         r"out \(1, 2, 3, 5\) but got \(1, 2, 3, 4\)"):
        bwd(np.ones((1, 2, 3, 4)), c)
    with pytest.raises(TypeError, match=r"dout: expected dtype float64"):
        bwd(np.ones((1, 2, 3, 5), dtype=np.float32), c)


def test_key_mask_from_lengths_errors():
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, Tk\] = \[0, 4\]"):
        attention.key_mask_from_lengths([5], 4)
    with pytest.raises(TypeError, match=r"lengths: expected a 1-D sequence of integers"):
        attention.key_mask_from_lengths([1.5], 4)


# --- the harness catches a wrong attention backward ------------------------------------------

def _case(name):
    (case,) = [c for c in all_cases(name) if c.name == name]
    return case


def test_harness_catches_a_backward_without_the_gqa_group_sum(monkeypatch):
    case = _case("attention/gqa/causal/B1_H6_Hkv2_Tq11_Tk11_D40")
    assert all(r.passed for r in check_case(case, "float64"))
    real = attention.attention_backward

    def first_head_only(dout, cache):          # dK, dV from the first head of each group only
        spec = cache["spec"]
        dq, dk, dv, db = real(dout, cache)
        G = spec.G
        keep = np.zeros_like(dout)
        keep[:, ::G] = dout[:, ::G]
        _, dk1, dv1, _ = real(keep, cache)
        return dq, dk1, dv1, db

    monkeypatch.setattr(attention, "attention_backward", first_head_only)
    rows = check_case(case, "float64")
    failed = {(r.backend, r.tensor) for r in rows if not r.passed}
    assert ("numpy", "grad k") in failed and ("numpy", "grad v") in failed
    assert ("gradcheck", "k") in failed and ("gradcheck", "v") in failed
    assert ("numpy", "grad q") not in failed


def test_harness_catches_a_softmax_backward_without_the_rowsum_term(monkeypatch):
    case = _case("attention/bias/1H/B2_H6_Hkv3_Tq11_Tk11_D16")
    real = attention.attention_backward

    def no_rowsum(dout, cache):                  # dS = P ⊙ dP (forgets − rowsum(dP ⊙ P))
        spec = cache["spec"]
        p, v = cache["p"], cache["v"]
        dp = np.matmul(dout.reshape(spec.B, spec.Hkv, -1, spec.D), v.swapaxes(-1, -2))
        ds = p * dp.reshape(p.shape)
        dq, dk, dv, _ = real(dout, cache)
        return dq, dk, dv, ds.sum(axis=0, keepdims=True)

    monkeypatch.setattr(attention, "attention_backward", no_rowsum)
    rows = check_case(case, "float64")
    failed = {(r.backend, r.tensor) for r in rows if not r.passed}
    assert ("numpy", "grad bias") in failed and ("gradcheck", "bias") in failed
