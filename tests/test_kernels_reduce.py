"""The row-reduction kernels (gpu_cupy.softmax, gpu_cupy.cross_entropy, gpu_cupy.norms) against
the NumPy references.

Behavioural tests are parametrized over backend in {opencl, cupy}: opencl runs here on PoCL,
cupy is marked ``gpu`` and skips, with the device query's reason, where CUDA is absent. float64
results are within 1e-12 of ref_numpy (the harness's cases check both dtypes against torch):
rows longer than the 256-thread block, -inf entries and fully -inf rows, GPT-2's 50257 classes,
ignored targets, the norms' statistics and every chunking of their weight-gradient sums. Every
backward gives the same bits on a second launch. Bad input is refused before anything is
compiled or launched. NVRTC: every kernel compiles for sm_80 and sm_90 in both dtypes without
spills, with the shared memory the launchers budget, and no float64 instruction in float32.
Oclgrind: a barrier removed from a block reduction is reported as a race.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from gpu_cupy import cross_entropy as gce
from gpu_cupy import norms as gn
from gpu_cupy import nvrtc, oclgrind, runtime
from gpu_cupy import softmax as gs
from ref_numpy import cross_entropy, norms, softmax

OPENCL_OK, OPENCL_WHY = runtime.available("opencl", np.float64)
CUPY_OK, CUPY_WHY = runtime.available("cupy")
needs_opencl = pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
needs_cupy = [pytest.mark.gpu, pytest.mark.skipif(not CUPY_OK, reason=CUPY_WHY)]
BACKENDS = [pytest.param("opencl", marks=needs_opencl), pytest.param("cupy", marks=needs_cupy)]
OCLGRIND_OK, OCLGRIND_WHY = oclgrind.available()
needs_oclgrind = pytest.mark.skipif(not OCLGRIND_OK, reason=OCLGRIND_WHY)
KERNEL_FILES = (gs.KERNEL_FILE, gce.KERNEL_FILE, gn.KERNEL_FILE)
LAUNCHERS = {gs.KERNEL_FILE: gs, gce.KERNEL_FILE: gce, gn.KERNEL_FILE: gn}


def on(backend, *arrays):
    """The arrays as the backend's callers hold them: CuPy arrays for cupy, else NumPy."""
    if backend != "cupy":
        return arrays
    import cupy
    return tuple(cupy.asarray(x) for x in arrays)


def host(*xs):
    return tuple(runtime.to_host(x) for x in xs)


def masked_rows(rng, shape, dead=True):
    """3 standard normals with ~1/4 of the entries -inf (the first of each row kept) and, with
    more than one row, the last row entirely -inf."""
    x = 3.0 * rng.standard_normal(shape)
    rows = x.reshape(-1, shape[-1])
    rows[rng.random(rows.shape) < 0.25] = -np.inf
    rows[:, 0] = 1.0
    if dead and rows.shape[0] > 1:
        rows[-1] = -np.inf
    return x


def assert_close(got, want, tol=1e-12):
    """Equal infinities where want is infinite, within ``tol`` elsewhere."""
    assert got.shape == want.shape and got.dtype == want.dtype
    finite = np.isfinite(want)
    assert np.array_equal(got[~finite], want[~finite])
    assert np.abs(got[finite] - want[finite]).max(initial=0.0) <= tol


