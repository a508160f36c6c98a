"""FlashAttention kernels (gpu_cupy.flash_attention) against ref_numpy's naive and tiled attention.

On PoCL (OpenCL on the CPU) every test runs here; the same checks run through CuPy under
``pytest -m gpu`` on a CUDA machine and skip elsewhere with the reason.

float64: out, lse and every gradient within 1e-10 of ref_numpy.attention (naive) and
ref_numpy.flash_attention (tiled). float32: error against the float64 result on the same rounded
inputs at most 2x the error of the naive float32 ref_numpy.attention plus one unit roundoff of
the largest value (the harness bar, equivalence.compare.float32_bound).
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from equivalence.compare import float32_bound
from gpu_cupy import flash_attention as fa
from gpu_cupy import runtime
from ref_numpy import attention, flash_attention

OPENCL_OK, OPENCL_WHY = runtime.available("opencl", np.float64)
CUPY_OK, CUPY_WHY = runtime.available("cupy")
needs_opencl = pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)


def needs_cupy(test):
    """Mark a test as a GPU test (``pytest -m gpu``) that skips with the device query's reason."""
    return pytest.mark.gpu(pytest.mark.skipif(not CUPY_OK, reason=CUPY_WHY)(test))


# A covering set, not the cross product: every T in {1, 17, 97, 256}, (Tq, Tk) = (13, 29) and
# (29, 13), every D in {16, 40, 64, 128}, causal on/off, Hkv in {4, 2, 1} with H = 4, default
# tiles and tiles that are not powers of two (None = the launcher's defaults).
#         B  H Hkv   Tq   Tk    D  causal  block_q block_k
SHAPES = [(2, 4, 2,    1,   1,  16, True,  None, None),
          (1, 4, 4,   17,  17,  40, False,    5,    7),
          (1, 4, 1,   13,  29,  16, True,     6,   10),
          (1, 4, 4,   29,  13,  64, True,    12,    5),   # first 16 query rows see no key
          (1, 4, 2,   97,  97,  64, True,  None, None),
          (1, 4, 2,   97,  97, 128, False,   24,   12),
          (1, 4, 1,  256, 256, 128, True,  None, None),
          (1, 4, 4,  256, 256,  16, False,   40,   24)]
IDS = ["B{}_H{}_Hkv{}_Tq{}_Tk{}_D{}_{}_Br{}_Bc{}".format(*s[:6], "causal" if s[6] else "full",
                                                          *s[7:]) for s in SHAPES]
NAMES = ("out", "lse", "dq", "dk", "dv")


def make_inputs(shape, dtype, seed=0):
    B, H, Hkv, Tq, Tk, D = shape[:6]
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, Tq, D))
    k = rng.standard_normal((B, Hkv, Tk, D))
    v = rng.standard_normal((B, Hkv, Tk, D))
    dout = rng.standard_normal((B, H, Tq, D))
    return [x.astype(dtype) for x in (q, k, v, dout)]


def run_kernels(q, k, v, dout, causal, block_q, block_k, backend="opencl", **kw):
    out, lse = fa.flash_attention_forward(q, k, v, causal=causal, block_q=block_q,
                                          block_k=block_k, backend=backend, **kw)
    grads = fa.flash_attention_backward(q, k, v, out, lse, dout, causal=causal, block_q=block_q,
                                        block_k=block_k, backend=backend, **kw)
    return dict(zip(NAMES, (out, lse) + tuple(grads)))


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
    got = {n: runtime.to_host(x) for n, x in got.items()}
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
        g = runtime.to_host(got[name])
        assert g.dtype == np.float32
        bar = float32_bound(max_err(naive[name], ref[name]), ref[name], "float32")
        err = max_err(g, ref[name])
        assert err <= bar, f"{name}: max abs error {err:.3e} > bar {bar:.3e}"


# ----------------------------------------------------------------------------- PoCL

@needs_opencl
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_float64_matches_naive_and_tiled(shape):
    check_float64(shape, "opencl")


