"""FlashAttention kernels (gpu_cupy.flash_attention) against ref_numpy's naive and tiled attention.

Every behavioural test is parametrized over backend in {opencl, cupy}: the opencl variant runs
here on PoCL (OpenCL on the CPU), the cupy variant is marked ``gpu`` (``pytest -m gpu``) and runs
on a CUDA machine with CuPy arrays in, skipping elsewhere with the device query's reason.

float64: out, lse and every gradient within 1e-10 of ref_numpy.attention (naive) and
ref_numpy.flash_attention (tiled). float32: error against the float64 result on the same rounded
inputs within the harness bar ``equivalence.compare.float32_bound`` (2x the error of the naive
float32 ref_numpy.attention plus a rounding floor) and within FlashAttention-3's stricter bar
(``equivalence.fa_accuracy``); a gradient that is exactly zero (one key per query) must come out
exactly zero.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from equivalence import fa_accuracy
from equivalence.compare import float32_bound
from gpu_cupy import flash_attention as fa
from gpu_cupy import runtime
from ref_numpy import attention, flash_attention

OPENCL_OK, OPENCL_WHY = runtime.available("opencl", np.float64)
CUPY_OK, CUPY_WHY = runtime.available("cupy")
needs_opencl = pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
needs_cupy = [pytest.mark.gpu, pytest.mark.skipif(not CUPY_OK, reason=CUPY_WHY)]
BACKENDS = [pytest.param("opencl", marks=needs_opencl), pytest.param("cupy", marks=needs_cupy)]

# A covering set, not the cross product: every T in {1, 17, 97, 256}, (Tq, Tk) = (13, 29) and
# (29, 13), every D in {16, 40, 64, 128, 192, 256}, causal on/off, Hkv in {4, 2, 1} with H = 4,
# default tiles and tiles that are not powers of two (None = the launcher's defaults). Every
# tiling fits CUDA's 48 KiB of static shared memory in both dtypes
# (test_every_tested_tiling_fits_...).
#         B  H Hkv   Tq   Tk    D  causal  block_q block_k
SHAPES = [(2, 4, 2,    1,   1,  16, True,  None, None),   # dq, dk exactly 0
          (2, 4, 2,    1,  17,  16, True,  None, None),   # decode
          (1, 4, 4,   17,  17,  40, False,    5,    7),
          (1, 4, 1,   13,  29,  16, True,     6,   10),
          (1, 4, 4,   29,  13,  64, True,    12,    5),   # first 16 query rows see no key
          (1, 4, 2,   97,  97,  64, True,  None, None),
          (1, 4, 2,   97,  97, 128, False,   12,    6),
          (1, 4, 1,  256, 256, 128, True,  None, None),
          (1, 4, 4,  256, 256,  16, False,   40,   24),
          (1, 4, 1,   23,  17, 192, False,    6,    3),
          (1, 4, 2,   37,  45, 256, True,  None, None),
          (1, 2, 1,   31,   1, 256, False, None, None)]   # one key: dq, dk exactly 0


def shape_id(s):
    return "B{}_H{}_Hkv{}_Tq{}_Tk{}_D{}_{}_Br{}_Bc{}".format(*s[:6], "causal" if s[6] else "full",
                                                             *s[7:])


NAMES = ("out", "lse", "dq", "dk", "dv")


def make_inputs(shape, dtype, seed=0):
    B, H, Hkv, Tq, Tk, D = shape[:6]
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, Tq, D))
    k = rng.standard_normal((B, Hkv, Tk, D))
    v = rng.standard_normal((B, Hkv, Tk, D))
    dout = rng.standard_normal((B, H, Tq, D))
    return [x.astype(dtype) for x in (q, k, v, dout)]


def on(backend, *arrays):
    """The arrays as the backend's callers hold them: CuPy arrays for cupy, else NumPy."""
    if backend != "cupy":
        return arrays
    import cupy
    return tuple(cupy.asarray(x) for x in arrays)


def run_kernels(q, k, v, dout, causal, block_q, block_k, backend="opencl", **kw):
    """Forward and backward on ``backend`` (CuPy arrays in for cupy); NumPy results by name."""
    q, k, v, dout = on(backend, q, k, v, dout)
    out, lse = fa.flash_attention_forward(q, k, v, causal=causal, block_q=block_q,
                                          block_k=block_k, backend=backend, **kw)
    grads = fa.flash_attention_backward(q, k, v, out, lse, dout, causal=causal, block_q=block_q,
                                        block_k=block_k, backend=backend, **kw)
    return {n: runtime.to_host(x) for n, x in zip(NAMES, (out, lse) + tuple(grads))}


