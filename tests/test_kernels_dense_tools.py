"""The dense kernels (elementwise, embedding, gemm, rope) under the project's tools: bad input
refused before anything is compiled or launched; NVRTC compiles every kernel for sm_80 and
sm_90 in both dtypes without spills, within the register and 48 KiB shared-memory budgets, and
the float32 builds do no float64 arithmetic; the sanitizer's cases run every kernel; and the
checks can fail: a barrier taken out of the GEMM's tile loop is reported by Oclgrind as a race,
a read past a ragged edge as an invalid read, and an off-by-one at the ragged K edge is caught
by the comparison on PoCL.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from equivalence import sanitize
from equivalence.cases.kernels_dense import SANITIZE_CASES
from equivalence.harness import check_case
from gpu_cupy import arguments as args_
from gpu_cupy import elementwise as gew
from gpu_cupy import embedding as gem
from gpu_cupy import gemm as gg
from gpu_cupy import nvrtc, oclgrind, runtime
from gpu_cupy import rope as grope

OPENCL_OK, OPENCL_WHY = runtime.available("opencl", np.float64)
needs_opencl = pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
OCLGRIND_OK, OCLGRIND_WHY = oclgrind.available()
needs_oclgrind = pytest.mark.skipif(not OCLGRIND_OK, reason=OCLGRIND_WHY)
try:
    import cuda.bindings.nvrtc  # noqa: F401
    NVRTC_OK, NVRTC_WHY = True, ""
except ImportError as exc:
    NVRTC_OK, NVRTC_WHY = False, f"pip install nvidia-cuda-nvrtc cuda-bindings ({exc})"
needs_nvrtc = pytest.mark.skipif(not NVRTC_OK, reason=NVRTC_WHY)

MODULES = (gew, gem, gg, grope)
KERNELS = {m.KERNEL_FILE: set(m.KERNELS) for m in MODULES}


# ----------------------------------------------------------------------------- bad input

@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if anything is compiled or launched."""
    def refuse(*a, **k):
        raise AssertionError("compiled or launched before the input was validated")
    monkeypatch.setattr(runtime, "build", refuse)
    monkeypatch.setattr(runtime, "launch", refuse)


X = np.zeros((3, 4))
X32 = np.zeros((3, 4), np.float32)
IDS = np.array([[0, 1, 6], [2, 2, 5]], np.int32)
TABLE = np.zeros((7, 5))
A, B = np.zeros((6, 4)), np.zeros((4, 5))
Q, COS = np.zeros((2, 3, 5, 8)), np.zeros((5, 4))

