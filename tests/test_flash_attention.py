"""Tiled flash attention (ref_numpy.flash_attention) against the naive attention, by tile size.

The reference is ``ref_numpy.attention`` (the (Tq, Tk) batched-matmul version); flash attention
must equal it to 1e-12 in float64 for every tile size, and in float32 stay within 2x of the naive
float32 error against float64 (the harness bar and FlashAttention-3's). Gradients that are
exactly zero (one visible key) must come out exactly zero in every dtype.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from equivalence.bench.common import peak_traced_bytes
from equivalence.compare import float32_bound
from equivalence.fa_accuracy import fa_bar
from ref_numpy import attention
from ref_numpy.flash_attention import (_key_tiles, _tile_mask,
                                       flash_attention_backward, flash_attention_forward)

# (B, H, Hkv, Tq, Tk, D, causal): odd sizes, Tq != Tk both ways, GQA and MQA, T = 1.
SHAPES = [
    (2, 3, 3, 17, 17, 8, False),
    (2, 3, 3, 17, 17, 8, True),
    (1, 6, 2, 13, 29, 40, True),     # Tq < Tk, GQA
    (2, 6, 3, 29, 13, 59, True),     # Tq > Tk: the first 16 rows are fully masked
    (1, 6, 1, 23, 19, 5, False),     # MQA
    (2, 2, 2, 1, 1, 8, True),        # T = 1
    (1, 4, 2, 1, 7, 3, True),        # one query (decoding step) against 7 keys
]
# (block_q, block_k): 1, 3, 16, 17, 64 and larger than every T above, mixed.
BLOCKS = [(1, 1), (3, 3), (16, 16), (17, 17), (64, 64), (3, 17), (17, 3), (100, 1)]


def _inputs(rng, B, H, Hkv, Tq, Tk, D, dtype=np.float64):
    q = rng.standard_normal((B, H, Tq, D)).astype(dtype)
    k = rng.standard_normal((B, Hkv, Tk, D)).astype(dtype)
    v = rng.standard_normal((B, Hkv, Tk, D)).astype(dtype)
    dout = rng.standard_normal((B, H, Tq, D)).astype(dtype)
    return q, k, v, dout


def _naive(q, k, v, dout, causal, scale=None):
    out, cache = attention.attention_forward(q, k, v, causal=causal, scale=scale)
    dq, dk, dv, _ = attention.attention_backward(dout, cache)
    return {"out": out, "lse": cache["lse"], "dq": dq, "dk": dk, "dv": dv}


def _flash(q, k, v, dout, causal, block_q, block_k, scale=None, accum_dtype=None):
    out, cache = flash_attention_forward(q, k, v, causal=causal, scale=scale, block_q=block_q,
                                         block_k=block_k, accum_dtype=accum_dtype)
    dq, dk, dv = flash_attention_backward(dout, cache)
    return {"out": out, "lse": cache["lse"], "dq": dq, "dk": dk, "dv": dv}


def _max_err(got, ref) -> float:
    """Max |got - ref| over finite reference entries; infinities must match exactly."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(got[~finite], ref[~finite])
    assert np.isfinite(got[finite]).all()
    return float(np.abs(got[finite] - ref[finite]).max()) if finite.any() else 0.0


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}Hkv{}Tq{}Tk{}D{}{}".format(
    *s[:6], "-causal" if s[6] else ""))
def test_equals_naive_float64_every_tile_size(shape):
    *dims, causal = shape
    rng = np.random.default_rng(sum(dims))
    q, k, v, dout = _inputs(rng, *dims)
    ref = _naive(q, k, v, dout, causal)
    for block_q, block_k in BLOCKS:
        got = _flash(q, k, v, dout, causal, block_q, block_k)
        for name in ref:
            assert got[name].dtype == np.float64
            err = _max_err(got[name], ref[name])
            assert err <= 1e-12, f"{name} with tiles ({block_q}, {block_k}): max err {err:.2e}"


def test_explicit_scale_matches_naive():
    rng = np.random.default_rng(1)
    q, k, v, dout = _inputs(rng, 1, 2, 1, 11, 13, 6)
    ref = _naive(q, k, v, dout, True, scale=0.37)
    got = _flash(q, k, v, dout, True, 4, 5, scale=0.37)
    for name in ref:
        assert _max_err(got[name], ref[name]) <= 1e-12, name


