"""Paged KV cache kernels (gpu_cupy.paged_kv) against the NumPy references.

Behavioural tests are parametrized over backend in {opencl, cupy}: opencl runs here on PoCL,
cupy is marked ``gpu`` and skips, with the device query's reason, where CUDA is absent.
Write and gather are exact (bit for bit, NaN in untouched slots included); decode attention
v1 and v2 are within 1e-12 of ref_numpy.paged_attention in float64 and within the harness's
float32 bar (2x the naive float32 attention's error plus a rounding floor). (The 64-step
generation through the kernels is in test_paged_kv.py, beside the NumPy one.) Pools hold NaN in
every slot that holds no token, so a kernel that reads one cannot pass. Bad input is refused
before anything is compiled or launched. NVRTC: every kernel compiles for sm_80 and sm_90
without spills. Oclgrind: a removed barrier is reported as a race, and an off-by-one in the
page-table walk is caught by the comparison on PoCL.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from equivalence.cases.paged_kv import naive_decode, poisoned_problem as problem
from equivalence.compare import float32_bound
from gpu_cupy import nvrtc, oclgrind, runtime
from gpu_cupy import paged_kv as gk
from ref_numpy import paged_attention
from ref_numpy.paged_kv import PagedKVCache

OPENCL_OK, OPENCL_WHY = runtime.available("opencl", np.float64)
CUPY_OK, CUPY_WHY = runtime.available("cupy")
needs_opencl = pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
needs_cupy = [pytest.mark.gpu, pytest.mark.skipif(not CUPY_OK, reason=CUPY_WHY)]
BACKENDS = [pytest.param("opencl", marks=needs_opencl), pytest.param("cupy", marks=needs_cupy)]
OCLGRIND_OK, OCLGRIND_WHY = oclgrind.available()
needs_oclgrind = pytest.mark.skipif(not OCLGRIND_OK, reason=OCLGRIND_WHY)


def on(backend, *arrays):
    """The arrays as the backend's callers hold them: CuPy arrays for cupy, else NumPy."""
    if backend != "cupy":
        return arrays
    import cupy
    return tuple(cupy.asarray(x) for x in arrays)


def host(x):
    return runtime.to_host(x)


# ----------------------------------------------------------------------------- write, gather

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("BS, D", [(16, 64), (24, 80), (32, 128)])
def test_write_is_exact_and_skips_padding(BS, D, dtype, backend):
    _, k_pool, v_pool, _, _ = problem(1, 4, 2, 2, BS, D, 70, dtype)
    rng = np.random.default_rng(2)
    T = 9
    slots = rng.choice(k_pool.shape[0] * BS, T, replace=False).astype(np.int32)
    slots[[2, 5]] = -1
    k_new, v_new = rng.standard_normal((2, T, 2, D)).astype(dtype)
    want_k, want_v = k_pool.copy(), v_pool.copy()
    paged_attention.write_kv(want_k, want_v, k_new, v_new, slots)
    got_k, got_v = on(backend, k_pool.copy(), v_pool.copy())
    out = gk.paged_kv_write(*on(backend, k_new, v_new), got_k, got_v, *on(backend, slots),
                            backend=backend)
    assert out[0] is got_k and out[1] is got_v                   # written in place
    for got, want in ((got_k, want_k), (got_v, want_v)):
        assert host(got).dtype == dtype
        assert np.array_equal(host(got), want, equal_nan=True)   # bit for bit, NaN kept


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("BS, D, Hkv", [(16, 64, 4), (24, 80, 2), (32, 128, 1), (5, 8, 3)])
def test_gather_is_exact_and_reads_no_unused_slot(BS, D, Hkv, dtype, backend):
    _, k_pool, v_pool, tables, lengths = problem(3, 5, Hkv, Hkv, BS, D, 101, dtype)
    want = paged_attention.gather_kv(k_pool, v_pool, tables, lengths)
    got = gk.paged_kv_gather(*on(backend, k_pool, v_pool, tables, lengths), backend=backend)
    for g, w in zip(got, want):
        assert np.array_equal(host(g), w)                        # no NaN: no unused slot read


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_pads_to_max_len_and_handles_empty_sequences(backend):
    _, k_pool, v_pool, tables, lengths = problem(4, 3, 2, 2, 4, 8, 9)
    lengths[1] = 0
    want = paged_attention.gather_kv(k_pool, v_pool, tables, lengths, max_len=13)
    got = gk.paged_kv_gather(*on(backend, k_pool, v_pool, tables, lengths), max_len=13,
                             backend=backend)
    assert host(got[0]).shape == (3, 2, 13, 8)
    for g, w in zip(got, want):
        assert np.array_equal(host(g), w)
    assert not host(got[0])[1].any()