# ----------------------------------------------------------------------------- softmax

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("version", [1, 2])
def test_softmax_known_answer(version, backend):
    # exp(0) : exp(log 3) : exp(-inf) = 1 : 3 : 0.
    x = np.array([[0.0, np.log(3.0), -np.inf], [-np.inf] * 3])
    y, z = host(gs.softmax_forward(*on(backend, x), version=version, backend=backend),
                gs.log_softmax_forward(*on(backend, x), version=version, backend=backend))
    np.testing.assert_allclose(y, [[0.25, 0.75, 0.0], [0.0, 0.0, 0.0]], rtol=1e-15)
    np.testing.assert_allclose(z[0, :2], np.log([0.25, 0.75]), rtol=1e-15)
    assert z[0, 2] == z[1, 0] == -np.inf and np.isneginf(z[1]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("shape", [(1,), (7, 13), (2, 3, 257), (2, 50257)], ids=str)
def test_softmax_and_log_softmax_match_numpy_in_float64(shape, version, backend):
    x = masked_rows(np.random.default_rng(1), shape)
    dy = np.random.default_rng(2).standard_normal(shape)
    want_y, cy = softmax.softmax_forward(x)
    want_z, cz = softmax.log_softmax_forward(x)
    y, z = host(gs.softmax_forward(*on(backend, x), version=version, backend=backend),
                gs.log_softmax_forward(*on(backend, x), version=version, backend=backend))
    assert_close(y, want_y)
    assert_close(z, want_z)
    dx_y, dx_z = host(gs.softmax_backward(*on(backend, dy, y), backend=backend),
                      gs.log_softmax_backward(*on(backend, dy, z), backend=backend))
    assert_close(dx_y, softmax.softmax_backward(dy, cy))
    assert_close(dx_z, softmax.log_softmax_backward(dy, cz))
    if len(shape) > 1:   # the fully -inf row: zeros, -inf, and exactly zero gradient
        assert not y.reshape(-1, shape[-1])[-1].any() and not dx_z.reshape(-1, shape[-1])[-1].any()


# ----------------------------------------------------------------------------- cross-entropy

def ce_problem(seed, N, C, ignored=0.3, ignore_index=-100):
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.standard_normal((N, C))
    targets = rng.integers(0, C, N).astype(np.int32)
    targets[rng.random(N) < ignored] = ignore_index
    return logits, targets


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("N, C", [(7, 13), (3, 50257), (700, 5)])
def test_cross_entropy_matches_numpy_in_float64(N, C, reduction, backend):
    # 700 rows: the reduce kernel's threads sum several rows each before the tree.
    logits, targets = ce_problem(3, N, C)
    want, cache = cross_entropy.cross_entropy_forward(logits, targets, reduction=reduction)
    dloss = np.asarray(np.random.default_rng(4).standard_normal(want.shape))
    loss = host(gce.cross_entropy_forward(*on(backend, logits, targets), reduction=reduction,
                                          backend=backend))[0]
    fused, dlogits = host(*gce.cross_entropy_fused(*on(backend, logits, targets, dloss),
                                                   reduction=reduction, backend=backend))
    assert loss.shape == want.shape and np.array_equal(loss, fused)
    assert np.abs(loss - want).max() <= 1e-12 * max(1.0, np.abs(want).max())
    assert_close(dlogits, cross_entropy.cross_entropy_backward(dloss, cache))


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_ignore_index_conventions(backend):
    logits, _ = ce_problem(5, 6, 9)
    # Every target ignored: the mean over no position is 0 with zero gradient (torch: NaN).
    none = np.full(6, -100, np.int32)
    loss, dlogits = host(*gce.cross_entropy_fused(*on(backend, logits, none, np.ones(())),
                                                  backend=backend))
    assert loss == 0.0 and not dlogits.any()
    # An ignore_index inside the class range skips that class's positions only.
    targets = np.array([2, 0, 2, 8, 1, 2], np.int32)
    want, cache = cross_entropy.cross_entropy_forward(logits, targets, ignore_index=2)
    loss, dlogits = host(*gce.cross_entropy_fused(*on(backend, logits, targets, np.ones(())),
                                                  ignore_index=2, backend=backend))
    assert abs(loss - want) <= 1e-13
    assert_close(dlogits, cross_entropy.cross_entropy_backward(np.ones(()), cache))
    assert not dlogits[[0, 2, 5]].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_masked_classes_and_a_fully_masked_row(backend):
    logits, targets = ce_problem(6, 4, 300, ignored=0.0)
    logits[:, ::3] = -np.inf
    targets[:] = [1, 2, 4, 5]
    logits[3] = -np.inf         # a valid target under a fully -inf row: loss +inf, as NumPy's
    want, cache = cross_entropy.cross_entropy_forward(logits, targets, reduction="none")
    dloss = np.arange(1.0, 5.0)
    loss, dlogits = host(*gce.cross_entropy_fused(*on(backend, logits, targets, dloss),
                                                  reduction="none", backend=backend))
    assert_close(loss, want)
    assert loss[3] == np.inf
    assert_close(dlogits, cross_entropy.cross_entropy_backward(dloss, cache))


# ----------------------------------------------------------------------------- norms

def norm_problem(seed, shape, dtype=np.float64):
    rng = np.random.default_rng(seed)
    C = shape[-1]
    return tuple(a.astype(dtype) for a in (2.0 * rng.standard_normal(shape) + 0.5,
                                           1.0 + 0.3 * rng.standard_normal(C),
                                           rng.standard_normal(C), rng.standard_normal(shape)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (2, 3, 517), (301, 13)], ids=str)
def test_norms_match_numpy_in_float64(shape, backend):
    x, w, b, dy = norm_problem(7, shape)
    out, rstd = host(*gn.rmsnorm_forward(*on(backend, x, w), backend=backend))
    want, cache = norms.rmsnorm_forward(x, w)
    assert_close(out, want)
    assert_close(rstd, cache["r"][..., 0])
    grads = host(*gn.rmsnorm_backward(*on(backend, dy, x, w, rstd), backend=backend))
    for got, ref in zip(grads, norms.rmsnorm_backward(dy, cache)):
        assert_close(got, ref)
    out, mean, rstd = host(*gn.layernorm_forward(*on(backend, x, w, b), backend=backend))
    want, cache = norms.layernorm_forward(x, w, b)
    assert_close(out, want)
    assert_close(mean, x.mean(axis=-1))
    assert_close(rstd, cache["r"][..., 0])
    grads = host(*gn.layernorm_backward(*on(backend, dy, x, w, mean, rstd), backend=backend))
    for got, ref in zip(grads, norms.layernorm_backward(dy, cache)):
        assert_close(got, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_gradients_agree_for_every_chunking_and_without_a_bias(backend):
    x, w, _, dy = norm_problem(8, (3, 101, 7))           # 303 rows: 128 chunks of 3 by default
    _, cache = norms.layernorm_forward(x, w)
    dx_ref, dw_ref, _ = norms.layernorm_backward(dy, cache)
    out, mean, rstd = gn.layernorm_forward(*on(backend, x, w), backend=backend)
    assert_close(host(out)[0], norms.layernorm_forward(x, w)[0])
    for rows_per_chunk in (None, 1, 7, 303, 10**6):
        dx, dw, db = gn.layernorm_backward(*on(backend, dy, x, w, mean, rstd), has_bias=False,
                                           rows_per_chunk=rows_per_chunk, backend=backend)
        assert db is None
        assert_close(host(dx)[0], dx_ref)
        assert_close(host(dw)[0], dw_ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_zero_is_allowed_but_a_row_with_nothing_to_divide_by_raises(backend):
    x = np.ones((3, 4))
    out, _ = gn.rmsnorm_forward(*on(backend, x, np.ones(4)), eps=0.0, backend=backend)
    assert np.array_equal(host(out)[0], x)
    x[1] = 0.0
    with pytest.raises(ValueError, match=r"x: row \(1,\) has mean square 0 and eps=0"):
        gn.rmsnorm_forward(*on(backend, x, np.ones(4)), eps=0.0, backend=backend)
    with pytest.raises(ValueError, match=r"x: row \(0,\) has variance 0 and eps=0; expected "
                                         r"eps > 0 or a row that is not constant"):
        gn.layernorm_forward(*on(backend, np.ones((3, 4)), np.ones(4)), eps=0, backend=backend)


# ----------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backward_gives_the_same_bits_on_a_second_launch(backend):
    f32 = np.float32
    x = masked_rows(np.random.default_rng(9), (37, 301)).astype(f32)
    dy = np.random.default_rng(10).standard_normal(x.shape).astype(f32)
    y = gs.softmax_forward(*on(backend, x), backend=backend)
    z = gs.log_softmax_forward(*on(backend, x), backend=backend)
    logits, targets = ce_problem(11, 37, 301)
    logits = logits.astype(f32)
    xn, w, b, dyn = norm_problem(12, (517, 77), f32)    # dweight: 104 chunks of 5 rows
    _, rstd = gn.rmsnorm_forward(*on(backend, xn, w), backend=backend)
    _, mean, rstd_l = gn.layernorm_forward(*on(backend, xn, w, b), backend=backend)
    calls = {
        "softmax_backward": lambda: gs.softmax_backward(*on(backend, dy), y, backend=backend),
        "log_softmax_backward": lambda: gs.log_softmax_backward(*on(backend, dy), z,
                                                                backend=backend),
        "cross_entropy_fused": lambda: gce.cross_entropy_fused(
            *on(backend, logits, targets, np.ones((), f32)), backend=backend),
        "rmsnorm_backward": lambda: gn.rmsnorm_backward(*on(backend, dyn, xn, w), rstd,
                                                        backend=backend),
        "layernorm_backward": lambda: gn.layernorm_backward(*on(backend, dyn, xn, w), mean,
                                                            rstd_l, backend=backend)}
    for name, call in calls.items():
        first, second = call(), call()
        first, second = ((first,), (second,)) if not isinstance(first, tuple) else (first, second)
        for a, b_ in zip(host(*first), host(*second)):
            assert a.dtype == f32 and a.tobytes() == b_.tobytes(), name


@pytest.mark.gpu
@pytest.mark.skipif(not CUPY_OK, reason=CUPY_WHY)
def test_cupy_inputs_give_cupy_results():
    import cupy
    x, w, b, dy = on("cupy", *norm_problem(13, (4, 9)))
    assert isinstance(gs.softmax_forward(x, backend="cupy"), cupy.ndarray)
    assert all(isinstance(a, cupy.ndarray) for a in gn.layernorm_forward(x, w, b, backend="cupy"))
    logits, targets = on("cupy", *ce_problem(14, 4, 9))
    assert isinstance(gce.cross_entropy_forward(logits, targets, backend="cupy"), cupy.ndarray)


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if anything is compiled or launched."""
    def refuse(*a, **k):
        raise AssertionError("compiled or launched before the input was validated")
    monkeypatch.setattr(runtime, "build", refuse)
    monkeypatch.setattr(runtime, "launch", refuse)


X = np.zeros((3, 5))


@pytest.mark.parametrize("call, error, message", [
    (lambda: gs.softmax_forward(X.astype(np.float16)), TypeError,
     r"x: expected dtype float32 or float64 but got float16"),
    (lambda: gs.softmax_forward(np.zeros((3, 5), np.int64)), TypeError,
     r"x: expected dtype float32 or float64 but got int64"),
    (lambda: gs.softmax_forward(np.zeros((5, 3)).T), ValueError,
     r"x: expected a C-contiguous array but got strides \(8, 24\) for shape \(3, 5\)"),
    (lambda: gs.softmax_forward(np.zeros(())), ValueError,
     r"x: expected shape \(\.\.\., N\) with at least one dimension but got \(\)"),
    (lambda: gs.softmax_forward([[0.0, 1.0]]), TypeError,
     r"x: expected a numpy.ndarray but got list"),
    (lambda: gs.softmax_forward(X, version=3), ValueError,
     r"version: expected one of \[1, 2\] but got 3"),
    (lambda: gs.log_softmax_forward(X, backend="metal"), ValueError,
     r"backend: expected one of \['opencl', 'cupy'\] but got 'metal'"),
    (lambda: gs.softmax_backward(np.zeros((3, 4)), X), ValueError,
     r"dout: expected shape \(3, 5\) but got \(3, 4\)"),
    (lambda: gs.log_softmax_backward(X.astype(np.float32), X), TypeError,
     r"dout: expected dtype float64 \(the dtype of the first array\) but got float32"),
])
def test_softmax_rejects_bad_input_before_any_launch(call, error, message, no_launch):
    with pytest.raises(error, match=message):
        call()


T = np.array([0, 4, -100], np.int32)


@pytest.mark.parametrize("call, error, message", [
    (lambda: gce.cross_entropy_forward(np.zeros((3, 5, 2)), T), ValueError,
     r"logits: expected shape \(N, C\) with C >= 1, the classes last"),
    (lambda: gce.cross_entropy_forward(np.zeros((3, 0)), T), ValueError,
     r"logits: expected shape \(N, C\) with C >= 1"),
    (lambda: gce.cross_entropy_forward(X, T.astype(np.int64)), TypeError,
     r"targets: expected dtype int32 but got int64"),
    (lambda: gce.cross_entropy_forward(X, T[:2]), ValueError,
     r"targets: expected shape \(N,\) = \(3,\) but got \(2,\)"),
    (lambda: gce.cross_entropy_forward(X, np.array([0, 5, 1], np.int32)), ValueError,
     r"targets: expected class ids in \[0, 5\) or ignore_index=-100 but got 5 at index 1"),
    (lambda: gce.cross_entropy_forward(X, T, ignore_index=-1), ValueError,
     r"targets: expected class ids in \[0, 5\) or ignore_index=-1 but got -100 at index 2"),
    (lambda: gce.cross_entropy_forward(X, T, ignore_index=1.5), TypeError,
     r"ignore_index: expected an int but got float"),
    (lambda: gce.cross_entropy_forward(X, T, ignore_index=2**31), ValueError,
     r"ignore_index: expected an int32 value"),
    (lambda: gce.cross_entropy_forward(X, T, reduction="avg"), ValueError,
     r"reduction: expected one of \('mean', 'sum', 'none'\) but got 'avg'"),
    (lambda: gce.cross_entropy_fused(X, T, np.ones(3)), ValueError,
     r"dloss: expected shape \(\) for reduction='mean' but got \(3,\)"),
    (lambda: gce.cross_entropy_fused(X, T, np.ones(()), reduction="none"), ValueError,
     r"dloss: expected shape \(3,\) for reduction='none' but got \(\)"),
    (lambda: gce.cross_entropy_fused(X, T, np.ones((), np.float32)), TypeError,
     r"dloss: expected dtype float64 \(the dtype of the first array\) but got float32"),
    (lambda: gce.cross_entropy_fused(X, T, None), TypeError,
     r"dloss: expected an array \(the upstream gradient\) but got None"),
    (lambda: gce.cross_entropy_forward(np.zeros((10, 3))[::2], T), ValueError,
     r"logits: expected a C-contiguous array"),
])
def test_cross_entropy_rejects_bad_input_before_any_launch(call, error, message, no_launch):
    with pytest.raises(error, match=message):
        call()


W = np.ones(5)


@pytest.mark.parametrize("call, error, message", [
    (lambda: gn.rmsnorm_forward(X, np.ones(4)), ValueError,
     r"weight: expected shape \(C,\) = \(5,\) but got \(4,\)"),
    (lambda: gn.rmsnorm_forward(X, W.astype(np.float32)), TypeError,
     r"weight: expected dtype float64 \(the dtype of the first array\) but got float32"),
    (lambda: gn.layernorm_forward(X, W, np.ones((1, 5))), ValueError,
     r"bias: expected shape \(C,\) = \(5,\) but got \(1, 5\)"),
    (lambda: gn.layernorm_forward(np.zeros((3, 0)), np.ones(0)), ValueError,
     r"x: expected shape \(\.\.\., C\) with C >= 1 but got \(3, 0\)"),
    (lambda: gn.rmsnorm_forward(X, W, eps=-1e-6), ValueError,
     r"eps: expected a finite number >= 0 representable in float64 but got -1e-06"),
    (lambda: gn.rmsnorm_forward(X, W, eps=float("nan")), ValueError, r"eps: expected a finite"),
    (lambda: gn.layernorm_forward(X.astype(np.float32), W.astype(np.float32), eps=1e39),
     ValueError, r"eps: expected a finite number >= 0 representable in float32 but got 1e\+39"),
    (lambda: gn.rmsnorm_forward(X, W, eps=True), ValueError, r"eps: expected a finite number"),
    (lambda: gn.rmsnorm_backward(X, X, W, np.ones(4)), ValueError,
     r"rstd: expected shape \(3,\) \(x's shape without its last dimension\) but got \(4,\)"),
    (lambda: gn.layernorm_backward(X, X, W, np.ones(3, np.float32), np.ones(3)), TypeError,
     r"mean: expected dtype float64 \(the dtype of the first array\) but got float32"),
    (lambda: gn.rmsnorm_backward(np.zeros((3, 6)), X, W, np.ones(3)), ValueError,
     r"dout: expected shape \(3, 5\) but got \(3, 6\)"),
    (lambda: gn.rmsnorm_backward(X, X, W, np.ones(3), rows_per_chunk=0), ValueError,
     r"rows_per_chunk: expected a positive int but got 0"),
    (lambda: gn.rmsnorm_backward(X, X, W, np.ones(3), rows_per_chunk=True), TypeError,
     r"rows_per_chunk: expected a positive int or None but got bool"),
    (lambda: gn.rmsnorm_backward(np.zeros((70000, 1)), np.zeros((70000, 1)), np.ones(1),
                                 np.ones(70000), rows_per_chunk=1), ValueError,
     r"rows_per_chunk: expected at most 65535 chunks \(a grid dimension\) but 70000 rows in "
     r"chunks of 1 make 70000"),
    (lambda: gn.layernorm_backward(X, X, W, np.ones(3), np.ones(3), has_bias=1), TypeError,
     r"has_bias: expected a bool but got int"),
])
def test_norms_reject_bad_input_before_any_launch(call, error, message, no_launch):
    with pytest.raises(error, match=message):
        call()


def test_int32_headroom_is_checked_before_any_launch(monkeypatch, no_launch):
    # x.size + NUM_THREADS is the last strided index a thread forms: 15 + 256 > 270.
    monkeypatch.setattr(gs, "INT32_MAX", 270)
    monkeypatch.setattr(gn, "INT32_MAX", 270)
    message = r"expected at most 14 elements \(the kernels index with int32\) but got 15"
    for call in (lambda: gs.softmax_forward(X), lambda: gce.cross_entropy_forward(X, T),
                 lambda: gn.rmsnorm_forward(X, W)):
        with pytest.raises(ValueError, match=message):
            call()
    # The partial sums of the weight gradients: 3 chunks x 2 x 5 + 256 > 280 (x itself fits).
    x = np.zeros((3, 5))
    monkeypatch.setattr(gs, "INT32_MAX", 275)
    monkeypatch.setattr(gn, "INT32_MAX", 280)
    with pytest.raises(ValueError, match=r"rows_per_chunk: expected the partial sums \(3 x 2 x "
                                         r"5\) to be indexable with int32"):
        gn.layernorm_backward(x, x, W, np.ones(3), np.ones(3), rows_per_chunk=1)


@needs_opencl
def test_rejects_shared_memory_above_a_smaller_device_limit(monkeypatch):
    small = runtime.Device("opencl", "a device with 1 KiB", 1024, 1024, True)
    monkeypatch.setattr(runtime, "device", lambda backend: small)
    with pytest.raises(ValueError, match=r"a block needs 2048 bytes of shared memory but a "
                                         r"device with 1 KiB allows 1024"):
        gs.softmax_forward(X)


# ----------------------------------------------------------------------------- NVRTC

try:
    import cuda.bindings.nvrtc  # noqa: F401
    NVRTC_OK, NVRTC_WHY = True, ""
except ImportError as exc:
    NVRTC_OK, NVRTC_WHY = False, f"pip install nvidia-cuda-nvrtc cuda-bindings ({exc})"
needs_nvrtc = pytest.mark.skipif(not NVRTC_OK, reason=NVRTC_WHY)


@pytest.fixture(scope="module")
def ptxas_rows():
    return nvrtc.compile_all(files=list(KERNEL_FILES))


@needs_nvrtc
def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(ptxas_rows):
    for filename, launcher in LAUNCHERS.items():
        rows = [r for r in ptxas_rows if r["file"] == filename]
        (defs, kernels), = launcher.nvrtc_configs(np.float32)
        assert {r["kernel"] for r in rows} == set(kernels)
        assert {(r["arch"], r["dtype"]) for r in rows} == {(a, d) for a in nvrtc.ARCHS
                                                           for d in nvrtc.DTYPES}
        assert len(rows) == len(kernels) * 4
        for r in rows:
            assert r["spill_stores"] == r["spill_loads"] == r["stack_bytes"] == 0, r
            assert 0 < r["registers"] * defs["NUM_THREADS"] <= 64 * 1024, r
            itemsize = 8 if r["dtype"] == "float64" else 4
            assert r["smem_bytes"] == launcher.shared_bytes(r["kernel"], itemsize), r
            assert r["smem_bytes"] <= gs.CUDA_STATIC_SHARED


@needs_nvrtc
@pytest.mark.parametrize("filename", KERNEL_FILES)
def test_float32_kernels_do_no_float64_arithmetic(filename):
    source = runtime.kernel_source("cupy", filename)
    for dtype, want in ((np.float32, False), (np.float64, True)):
        ptx = nvrtc.compile_ptx(source, ["--gpu-architecture=compute_80"]
                                + runtime.define_options(gs.defines(dtype)), filename)
        assert (".f64" in ptx) == want, [ln for ln in ptx.splitlines() if ".f64" in ln][:5]


# ----------------------------------------------------------------------------- it can fail

def _run_child(code: str, tmp_path: Path) -> oclgrind.Result:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    result = oclgrind.run_python([str(script)], timeout=300, cwd=str(Path(__file__).parents[1]))
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@needs_oclgrind
def test_a_removed_barrier_in_the_block_reduction_is_reported_as_a_race(tmp_path):
    # The barrier after each halving step of norms.cu's block_sum.
    text = (runtime.KERNEL_DIR / gn.KERNEL_FILE).read_text()
    old = "            scratch[tid] += scratch[tid + span];\n        BARRIER();\n"
    assert text.count(old) == 1
    line = text[:text.index(old)].count("\n") + 1          # the line of scratch[tid] +=
    racy = tmp_path / "norms_racy.cu"
    racy.write_text(text.replace(old, old.replace("BARRIER();", "/* removed */")))
    result = _run_child(f"""
        import numpy as np
        from gpu_cupy import norms as gn
        gn.KERNEL_FILE = {str(racy)!r}
        x = np.random.default_rng(0).standard_normal((2, 300))
        gn.rmsnorm_forward(x, np.ones(300))
        """, tmp_path)
    races = [f for f in result.findings if "data race" in f.kind]
    assert races, result.stderr[-2000:]
    assert {f.kernel for f in races} == {"rmsnorm_forward"}
    assert any(f.line == line for f in races), [f.summary() for f in races]