@needs_opencl
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_float32_within_twice_the_naive_float32_error(shape):
    check_float32(shape, "opencl")


@needs_opencl
def test_known_answer():
    # One query, two keys, scale 1: s = (0, log 3), P = (1/4, 3/4), O = 1/4 * 1 + 3/4 * 5 = 4,
    # lse = log(1 + 3). With dO = 1: dV = P = (1/4, 3/4); dP = v = (1, 5), Drow = dO O = 4,
    # dS = P (dP - Drow) = (-3/4, 3/4); dQ = dS k = 3/4 log 3; dK = dS q = (-3/4, 3/4).
    q = np.array([1.0]).reshape(1, 1, 1, 1)
    k = np.array([0.0, math.log(3.0)]).reshape(1, 1, 2, 1)
    v = np.array([1.0, 5.0]).reshape(1, 1, 2, 1)
    got = run_kernels(q, k, v, np.ones_like(q), False, None, None, scale=1.0)
    np.testing.assert_allclose(got["out"].ravel(), [4.0], rtol=1e-14)
    np.testing.assert_allclose(got["lse"].ravel(), [math.log(4.0)], rtol=1e-14)
    np.testing.assert_allclose(got["dv"].ravel(), [0.25, 0.75], rtol=1e-14)
    np.testing.assert_allclose(got["dq"].ravel(), [0.75 * math.log(3.0)], rtol=1e-14)
    np.testing.assert_allclose(got["dk"].ravel(), [-0.75, 0.75], rtol=1e-14)


@needs_opencl
def test_fully_masked_rows_give_zero_output_minus_inf_lse_and_zero_gradient():
    # Causal, Tq = 5 > Tk = 3: query rows 0 and 1 see no key (j <= i - 2).
    q, k, v, dout = make_inputs((1, 2, 1, 5, 3, 8), np.float64, seed=3)
    got = run_kernels(q, k, v, dout, True, 2, 2)
    assert all(np.isfinite(got[n]).all() for n in NAMES if n != "lse")
    assert np.array_equal(got["out"][:, :, :2], np.zeros((1, 2, 2, 8)))
    assert np.isneginf(got["lse"][:, :, :2]).all() and np.isfinite(got["lse"][:, :, 2:]).all()
    assert np.array_equal(got["dq"][:, :, :2], np.zeros((1, 2, 2, 8)))


@needs_opencl
def test_gqa_equals_attention_over_repeated_kv_heads():
    # Hkv = 1 shared by H = 3 heads == Hkv = H with the kv head copied; dK, dV summed over heads.
    q, k, v, dout = make_inputs((2, 3, 1, 11, 11, 8), np.float64, seed=4)
    shared = run_kernels(q, k, v, dout, True, 4, 3)
    k3, v3 = np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1)
    copied = run_kernels(q, k3, v3, dout, True, 4, 3)
    for name in ("out", "lse", "dq"):
        np.testing.assert_allclose(shared[name], copied[name], rtol=0, atol=1e-13)
    for name in ("dk", "dv"):
        np.testing.assert_allclose(shared[name], copied[name].sum(axis=1, keepdims=True),
                                   rtol=0, atol=1e-13)


@needs_opencl
@pytest.mark.parametrize("block_q, block_k", [(1, 1), (3, 7), (33, 2)])
def test_tile_sizes_one_odd_and_larger_than_t(block_q, block_k):
    shape = (1, 2, 1, 19, 23, 8, True, block_q, block_k)
    check_float64(shape, "opencl")


@needs_opencl
def test_explicit_scale():
    q, k, v, dout = make_inputs((1, 2, 2, 9, 9, 16), np.float64, seed=5)
    got = run_kernels(q, k, v, dout, False, None, None, scale=0.3)
    ref = run_naive(q, k, v, dout, False, scale=0.3)
    for name in NAMES:
        assert max_err(got[name], ref[name]) <= 1e-10, name