# ----------------------------------------------------------------------------- decode

# Block sizes 16, 32 and 24, head dims 64, 80, 128 (and 136: two output dims per thread),
# Hkv in {H, H/2, 1}; L spans several partitions of two blocks.
#              S  H Hkv  BS    D    L
DECODE = [(4, 4, 4, 16,  64, 120),
          (4, 4, 2, 24,  80, 100),
          (4, 4, 1, 32, 128, 130),
          (3, 6, 3, 16, 128,  70),
          (2, 2, 1,  5, 136,  23)]
OPTIONS = [{}, {"alibi": True}, {"window": 37}, {"alibi": True, "window": 9}]


def option_id(kw):
    return "+".join(k for k in kw) or "plain"


def decode_both(args, backend, **kw):
    """(v1, v2 with partitions of two blocks) on ``backend``, as NumPy arrays."""
    BS = args[1].shape[2]
    return (host(gk.paged_attention_decode(*on(backend, *args), backend=backend, **kw)),
            host(gk.paged_attention_decode(*on(backend, *args), version=2,
                                           partition_size=2 * BS, backend=backend, **kw)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", OPTIONS, ids=option_id)
@pytest.mark.parametrize("shape", DECODE, ids=lambda s: "S{}_H{}_Hkv{}_BS{}_D{}_L{}".format(*s))
def test_decode_float64_within_1e_12(shape, kw, backend):
    args = problem(5, *shape)
    want = paged_attention.paged_attention_decode(*args, **kw)
    for got in decode_both(args, backend, **kw):
        assert got.dtype == np.float64
        assert np.abs(got - want).max() <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", OPTIONS[::3], ids=option_id)
@pytest.mark.parametrize("shape", DECODE[:3], ids=lambda s: "S{}_H{}_Hkv{}_BS{}_D{}".format(*s))
def test_decode_float32_within_twice_the_naive_float32_error(shape, kw, backend):
    args32 = problem(6, *shape, dtype=np.float32)
    args64 = [x.astype(np.float64) if x.dtype == np.float32 else x for x in args32]
    ref = paged_attention.paged_attention_decode(*args64, **kw)
    naive = naive_decode(*args32, alibi=kw.get("alibi", False), window=kw.get("window"))
    bar = float32_bound(float(np.abs(naive - ref).max()), ref, "float32")
    for got in decode_both(args32, backend, **kw):
        assert got.dtype == np.float32
        err = float(np.abs(got - ref).max())
        assert err <= bar, f"max abs error {err:.3e} > bar {bar:.3e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_v2_default_partition_and_partitions_longer_than_the_context(backend):
    args = problem(7, 3, 4, 2, 16, 64, 1100)        # 1100 > the default partition of 512
    want = paged_attention.paged_attention_decode(*args, window=700)
    for P in (None, 16, 4096):
        got = host(gk.paged_attention_decode(*on(backend, *args), version=2, partition_size=P,
                                             window=700, backend=backend))
        assert np.abs(got - want).max() <= 1e-12, P


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_known_answer(backend):
    # One head, D = 1, keys (0, log 3), scale 1: P = (1/4, 3/4), O = 1/4 * 1 + 3/4 * 5 = 4.
    k_pool = np.array([0.0, np.log(3.0)]).reshape(2, 1, 1, 1)
    v_pool = np.array([1.0, 5.0]).reshape(2, 1, 1, 1)
    args = (np.ones((1, 1, 1)), k_pool, v_pool, np.array([[1, 0]], np.int32),
            np.array([2], np.int32))
    for version in (1, 2):
        part = {"partition_size": 1} if version == 2 else {}
        out = gk.paged_attention_decode(*on(backend, *args), scale=1.0, version=version,
                                        backend=backend, **part)
        np.testing.assert_allclose(host(out).ravel(), [4.0], rtol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_manager_slots_and_the_write_kernel_equal_the_manager_append(backend):
    rng = np.random.default_rng(8)
    a, b = PagedKVCache(12, 4, 2, 8), PagedKVCache(12, 4, 2, 8)
    for c in (a, b):
        s = c.add_sequence()
        c.append(s, np.ones((6, 2, 8)), np.ones((6, 2, 8)))
        c.fork(s)
    for step in range(5):                  # both sequences diverge: copy-on-write first
        for s in (0, 1):
            k, v = rng.standard_normal((2, 1 + step, 2, 8))
            a.append(s, k, v)
            slots = b.reserve_slots(s, 1 + step)
            k_pool, v_pool = on(backend, b.k_pool, b.v_pool)
            gk.paged_kv_write(*on(backend, k, v), k_pool, v_pool, *on(backend, slots),
                              backend=backend)
            b.k_pool[...], b.v_pool[...] = host(k_pool), host(v_pool)
    for s in (0, 1):
        assert a.block_table(s) == b.block_table(s)
        assert all(np.array_equal(x, y) for x, y in zip(a.gather(s), b.gather(s)))


# ----------------------------------------------------------------------------- bad input

def _args(**change):
    args = dict(q=np.zeros((2, 2, 8)), k_pool=np.zeros((3, 2, 4, 8)),
                v_pool=np.zeros((3, 2, 4, 8)), block_tables=np.array([[0, 1], [2, -1]], np.int32),
                lengths=np.array([5, 4], np.int32))
    args.update(change)
    return args


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if anything is compiled or launched."""
    def refuse(*a, **k):
        raise AssertionError("compiled or launched before the input was validated")
    monkeypatch.setattr(runtime, "build", refuse)
    monkeypatch.setattr(runtime, "launch", refuse)


@pytest.mark.parametrize("change, error, message", [
    (dict(block_tables=np.array([[0, 3], [2, -1]], np.int32)), ValueError,
     r"block_tables\[0, 1\]: expected a block id in \[0, 3\) but got 3 \(sequence 0 has length "
     r"5, so its first 2 entries are read\)"),
    (dict(block_tables=np.array([[0, 1], [-1, 2]], np.int32)), ValueError,
     r"block_tables\[1, 0\]: expected a block id in \[0, 3\) but got -1"),
    (dict(lengths=np.array([9, 4], np.int32)), ValueError,
     r"lengths\[0\]: expected a length in \[1, 8\] \(2 table entries of block_size 4\) but "
     r"got 9"),
    (dict(lengths=np.array([5, 0], np.int32)), ValueError, r"lengths\[1\]: expected a length "
                                                           r"in \[1, 8\]"),
    (dict(block_tables=np.array([[0, 1], [2, -1]], np.int64)), TypeError,
     r"block_tables: expected dtype int32 but got int64"),
    (dict(lengths=np.array([5.0, 4.0])), TypeError, r"lengths: expected dtype int32 but got "
                                                    r"float64"),
    (dict(k_pool=np.zeros((3, 2, 4, 8), np.float16)), TypeError,
     r"k_pool: expected dtype float32 or float64 but got float16"),
    (dict(v_pool=np.zeros((3, 2, 4, 8), np.float32)), TypeError,
     r"v_pool: expected dtype float64 \(the dtype of k_pool\) but got float32"),
    (dict(q=np.zeros((2, 2, 8), np.float32)), TypeError,
     r"q: expected dtype float64 \(the dtype of k_pool\) but got float32"),
    (dict(k_pool=np.zeros((3, 4, 2, 8)).transpose(0, 2, 1, 3)), ValueError,
     r"k_pool: expected a C-contiguous array but got strides"),
    (dict(v_pool=np.zeros((3, 2, 4, 16))[..., ::2]), ValueError,
     r"v_pool: expected a C-contiguous array"),
    (dict(q=np.zeros((2, 3, 8))), ValueError, r"q: expected shape \(S, H, D\) with D = 8 and H "
                                              r"divisible by Hkv = 2 but got \(2, 3, 8\)"),
    (dict(q=np.full((2, 2, 8), np.nan)), ValueError, r"q: contains NaN \(first at index "
                                                     r"\(0, 0, 0\)\)"),
    (dict(block_tables=np.array([[0, 1]], np.int32)), ValueError,
     r"lengths: expected shape \(S,\) = \(1,\)"),
    (dict(window=0), ValueError, r"window: expected an int >= 1 but got 0"),
    (dict(version=3), ValueError, r"version: expected one of \[1, 2\] but got 3"),
    (dict(partition_size=8), ValueError, r"partition_size: version 1 has no partitions"),
    (dict(version=2, partition_size=6), ValueError,
     r"partition_size: expected a multiple of the block size 4 but got 6"),
    (dict(alibi=1), TypeError, r"alibi: expected a bool but got int"),
    (dict(backend="metal"), ValueError, r"backend: expected one of \['opencl', 'cupy'\]"),
])
def test_decode_rejects_bad_input_before_any_launch(change, error, message, no_launch):
    with pytest.raises(error, match=message):
        gk.paged_attention_decode(**_args(**change))


@pytest.mark.parametrize("change, error, message", [
    (dict(slot_mapping=np.array([0, 24], np.int32)), ValueError,
     r"slot_mapping\[1\]: expected a slot in \[0, 12\) \(N · BS\) or a negative value \(skip\) "
     r"but got 24"),
    (dict(slot_mapping=np.array([7, 7], np.int32)), ValueError,
     r"slot_mapping: slot 7 appears at indices 0 and 1"),
    (dict(slot_mapping=np.array([0, 1], np.int64)), TypeError,
     r"slot_mapping: expected dtype int32 but got int64"),
    (dict(slot_mapping=np.array([0], np.int32)), ValueError,
     r"slot_mapping: expected shape \(T,\) = \(2,\)"),
    (dict(k_new=np.zeros((2, 2, 4))), ValueError,
     r"k_new: expected shape \(T, Hkv, D\) = \(\*, 2, 8\) but got \(2, 2, 4\)"),
    (dict(v_new=np.zeros((2, 2, 8), np.float32)), TypeError,
     r"v_new: expected dtype float64 \(the dtype of k_pool\) but got float32"),
    (dict(k_pool=np.zeros((3, 2, 8, 8))[:, :, ::2]), ValueError,
     r"k_pool: expected a C-contiguous array"),
])
def test_write_rejects_bad_input_before_any_launch(change, error, message, no_launch):
    args = dict(k_new=np.ones((2, 2, 8)), v_new=np.ones((2, 2, 8)),
                k_pool=np.zeros((3, 2, 4, 8)), v_pool=np.zeros((3, 2, 4, 8)),
                slot_mapping=np.array([0, 5], np.int32))
    args.update(change)
    before = args["k_pool"].copy()
    with pytest.raises(error, match=message):
        gk.paged_kv_write(**args)
    assert np.array_equal(args["k_pool"], before)


@pytest.mark.parametrize("change, error, message", [
    (dict(block_tables=np.array([[0, 1], [7, -1]], np.int32)), ValueError,
     r"block_tables\[1, 0\]: expected a block id in \[0, 3\) but got 7"),
    (dict(lengths=np.array([5, 20], np.int32)), ValueError, r"lengths\[1\]: expected a length "
                                                            r"in \[0, 8\]"),
    (dict(max_len=4), ValueError, r"max_len: expected an int >= max\(lengths\) = 5 but got 4"),
    (dict(block_tables=np.array([[0, 1], [2, 0]], np.uint32)), TypeError,
     r"block_tables: expected dtype int32 but got uint32"),
])
def test_gather_rejects_bad_input_before_any_launch(change, error, message, no_launch):
    args = _args(**change)
    del args["q"]
    with pytest.raises(error, match=message):
        gk.paged_kv_gather(**args)


def test_rejects_blocks_over_cuda_static_shared_memory_on_every_backend(no_launch):
    # BS = 64 at D = 128 in float64 needs 68632 bytes: over CUDA's 48 KiB everywhere.
    args = _args(k_pool=np.zeros((1, 1, 64, 128)), v_pool=np.zeros((1, 1, 64, 128)),
                 q=np.zeros((1, 1, 128)), block_tables=np.zeros((1, 1), np.int32),
                 lengths=np.array([3], np.int32))
    with pytest.raises(ValueError, match=r"k_pool: decode attention needs 68632 bytes of shared "
                                         r"memory with block size 64, D=128, float64 but at "
                                         r"most 49152 are allowed"):
        gk.paged_attention_decode(**args)
    assert gk.shared_bytes(128, 64, 8) == 68632


# ----------------------------------------------------------------------------- NVRTC

try:
    import cuda.bindings.nvrtc  # noqa: F401
    NVRTC_OK, NVRTC_WHY = True, ""
except ImportError as exc:
    NVRTC_OK, NVRTC_WHY = False, f"pip install nvidia-cuda-nvrtc cuda-bindings ({exc})"
needs_nvrtc = pytest.mark.skipif(not NVRTC_OK, reason=NVRTC_WHY)


@pytest.fixture(scope="module")
def ptxas_rows():
    return nvrtc.compile_all(files=[gk.KERNEL_FILE])


@needs_nvrtc
def test_every_kernel_compiles_for_sm80_and_sm90_without_spills(ptxas_rows):
    kernels = set(gk.CACHE_KERNELS) | {k for ks in gk.DECODE_VERSIONS.values() for k in ks}
    configs = {(r["defines"], r["arch"], r["dtype"]) for r in ptxas_rows}
    assert len(ptxas_rows) == len(configs) * len(kernels) == 5 * 2 * 2 * len(kernels)
    assert {r["kernel"] for r in ptxas_rows} == kernels
    for r in ptxas_rows:
        assert r["spill_stores"] == r["spill_loads"] == r["stack_bytes"] == 0, r
        assert 0 < r["registers"] * gk.NUM_THREADS <= 64 * 1024, r
        if r["kernel"].startswith("paged_attention_decode_v") and "reduce" not in r["kernel"]:
            sizes = dict(kv.split("=") for kv in r["defines"].split())
            D, BS = int(sizes["HEAD_DIM"]), int(sizes["BLOCK_SIZE"])
            itemsize = 8 if r["dtype"] == "float64" else 4
            assert r["smem_bytes"] == gk.shared_bytes(D, BS, itemsize) <= gk.CUDA_STATIC_SHARED
        else:
            assert r["smem_bytes"] == 0, r


@needs_nvrtc
def test_float32_kernels_do_no_float64_arithmetic():
    source = runtime.kernel_source("cupy", gk.KERNEL_FILE)
    for dtype, want in ((np.float32, False), (np.float64, True)):
        ptx = nvrtc.compile_ptx(source, ["--gpu-architecture=compute_80"]
                                + runtime.define_options(gk.defines(80, 24, dtype)),
                                gk.KERNEL_FILE)
        assert (".f64" in ptx) == want


# ----------------------------------------------------------------------------- it can fail

def _mutated_kernel(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """A copy of paged_kv.cu with ``old`` (which must occur once) replaced; the 1-based line."""
    text = (runtime.KERNEL_DIR / gk.KERNEL_FILE).read_text()
    assert text.count(old) == 1, old
    line = text[:text.index(old)].count("\n") + 1
    path = tmp_path / "paged_kv_mutated.cu"
    path.write_text(text.replace(old, new))
    return path, line


@needs_opencl
def test_an_off_by_one_in_the_page_table_walk_is_caught(tmp_path, monkeypatch):
    # Each block reads the page-table entry of the next logical block.
    path, _ = _mutated_kernel(tmp_path, "(table[blk] * Hkv + kvh)", "(table[blk + 1] * Hkv + kvh)")
    monkeypatch.setattr(gk, "KERNEL_FILE", str(path))
    args = problem(9, 3, 2, 1, 4, 8, 13)
    args[3][args[3] < 0] = 0         # valid ids in the padding, so every read stays in bounds
    want = paged_attention.paged_attention_decode(*args)
    for got in decode_both(args, "opencl"):
        assert not np.abs(got - want).max() <= 1e-12      # NaN or far off


def _run_child(code: str, tmp_path: Path) -> oclgrind.Result:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    result = oclgrind.run_python([str(script)], timeout=300, cwd=str(Path(__file__).parents[1]))
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@needs_oclgrind
@pytest.mark.parametrize("version", [1, 2])
def test_a_removed_barrier_in_the_block_walk_is_reported_as_a_race(tmp_path, version):
    # The barrier between the partial dot products and the row sums that read them.
    old = "            dot_part[e] = acc;\n        }\n        BARRIER();\n"
    path, line = _mutated_kernel(tmp_path, old, old.replace("BARRIER();", "/* removed */"))
    result = _run_child(f"""
        import numpy as np
        from gpu_cupy import paged_kv as gk
        gk.KERNEL_FILE = {str(path)!r}
        rng = np.random.default_rng(0)
        pool = rng.standard_normal((4, 1, 4, 8))
        tables = np.array([[2, 0, 3]], np.int32)
        gk.paged_attention_decode(rng.standard_normal((1, 1, 8)), pool, pool, tables,
                                  np.array([10], np.int32), version={version},
                                  **({{"partition_size": 4}} if {version} == 2 else {{}}))
        """, tmp_path)
    races = [f for f in result.findings if "data race" in f.kind]
    assert races, result.stderr[-2000:]
    kernel = gk.DECODE_VERSIONS[version][0]
    assert {f.kernel for f in races} == {kernel}
    assert any(f.line == line for f in races), [f.summary() for f in races]  # dot_part[e] =


@needs_opencl
def test_rejects_shared_memory_above_a_smaller_device_limit(monkeypatch):
    # BS = 32 at D = 128 in float64: 35352 bytes, under CUDA's 48 KiB but over 32 KiB.
    small = runtime.Device("opencl", "a device with 32 KiB", 32 * 1024, 1024, True)
    monkeypatch.setattr(runtime, "device", lambda backend: small)
    args = _args(k_pool=np.zeros((1, 1, 32, 128)), v_pool=np.zeros((1, 1, 32, 128)),
                 q=np.zeros((1, 1, 128)), block_tables=np.zeros((1, 1), np.int32),
                 lengths=np.array([3], np.int32))
    with pytest.raises(ValueError, match=r"needs 35352 bytes of shared memory with block size "
                                         r"32, D=128, float64 but the device allows 32768"):
        gk.paged_attention_decode(**args)


# ----------------------------------------------------------------------------- bench

SMOKE = ["--sequences", "3", "--max-len", "40", "--heads", "2,1,8", "--block-size", "4",
         "--repeats", "2", "--warmup", "1", "--min-time", "0"]


def run_bench(argv):
    import argparse
    from equivalence.bench import paged
    parser = argparse.ArgumentParser()
    paged.add_arguments(parser)
    return paged.run(parser.parse_args(argv))


@needs_opencl
def test_bench_paged_times_the_kernels_on_opencl():
    (v1, v2), = run_bench(["--backend", "opencl", "--partition-size", "8", *SMOKE]).values()
    assert (v1["version"], v2["version"]) == (1, 2)
    for row in (v1, v2):
        assert row["GB/s"] == pytest.approx(row["K/V MiB read"] * 2**20 / row["ms"] / 1e6)
        assert row["peak GB/s"] is None and row["of peak"] is None


@pytest.mark.skipif(CUPY_OK, reason="this machine has a CUDA device")
def test_bench_paged_says_when_no_cuda_device_is_available():
    with pytest.raises(SystemExit, match=r"bench paged --backend cupy needs a CUDA device and "
                                         r"none is available"):
        run_bench(["--backend", "cupy", *SMOKE])
