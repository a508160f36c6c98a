"""KV cache (ref_numpy.kv_cache): decoding one token at a time or in chunks equals one causal
forward over the whole sequence (<= 1e-12 in float64), for attention and for multi-head
attention; overflow and bad input are clear errors that leave the cache unchanged."""
import numpy as np
import pytest

from ref_numpy import alibi, attention, kv_cache, mha


def _decode(q, k, v, chunks, **kw):
    B, Hkv, T, D = k.shape
    cache = kv_cache.KVCache(B, Hkv, T, D, dtype=q.dtype)
    outs, start = [], 0
    for t in chunks:
        sl = slice(start, start + t)
        outs.append(kv_cache.cached_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], cache, **kw))
        start += t
    assert cache.length == T
    return np.concatenate(outs, axis=2)


@pytest.mark.parametrize("H, Hkv", [(2, 2), (6, 3), (6, 2), (6, 1)])
@pytest.mark.parametrize("chunks", [[1] * 13, [5, 1, 7], [13], [2, 11]])
def test_decoding_equals_one_causal_forward(H, Hkv, chunks):
    rng = np.random.default_rng(0)
    T, D = sum(chunks), 40
    q = rng.standard_normal((2, H, T, D))
    k, v = rng.standard_normal((2, 2, Hkv, T, D))
    full, _ = attention.attention_forward(q, k, v, causal=True)
    assert np.abs(_decode(q, k, v, chunks) - full).max() <= 1e-12


@pytest.mark.parametrize("kw, full_kw", [
    (dict(window=4), dict(window=4)),
    (dict(scale=0.3), dict(scale=0.3)),
    (dict(alibi=True), "alibi"),
])
def test_decoding_with_window_scale_and_alibi(kw, full_kw):
    rng = np.random.default_rng(1)
    H, Hkv, T, D = 6, 2, 17, 8
    q = rng.standard_normal((1, H, T, D))
    k, v = rng.standard_normal((2, 1, Hkv, T, D))
    if full_kw == "alibi":
        full_kw = dict(mask=alibi.alibi_bias(H, T, T))
    full, _ = attention.attention_forward(q, k, v, causal=True, **full_kw)
    for chunks in ([1] * T, [3, 3, 1, 10]):
        assert np.abs(_decode(q, k, v, chunks, **kw) - full).max() <= 1e-12


def test_decoding_float32_matches_float32_forward():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((1, 4, 9, 16)).astype(np.float32)
    k, v = rng.standard_normal((2, 1, 2, 9, 16)).astype(np.float32)
    full, _ = attention.attention_forward(q, k, v, causal=True)
    got = _decode(q, k, v, [4, 1, 4])
    assert got.dtype == np.float32
    assert np.abs(got - full).max() / np.abs(full).max() <= 1e-6


@pytest.mark.parametrize("H, Hkv", [(3, 3), (6, 2)])
def test_mha_decode_equals_causal_mha_forward(H, Hkv):
    rng = np.random.default_rng(3)
    B, T, C = 2, 11, 24
    D = C // H
    x = rng.standard_normal((B, T, C))
    w_qkv = rng.standard_normal((C, (H + 2 * Hkv) * D)) / np.sqrt(C)
    b_qkv = rng.standard_normal((H + 2 * Hkv) * D)
    w_o = rng.standard_normal((H * D, C)) / np.sqrt(C)
    b_o = rng.standard_normal(C)
    y, _ = mha.mha_forward(x, w_qkv, b_qkv, w_o, b_o, n_head=H, n_kv_head=Hkv, causal=True)
    cache = kv_cache.KVCache(B, Hkv, T, D)
    steps = [kv_cache.mha_decode(x[:, s:e], w_qkv, b_qkv, w_o, b_o, cache, n_head=H,
                                 n_kv_head=Hkv) for s, e in ((0, 4), (4, 5), (5, 6), (6, 11))]
    assert np.abs(np.concatenate(steps, axis=1) - y).max() <= 1e-12


def _filled_cache():
    rng = np.random.default_rng(4)
    cache = kv_cache.KVCache(1, 2, 6, 3)
    cache.append(rng.standard_normal((1, 2, 4, 3)), rng.standard_normal((1, 2, 4, 3)))
    return cache, cache.k.copy(), cache.v.copy()


def _unchanged(cache, k0, v0):
    assert cache.length == 4
    np.testing.assert_array_equal(cache.k, k0)
    np.testing.assert_array_equal(cache.v, v0)