@pytest.mark.parametrize("shape", [(2, 4, 2, 97, 97, 16, True), (1, 3, 1, 61, 113, 24, False),
                                   (2, 2, 2, 50, 31, 8, True)])
@pytest.mark.parametrize("blocks", [(1, 1), (3, 3), (16, 17), (64, 64), (128, 128)])
def test_float32_error_within_twice_naive_float32(shape, blocks):
    """Issue bar, on the same rounded inputs, per tensor: the max error of flash float32 against
    float64 is at most the harness bar (2 x the naive float32 max error + 4 eps x max|ref|), and
    its mean error is at most 2 x the naive float32 mean error (no floor)."""
    *dims, causal = shape
    rng = np.random.default_rng(7)
    q, k, v, dout = _inputs(rng, *dims, dtype=np.float32)
    ref = _naive(*(a.astype(np.float64) for a in (q, k, v, dout)), causal)
    naive32 = _naive(q, k, v, dout, causal)
    flash32 = _flash(q, k, v, dout, causal, *blocks)
    for name in ref:
        assert flash32[name].dtype == np.float32
        e_flash, e_naive = _max_err(flash32[name], ref[name]), _max_err(naive32[name], ref[name])
        bound = float32_bound(e_naive, ref[name], "float32")
        assert e_naive > 0, name
        assert e_flash <= bound, f"{name}: max err {e_flash:.2e} > bar {bound:.2e}"
        if name != "lse":  # FlashAttention-3's bar, on the tensors its tests check
            fa = fa_bar(e_naive, ref[name], np.float32)
            assert e_flash <= fa, f"{name}: max err {e_flash:.2e} > FA3 bar {fa:.2e}"
        finite = np.isfinite(ref[name])
        m_flash = np.abs(flash32[name][finite] - ref[name][finite]).mean()
        m_naive = np.abs(naive32[name][finite] - ref[name][finite]).mean()
        assert m_flash <= 2 * m_naive, f"{name}: mean err {m_flash:.2e} > 2 x {m_naive:.2e}"


@pytest.mark.parametrize("shape, blocks", [((1, 4, 1, 2048, 16, 16, False), (1, 16)),
                                           ((1, 4, 1, 16, 4096, 16, False), (16, 1))],
                         ids=["2048-query-tiles", "4096-key-tiles"])
def test_float32_error_does_not_grow_with_the_number_of_tiles(shape, blocks):
    """MQA with one-row or one-key tiles: dK_j and dV_j sum 2048 query tiles (of G = 4 rows), or
    O, l, psum, delta and dQ_i sum 4096 key tiles. As plain float32 running sums their errors
    were up to 1.24x (dv), 1.34x (out) and 1.92x (dq) FlashAttention-3's bar here, and each of
    those sums left plain on its own fails one of the two; compensated, all stay within 0.33x."""
    *dims, causal = shape
    rng = np.random.default_rng(11)
    q, k, v, dout = _inputs(rng, *dims, dtype=np.float32)
    ref = _naive(*(a.astype(np.float64) for a in (q, k, v, dout)), causal)
    naive32 = _naive(q, k, v, dout, causal)
    flash32 = _flash(q, k, v, dout, causal, *blocks)
    for name in ("out", "dq", "dk", "dv"):
        e_flash, e_naive = _max_err(flash32[name], ref[name]), _max_err(naive32[name], ref[name])
        fa = fa_bar(e_naive, ref[name], np.float32)
        assert e_flash <= fa, f"{name}: max err {e_flash:.2e} > FA3 bar {fa:.2e}"


