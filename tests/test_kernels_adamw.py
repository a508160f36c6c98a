"""The fused AdamW step (gpu_cupy.adamw) against ref_numpy.optim.AdamW and torch.optim.AdamW.

Behavioural tests are parametrized over backend in {opencl, cupy}: opencl runs here on PoCL,
cupy is marked ``gpu`` and skips, with the device query's reason, where CUDA is absent. Several
parameter arrays of odd sizes (one element, one empty, several crossing block boundaries) in
three groups with their own lr, weight decay, betas and eps are stepped many times by one launch
per step: float64 agrees with the NumPy copy to a few ulps and with torch within 1e-10, float32
within the harness's bar against a torch float32 run. The first step is checked against its
closed form, beta1 = 0 keeps the gradient exactly (torch's lerp branch), a NaN or inf gradient
spreads as in torch (amsgrad's max included), per-segment step counts equal separate launches,
and two launches are bit-identical.
Bad input is refused before anything is compiled or launched; NVRTC compiles the kernel for
sm_80 and sm_90 without spills; and the checks can fail: a binary search that picks the
previous segment at each segment's first element is caught by the comparison on PoCL, and a
bound one past the buffer by Oclgrind as an invalid read.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from equivalence import sanitize
from equivalence.cases.kernels_adamw import SANITIZE_CASES
from equivalence.compare import float32_bound
from equivalence.harness import check_case
from gpu_cupy import adamw as ga
from gpu_cupy import arguments as args_
from gpu_cupy import nvrtc, oclgrind, runtime
from ref_numpy import optim

OPENCL_OK, OPENCL_WHY = runtime.available("opencl", np.float64)
CUPY_OK, CUPY_WHY = runtime.available("cupy")
OCLGRIND_OK, OCLGRIND_WHY = oclgrind.available()
needs_opencl = pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
needs_oclgrind = pytest.mark.skipif(not OCLGRIND_OK, reason=OCLGRIND_WHY)
needs_cupy = [pytest.mark.gpu, pytest.mark.skipif(not CUPY_OK, reason=CUPY_WHY)]
BACKENDS = [pytest.param("opencl", marks=needs_opencl), pytest.param("cupy", marks=needs_cupy)]
try:
    import cuda.bindings.nvrtc  # noqa: F401
    NVRTC_OK, NVRTC_WHY = True, ""
except ImportError as exc:
    NVRTC_OK, NVRTC_WHY = False, f"pip install nvidia-cuda-nvrtc cuda-bindings ({exc})"
needs_nvrtc = pytest.mark.skipif(not NVRTC_OK, reason=NVRTC_WHY)

# 91 + 527 + 1 + 0 + 97 + 165 + 300 = 1181 elements: five blocks of 256, the last ragged.
SHAPES = [(7, 13), (17, 31), (1,), (0,), (97,), (3, 5, 11), (300,)]
GROUPS = [{"params": [0, 1], "weight_decay": 0.1},
          {"params": [2, 3, 4], "weight_decay": 0.0, "lr": 3e-3},
          {"params": [5, 6], "weight_decay": 0.05, "betas": (0.8, 0.95), "eps": 1e-6}]
STEPS = 25


def on(backend, *arrays):
    if backend != "cupy":
        return arrays
    import cupy
    return tuple(cupy.asarray(x) for x in arrays)


def per_segment(options: dict) -> dict:
    """Each group's hyper-parameters as one value per array (the groups cover 0..6 in order)."""
    base = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
    base.update({k: v for k, v in options.items() if k in base})
    return {k: [g.get(k, base[k]) for g in GROUPS for _ in g["params"]] for k in base}


def problem(dtype, seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]
    return params, grads