@needs_opencl
def test_empty_query_and_key_axes_need_no_launch():
    q, k, v, dout = make_inputs((1, 2, 1, 0, 4, 8), np.float64)
    got = run_kernels(q, k, v, dout, True, None, None)
    assert got["out"].shape == (1, 2, 0, 8) and got["lse"].shape == (1, 2, 0)
    assert np.array_equal(got["dk"], np.zeros_like(k))
    q, k, v, dout = make_inputs((1, 2, 1, 3, 0, 8), np.float64)   # no keys: fully masked
    got = run_kernels(q, k, v, dout, False, None, None)
    assert np.array_equal(got["out"], np.zeros_like(q)) and np.isneginf(got["lse"]).all()
    assert np.array_equal(got["dq"], np.zeros_like(q))


# ----------------------------------------------------------------------------- bad input

def qkv(shape=(1, 2, 5, 8), kv_shape=None, dtype=np.float64):
    rng = np.random.default_rng(0)
    kv_shape = shape if kv_shape is None else kv_shape
    return (rng.standard_normal(shape).astype(dtype), rng.standard_normal(kv_shape).astype(dtype),
            rng.standard_normal(kv_shape).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float16, np.int64])
def test_rejects_unsupported_dtype(dtype):
    q, k, v = qkv(dtype=dtype)
    with pytest.raises(TypeError, match=f"q: expected dtype float32 or float64 but got "
                                        f"{np.dtype(dtype)}"):
        fa.flash_attention_forward(q, k, v)


def test_rejects_mixed_dtypes():
    q, k, v = qkv()
    with pytest.raises(TypeError, match=r"v: expected dtype float64 \(the dtype of q\) but got "
                                        r"float32"):
        fa.flash_attention_forward(q, k, v.astype(np.float32))


def test_rejects_non_contiguous_instead_of_copying():
    q, k, v = qkv((1, 2, 5, 16))
    with pytest.raises(ValueError, match=r"k: expected a C-contiguous array but got strides "
                                         r"\(.*\) for shape \(1, 2, 5, 8\)"):
        fa.flash_attention_forward(q[..., ::2].copy(), k[..., ::2], v[..., ::2].copy())
    with pytest.raises(ValueError, match="q: expected a C-contiguous array"):
        fa.flash_attention_forward(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3),
                                   v.transpose(0, 2, 1, 3))


def test_rejects_head_dim_above_128():
    q, k, v = qkv((1, 1, 3, 129))
    with pytest.raises(ValueError, match=r"q: expected head dimension D in 1\.\.128 .* but got "
                                         r"D = 129"):
        fa.flash_attention_forward(q, k, v)


def test_rejects_mismatched_shapes():
    q, k, v = qkv((2, 4, 5, 8), (2, 2, 7, 8))
    with pytest.raises(ValueError, match=r"k: expected shape \(B, Hkv, Tk, D\) = \(2, \*, \*, 8\) "
                                         r"but got \(1, 2, 7, 8\)"):
        fa.flash_attention_forward(q, k[:1].copy(), v)
    with pytest.raises(ValueError, match=r"v: expected shape \(B, Hkv, Tk, D\) = \(2, 2, 7, 8\) "
                                         r"\(that of k\) but got \(2, 2, 6, 8\)"):
        fa.flash_attention_forward(q, k, v[:, :, :6].copy())
    with pytest.raises(ValueError, match=r"expected a number of kv heads Hkv that divides H = 4 "
                                         r"but got Hkv = 3"):
        fa.flash_attention_forward(q, *qkv((2, 3, 7, 8))[1:])
    with pytest.raises(ValueError, match=r"q: expected 4 dimensions but got 3"):
        fa.flash_attention_forward(q[0], k, v)


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
                        r"block_q=64, block_k=8, D=128 need 64"),
])
def test_rejects_bad_block_sizes(block_q, block_k, exc, message):
    q, k, v = qkv((1, 1, 3, 128))
    with pytest.raises(exc, match=message):
        fa.flash_attention_forward(q, k, v, block_q=block_q, block_k=block_k)