def test_known_answer_with_rescaling():
    """One head, D = 1, scale = 1, Bc = 1 so the running max moves from 0 to log 3 in row 1.

    q = [1, 1], k = [0, log 3], v = [1, 5], causal:
      row 0 sees key 0 only: P = [1, 0],       out = 1, lse = 0
      row 1: scores [0, log 3], P = [1/4, 3/4], out = 1/4 + 15/4 = 4, lse = log 4
    dout = [1, 1]:  dV = P^T dO = [1 + 1/4, 3/4]
      D = rowsum(dO * O) = [1, 4];  dP = dO V^T = [[1, 5], [1, 5]]
      dS = P * (dP - D) = [[0, 0], [1/4 (1 - 4), 3/4 (5 - 4)]] = [[0, 0], [-3/4, 3/4]]
      dQ = dS K = [0, 3/4 log 3];  dK = dS^T Q = [-3/4, 3/4]
    """
    q = np.array([1.0, 1.0]).reshape(1, 1, 2, 1)
    k = np.array([0.0, math.log(3.0)]).reshape(1, 1, 2, 1)
    v = np.array([1.0, 5.0]).reshape(1, 1, 2, 1)
    out, cache = flash_attention_forward(q, k, v, causal=True, scale=1.0, block_q=1, block_k=1)
    np.testing.assert_allclose(out.ravel(), [1.0, 4.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cache["lse"].ravel(), [0.0, math.log(4.0)], rtol=0, atol=1e-15)
    dq, dk, dv = flash_attention_backward(np.ones_like(out), cache)
    np.testing.assert_allclose(dv.ravel(), [1.25, 0.75], rtol=0, atol=1e-15)
    np.testing.assert_allclose(dq.ravel(), [0.0, 0.75 * math.log(3.0)], rtol=0, atol=1e-15)
    np.testing.assert_allclose(dk.ravel(), [-0.75, 0.75], rtol=0, atol=1e-15)


@pytest.mark.parametrize("blocks", [(1, 1), (4, 3), (64, 64)])
def test_fully_masked_rows_zero_output_zero_gradient(blocks):
    rng = np.random.default_rng(3)
    q, k, v, dout = _inputs(rng, 2, 4, 2, 11, 4, 5)     # causal, Tq - Tk = 7 rows see no key
    with np.errstate(all="raise"):                        # no invalid operation anywhere
        out, cache = flash_attention_forward(q, k, v, causal=True, block_q=blocks[0],
                                             block_k=blocks[1])
        dq, dk, dv = flash_attention_backward(dout, cache)
    assert (out[:, :, :7] == 0).all() and (cache["lse"][:, :, :7] == -np.inf).all()
    assert np.isfinite(out).all() and np.isfinite(cache["lse"][:, :, 7:]).all()
    assert (dq[:, :, :7] == 0).all()
    # The upstream gradient of a masked row reaches nothing.
    dout2 = dout.copy()
    dout2[:, :, :7] = rng.standard_normal(dout2[:, :, :7].shape)
    dq2, dk2, dv2 = flash_attention_backward(dout2, cache)
    np.testing.assert_array_equal(dk2, dk)
    np.testing.assert_array_equal(dv2, dv)
    np.testing.assert_array_equal(dq2, dq)


@pytest.mark.parametrize("Tq,Tk", [(1, 1), (5, 5), (7, 13), (13, 7), (16, 3), (3, 16)])
@pytest.mark.parametrize("bq,bk", [(1, 1), (2, 3), (4, 4), (5, 2), (20, 20)])
def test_causal_tile_classification(Tq, Tk, bq, bk):
    """The tiles visited are exactly those with a visible (i, j); the mask is omitted exactly
    when every pair of the tile is visible."""
    offset = Tk - Tq
    visible = np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + offset          # (Tq, Tk)
    by_rows = {(r0, c0) for r0 in range(0, Tq, bq)
               for c0 in _key_tiles(r0, min(r0 + bq, Tq), Tk, bk, True, offset)}
    for r0 in range(0, Tq, bq):
        for c0 in range(0, Tk, bk):
            r1, c1 = min(r0 + bq, Tq), min(c0 + bk, Tk)
            tile = visible[r0:r1, c0:c1]
            assert ((r0, c0) in by_rows) == tile.any()
            mask = _tile_mask(r0, r1, c0, c1, True, offset)
            if mask is None:
                assert tile.all()
            else:
                np.testing.assert_array_equal(mask, tile)
    assert _tile_mask(0, Tq, 0, Tk, False, offset) is None


@pytest.mark.parametrize("dtype, accum", [(np.float64, None), (np.float32, None),
                                          (np.float16, np.float32), (np.float16, None)],
                         ids=["float64", "float32", "float16-acc32", "float16"])
@pytest.mark.parametrize("Hkv", [4, 2, 1])
def test_one_key_per_query_gives_exactly_zero_dq_and_dk(dtype, accum, Hkv):
    """Tk = 1: every visible row has P = 1 and O = V, so dS = P (dP - delta) is exactly 0, and so
    are dq and dk, in every dtype and tiling, because delta = rowsum(P ⊙ dP) is summed from the
    very dP of the gradient pass. The naive attention gives the same exact zeros."""
    rng = np.random.default_rng(Hkv)
    for Tq, causal, (bq, bk) in ((1, False, (64, 64)), (239, False, (16, 16)),
                                 (239, True, (7, 1)), (13, True, (1, 1))):
        q, k, v, dout = _inputs(rng, 2, 4, Hkv, Tq, 1, 24, dtype=dtype)
        got = _flash(q, k, v, dout, causal, bq, bk, accum_dtype=accum)
        assert np.array_equal(got["dq"], np.zeros_like(q)), (Tq, causal)
        assert np.array_equal(got["dk"], np.zeros_like(k)), (Tq, causal)
        assert np.abs(got["dv"]).max() > 0
        if not causal:
            out = np.repeat(v, 4 // Hkv, axis=1)[:, :, [0] * Tq]      # O = V exactly
            np.testing.assert_array_equal(got["out"], out)
        if dtype != np.float16:
            naive = _naive(q, k, v, dout, causal)
            assert np.array_equal(naive["dq"], np.zeros_like(q)), (Tq, causal)
            assert np.array_equal(naive["dk"], np.zeros_like(k)), (Tq, causal)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_causal_first_row_sees_one_key_and_gets_exactly_zero_dq(dtype):
    rng = np.random.default_rng(8)
    q, k, v, dout = _inputs(rng, 1, 4, 2, 30, 30, 16, dtype=dtype)
    for blocks in ((8, 8), (1, 5), (30, 30)):
        got = _flash(q, k, v, dout, True, *blocks)
        assert np.array_equal(got["dq"][:, :, 0], np.zeros((1, 4, 16))), blocks
        assert np.abs(got["dq"][:, :, 1:]).max() > 0


def test_float16_inputs_with_float32_accumulators():
    rng = np.random.default_rng(5)
    q, k, v, dout = _inputs(rng, 1, 4, 2, 37, 41, 16, dtype=np.float16)
    ref = _naive(*(a.astype(np.float64) for a in (q, k, v, dout)), True)
    got = _flash(q, k, v, dout, True, 16, 8, accum_dtype=np.float32)
    assert got["lse"].dtype == np.float32
    for name in ("out", "dq", "dk", "dv"):
        assert got[name].dtype == np.float16
        # float32 accumulation leaves only the final rounding to half: about one half ulp.
        bound = np.finfo(np.float16).eps * np.abs(ref[name]).max()
        assert _max_err(got[name], ref[name]) <= bound, name
    assert _max_err(got["lse"], ref["lse"]) <= 1e-5
    half = _flash(q, k, v, dout, True, 16, 8)             # everything in float16
    assert half["out"].dtype == half["lse"].dtype == np.float16
    assert _max_err(half["out"], ref["out"]) > _max_err(got["out"], ref["out"])


def test_memory_is_linear_no_tq_by_tk_array():
    """Peak traced memory of forward + backward is what the design holds, the P and dP tiles of
    one query tile's row, two (Br, Tk) arrays, plus a few (T, D) arrays, far below one (Tq, Tk)
    matrix, and grows about linearly in T."""
    T, D, Br, itemsize = 2048, 8, 64, 8

    def peak(T):
        q, k, v, dout = _inputs(np.random.default_rng(0), 1, 1, 1, T, T, D)
        return peak_traced_bytes(
            lambda: flash_attention_backward(
                dout, flash_attention_forward(q, k, v, block_q=Br, block_k=64)[1]))
    p1, p2 = peak(T // 2), peak(T)
    assert p2 < (2 * Br * T + 16 * T * D) * itemsize
    assert p2 < T * T * itemsize / 8            # 1/8 of one (T, T) float64 matrix
    assert p2 / p1 <= 2.2


# ----------------------------------------------------------------------------------------------
# bad input


def _ok(dtype=np.float64):
    return _inputs(np.random.default_rng(0), 1, 4, 2, 5, 6, 3, dtype=dtype)[:3]


@pytest.mark.parametrize("name,value,exc,text", [
    ("block_q", 0, ValueError, "block_q: expected a positive int but got 0"),
    ("block_k", -3, ValueError, "block_k: expected a positive int but got -3"),
    ("block_q", 2.0, TypeError, "block_q: expected a positive int but got float"),
    ("block_k", True, TypeError, "block_k: expected a positive int but got bool"),
    ("block_q", "8", TypeError, "block_q: expected a positive int but got str"),
    ("scale", float("nan"), ValueError, "scale: expected a finite float"),
    ("scale", "0.1", TypeError, "scale: expected a finite float or None but got '0.1'"),
    ("causal", 1, TypeError, "causal: expected a bool but got int"),
    ("accum_dtype", np.float16, ValueError, "accum_dtype: expected a dtype at least as wide as "
                                            "the inputs (float64) but got float16"),
    ("accum_dtype", np.int32, TypeError, "accum_dtype: expected None, float16, float32 or "
                                         "float64 but got int32"),
])
def test_bad_arguments(name, value, exc, text):
    q, k, v = _ok()
    with pytest.raises(exc, match=text.replace("(", r"\(").replace(")", r"\)")):
        flash_attention_forward(q, k, v, **{name: value})


def test_mismatched_shapes_and_dtypes():
    q, k, v = _ok()
    with pytest.raises(ValueError, match=r"k: expected shape \(B, Hkv, Tk, D\) \(1, \*, \*, 3\) "
                                         r"but got \(1, 2, 6, 4\)"):
        flash_attention_forward(q, np.zeros((1, 2, 6, 4)), v)
    with pytest.raises(ValueError, match=r"k: expected shape .* but got \(2, 2, 6, 3\)"):
        flash_attention_forward(q, np.zeros((2, 2, 6, 3)), v)
    with pytest.raises(ValueError, match=r"v: expected shape \(B, Hkv, Tk, D\) \(1, 2, 6, 3\) "
                                         r"but got \(1, 2, 5, 3\)"):
        flash_attention_forward(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="k: expected a number of kv heads Hkv that divides "
                                         "H = 4 but got Hkv = 3"):
        flash_attention_forward(q, np.zeros((1, 3, 6, 3)), np.zeros((1, 3, 6, 3)))
    with pytest.raises(ValueError, match="k: expected at least one key position but got Tk = 0"):
        flash_attention_forward(q, k[:, :, :0], v[:, :, :0])
    with pytest.raises(ValueError, match=r"q: expected 4 dimensions but got 3 \(shape \(4, 5, 3\)"):
        flash_attention_forward(q[0], k, v)
    with pytest.raises(TypeError, match="v: expected dtype float64 \\(the dtype of q\\) but got "
                                        "float32"):
        flash_attention_forward(q, k, v.astype(np.float32))
    with pytest.raises(TypeError, match="q: expected dtype float16, float32 or float64 but got "
                                        "int64"):
        flash_attention_forward(q.astype(np.int64), k, v)
    with pytest.raises(TypeError, match="k: expected a numpy.ndarray but got list"):
        flash_attention_forward(q, k.tolist(), v)
    bad = q.copy()
    bad[0, 1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"q: contains NaN \(first at index \(0, 1, 2, 0\)\)"):
        flash_attention_forward(bad, k, v)


def test_backward_rejects_bad_dout():
    q, k, v = _ok()
    out, cache = flash_attention_forward(q, k, v)
    with pytest.raises(ValueError, match=r"dout: expected shape \(B, H, Tq, D\) \(1, 4, 5, 3\) "
                                         r"but got \(1, 4, 3, 5\)"):
        flash_attention_backward(np.zeros((1, 4, 3, 5)), cache)
    with pytest.raises(TypeError, match="dout: expected dtype float64 \\(the dtype of out\\) "
                                        "but got float32"):
        flash_attention_backward(out.astype(np.float32), cache)