def run_kernel(params, grads, backend, amsgrad=False, maximize=False, **options):
    flat, offsets = ga.flatten(params)
    m, v = np.zeros_like(flat), np.zeros_like(flat)
    vmax = np.zeros_like(flat) if amsgrad else None
    flat, offsets, m, v = on(backend, flat, offsets, m, v)
    if amsgrad:
        (vmax,) = on(backend, vmax)
    hyper = per_segment(options)
    for t, g in enumerate(grads):
        (g,) = on(backend, ga.flatten(g)[0])
        ga.adamw_step(flat, g, m, v, offsets, t + 1, max_exp_avg_sq=vmax, maximize=maximize,
                      backend=backend, **hyper)
    out = [flat, m, v] + ([vmax] if amsgrad else [])
    return [runtime.to_host(x) for x in out]


def run_numpy(params, grads, **options):
    ps = [p.copy() for p in params]
    opt = optim.AdamW([{**{k: v for k, v in g.items() if k != "params"},
                        "params": [ps[i] for i in g["params"]]} for g in GROUPS], **options)
    for g in grads:
        opt.step(list(g))
    names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if options.get("amsgrad") else [])
    return [ga.flatten(ps)[0]] + [ga.flatten([s[b] for s in opt.state])[0] for b in names]


def run_torch(params, grads, dtype, **options):
    ps = [torch.from_numpy(p.astype(dtype)) for p in params]
    opt = torch.optim.AdamW([{**{k: v for k, v in g.items() if k != "params"},
                              "params": [ps[i] for i in g["params"]]} for g in GROUPS],
                            **options)
    for g in grads:
        for p, x in zip(ps, g):
            p.grad = torch.from_numpy(x.astype(dtype))
        opt.step()
    names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if options.get("amsgrad") else [])
    return ([torch.cat([p.reshape(-1) for p in ps]).numpy()]
            + [torch.cat([opt.state[p][b].reshape(-1) for p in ps]).numpy() for b in names])