BAD = [
    # elementwise
    (lambda: gew.gelu_forward(X.astype(np.float16)), TypeError,
     r"x: expected dtype float32 or float64 but got float16"),
    (lambda: gew.gelu_backward(X32, X), TypeError,
     r"dout: expected dtype float64 \(the dtype of x\) but got float32"),
    (lambda: gew.silu_forward(np.zeros((4, 6))[:, ::2]), ValueError,
     r"x: expected a C-contiguous array but got strides \(48, 16\) for shape \(4, 3\)"),
    (lambda: gew.silu_backward(X.T.copy(), X), ValueError,
     r"dout: expected shape \(3, 4\) \(the shape of x\) but got \(4, 3\)"),
    (lambda: gew.swiglu_gate_forward(X, np.zeros(12)), ValueError,
     r"b: expected shape \(3, 4\) \(the shape of a\) but got \(12,\)"),
    (lambda: gew.swiglu_gate_backward(X32, X32, X), TypeError,
     r"b: expected dtype float32 \(the dtype of a\) but got float64"),
    (lambda: gew.gelu_forward(X, "fast"), ValueError,
     r"approximate: expected one of \('none', 'tanh'\) but got 'fast'"),
    (lambda: gew.gelu_forward([1.0, 2.0]), TypeError,
     r"x: expected a numpy.ndarray but got list"),
    (lambda: gew.silu_forward(X, backend="metal"), ValueError,
     r"backend: expected one of \['opencl', 'cupy'\] but got 'metal'"),
    # embedding
    (lambda: gem.embedding_forward(IDS.astype(np.int64), TABLE), TypeError,
     r"ids: expected dtype int32 but got int64; pass ids.astype\(np.int32\) explicitly"),
    (lambda: gem.embedding_forward(IDS + 1, TABLE), ValueError,
     r"ids: expected values in \[0, 7\) \(the rows of the table\) but got 7 at index \(0, 2\)"),
    (lambda: gem.embedding_forward(IDS - 1, TABLE), ValueError,
     r"ids: expected values in \[0, 7\) .* but got -1 at index \(0, 0\)"),
    (lambda: gem.embedding_forward(IDS, np.zeros(7)), ValueError,
     r"table: expected 2 dimensions \(V, C\) but got 1 \(shape \(7,\)\)"),
    (lambda: gem.embedding_forward(IDS, np.zeros((5, 7)).T), ValueError,
     r"table: expected a C-contiguous array"),
    (lambda: gem.embedding_forward(IDS[:, ::2], TABLE), ValueError,
     r"ids: expected a C-contiguous array"),
    (lambda: gem.embedding_backward(np.zeros((2, 3, 5), np.float16), IDS, 7), TypeError,
     r"dout: expected dtype float32 or float64 but got float16"),
    (lambda: gem.embedding_backward(np.zeros((3, 2, 5)), IDS, 7), ValueError,
     r"dout: expected shape \(..., C\) with \(...\) = \(2, 3\) \(the shape of ids\) but got "
     r"\(3, 2, 5\)"),
    (lambda: gem.embedding_backward(np.zeros((2, 3, 5)), IDS, 6), ValueError,
     r"ids: expected values in \[0, 6\) .* but got 6 at index \(0, 2\)"),
    (lambda: gem.embedding_backward(np.zeros((2, 3, 5)), IDS, 0), ValueError,
     r"num_embeddings: expected an int >= 1 but got 0"),
    # gemm and the linear layer
    (lambda: gg.gemm(A, B.astype(np.float32)), TypeError,
     r"b: expected dtype float64 \(the dtype of a\) but got float32"),
    (lambda: gg.gemm(A, np.zeros((5, 5))), ValueError,
     r"b: expected shape \(K, N\) with K = 4 \(from a, shape \(6, 4\)\) but got \(5, 5\)"),
    (lambda: gg.gemm(A, np.zeros((5, 6)), transpose_a=True, transpose_b=True), ValueError,
     r"transpose_a, transpose_b: expected at most one of them but got both"),
    (lambda: gg.gemm(A, B, transpose_b=1), TypeError,
     r"transpose_b: expected a bool but got int \(1\)"),
    (lambda: gg.gemm(A, B, np.zeros(4)), ValueError,
     r"bias: expected shape \(N,\) = \(5,\) but got \(4,\)"),
    (lambda: gg.gemm(np.zeros((4, 6)).T, B), ValueError,
     r"a: expected a C-contiguous array but got strides \(8, 48\) for shape \(6, 4\); pass "
     r"np.ascontiguousarray\(a\) explicitly"),
    (lambda: gg.gemm(np.zeros((2, 6, 4)), B), ValueError,
     r"a: expected 2 dimensions but got 3"),
    (lambda: gg.gemm(A, B, tiles=(64, 64, 16, 4)), ValueError,
     r"tiles: expected 5 positive ints \(TILE_M, TILE_N, TILE_K, THREAD_M, THREAD_N\)"),
    (lambda: gg.gemm(A, B, tiles=(64, 64, 16, 3, 4)), ValueError,
     r"tiles: expected THREAD_M to divide TILE_M and THREAD_N to divide TILE_N but got "
     r"\(64, 64, 16, 3, 4\)"),
    (lambda: gg.gemm(A, B, tiles=(64, 64, 16, 8, 4)), ValueError,
     r"tiles: expected THREAD_M \* THREAD_N <= 16 register accumulators per thread but got "
     r"8 \* 4"),
    (lambda: gg.gemm(A, B, tiles=(64, 64, 16, 1, 1)), ValueError,
     r"tiles: expected at most 1024 threads per block, .* but got 4096"),
    # 96 * (65 + 65) * 8 bytes
    (lambda: gg.gemm(A, B, tiles=(64, 64, 96, 4, 4)), ValueError,
     r"tiles: \(64, 64, 96, 4, 4\) needs 99840 bytes of shared memory in float64 but at most "
     r"49152 are allowed \(CUDA's static limit, checked on every backend\)"),
    (lambda: gg.linear_forward(np.zeros((2, 3, 5)), B), ValueError,
     r"weight: expected shape \(C_in, C_out\) with C_in = 5 \(the last dim of x\) but got "
     r"\(4, 5\)"),
    (lambda: gg.linear_forward(A, B, np.zeros((1, 5))), ValueError,
     r"bias: expected shape \(C_out,\) = \(5,\) but got \(1, 5\)"),
    (lambda: gg.linear_backward(np.zeros((6, 4)), A, B), ValueError,
     r"dout: expected shape \(..., C_out\) = \(6, 5\) but got \(6, 4\)"),
    (lambda: gg.linear_backward(np.zeros((6, 5), np.float32), A, B), TypeError,
     r"dout: expected dtype float64 \(the dtype of x\) but got float32"),
    (lambda: gg.linear_backward(np.zeros((6, 5)), A, B, has_bias=1), TypeError,
     r"has_bias: expected a bool but got int"),
    (lambda: gg.bias_grad(np.zeros(5)), ValueError, r"dc: expected 2 dimensions but got 1"),
    # rope
    (lambda: grope.rope_forward(np.zeros((3, 5, 8)), COS, COS), ValueError,
     r"x: expected 4 dimensions \(B, H, T, D\) but got 3"),
    (lambda: grope.rope_forward(np.zeros((2, 3, 5, 7)), COS, COS), ValueError,
     r"x: expected an even head dimension D for RoPE but got D = 7"),
    (lambda: grope.rope_forward(Q, np.zeros((6, 4)), np.zeros((6, 4))), ValueError,
     r"cos: expected shape \(T, R/2\) with T = 5 from x but got \(6, 4\)"),
    (lambda: grope.rope_forward(Q, np.zeros((3, 5, 4)), np.zeros((3, 5, 4))), ValueError,
     r"cos: expected shape \(B, T, R/2\) with B = 2, T = 5 from x but got \(3, 5, 4\)"),
    (lambda: grope.rope_forward(Q, COS, np.zeros((5, 3))), ValueError,
     r"sin: expected shape \(5, 4\) \(the shape of cos\) but got \(5, 3\)"),
    (lambda: grope.rope_forward(Q, np.zeros((5, 5)), np.zeros((5, 5))), ValueError,
     r"cos: expected 1 to D/2 = 4 frequencies \(rotary_dim = 2 x frequencies <= D = 8\) but "
     r"got 5"),
    (lambda: grope.rope_backward(Q, COS.astype(np.float32), COS), TypeError,
     r"cos: expected dtype float64 \(the dtype of dout\) but got float32"),
    (lambda: grope.rope_forward(Q, COS, COS, interleaved=1), TypeError,
     r"interleaved: expected a bool but got int"),
    (lambda: grope.rope_forward(np.zeros((2, 3, 5, 16))[..., ::2], COS, COS), ValueError,
     r"x: expected a C-contiguous array"),
]