def run_naive(q, k, v, dout, causal, **kw):
    out, cache = attention.attention_forward(q, k, v, causal=causal, **kw)
    dq, dk, dv, _ = attention.attention_backward(dout, cache)
    return dict(zip(NAMES, (out, cache["lse"], dq, dk, dv)))


def run_tiled(q, k, v, dout, causal):
    out, cache = flash_attention.flash_attention_forward(q, k, v, causal=causal, block_q=16,
                                                         block_k=16)
    return dict(zip(NAMES, (out, cache["lse"]) + flash_attention.flash_attention_backward(
        dout, cache)))


def max_err(got: np.ndarray, ref: np.ndarray) -> float:
    """Max |got - ref| where ref is finite; -inf entries (masked lse) must match exactly."""
    assert got.shape == ref.shape
    assert np.isfinite(got).all() or np.array_equal(np.isneginf(got), np.isneginf(ref))
    assert np.array_equal(np.isfinite(got), np.isfinite(ref))
    fin = np.isfinite(ref)
    return float(np.abs(got[fin].astype(np.float64) - ref[fin]).max()) if fin.any() else 0.0


def check_float64(shape, backend):
    *_, causal, block_q, block_k = shape
    q, k, v, dout = make_inputs(shape, np.float64)
    got = run_kernels(q, k, v, dout, causal, block_q, block_k, backend)
    for ref in (run_naive(q, k, v, dout, causal), run_tiled(q, k, v, dout, causal)):
        for name in NAMES:
            assert got[name].dtype == np.float64
            err = max_err(got[name], ref[name])
            assert err <= 1e-10, f"{name}: max abs error {err:.3e} > 1e-10"


def check_float32(shape, backend):
    *_, causal, block_q, block_k = shape
    ins32 = make_inputs(shape, np.float32)
    ins64 = [x.astype(np.float64) for x in ins32]       # the same rounded inputs
    ref = run_naive(*ins64, causal)
    naive = run_naive(*ins32, causal)
    got = run_kernels(*ins32, causal, block_q, block_k, backend)
    for name in NAMES:
        assert got[name].dtype == np.float32
        if not np.any(ref[name] != 0):                  # exactly zero: no rounding allowed
            assert np.array_equal(got[name], np.zeros_like(got[name])), name
            continue
        naive_err = max_err(naive[name], ref[name])
        err = max_err(got[name], ref[name])
        bar = float32_bound(naive_err, ref[name], "float32")
        assert err <= bar, f"{name}: max abs error {err:.3e} > bar {bar:.3e}"
        if name != "lse":  # FlashAttention-3's bar, on the tensors its tests check
            fa_bar = fa_accuracy.fa_bar(naive_err, ref[name], np.float32)
            assert err <= fa_bar, f"{name}: max abs error {err:.3e} > FA3 bar {fa_bar:.3e}"