VARIANTS = {"plain": {"lr": 1e-2}, "amsgrad": {"lr": 1e-2, "amsgrad": True},
            "maximize-beta1=0.4": {"lr": 1e-2, "betas": (0.4, 0.9), "maximize": True}}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_float64_trajectory_equals_ref_numpy_and_torch(variant, backend):
    options = VARIANTS[variant]
    params, grads = problem(np.float64)
    got = run_kernel(params, grads, backend, **options)
    want = run_numpy(params, grads, **options)
    oracle = run_torch(params, grads, np.float64, **options)
    assert len(got) == len(want) == len(oracle) == (4 if "amsgrad" in options else 3)
    for g, w, o in zip(got, want, oracle):
        assert g.dtype == np.float64 and g.shape == (1181,)
        assert np.abs(g - w).max() <= 1e-14 * max(1.0, np.abs(w).max())
        assert np.abs(g - o).max() <= 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_trajectory_within_the_bar_of_torch_float32(variant, backend):
    options = VARIANTS[variant]
    params, grads = problem(np.float32)
    got = run_kernel(params, grads, backend, **options)
    ref = run_torch(params, grads, np.float64, **options)
    base = run_torch(params, grads, np.float32, **options)
    for g, r, b in zip(got, ref, base):
        assert g.dtype == np.float32
        bar = float32_bound(float(np.abs(b.astype(np.float64) - r).max()), r, "float32")
        assert np.abs(g.astype(np.float64) - r).max() <= bar


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_first_step_is_its_closed_form(dtype, backend):
    # At t = 1 the corrected moments are g and g^2: theta <- theta (1 - lr wd) - lr g / (|g| + eps)
    p = np.array([1.0, -2.0, 0.5], dtype)
    g = np.array([0.5, -1.0, 0.0], dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    d = on(backend, p, g, m, v, np.array([0, 3], np.int32))
    ga.adamw_step(*d, 1, lr=0.1, weight_decay=0.5, eps=1e-8, backend=backend)
    want = [0.95 - 0.1 * 0.5 / (0.5 + 1e-8), -1.9 + 0.1 / (1 + 1e-8), 0.475]
    rtol = 1e-15 if dtype == np.float64 else 2e-7
    np.testing.assert_allclose(runtime.to_host(d[0]), want, rtol=rtol, atol=0)
    np.testing.assert_allclose(runtime.to_host(d[2]), 0.1 * g, rtol=rtol, atol=0)
    np.testing.assert_allclose(runtime.to_host(d[3]), 0.001 * g.astype(np.float64) ** 2,
                               rtol=rtol * 10, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_with_beta1_zero_the_first_moment_is_the_gradient_exactly(dtype, backend):
    # torch's lerp takes g - (g - m)(1 - w) for w = 1 - beta1 >= 0.5: exactly g at w = 1, where
    # m + w (g - m) rounds (m + (g - m) is not g for most pairs).
    rng = np.random.default_rng(3)
    p, g, m = (rng.standard_normal(300).astype(dtype) for _ in range(3))
    v = rng.random(300).astype(dtype)
    d = on(backend, p, g, m, v, np.array([0, 300], np.int32))
    ga.adamw_step(*d, 4, betas=(0.0, 0.999), backend=backend)
    assert np.array_equal(runtime.to_host(d[2]), g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_gradient_spreads_as_in_torch_amsgrad_included(backend):
    # Elements 3 (NaN) and 7 (inf) at step 1, finite gradients after: both parameters end NaN,
    # max_exp_avg_sq holds NaN and inf (torch.maximum keeps a NaN, fmax would drop it), and
    # every other element is unaffected.
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(300)]
    grads = [[rng.standard_normal(300)] for _ in range(3)]
    grads[0][0][3], grads[0][0][7] = np.nan, np.inf
    flat, offsets = ga.flatten(params)
    bufs = on(backend, flat, offsets, *(np.zeros(300) for _ in range(3)))
    for t, g in enumerate(grads):
        (g,) = on(backend, g[0])
        ga.adamw_step(bufs[0], g, bufs[2], bufs[3], bufs[1], t + 1, lr=1e-2,
                      max_exp_avg_sq=bufs[4], backend=backend)
    p = torch.from_numpy(params[0].copy())
    opt = torch.optim.AdamW([p], lr=1e-2, amsgrad=True)
    for g in grads:
        p.grad = torch.from_numpy(g[0].copy())
        opt.step()
    state = opt.state[p]
    for got, want in zip((bufs[0], bufs[2], bufs[3], bufs[4]),
                         (p, state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"])):
        got, want = runtime.to_host(got), want.numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        ok = np.isfinite(want)
        assert ok.sum() == 298
        assert np.abs(got[ok] - want[ok]).max() <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_segment_steps_equal_separate_launches(backend):
    # Segment 0 at its 7th step, segment 1 at its 1st (bias corrections differ), one launch.
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(300), rng.standard_normal(45)
    ga_, gb = rng.standard_normal(300), rng.standard_normal(45)
    ma, va = rng.standard_normal(300) * 0.1, rng.random(300)
    mb, vb = np.zeros(45), np.zeros(45)
    flat, offsets = ga.flatten([a, b])
    m, v = ga.flatten([ma, mb])[0], ga.flatten([va, vb])[0]
    d = on(backend, flat, ga.flatten([ga_, gb])[0], m, v, offsets)
    ga.adamw_step(*d, [7, 1], lr=[1e-2, 3e-3], weight_decay=[0.1, 0.0], backend=backend)
    sep = []
    for x, g, mm, vv, t, lr, wd in ((a, ga_, ma, va, 7, 1e-2, 0.1), (b, gb, mb, vb, 1, 3e-3, 0.0)):
        x, mm, vv = x.copy(), mm.copy(), vv.copy()
        e = on(backend, x, g, mm, vv, np.array([0, x.size], np.int32))
        ga.adamw_step(*e, t, lr=lr, weight_decay=wd, backend=backend)
        sep.append([runtime.to_host(e[i]) for i in (0, 2, 3)])
    for i, k in enumerate((0, 2, 3)):
        assert np.array_equal(runtime.to_host(d[k]), np.concatenate([s[i] for s in sep]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_launches_of_the_step_are_bit_identical(backend):
    params, grads = problem(np.float32, seed=2, steps=3)
    first = run_kernel(params, grads, backend, amsgrad=True)
    second = run_kernel(params, grads, backend, amsgrad=True)
    assert all(np.array_equal(f, s) for f, s in zip(first, second))


def test_flatten_and_unflatten_are_inverse():
    arrays = [np.arange(6.0).reshape(2, 3), np.zeros(0), np.ones((1, 1, 4))]
    flat, offsets = ga.flatten(arrays)
    assert offsets.dtype == np.int32 and offsets.tolist() == [0, 6, 6, 10]
    back = ga.unflatten(flat, offsets, [a.shape for a in arrays])
    assert all(np.array_equal(x, y) and x.shape == y.shape for x, y in zip(back, arrays))
    with pytest.raises(ValueError, match=r"shapes\[1\]: expected 0 elements \(segment 1\)"):
        ga.unflatten(flat, offsets, [(2, 3), (1,), (4,)])


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def no_launch(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("compiled or launched before the input was validated")
    monkeypatch.setattr(runtime, "build", refuse)
    monkeypatch.setattr(runtime, "launch", refuse)


P = np.zeros(10)
OFF = np.array([0, 4, 10], np.int32)


def fresh():
    return [np.zeros(10) for _ in range(4)]


BAD = [
    (lambda: ga.adamw_step(*[x.astype(np.float16) for x in fresh()], OFF, 1), TypeError,
     r"param: expected dtype float32 or float64 but got float16"),
    (lambda: ga.adamw_step(P.copy(), np.zeros(10, np.float32), *fresh()[2:], OFF, 1), TypeError,
     r"grad: expected dtype float64 \(the dtype of param\) but got float32"),
    (lambda: ga.adamw_step(np.zeros(20)[::2], *fresh()[1:], OFF, 1), ValueError,
     r"param: expected a C-contiguous array but got strides \(16,\) for shape \(10,\)"),
    (lambda: ga.adamw_step(np.zeros((2, 5)), *fresh()[1:], OFF, 1), ValueError,
     r"param: expected a flat buffer of shape \(P,\) but got shape \(2, 5\); pass "
     r"flatten\(arrays\)\[0\]"),
    (lambda: ga.adamw_step(*fresh()[:3], np.zeros(9), OFF, 1), ValueError,
     r"exp_avg_sq: expected shape \(10,\) \(the shape of param\) but got \(9,\)"),
    (lambda: ga.adamw_step(*fresh(), OFF, 1, max_exp_avg_sq=np.zeros(11)), ValueError,
     r"max_exp_avg_sq: expected shape \(10,\) \(the shape of param\) but got \(11,\)"),
    (lambda: ga.adamw_step(P, np.zeros(10), P, np.zeros(10), OFF, 1), ValueError,
     r"exp_avg: expected memory of its own but it shares memory with param"),
    (lambda: ga.adamw_step(*fresh(), OFF.astype(np.int64), 1), TypeError,
     r"offsets: expected dtype int32 but got int64"),
    (lambda: ga.adamw_step(*fresh(), np.array([0, 4, 9], np.int32), 1), ValueError,
     r"offsets: expected offsets\[0\] = 0 and offsets\[-1\] = P = 10 \(the length of param\) "
     r"but got 0 and 9"),
    (lambda: ga.adamw_step(*fresh(), np.array([0, 6, 4, 10], np.int32), 1), ValueError,
     r"offsets: expected nondecreasing offsets but got offsets\[1\] = 6 > offsets\[2\] = 4"),
    (lambda: ga.adamw_step(*fresh(), np.array([10], np.int32), 1), ValueError,
     r"offsets: expected shape \(S \+ 1,\) with S >= 1 segments but got \(1,\)"),
    (lambda: ga.adamw_step(*fresh(), OFF, 0), ValueError,
     r"step: expected every step >= 1 \(the first step is 1\) but got 0 for segment 0"),
    (lambda: ga.adamw_step(*fresh(), OFF, 1.0), TypeError,
     r"step: expected an int or 2 ints \(the step t of each segment, from 1\) but got 1.0"),
    (lambda: ga.adamw_step(*fresh(), OFF, [1, 2, 3]), ValueError,
     r"step: expected an int or 2 ints \(one per segment\) but got shape \(3,\)"),
    (lambda: ga.adamw_step(*fresh(), OFF, 1, lr=-1e-3), ValueError,
     r"lr: expected a finite value >= 0 but got -0.001"),
    (lambda: ga.adamw_step(*fresh(), OFF, 1, lr=[1e-3, np.nan]), ValueError,
     r"lr\[1\]: expected a finite value >= 0 but got nan"),
    (lambda: ga.adamw_step(*fresh(), OFF, 1, weight_decay=[0.1, 0.1, 0.1]), ValueError,
     r"weight_decay: expected a number or 2 numbers \(one per segment\) but got shape \(3,\)"),
    (lambda: ga.adamw_step(*fresh(), OFF, 1, betas=(0.9, 1.0)), ValueError,
     r"betas\[1\]: expected a value in \[0, 1\) but got 1.0"),
    (lambda: ga.adamw_step(*fresh(), OFF, 1, betas=[(0.9, 0.99), (-0.1, 0.99)]), ValueError,
     r"betas\[1, 0\]: expected a value in \[0, 1\) but got -0.1"),
    (lambda: ga.adamw_step(*fresh(), OFF, 1, betas=0.9), ValueError,
     r"betas: expected a pair \(beta1, beta2\) or 2 pairs, shape \(S, 2\), but got 0.9"),
    (lambda: ga.adamw_step(*fresh(), OFF, 1, eps="small"), TypeError,
     r"eps: expected a number or a sequence of 2 numbers but got 'small'"),
    (lambda: ga.adamw_step(*fresh(), OFF, 1, maximize=1), TypeError,
     r"maximize: expected a bool but got int"),
    (lambda: ga.adamw_step(*fresh(), OFF, 1, backend="metal"), ValueError,
     r"backend: expected one of \['opencl', 'cupy'\] but got 'metal'"),
    (lambda: ga.adamw_step([0.0] * 10, *fresh()[1:], OFF, 1), TypeError,
     r"param: expected a numpy.ndarray but got list"),
]


@pytest.mark.parametrize("call, error, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_is_refused_before_any_launch(call, error, message, no_launch):
    with pytest.raises(error, match=message):
        call()


def test_a_buffer_past_int32_is_refused_before_any_launch(monkeypatch, no_launch):
    # An int32 limit of 300 stands for 2^31 - 1: the same check, at a size a test can allocate.
    monkeypatch.setattr(args_, "INT32_MAX", 300)
    with pytest.raises(ValueError, match=r"param: expected P \+ 255 <= 300 \(the kernels index "
                                         r"with int32\) but got 355"):
        ga.adamw_step(*[np.zeros(100) for _ in range(4)], np.array([0, 100], np.int32), 1)


# ----------------------------------------------------------------------------- NVRTC

@needs_nvrtc
def test_the_kernel_compiles_for_sm80_and_sm90_without_spills():
    rows = nvrtc.compile_all(files=[ga.KERNEL_FILE])
    assert {(r["kernel"], r["arch"], r["dtype"]) for r in rows} == {
        (k, a, d) for k in ga.KERNELS for a in nvrtc.ARCHS for d in nvrtc.DTYPES}
    for r in rows:
        assert r["spill_stores"] == r["spill_loads"] == r["stack_bytes"] == 0, r
        assert r["smem_bytes"] == 0 and 0 < r["registers"] <= 64, r


@needs_nvrtc
def test_the_float32_kernel_does_no_float64_arithmetic():
    defines, _ = ga.nvrtc_configs(np.float32)[0]
    ptx = nvrtc.compile_ptx(runtime.kernel_source("cupy", ga.KERNEL_FILE),
                            ["--gpu-architecture=compute_80"] + runtime.define_options(defines),
                            ga.KERNEL_FILE)
    assert ".entry" in ptx and [ln.strip() for ln in ptx.splitlines() if ".f64" in ln] == []


# ----------------------------------------------------------------------------- sanitizer case

@needs_opencl
def test_the_sanitizer_case_runs_the_kernel_compares_five_tensors_and_is_listed(monkeypatch):
    launched = []
    real = runtime.launch
    monkeypatch.setattr(runtime, "launch",
                        lambda program, name, **kw: (launched.append(name),
                                                     real(program, name, **kw))[1])
    for case in SANITIZE_CASES:
        rows = check_case(case, "float64", backends=["opencl"], run_gradcheck=False)
        assert len(rows) >= 5 and all(r.passed for r in rows), case.name
    assert set(launched) == set(ga.KERNELS)
    assert {c.name for c in SANITIZE_CASES} <= {c.name for c in sanitize.cases()}


# ----------------------------------------------------------------------------- it can fail

def _mutated(tmp_path: Path, old: str, new: str, name: str) -> tuple[Path, int]:
    """A copy of adamw.cu with ``old`` (which must occur once) replaced; its 1-based line."""
    text = (runtime.KERNEL_DIR / ga.KERNEL_FILE).read_text()
    assert text.count(old) == 1, old
    line = text[:text.index(old)].count("\n") + 1
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path, line


@needs_opencl
def test_a_wrong_segment_at_each_segments_first_element_is_caught(tmp_path, monkeypatch):
    path, _ = _mutated(tmp_path, "if (offsets[mid] <= i)", "if (offsets[mid] < i)",
                       "adamw_search.cu")
    params, grads = problem(np.float64, steps=2)
    want = run_numpy(params, grads, lr=1e-2)[0]
    assert np.abs(run_kernel(params, grads, "opencl", lr=1e-2)[0] - want).max() <= 1e-14
    monkeypatch.setattr(ga, "KERNEL_FILE", str(path))
    assert not np.abs(run_kernel(params, grads, "opencl", lr=1e-2)[0] - want).max() <= 1e-14


@needs_oclgrind
def test_a_bound_one_past_the_buffer_is_reported_as_an_invalid_read(tmp_path):
    past, line = _mutated(tmp_path, "if (i >= total)", "if (i > total)", "adamw_past.cu")
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        from gpu_cupy import adamw as ga, oclgrind
        ga.KERNEL_FILE = {str(past)!r}
        flat, offsets = ga.flatten([np.ones(200), np.ones(101)])
        oclgrind.mark("past")
        ga.adamw_step(flat, np.ones(301), np.zeros(301), np.zeros(301), offsets, 1)
        oclgrind.mark("end")
        """))
    result = oclgrind.run_python([str(script)], timeout=300, cwd=str(Path(__file__).parents[1]))
    assert result.returncode == 0, result.stderr[-2000:]
    found = [f for f in result.findings if f.work == "past"]
    assert found and {f.kernel for f in found} == {"adamw_step"}, result.stderr[-2000:]
    # Thread i = total reads element P of grad, param, exp_avg and exp_avg_sq (and writes it).
    text = past.read_text().split("\n")
    reads = {n for n, ln in enumerate(text, 1) if any(
        f"= {b}[i]" in ln or f"= {b}[i] *" in ln for b in ("grad", "param", "exp_avg",
                                                            "exp_avg_sq"))}
    assert len(reads) == 4 and all(n > line for n in reads)
    assert {f.line for f in found if f.kind.startswith("Invalid read")} == reads, \
        [f.summary() for f in found]
    assert all(f.kind.startswith(("Invalid read", "Invalid write")) for f in found)


# ----------------------------------------------------------------------------- bench builder

@needs_opencl
def test_the_bench_entry_builds_a_kernel_call_and_a_torch_call():
    (entry,) = ga.BENCH
    assert entry["bytes"] == 7 * 4 * sum(int(np.prod(s)) for s in ga.BENCH_SHAPES)
    tiny = {**entry["kwargs"], "shapes": [[3, 5], [7], [0], [300]]}
    kernel = ga.bench_kernel("opencl", **tiny)
    kernel()
    kernel()                                   # the step count advances: bias corrections
    ga.bench_torch("cpu", **tiny)()
