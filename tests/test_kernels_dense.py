"""The dense kernels (gpu_cupy.elementwise, embedding, gemm, rope) against the NumPy references.

Behavioural tests are parametrized over backend in {opencl, cupy}: opencl runs here on PoCL,
cupy is marked ``gpu`` and skips, with the device query's reason, where CUDA is absent.
float64 results are within a few ulps of ref_numpy; float32 within the bar of the harness
(twice the error of a plain float32 computation plus a rounding floor), and the activations keep
full relative precision in their left tails, where the textbook float32 formulas lose every
digit. The embedding is bit for bit the NumPy copy in both dtypes, repeated ids included. Every
backward gives bit-identical results on a second launch. The GEMM's long float32 sums (K = 50000)
are more accurate than NumPy's float32 matmul (BLAS). Every BENCH builder runs.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from equivalence.compare import float32_bound
from gpu_cupy import elementwise as gew
from gpu_cupy import embedding as gem
from gpu_cupy import gemm as gg
from gpu_cupy import rope as grope
from gpu_cupy import runtime
from ref_numpy import activations, linear, rope

OPENCL_OK, OPENCL_WHY = runtime.available("opencl", np.float64)
CUPY_OK, CUPY_WHY = runtime.available("cupy")
needs_opencl = pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
needs_cupy = [pytest.mark.gpu, pytest.mark.skipif(not CUPY_OK, reason=CUPY_WHY)]
BACKENDS = [pytest.param("opencl", marks=needs_opencl), pytest.param("cupy", marks=needs_cupy)]
DTYPES = [np.float64, np.float32]


def on(backend, *arrays):
    """The arrays as the backend's callers hold them: CuPy arrays for cupy, else NumPy."""
    if backend != "cupy":
        return arrays
    import cupy
    return tuple(cupy.asarray(x) for x in arrays)


def host(x):
    return runtime.to_host(x)


def assert_float_close(got, ref64, dtype, plain=None):
    """float64: within 1e-13 of max(1, |ref|); float32: within ``float32_bound`` of the
    float64 reference, the baseline error being that of ``plain`` (a float32 computation)."""
    got = host(got)
    assert got.dtype == dtype and got.shape == ref64.shape
    err = float(np.abs(got.astype(np.float64) - ref64).max(initial=0))
    if dtype == np.float64:
        assert err <= 1e-13 * max(1.0, float(np.abs(ref64).max(initial=0))), err
    else:
        base = 0.0 if plain is None else float(np.abs(plain.astype(np.float64) - ref64).max())
        bar = float32_bound(base, ref64, "float32")
        assert err <= bar, f"max abs error {err:.3e} > bar {bar:.3e}"


# ----------------------------------------------------------------------------- activations

SHAPES = [(1,), (7, 13), (3, 5, 97), (2, 300)]      # (2, 300): three blocks, the last ragged