# ----------------------------------------------------------------------------- behaviour

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_float64_matches_naive_and_tiled(shape, backend):
    check_float64(shape, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_float32_within_twice_the_naive_float32_error(shape, backend):
    check_float32(shape, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows", [512, 8192])
def test_dk_dv_float32_error_does_not_grow_with_the_rows_summed(rows, backend):
    # MQA: every dK/dV element sums G * Tq = `rows` query rows. Kept as one float32 running sum
    # its error grew past FlashAttention's bar (2.5x at 8192 rows); per-tile sums added with
    # Kahan's compensation keep it a fraction of the bar at every length.
    q, k, v, dout = make_inputs((1, 4, 1, rows // 4, 64, 64), np.float32, seed=rows)
    ref = run_naive(*(x.astype(np.float64) for x in (q, k, v, dout)), False)
    naive = run_naive(q, k, v, dout, False)
    got = run_kernels(q, k, v, dout, False, 12, 10, backend)
    for name in ("dk", "dv"):
        bar = fa_accuracy.fa_bar(max_err(naive[name], ref[name]), ref[name], np.float32)
        assert max_err(got[name], ref[name]) <= bar, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_row_with_one_visible_key_passes_exactly_zero_gradient(dtype, backend):
    # Causal, Tq = Tk: query row 0 sees key 0 alone, so P = 1 there and O_0 = V_0 exactly; Drow
    # is summed like dP, so dP - Drow = 0 and dq[0] is exactly 0. With Tk = 1 every row is such
    # a row: dq and dk are exactly 0 (MQA: dk sums all four heads' zeros).
    q, k, v, dout = make_inputs((1, 4, 1, 19, 19, 40), dtype, seed=6)
    got = run_kernels(q, k, v, dout, True, 8, 4, backend)
    assert np.array_equal(got["dq"][:, :, 0], np.zeros((1, 4, 40)))
    assert np.abs(got["dq"][:, :, 1:]).max() > 0
    q, k, v, dout = make_inputs((1, 4, 1, 19, 1, 40), dtype, seed=7)
    for causal in (False, True):
        got = run_kernels(q, k, v, dout, causal, 8, 4, backend)
        assert np.array_equal(got["dq"], np.zeros_like(q)), causal
        assert np.array_equal(got["dk"], np.zeros_like(k)), causal
        assert np.abs(got["dv"]).max() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_answer(backend):
    # One query, two keys, scale 1: s = (0, log 3), P = (1/4, 3/4), O = 1/4 * 1 + 3/4 * 5 = 4,
    # lse = log(1 + 3). With dO = 1: dV = P = (1/4, 3/4); dP = v = (1, 5), Drow = dO O = 4,
    # dS = P (dP - Drow) = (-3/4, 3/4); dQ = dS k = 3/4 log 3; dK = dS q = (-3/4, 3/4).
    q = np.array([1.0]).reshape(1, 1, 1, 1)
    k = np.array([0.0, math.log(3.0)]).reshape(1, 1, 2, 1)
    v = np.array([1.0, 5.0]).reshape(1, 1, 2, 1)
    got = run_kernels(q, k, v, np.ones_like(q), False, None, None, backend, scale=1.0)
    np.testing.assert_allclose(got["out"].ravel(), [4.0], rtol=1e-14)
    np.testing.assert_allclose(got["lse"].ravel(), [math.log(4.0)], rtol=1e-14)
    np.testing.assert_allclose(got["dv"].ravel(), [0.25, 0.75], rtol=1e-14)
    np.testing.assert_allclose(got["dq"].ravel(), [0.75 * math.log(3.0)], rtol=1e-14)
    np.testing.assert_allclose(got["dk"].ravel(), [-0.75, 0.75], rtol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_rows_give_zero_output_minus_inf_lse_and_zero_gradient(backend):
    # Causal, Tq = 5 > Tk = 3: query rows 0 and 1 see no key (j <= i - 2).
    q, k, v, dout = make_inputs((1, 2, 1, 5, 3, 8), np.float64, seed=3)
    got = run_kernels(q, k, v, dout, True, 2, 2, backend)
    assert all(np.isfinite(got[n]).all() for n in NAMES if n != "lse")
    assert np.array_equal(got["out"][:, :, :2], np.zeros((1, 2, 2, 8)))
    assert np.isneginf(got["lse"][:, :, :2]).all() and np.isfinite(got["lse"][:, :, 2:]).all()
    assert np.array_equal(got["dq"][:, :, :2], np.zeros((1, 2, 2, 8)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gqa_equals_attention_over_repeated_kv_heads(backend):
    # Hkv = 1 shared by H = 3 heads == Hkv = H with the kv head copied; dK, dV summed over heads.
    q, k, v, dout = make_inputs((2, 3, 1, 11, 11, 8), np.float64, seed=4)
    shared = run_kernels(q, k, v, dout, True, 4, 3, backend)
    k3, v3 = np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1)
    copied = run_kernels(q, k3, v3, dout, True, 4, 3, backend)
    for name in ("out", "lse", "dq"):
        np.testing.assert_allclose(shared[name], copied[name], rtol=0, atol=1e-13)
    for name in ("dk", "dv"):
        np.testing.assert_allclose(shared[name], copied[name].sum(axis=1, keepdims=True),
                                   rtol=0, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block_q, block_k", [(1, 1), (3, 7), (33, 2)])
def test_tile_sizes_one_odd_and_larger_than_t(block_q, block_k, backend):
    shape = (1, 2, 1, 19, 23, 8, True, block_q, block_k)
    check_float64(shape, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_scale(backend):
    q, k, v, dout = make_inputs((1, 2, 2, 9, 9, 16), np.float64, seed=5)
    got = run_kernels(q, k, v, dout, False, None, None, backend, scale=0.3)
    ref = run_naive(q, k, v, dout, False, scale=0.3)
    for name in NAMES:
        assert max_err(got[name], ref[name]) <= 1e-10, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_query_and_key_axes_need_no_launch(backend):
    q, k, v, dout = make_inputs((1, 2, 1, 0, 4, 8), np.float64)
    got = run_kernels(q, k, v, dout, True, None, None, backend)
    assert got["out"].shape == (1, 2, 0, 8) and got["lse"].shape == (1, 2, 0)
    assert np.array_equal(got["dk"], np.zeros_like(k))
    q, k, v, dout = make_inputs((1, 2, 1, 3, 0, 8), np.float64)   # no keys: fully masked
    got = run_kernels(q, k, v, dout, False, None, None, backend)
    assert np.array_equal(got["out"], np.zeros_like(q)) and np.isneginf(got["lse"]).all()
    assert np.array_equal(got["dq"], np.zeros_like(q))


# ----------------------------------------------------------------------------- tile budget

def tilings_in_use():
    """(D, block_q, block_k) of every shape above and of every flash_gpu harness case."""
    from equivalence.cases import flash_gpu as cases
    return ([(D, bq, bk) for (_, _, _, _, _, D, _, bq, bk) in SHAPES]
            + [(D, bq, bk) for (_, _, _, _, _, _, D, _, bq, bk, _) in cases.SHAPES])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_every_tested_tiling_fits_cuda_static_shared_memory(pass_, dtype):
    # What passes here on PoCL must also launch on a GPU: 48 KiB of static shared memory.
    for D, block_q, block_k in tilings_in_use():
        if block_q is None:
            block_q, block_k = fa.default_blocks(pass_, D, dtype)
        need = fa.shared_bytes(pass_, D, block_q, block_k, np.dtype(dtype).itemsize)
        assert need <= 48 * 1024, (pass_, D, block_q, block_k, np.dtype(dtype).name, need)
        fa.check_blocks(pass_, D, block_q, block_k, dtype)


def test_rejects_tiles_over_cuda_static_shared_memory_on_every_backend():
    # 8 x 8 tiles at D = 256 in float64: 50112 bytes in the forward, 8 x 4 need 50176 in the
    # backward. PoCL's device would allow them (its local memory is far larger), CUDA would not:
    # rejected everywhere.
    q, k, v = qkv((1, 4, 97, 256), (1, 2, 97, 256))
    with pytest.raises(ValueError, match=r"the forward pass needs 50112 bytes of shared memory "
                                         r"with block_q=8, block_k=8, D=256, float64 but at "
                                         r"most 49152 are allowed \(CUDA's static limit, checked "
                                         r"on every backend"):
        fa.flash_attention_forward(q, k, v, block_q=8, block_k=8)
    with pytest.raises(ValueError, match=r"the backward pass needs 50176 bytes"):
        fa.flash_attention_backward(q, k, v, q, np.zeros((1, 4, 97)), q, block_q=8, block_k=4)


@needs_opencl
def test_rejects_shared_memory_above_a_smaller_device_limit(monkeypatch):
    small = runtime.Device("opencl", "a device with 32 KiB", 32 * 1024, 1024, True)
    monkeypatch.setattr(runtime, "device", lambda backend: small)
    q, k, v = qkv((1, 1, 3, 128))
    # (16 + 2 * 8) * 129 + 16 * 8 + 4 * 16 = 4320 reals = 34560 bytes: under 48 KiB, over 32 KiB.
    with pytest.raises(ValueError, match=r"the forward pass needs 34560 bytes of shared memory "
                                         r"with block_q=16, block_k=8, D=128, float64 but the "
                                         r"device allows 32768"):
        fa.flash_attention_forward(q, k, v, block_q=16, block_k=8)


# ----------------------------------------------------------------------------- bad input

def qkv(shape=(1, 2, 5, 8), kv_shape=None, dtype=np.float64, backend="opencl"):
    rng = np.random.default_rng(0)
    kv_shape = shape if kv_shape is None else kv_shape
    return on(backend, rng.standard_normal(shape).astype(dtype),
              rng.standard_normal(kv_shape).astype(dtype),
              rng.standard_normal(kv_shape).astype(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float16, np.int64])
def test_rejects_unsupported_dtype(dtype, backend):
    q, k, v = qkv(dtype=dtype, backend=backend)
    with pytest.raises(TypeError, match=f"q: expected dtype float32 or float64 but got "
                                        f"{np.dtype(dtype)}"):
        fa.flash_attention_forward(q, k, v, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejects_mixed_dtypes(backend):
    q, k, v = qkv(backend=backend)
    with pytest.raises(TypeError, match=r"v: expected dtype float64 \(the dtype of q\) but got "
                                        r"float32"):
        fa.flash_attention_forward(q, k, v.astype(np.float32), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejects_non_contiguous_instead_of_copying(backend):
    q, k, v = qkv((1, 2, 5, 16), backend=backend)
    with pytest.raises(ValueError, match=r"k: expected a C-contiguous array but got strides "
                                         r"\(.*\) for shape \(1, 2, 5, 8\)"):
        fa.flash_attention_forward(q[..., ::2].copy(), k[..., ::2], v[..., ::2].copy(),
                                   backend=backend)
    with pytest.raises(ValueError, match="q: expected a C-contiguous array"):
        fa.flash_attention_forward(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3),
                                   v.transpose(0, 2, 1, 3), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejects_nan(backend):
    q, k, v = qkv(backend=backend)
    q[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"q: contains NaN \(first at index \(0, 1, 2, 3\)\)"):
        fa.flash_attention_forward(q, k, v, backend=backend)
    q[0, 1, 2, 3] = 0
    lse = on(backend, np.zeros((1, 2, 5)))[0]
    lse[0, 0, 4] = np.nan
    with pytest.raises(ValueError, match=r"lse: contains NaN \(first at index \(0, 0, 4\)\)"):
        fa.flash_attention_backward(q, k, v, q, lse, q, backend=backend)


def test_rejects_head_dim_above_256():
    q, k, v = qkv((1, 1, 3, 257))
    with pytest.raises(ValueError, match=r"q: expected head dimension D in 1\.\.256 .* but got "
                                         r"D = 257"):
        fa.flash_attention_forward(q, k, v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejects_mismatched_shapes(backend):
    q, k, v = qkv((2, 4, 5, 8), (2, 2, 7, 8), backend=backend)
    with pytest.raises(ValueError, match=r"k: expected shape \(B, Hkv, Tk, D\) = \(2, \*, \*, 8\) "
                                         r"but got \(1, 2, 7, 8\)"):
        fa.flash_attention_forward(q, k[:1].copy(), v, backend=backend)
    with pytest.raises(ValueError, match=r"v: expected shape \(B, Hkv, Tk, D\) = \(2, 2, 7, 8\) "
                                         r"\(that of k\) but got \(2, 2, 6, 8\)"):
        fa.flash_attention_forward(q, k, v[:, :, :6].copy(), backend=backend)
    with pytest.raises(ValueError, match=r"expected a number of kv heads Hkv that divides H = 4 "
                                         r"but got Hkv = 3"):
        fa.flash_attention_forward(q, *qkv((2, 3, 7, 8), backend=backend)[1:],
                                   backend=backend)
    with pytest.raises(ValueError, match=r"q: expected 4 dimensions but got 3"):
        fa.flash_attention_forward(q[0], k, v, backend=backend)


def test_backward_rejects_mismatched_out_lse_dout():
    q, k, v = qkv((1, 2, 5, 8))
    lse = np.zeros((1, 2, 5))
    with pytest.raises(ValueError, match=r"dout: expected shape \(B, H, Tq, D\) = \(1, 2, 5, 8\) "
                                         r"\(that of q\) but got \(1, 2, 4, 8\)"):
        fa.flash_attention_backward(q, k, v, q, lse, q[:, :, :4].copy())
    with pytest.raises(ValueError, match=r"lse: expected shape \(B, H, Tq\) = \(1, 2, 5\) but got "
                                         r"\(1, 2, 4\)"):
        fa.flash_attention_backward(q, k, v, q, lse[:, :, :4].copy(), q)


@pytest.mark.parametrize("block_q, block_k, exc, message", [
    (0, 8, ValueError, "block_q: expected a positive int but got 0"),
    (8, 2.5, TypeError, r"block_k: expected a positive int but got float \(2.5\)"),
    (8, None, ValueError, "block_q, block_k: expected both or neither"),
    (64, 8, ValueError, r"expected at most 32 register accumulators per thread but "
                        r"block_q=64, block_k=8, D=128 need 128"),
])
def test_rejects_bad_block_sizes(block_q, block_k, exc, message):
    q, k, v = qkv((1, 1, 3, 128))
    with pytest.raises(exc, match=message):
        fa.flash_attention_forward(q, k, v, block_q=block_q, block_k=block_k)


def test_rejects_sizes_that_overflow_int32_indexing(monkeypatch):
    monkeypatch.setattr(fa, "_INT32_MAX", 50)
    q, k, v = qkv((1, 2, 5, 8))
    with pytest.raises(ValueError, match=r"q: expected at most 50 elements \(the kernels index "
                                         r"with int32\) but got 80"):
        fa.flash_attention_forward(q, k, v)


def test_rejects_thread_indices_that_overflow_int32(monkeypatch):
    # 10 elements fit, but the bound on the backward's row indices is B*H*Tq + 128 = 138 > 135.
    monkeypatch.setattr(fa, "_INT32_MAX", 135)
    q, k, v = qkv((1, 2, 5, 1))
    with pytest.raises(ValueError, match=r"q: expected B\*H\*Tq \+ 128 <= 135 \(a row index "
                                         r"of the backward is an int32\) but got B\*H\*Tq = 10"):
        fa.flash_attention_forward(q, k, v)


def test_rejects_tile_ends_that_overflow_int32(monkeypatch):
    # The last key tile starts at k0 = 0 < Tk = 5 and ends at k0 + block_k = 196 + 5 > 200.
    monkeypatch.setattr(fa, "_INT32_MAX", 200)
    q, k, v = qkv((1, 1, 5, 1))
    with pytest.raises(ValueError, match=r"block_q, block_k: expected Tq \+ block_q and Tk \+ "
                                         r"block_k <= 200 \(tile ends are int32\) but got Tq \+ "
                                         r"block_q = 13, Tk \+ block_k = 201"):
        fa.flash_attention_forward(q, k, v, block_q=8, block_k=196)


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e39), (np.float32, -1e39),
                                          (np.float64, math.inf), (np.float64, math.nan),
                                          (np.float64, "0.5")])
def test_rejects_scale_that_is_not_finite_in_the_dtype(dtype, scale):
    q, k, v = qkv(dtype=dtype)
    name = np.dtype(dtype).name
    with pytest.raises(ValueError, match=rf"scale: expected a finite number representable in "
                                         rf"{name} \(\|scale\| <= .*\) or None but got"):
        fa.flash_attention_forward(q, k, v, scale=scale)


@needs_opencl
def test_scale_beyond_float32_is_fine_in_float64():
    # 1e39 overflows float32 but not float64; with q = 0 every score is 0 whatever the scale.
    q, k, v = (np.zeros((1, 1, 2, 8)), np.zeros((1, 1, 3, 8)), np.ones((1, 1, 3, 8)))
    out, lse = fa.flash_attention_forward(q, k, v, scale=1e39, block_q=2, block_k=2)
    np.testing.assert_allclose(out, np.ones((1, 1, 2, 8)), rtol=1e-15)
    np.testing.assert_allclose(lse, np.full((1, 1, 2), math.log(3.0)), rtol=1e-15)


def test_rejects_unknown_backend_version_and_non_bool_causal():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="backend: expected one of"):
        fa.flash_attention_forward(q, k, v, backend="metal")
    with pytest.raises(ValueError, match=r"version: expected one of \[1\] but got 7"):
        fa.flash_attention_forward(q, k, v, version=7)
    with pytest.raises(TypeError, match="causal: expected a bool but got int"):
        fa.flash_attention_forward(q, k, v, causal=1)


@pytest.mark.skipif(CUPY_OK, reason="this machine has a CUDA device")
def test_cupy_backend_without_a_device_says_why():
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="backend='cupy' is not available: "):
        fa.flash_attention_forward(q, k, v, backend="cupy")


# ----------------------------------------------------------------------------- CuPy arrays

@pytest.mark.gpu
@pytest.mark.skipif(not CUPY_OK, reason=CUPY_WHY)
def test_cupy_returns_the_kind_of_array_that_went_in():
    import cupy
    ins = make_inputs((1, 4, 2, 33, 33, 64), np.float32)
    out, lse = fa.flash_attention_forward(*on("cupy", *ins[:3]), causal=True, backend="cupy")
    assert isinstance(out, cupy.ndarray) and isinstance(lse, cupy.ndarray)
    out, lse = fa.flash_attention_forward(*ins[:3], causal=True, backend="cupy")
    assert isinstance(out, np.ndarray) and isinstance(lse, np.ndarray)
    with pytest.raises(TypeError, match=r"q: expected a numpy.ndarray for backend='opencl' but "
                                        r"got a cupy.ndarray"):
        fa.flash_attention_forward(*on("cupy", *ins[:3]), backend="opencl")