@pytest.mark.parametrize("call, error, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_is_refused_before_any_launch(call, error, message, no_launch):
    with pytest.raises(error, match=message):
        call()


# An int32 limit of 300 stands for 2^31 - 1: the same checks, at sizes a test can allocate.
HEADROOM = [
    (lambda: gew.gelu_forward(np.zeros(100)), r"x: expected its element count \+ 255 <= 300 "
                                              r"\(the kernels index with int32\) but got 355"),
    (lambda: gem.embedding_forward(np.zeros(10, np.int32), np.zeros((7, 5))),
     r"ids: expected ids.size \* C \+ 255 <= 300 \(the kernels index with int32\) but got 305"),
    (lambda: gem.embedding_backward(np.zeros((2, 5)), np.zeros(2, np.int32), 10),
     r"table: expected V \* C \+ 255 <= 300 \(the kernels index with int32\) but got 305"),
    (lambda: gg.gemm(np.zeros((20, 16)), np.zeros((16, 2))),
     r"a: expected M \* K <= 300 \(the kernels index with int32\) but got 320"),
    # bias_grad's 8 row slices of 32 rows reach 256 rows past M, its 32 columns past N
    (lambda: gg.gemm(np.zeros((50, 1)), np.zeros((1, 1))),
     r"a: expected M \+ the rows a block reaches past it <= 300 .* but got 306"),
    (lambda: gg.gemm(np.zeros((1, 1)), np.zeros((1, 250))),
     r"b: expected N \+ the columns a block reaches past it <= 300 .* but got 314"),
    (lambda: gg.gemm(np.zeros((1, 290)), np.zeros((290, 1))),
     r"a: expected K \+ TILE_K <= 300 .* but got 306"),
    (lambda: grope.rope_forward(np.zeros((1, 1, 6, 8)), np.zeros((6, 4)), np.zeros((6, 4))),
     r"x: expected its element count \+ 255 <= 300 .* but got 303"),
]


@pytest.mark.parametrize("call, message", HEADROOM, ids=[str(i) for i in range(len(HEADROOM))])
def test_sizes_past_int32_are_refused_before_any_launch(call, message, monkeypatch, no_launch):
    monkeypatch.setattr(args_, "INT32_MAX", 300)
    with pytest.raises(ValueError, match=message):
        call()


def test_row_tiles_past_a_grid_dimension_are_refused(monkeypatch, no_launch):
    monkeypatch.setattr(args_, "CUDA_GRID_YZ_MAX", 3)
    with pytest.raises(ValueError, match=r"a: expected at most 3 row tiles \(a grid dimension\) "
                                         r"but M = 300 needs 5 of TILE_M = 64"):
        gg.gemm(np.zeros((300, 2)), np.zeros((2, 2)))


@needs_opencl
def test_tiles_above_a_smaller_device_limit_are_refused(monkeypatch):
    small = runtime.Device("opencl", "a device with 8 KiB", 8 * 1024, 1024, True)
    monkeypatch.setattr(runtime, "device", lambda backend: small)
    with pytest.raises(ValueError, match=r"tiles: \(64, 64, 16, 4, 4\) needs 16640 bytes of shared "
                                         r"memory in float64 but the device allows 8192"):
        gg.gemm(A, B)


# ----------------------------------------------------------------------------- NVRTC

@pytest.fixture(scope="module")
def ptxas_rows():
    return nvrtc.compile_all(files=list(KERNELS))


@needs_nvrtc
def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(ptxas_rows):
    for file, kernels in KERNELS.items():
        rows = [r for r in ptxas_rows if r["file"] == file]
        configs = {(r["defines"], r["arch"], r["dtype"]) for r in rows}
        assert {r["kernel"] for r in rows} == kernels
        assert len(rows) == len(configs) * len(kernels)
        assert {(a, d) for _, a, d in configs} == {(a, d) for a in nvrtc.ARCHS
                                                   for d in nvrtc.DTYPES}
    for r in ptxas_rows:
        assert r["spill_stores"] == r["spill_loads"] == r["stack_bytes"] == 0, r
        sizes = dict(kv.split("=") for kv in r["defines"].split())
        assert 0 < r["registers"] * int(sizes["NUM_THREADS"]) <= 64 * 1024, r


@needs_nvrtc
def test_shared_memory_is_the_launchers_budget(ptxas_rows):
    for r in ptxas_rows:
        itemsize = 8 if r["dtype"] == "float64" else 4
        sizes = {k: int(v) for k, v in (kv.split("=") for kv in r["defines"].split())}
        if r["file"] != gg.KERNEL_FILE:
            assert r["smem_bytes"] == 0, r
        elif r["kernel"] == gg.BIAS_KERNEL:       # one partial sum per thread that has a slice
            threads = sizes["NUM_THREADS"]
            cols = min(32, threads)
            assert r["smem_bytes"] == (threads // cols) * cols * itemsize, r
        else:
            tiles = gg.Tiles(*(sizes[k] for k in ("TILE_M", "TILE_N", "TILE_K", "THREAD_M",
                                                  "THREAD_N")))
            assert r["smem_bytes"] == gg.shared_bytes(tiles, itemsize) <= args_.CUDA_STATIC_SHARED


@needs_nvrtc
@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.KERNEL_FILE)
def test_float32_kernels_do_no_float64_arithmetic(module):
    source = runtime.kernel_source("cupy", module.KERNEL_FILE)
    defines, _ = module.nvrtc_configs(np.float32)[0]
    ptx = nvrtc.compile_ptx(source, ["--gpu-architecture=compute_80"]
                            + runtime.define_options(defines), module.KERNEL_FILE)
    assert ".entry" in ptx and [ln.strip() for ln in ptx.splitlines() if ".f64" in ln] == []


# ----------------------------------------------------------------------------- sanitizer cases

@needs_opencl
def test_the_sanitizer_cases_run_every_kernel_and_compare_five_tensors(monkeypatch):
    launched = set()
    real = runtime.launch

    def spy(program, name, **kw):
        launched.add(name)
        return real(program, name, **kw)

    monkeypatch.setattr(runtime, "launch", spy)
    for case in SANITIZE_CASES:
        rows = check_case(case, "float64", backends=["opencl"], run_gradcheck=False)
        assert len(rows) >= 5 and all(r.passed for r in rows), case.name
    assert launched == set().union(*KERNELS.values())
    names = {c.name for c in sanitize.cases()}
    assert {c.name for c in SANITIZE_CASES} <= names


# ----------------------------------------------------------------------------- it can fail

def _mutated(tmp_path: Path, old: str, new: str, name: str) -> tuple[Path, int]:
    """A copy of gemm.cu with ``old`` (which must occur once) replaced; its 1-based line."""
    text = (runtime.KERNEL_DIR / gg.KERNEL_FILE).read_text()
    assert text.count(old) == 1, old
    line = text[:text.index(old)].count("\n") + 1
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path, line


@needs_opencl
def test_an_off_by_one_at_the_ragged_k_edge_is_caught(tmp_path, monkeypatch):
    # The last column of A (row of B) is dropped: every read stays in bounds, the sums are off.
    path, _ = _mutated(tmp_path, "(gm < M && gk < K)", "(gm < M && gk < K - 1)", "gemm_k.cu")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((17, 33)), rng.standard_normal((33, 65))
    want = a @ b
    assert np.abs(gg.gemm(a, b) - want).max() <= 1e-12
    monkeypatch.setattr(gg, "KERNEL_FILE", str(path))
    assert not np.abs(gg.gemm(a, b) - want).max() <= 1e-12


def _run_child(code: str, tmp_path: Path) -> oclgrind.Result:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    result = oclgrind.run_python([str(script)], timeout=300, cwd=str(Path(__file__).parents[1]))
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@needs_oclgrind
def test_a_removed_barrier_and_a_read_past_the_ragged_edge_are_reported(tmp_path):
    # 1. The barrier between staging a step's tiles and multiplying them.
    old = "        load_b_tile(b_tile, b, k0, n0, K, N, trans_b);\n        BARRIER();\n"
    racy, _ = _mutated(tmp_path, old, old.replace("BARRIER();", "/* removed */"),
                       "gemm_racy.cu")
    # 2. The K bound of the A tile one too far: the last row's read passes the end of a.
    old = "(gm < M && gk < K) ? a[trans ? gk * M + gm : gm * K + gk]"
    past, past_line = _mutated(tmp_path, old, old.replace("gk < K", "gk <= K"), "gemm_past.cu")
    result = _run_child(f"""
        import numpy as np
        from gpu_cupy import gemm as gg, oclgrind
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((13, 7)), rng.standard_normal((7, 11))
        for label, path in (("racy", {str(racy)!r}), ("past", {str(past)!r})):
            gg.KERNEL_FILE = path
            oclgrind.mark(label)
            gg.gemm(a, b, tiles=gg.SMALL_TILES)
        oclgrind.mark("end")
        """, tmp_path)
    races = [f for f in result.findings if f.work == "racy"]
    assert races and all("data race" in f.kind for f in races), result.stderr[-2000:]
    assert {f.kernel for f in races} == {"gemm_nn"}
    # Each race is named at one of its two accesses: a thread's reads of the staged tiles and
    # the other threads' writes of them, now unordered.
    text = racy.read_text()
    lines = {n for n, ln in enumerate(text.split("\n"), 1)
             if "a_frag[i] = a_tile[" in ln or "b_frag[j] = b_tile[" in ln
             or "a_tile[k * A_STRIDE + m] =" in ln or "b_tile[k * B_STRIDE + n] =" in ln}
    assert {f.line for f in races} <= lines, [f.summary() for f in races]
    assert any("a_frag" in text.split("\n")[f.line - 1] for f in races)
    reads = [f for f in result.findings if f.work == "past"]
    assert reads and {f.kernel for f in reads} == {"gemm_nn"}
    assert all(f.kind.startswith("Invalid read") and "global memory" in f.kind
               for f in reads), [f.summary() for f in reads]
    assert {f.line for f in reads} == {past_line}