def test_overflow_is_an_error_and_leaves_the_cache_unchanged():
    cache, k0, v0 = _filled_cache()
    with pytest.raises(ValueError, match=r"KVCache overflow: cannot append 3 position\(s\); the "
                                         r"cache holds 4 of max_len = 6 \(2 free\)\. The cache "
                                         r"is unchanged\."):
        cache.append(np.ones((1, 2, 3, 3)), np.ones((1, 2, 3, 3)))
    _unchanged(cache, k0, v0)
    with pytest.raises(ValueError, match=r"KVCache overflow"):
        kv_cache.cached_attention(np.ones((1, 2, 3, 3)), np.ones((1, 2, 3, 3)),
                                  np.ones((1, 2, 3, 3)), cache)
    _unchanged(cache, k0, v0)
    k, v = cache.append(np.ones((1, 2, 2, 3)), np.ones((1, 2, 2, 3)))   # exactly full is fine
    assert cache.length == 6 and k.shape == (1, 2, 6, 3) and (v[:, :, 4:] == 1).all()


@pytest.mark.parametrize("args, error, message", [
    ((np.ones((1, 2, 1, 4)), np.ones((1, 2, 1, 4))), ValueError,
     r"k_new: expected shape \(B, Hkv, t, D\) = \(1, 2, t, 3\) \(1, 2, \*, 3\) but got "
     r"\(1, 2, 1, 4\)"),
    ((np.ones((1, 2, 1, 3)), np.ones((1, 2, 2, 3))), ValueError,
     r"v_new: expected shape \(B, Hkv, t, D\), the shape of k_new"),
    ((np.ones((1, 2, 1, 3), np.float32), np.ones((1, 2, 1, 3), np.float32)), TypeError,
     r"k_new: expected dtype float64 \(the cache's\) but got float32"),
    ((np.ones((1, 2, 0, 3)), np.ones((1, 2, 0, 3))), ValueError,
     r"k_new: expected at least one new position but got t = 0"),
])
def test_bad_append_is_an_error_and_leaves_the_cache_unchanged(args, error, message):
    cache, k0, v0 = _filled_cache()
    with pytest.raises(error, match=message):
        cache.append(*args)
    _unchanged(cache, k0, v0)


@pytest.mark.parametrize("q_new, error, message", [
    (np.ones((1, 3, 1, 3)), ValueError, r"q_new: expected a number of heads H divisible by "
                                        r"Hkv = 2 but got H = 3"),
    (np.ones((1, 2, 2, 3)), ValueError, r"q_new: expected shape \(B, H, t, D\) with B, t, D of "
                                        r"k_new \(1, \*, 1, 3\) but got \(1, 2, 2, 3\)"),
    (np.ones((1, 2, 1, 3), np.float32), TypeError, r"q_new: expected dtype float64"),
])
def test_bad_query_is_an_error_and_appends_nothing(q_new, error, message):
    cache, k0, v0 = _filled_cache()
    with pytest.raises(error, match=message):
        kv_cache.cached_attention(q_new, np.ones((1, 2, 1, 3)), np.ones((1, 2, 1, 3)), cache)
    _unchanged(cache, k0, v0)


@pytest.mark.parametrize("kwargs, message", [
    ({"window": 0}, r"window"),
    ({"window": 2.5}, r"window"),
    ({"scale": float("inf")}, r"scale"),
    ({"scale": "x"}, r"scale"),
])
def test_bad_scale_or_window_is_an_error_and_appends_nothing(kwargs, message):
    cache, k0, v0 = _filled_cache()
    with pytest.raises((ValueError, TypeError), match=message):
        kv_cache.cached_attention(np.ones((1, 2, 1, 3)), np.ones((1, 2, 1, 3)),
                                  np.ones((1, 2, 1, 3)), cache, **kwargs)
    _unchanged(cache, k0, v0)


def test_reset_and_constructor_errors():
    cache, _, _ = _filled_cache()
    cache.reset()
    assert cache.length == 0 and cache.keys().shape == (1, 2, 0, 3)
    with pytest.raises(ValueError, match=r"max_len: expected an int >= 1 but got 0"):
        kv_cache.KVCache(1, 2, 0, 3)
    with pytest.raises(TypeError, match=r"dtype: expected float32 or float64 but got int64"):
        kv_cache.KVCache(1, 2, 4, 3, dtype=np.int64)