@needs_opencl
def test_rejects_shared_memory_above_the_device_limit(monkeypatch):
    small = runtime.Device("opencl", "a device with 48 KiB", 48 * 1024, 1024, True)
    monkeypatch.setattr(runtime, "device", lambda backend: small)
    q, k, v = qkv((1, 1, 3, 128))
    with pytest.raises(ValueError, match=r"the forward pass needs 108032 bytes of shared memory "
                                         r"with block_q=32, block_k=32, D=128, float64 but the "
                                         r"device allows 49152"):
        fa.flash_attention_forward(q, k, v, block_q=32, block_k=32)


def test_rejects_sizes_that_overflow_int32_indexing(monkeypatch):
    monkeypatch.setattr(fa, "_INT32_MAX", 50)
    q, k, v = qkv((1, 2, 5, 8))
    with pytest.raises(ValueError, match=r"q: expected at most 50 elements \(the kernels index "
                                         r"with int32\) but got 80"):
        fa.flash_attention_forward(q, k, v)


def test_rejects_nan_unknown_backend_version_and_non_bool_causal():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="backend: expected one of"):
        fa.flash_attention_forward(q, k, v, backend="metal")
    with pytest.raises(ValueError, match=r"version: expected one of \[1\] but got 7"):
        fa.flash_attention_forward(q, k, v, version=7)
    with pytest.raises(TypeError, match="causal: expected a bool but got int"):
        fa.flash_attention_forward(q, k, v, causal=1)
    q[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"q: contains NaN \(first at index \(0, 1, 2, 3\)\)"):
        fa.flash_attention_forward(q, k, v)


@pytest.mark.skipif(CUPY_OK, reason="this machine has a CUDA device")
def test_cupy_backend_without_a_device_says_why():
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="backend='cupy' is not available: "):
        fa.flash_attention_forward(q, k, v, backend="cupy")


# ----------------------------------------------------------------------------- benchmark

def bench_args(*argv):
    from equivalence import bench_flash_gpu
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend")
    bench_flash_gpu.add_arguments(parser)
    return bench_flash_gpu, parser.parse_args(argv)


def test_bench_flop_count():
    bench, _ = bench_args()
    # 4 B H T^2 D = 4 * 2 * 3 * 25 * 8; causal halves it, the backward is 2.5x.
    assert bench.attention_flops(2, 3, 5, 8, causal=False, backward=False) == 4800.0
    assert bench.attention_flops(2, 3, 5, 8, causal=True, backward=True) == 6000.0


@pytest.mark.skipif(CUPY_OK, reason="this machine has a CUDA device")
def test_bench_says_when_no_cuda_device_is_available():
    bench, args = bench_args("--backend", "cupy")
    with pytest.raises(SystemExit, match="needs a CUDA device and none is available"):
        bench.run(args)


@needs_opencl
def test_bench_rows_on_opencl():
    bench, args = bench_args("--backend", "opencl", "--shape", "1,2,1,16,8", "--mask", "causal",
                             "--repeats", "1")
    rows = bench.run(args)
    assert [r["pass"] for r in rows] == ["forward", "backward"]
    assert all(r["kernel TFLOP/s"] > 0 and r["torch TFLOP/s"] > 0 for r in rows)
    assert rows[0]["B,H,Hkv,T,D"] == "1,2,1,16,8" and rows[0]["causal"] is True


# ----------------------------------------------------------------------------- CuPy (CUDA)

@needs_cupy
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_matches_the_references(shape, dtype):
    (check_float64 if dtype == "float64" else check_float32)(shape, "cupy")


@needs_cupy
def test_cupy_arrays_in_cupy_arrays_out():
    import cupy
    q, k, v, dout = (cupy.asarray(x) for x in make_inputs((1, 4, 2, 33, 33, 64), np.float32))
    got = run_kernels(q, k, v, dout, True, None, None, backend="cupy")
    assert all(isinstance(x, cupy.ndarray) for x in got.values())