def activation_pairs(op, x, d):
    """(kernel forward, kernel backward, NumPy forward, NumPy backward) of ``op``."""
    if op.startswith("gelu"):
        form = op.split("_")[1]
        return (lambda b: gew.gelu_forward(*on(b, x), form, backend=b),
                lambda b: gew.gelu_backward(*on(b, d, x), form, backend=b),
                *activations.gelu_forward(x.astype(np.float64), form)[::-1])
    return (lambda b: gew.silu_forward(*on(b, x), backend=b),
            lambda b: gew.silu_backward(*on(b, d, x), backend=b),
            *activations.silu_forward(x.astype(np.float64))[::-1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["gelu_none", "gelu_tanh", "silu"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_activations_match_numpy(shape, op, dtype, backend):
    rng = np.random.default_rng(0)
    x, d = (3 * rng.standard_normal((2, *shape))).astype(dtype)
    fwd, bwd, cache, y64 = activation_pairs(op, x, d)
    dx64 = (activations.gelu_backward if op.startswith("gelu") else
            activations.silu_backward)(d.astype(np.float64), cache)
    assert_float_close(fwd(backend), y64, dtype)
    assert_float_close(bwd(backend), dx64, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_swiglu_gate_matches_numpy(shape, dtype, backend):
    rng = np.random.default_rng(1)
    a, b, dh = (3 * rng.standard_normal((3, *shape))).astype(dtype)
    s, cache = activations.silu_forward(a.astype(np.float64))
    b64, dh64 = b.astype(np.float64), dh.astype(np.float64)
    assert_float_close(gew.swiglu_gate_forward(*on(backend, a, b), backend=backend), s * b64,
                       dtype)
    da, db = gew.swiglu_gate_backward(*on(backend, dh, a, b), backend=backend)
    assert_float_close(da, activations.silu_backward(dh64 * b64, cache), dtype)
    assert_float_close(db, dh64 * s, dtype)


# The textbook float32 forms, x (1 + erf(x / sqrt 2)) / 2 and 0.5 x (1 + tanh u), are 0 or off by
# a factor of three here; the kernels' erfc and sigmoid forms keep ~1e-6 relative precision.
TAILS = {"none": -np.arange(3.0, 11.75, 0.25), "tanh": -np.arange(3.0, 9.5, 0.25)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["none", "tanh"])
def test_gelu_keeps_relative_precision_in_the_left_tail_in_float32(form, backend):
    x64 = TAILS[form]
    x = x64.astype(np.float32)
    y64, cache = activations.gelu_forward(x.astype(np.float64), form)
    dx64 = activations.gelu_backward(np.ones_like(x64), cache)
    y = host(gew.gelu_forward(*on(backend, x), form, backend=backend))
    dx = host(gew.gelu_backward(*on(backend, np.ones_like(x), x), form, backend=backend))
    assert np.max(np.abs(y - y64) / np.abs(y64)) <= 3e-5
    assert np.max(np.abs(dx - dx64) / np.abs(dx64)) <= 3e-5
    if form == "none":                       # the erf form: every digit lost
        textbook = x * np.float32(0.5) * (1 + erf(x / np.float32(np.sqrt(2))).astype(np.float32))
        assert np.max(np.abs(textbook - y64) / np.abs(y64)) == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_activations_known_values_and_far_tails(dtype, backend):
    # No NaN far out: sigmoid(-z) for huge z is 1 / (1 + inf) = 0, never inf / inf.
    x = np.array([0.0, -1e4, 1e4, -80.0, 80.0], dtype)
    one = np.ones_like(x)
    close = {"rtol": 1e-6, "atol": 0}
    for form in ("none", "tanh"):
        y = host(gew.gelu_forward(*on(backend, x), form, backend=backend))
        dy = host(gew.gelu_backward(*on(backend, one, x), form, backend=backend))
        np.testing.assert_allclose(y, [0.0, 0.0, 1e4, 0.0, 80.0], **close)
        np.testing.assert_allclose(dy, [0.5, 0.0, 1.0, 0.0, 1.0], **close)
    silu = -80.0 / (1 + np.exp(80.0))
    np.testing.assert_allclose(host(gew.silu_forward(*on(backend, x), backend=backend)),
                               [0.0, 0.0, 1e4, silu, 80.0], **close)
    np.testing.assert_allclose(host(gew.silu_backward(*on(backend, one, x), backend=backend)),
                               [0.5, 0.0, 1.0, 0.0, 1.0], rtol=1e-6, atol=1e-30)


# ----------------------------------------------------------------------------- embedding

def embedding_problem(ids_shape, V, C, dtype, seed=2, one_id=False):
    rng = np.random.default_rng(seed)
    ids = (np.full(ids_shape, 3) if one_id else rng.integers(0, V, ids_shape)).astype(np.int32)
    ids.reshape(-1)[-1] = ids.reshape(-1)[0]
    table = rng.standard_normal((V, C)).astype(dtype)
    dout = rng.standard_normal((*ids_shape, C)).astype(dtype)
    return ids, table, dout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ids_shape, V, C, one_id", [
    ((1,), 3, 4, False), ((2, 9), 7, 5, False), ((3, 4, 5), 11, 13, False),
    ((8, 31), 1000, 67, False), ((1000,), 5, 3, True)])
def test_embedding_is_bit_for_bit_the_numpy_copy(ids_shape, V, C, one_id, dtype, backend):
    ids, table, dout = embedding_problem(ids_shape, V, C, dtype, one_id=one_id)
    out, cache = linear.embedding_forward(ids, table)
    got = host(gem.embedding_forward(*on(backend, ids, table), backend=backend))
    assert got.dtype == dtype and np.array_equal(got, out)
    dtable = linear.embedding_backward(dout, cache)   # np.add.at: position order
    got = host(gem.embedding_backward(*on(backend, dout, ids), V, backend=backend))
    assert got.dtype == dtype and np.array_equal(got, dtable)
    unused = np.setdiff1d(np.arange(V), ids)
    assert not got[unused].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_backward_without_positions_is_zero(backend):
    got = gem.embedding_backward(*on(backend, np.zeros((0, 4)), np.zeros(0, np.int32)), 6,
                                 backend=backend)
    assert host(got).shape == (6, 4) and not host(got).any()


def test_sort_positions_orders_by_id_then_position():
    ids = np.array([[4, 1, 4], [0, 4, 1]], np.int32)
    order, offsets = gem.sort_positions(ids, 6)
    assert order.tolist() == [3, 1, 5, 0, 2, 4] and offsets.tolist() == [0, 1, 3, 3, 3, 6, 6]
    assert order.dtype == offsets.dtype == np.int32


# ----------------------------------------------------------------------------- gemm

def gemm_problem(M, K, N, trans_a, trans_b, dtype, seed=3):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    bias = rng.standard_normal(N).astype(dtype)
    return a, b, bias


def op(x, trans):
    return x.T if trans else x


# (1, 1, 1); exact tiles; ragged edges in each of M, N, K; K below one step; one row.
GEMM_SHAPES = [(1, 1, 1), (17, 33, 65), (64, 32, 64), (65, 17, 63), (130, 5, 3), (1, 97, 2)]
TILINGS = [None, gg.SMALL_TILES, (14, 9, 3, 7, 1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tiles", TILINGS, ids=lambda t: "default" if t is None else
                         "x".join(map(str, t)))
@pytest.mark.parametrize("trans", [(False, False), (False, True), (True, False)],
                         ids=["nn", "nt", "tn"])
@pytest.mark.parametrize("M, K, N", GEMM_SHAPES)
def test_gemm_matches_numpy(M, K, N, trans, tiles, dtype, backend):
    a, b, bias = gemm_problem(M, K, N, *trans, dtype)
    use_bias = M > 1                                     # every product takes a bias
    want = op(a, trans[0]).astype(np.float64) @ op(b, trans[1]).astype(np.float64)
    plain = op(a, trans[0]) @ op(b, trans[1])
    if use_bias:
        want, plain = want + bias, plain + bias
    got = gg.gemm(*on(backend, a, b), *on(backend, bias) if use_bias else (None,),
                  transpose_a=trans[0], transpose_b=trans[1], tiles=tiles, backend=backend)
    assert_float_close(got, want, dtype, plain)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, c_out", [((7, 13), 5), ((3, 5, 97), 11), ((1,), 3),
                                            ((2, 67, 45), 77)])
def test_linear_layer_matches_ref_numpy(x_shape, c_out, dtype, backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal((x_shape[-1], c_out)) / np.sqrt(x_shape[-1])).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    dout = rng.standard_normal((*x_shape[:-1], c_out)).astype(dtype)
    y64, cache = linear.linear_forward(x.astype(np.float64), w.astype(np.float64),
                                       b.astype(np.float64))
    y32, cache32 = linear.linear_forward(x, w, b)
    assert_float_close(gg.linear_forward(*on(backend, x, w, b), backend=backend), y64, dtype,
                       y32)
    want = linear.linear_backward(dout.astype(np.float64), cache)
    plain = linear.linear_backward(dout, cache32)
    got = gg.linear_backward(*on(backend, dout, x, w), has_bias=True, backend=backend)
    for g, w64, p in zip(got, want, plain):
        assert_float_close(g, w64, dtype, p)
    dx, dw, db = gg.linear_backward(*on(backend, dout, x, w), backend=backend)
    assert db is None and np.array_equal(host(dw), host(got[1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_float32_sums_are_as_accurate_as_blas(backend):
    # K = 50000, as in the dx of a vocabulary projection, with a mean that makes the sums grow:
    # the step sums added with compensation keep the error below BLAS's blocked sum (a
    # plain running sum of the 3125 steps is 3x above it), and db over 50000 rows within the
    # bar of NumPy's pairwise sum.
    rng = np.random.default_rng(5)
    a = (rng.standard_normal((3, 50000)) + 0.5).astype(np.float32)
    b = (rng.standard_normal((50000, 2)) + 0.5).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    got = host(gg.gemm(*on(backend, a, b), backend=backend))
    assert np.abs(got - want).max() <= np.abs(a @ b - want).max()
    want = b.astype(np.float64).sum(axis=0)
    assert_float_close(gg.bias_grad(*on(backend, b), backend=backend), want, np.float32,
                       b.sum(axis=0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_products_need_no_launch(backend):
    x, w, b = np.zeros((4, 0)), np.zeros((0, 3)), np.arange(3.0)
    np.testing.assert_array_equal(host(gg.linear_forward(*on(backend, x, w, b),
                                                         backend=backend)), np.tile(b, (4, 1)))
    dout = np.ones((4, 3))
    dx, dw, db = gg.linear_backward(*on(backend, dout, x, w), has_bias=True, backend=backend)
    assert host(dx).shape == (4, 0) and host(dw).shape == (0, 3)
    np.testing.assert_array_equal(host(db), [4.0, 4.0, 4.0])
    assert host(gg.gemm(*on(backend, np.zeros((0, 5)), np.zeros((5, 2))),
                        backend=backend)).shape == (0, 2)


# ----------------------------------------------------------------------------- rope

def rope_problem(B, H, T, D, R, batched, dtype, seed=6, factor=1.0):
    rng = np.random.default_rng(seed)
    x, d = rng.standard_normal((2, B, H, T, D)).astype(dtype)
    positions = rng.integers(0, 50, (B, T)) if batched else 1000 + np.arange(T)
    inv_freq = rope.RoPE(D, rotary_dim=R).frequencies()[0]
    cos, sin = rope.rope_tables(inv_freq, positions, attention_factor=factor, dtype=dtype)
    return x, d, cos, sin


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
@pytest.mark.parametrize("B, H, T, D, R, batched, factor", [
    (2, 2, 1, 8, 8, False, 1.0), (1, 6, 7, 40, 24, False, 1.0), (2, 4, 7, 64, 32, True, 1.0),
    (1, 3, 97, 64, 64, False, 1.2), (2, 1, 5, 2, 2, True, 1.0)])
def test_rope_matches_numpy(B, H, T, D, R, batched, factor, interleaved, dtype, backend):
    x, d, cos, sin = rope_problem(B, H, T, D, R, batched, dtype, factor=factor)
    want, cache = rope.rope_forward(x, cos, sin, interleaved=interleaved)
    kw = {"interleaved": interleaved, "backend": backend}
    got = host(grope.rope_forward(*on(backend, x, cos, sin), **kw))
    assert_float_close(got, want.astype(np.float64), dtype, want)
    np.testing.assert_array_equal(got[..., R:], x[..., R:])      # partial rotary: copied
    want = rope.rope_backward(d, cache)
    assert_float_close(grope.rope_backward(*on(backend, d, cos, sin), **kw),
                       want.astype(np.float64), dtype, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half", "interleaved"])
def test_rope_backward_undoes_the_forward(interleaved, backend):
    x, _, cos, sin = rope_problem(2, 3, 11, 16, 12, True, np.float64)
    kw = {"interleaved": interleaved, "backend": backend}
    turned = grope.rope_forward(*on(backend, x, cos, sin), **kw)
    back = grope.rope_backward(turned, *on(backend, cos, sin), **kw)
    np.testing.assert_allclose(host(back), x, rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------- determinism

def backward_launches(backend):
    """name -> a zero-argument call of one backward on multi-block float32 inputs."""
    rng = np.random.default_rng(7)
    x, d, a, b = (3 * rng.standard_normal((4, 5, 301))).astype(np.float32)
    ids, _, dout = embedding_problem((6, 97), 50, 33, np.float32)
    xl = rng.standard_normal((70, 45)).astype(np.float32)
    wl = rng.standard_normal((45, 77)).astype(np.float32)
    dl = rng.standard_normal((70, 77)).astype(np.float32)
    xr, dr, cos, sin = rope_problem(2, 3, 11, 16, 12, True, np.float32)
    return {
        "gelu_erf": lambda: gew.gelu_backward(*on(backend, d, x), "none", backend=backend),
        "gelu_tanh": lambda: gew.gelu_backward(*on(backend, d, x), "tanh", backend=backend),
        "silu": lambda: gew.silu_backward(*on(backend, d, x), backend=backend),
        "swiglu_gate": lambda: gew.swiglu_gate_backward(*on(backend, d, a, b), backend=backend),
        "embedding": lambda: gem.embedding_backward(*on(backend, dout, ids), 50,
                                                    backend=backend),
        "linear": lambda: gg.linear_backward(*on(backend, dl, xl, wl), has_bias=True,
                                             tiles=gg.SMALL_TILES, backend=backend),
        "rope": lambda: grope.rope_backward(*on(backend, dr, cos, sin), interleaved=True,
                                            backend=backend),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_launches_of_every_backward_are_bit_identical(backend):
    for name, launch in backward_launches(backend).items():
        first, second = launch(), launch()
        first, second = ((r,) if not isinstance(r, tuple) else r for r in (first, second))
        for f, s in zip(first, second):
            assert np.array_equal(host(f), host(s)), name


# ----------------------------------------------------------------------------- bench builders

TINY = {"gpu_cupy.elementwise": {"n": 1000}, "gpu_cupy.embedding": {"n": 50, "V": 30, "C": 7},
        "gpu_cupy.gemm": {"M": 5, "K": 7, "N": 3},
        "gpu_cupy.rope": {"B": 1, "H": 2, "T": 5, "D": 8}}


@needs_opencl
def test_every_bench_entry_builds_a_kernel_call_and_a_torch_call():
    import importlib
    for module, tiny in TINY.items():
        entries = importlib.import_module(module).BENCH
        assert entries and len({e["name"] for e in entries}) == len(entries)
        for e in entries:
            assert (e["bytes"] or 0) > 0 or (e["flops"] or 0) > 0
            kwargs = {**e["kwargs"], **tiny}
            for target, where in ((e["build"], "opencl"), (e["torch"], "cpu")):
                mod, fn = target.split(":")
                call = getattr(importlib.import_module(mod), fn)(where, **kwargs)
                call()
