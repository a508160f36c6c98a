"""FlashAttention's accuracy test (equivalence.fa_accuracy): its matrix, its criterion, a sample of
the matrix on NumPy and the kernels, the criterion on the harness's flash cases, and the bench.

The whole matrix (1386 points) is ``crosscheck bench flash-accuracy``; here runs SAMPLE, which
covers the pairs (1, 1), (239, 1), (799, 3), (113, 203) and (1023, 1024), every head dim of
FlashAttention's tests, causal off and on, and MHA, GQA and MQA.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from equivalence import fa_accuracy as fa_acc
from equivalence.registry import all_cases
from gpu_cupy import runtime

OPENCL_OK, OPENCL_WHY = runtime.available("opencl", np.float64)


def test_matrix_is_the_union_of_flash_attentions_tests():
    points = fa_acc.matrix()
    assert len(points) == 21 * 11 * 2 * 3 == len(set(points))
    assert {(p.Tq, p.Tk) for p in points} >= {(1, 1), (113, 203), (1023, 1024), (799, 3),
                                              (239, 1), (2048, 2048), (4224, 4224)}
    assert {p.D for p in points} == {32, 40, 59, 64, 96, 111, 128, 160, 192, 224, 256}
    assert fa_acc.HEADS == {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}


def test_sample_covers_every_factor_of_the_matrix():
    sample = [s.point for s in fa_acc.SAMPLE]
    assert set(sample) <= set(fa_acc.matrix())
    assert {(p.Tq, p.Tk) for p in sample} == {(1, 1), (239, 1), (799, 3), (113, 203),
                                              (1023, 1024)}
    assert {p.D for p in sample} == set(fa_acc.HEAD_DIMS)
    for pair in ((239, 1), (799, 3), (113, 203)):
        at = [p for p in sample if (p.Tq, p.Tk) == pair]
        assert {(p.causal, p.mha) for p in at} == {(c, m) for c in (False, True)
                                                   for m in fa_acc.HEADS}, pair
    assert fa_acc.Point(1023, 1024, 59, False, "mqa") in sample


def test_floor_bar_and_verdicts():
    # (r + 0.3) - 0.3 - r in float32 at r = 1: 1.3 rounds by 2**-24 or so; twice that
    r = np.array([1.0])
    floor32 = fa_acc.fa_floor(r, np.float32)
    t = np.float32(0.3)
    assert floor32 == 2 * abs(float((np.float32(1) + t) - t - np.float32(1))) > 0
    assert fa_acc.fa_floor(np.zeros(3), np.float32) == 0.0
    assert fa_acc.fa_bar(1e-6, r, np.float32) == 2e-6 + floor32
    ref = np.array([1.0, -2.0])
    bar = fa_acc.fa_bar(1e-6, ref, np.float32)
    ok = fa_acc.judge(ref + 0.9 * bar, ref, "float32", 1e-6)
    bad = fa_acc.judge(ref + 1.1 * bar, ref, "float32", 1e-6)
    assert ok["passed"] and not bad["passed"] and 1.0 < bad["ratio"] < 1.2
    # a zero reference: only an exact zero passes, however small the difference
    zero = np.zeros(4)
    assert fa_acc.judge(zero, zero, "float32", 0.0)["passed"]
    tiny = fa_acc.judge(np.array([0, 0, 1e-45, 0]), zero, "float32", 0.0)
    assert tiny["zero"] and not tiny["passed"] and tiny["ratio"] == float("inf")
    # an exact zero decided from the point, not the reference: a float64 reference 1e-15 off
    # zero does not excuse a nonzero result, and does not fail an exact zero
    off = np.array([0.0, 1e-15])
    assert fa_acc.judge(np.zeros(2), off, "float32", 1e-15, zero=True)["passed"]
    assert not fa_acc.judge(off, off, "float64", None, zero=True)["passed"]
    assert fa_acc.exactly_zero(fa_acc.Point(239, 1, 64, True, "mqa"), "dk")
    assert not fa_acc.exactly_zero(fa_acc.Point(239, 1, 64, True, "mqa"), "dv")
    assert not fa_acc.exactly_zero(fa_acc.Point(799, 3, 64, True, "mqa"), "dq")
    # float64: 1e-10 absolute
    assert fa_acc.judge(ref + 5e-11, ref, "float64", None)["passed"]
    assert not fa_acc.judge(ref + 2e-10, ref, "float64", None)["passed"]
    assert not fa_acc.judge(np.array([np.nan, 0.0]), ref, "float32", 1.0)["passed"]


def test_point_names_and_selection():
    p = fa_acc.Point(1023, 1024, 59, False, "mqa")
    assert p.name == "mqa/Tq1023_Tk1024_D59_full" and p.heads == (4, 1)
    assert fa_acc.select(fa_acc.SAMPLE, "Tq1023") == [q for q in fa_acc.SAMPLE
                                                      if q.point.Tq == 1023]
    assert fa_acc.select(fa_acc.SAMPLE, "*D256_causal") == [
        q for q in fa_acc.SAMPLE if q.point.D == 256 and q.point.causal]
    assert [q.point for q in fa_acc.full_plan()] == fa_acc.matrix()


# ----------------------------------------------------------------------------- the sample

@pytest.fixture(scope="module")
def sample_rows():
    backends = ["numpy"] + (["opencl"] if OPENCL_OK else [])
    return [r for s in fa_acc.SAMPLE
            for r in fa_acc.run_point(s.point, backends=backends, dtypes=s.dtypes,
                                      kernel_dtypes=s.kernel_dtypes)]


def _describe(rows):
    return "\n".join(f"{r['point']} [{r['backend']}, {r['dtype']}] {r['tensor']}: err "
                     f"{r['err']:.3e}, bar {r['bar']}, ratio {r['ratio']:.3g} {r.get('note', '')}"
                     for r in rows)


def test_sample_meets_flash_attentions_criterion(sample_rows):
    failed = [r for r in sample_rows if not r["passed"]]
    assert failed == [], _describe(failed)
    want = {("numpy", d) for d in fa_acc.DTYPES}
    if OPENCL_OK:
        want |= {("opencl", d) for d in fa_acc.KERNEL_DTYPES}
    assert {(r["backend"], r["dtype"]) for r in sample_rows} == want
    runs = sum(len(s.dtypes) + (len(set(s.dtypes) & set(s.kernel_dtypes)) if OPENCL_OK else 0)
               for s in fa_acc.SAMPLE)
    assert len(sample_rows) == runs * len(fa_acc.TENSORS)


def test_sample_zero_gradients_are_exactly_zero(sample_rows):
    # Tk = 1: dq and dk are identically zero in every backend and dtype, and come out exactly 0.
    zeros = [r for r in sample_rows if r["zero"]]
    assert {(r["tensor"], r["Tk"]) for r in zeros} == {("dq", 1), ("dk", 1)}
    assert all(r["err"] == 0.0 for r in zeros), _describe([r for r in zeros if r["err"]])
    assert len(zeros) == 2 * len({(r["point"], r["backend"], r["dtype"]) for r in zeros})


def test_sample_float64_within_1e_10(sample_rows):
    f64 = [r for r in sample_rows if r["dtype"] == "float64"]
    assert f64 and max(r["err"] for r in f64) <= 1e-10


def test_summary_has_one_line_per_backend_dtype_and_tensor(sample_rows):
    lines = fa_acc.summary(sample_rows)
    assert len(lines) == len({(r["backend"], r["dtype"], r["tensor"]) for r in sample_rows})
    assert all(line["failed"] == 0 and (line["worst ratio"] or 0) <= 1 for line in lines)
    dq32 = next(s for s in lines if (s["backend"], s["dtype"], s["tensor"]) ==
                ("numpy", "float32", "dq"))
    zero_points = sum(1 for s in fa_acc.SAMPLE if s.point.Tk == 1 and "float32" in s.dtypes)
    assert dq32["zero rows exact"] == f"{zero_points}/{zero_points}"


@pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
def test_a_failing_candidate_gives_failing_rows(monkeypatch):
    # The sample's check can fail: a kernel result 1e-4 off in one element of dv.
    from gpu_cupy import flash_attention as gpu_flash
    real = gpu_flash.flash_attention_backward

    def off(*args, **kwargs):
        dq, dk, dv = real(*args, **kwargs)
        dv = dv.copy()
        dv.flat[3] += 1e-4
        return dq, dk, dv

    monkeypatch.setattr(gpu_flash, "flash_attention_backward", off)
    rows = fa_acc.run_point(fa_acc.Point(113, 203, 40, False, "gqa"), backends=["opencl"],
                            dtypes=["float32"])
    assert [r["tensor"] for r in rows if not r["passed"]] == ["dv"]


# ----------------------------------------------------------------------------- harness cases

FLASH_CASES = [c for c in all_cases() if c.component in ("flash", "flash_gpu")
               and "float32" in c.dtypes]


@pytest.mark.parametrize("case", FLASH_CASES, ids=[c.name for c in FLASH_CASES])
def test_flash_cases_meet_flash_attentions_criterion_in_float32(case):
    rows = fa_acc.check_case_fa(case)
    assert rows and all(r.passed for r in rows), "\n".join(r.describe() for r in rows
                                                          if not r.passed)
    names = {r.backend for r in rows}
    assert "numpy" in names and (not OPENCL_OK or "opencl" not in case.backends
                                 or "opencl" in names)


def test_flash_cases_with_one_key_are_checked_in_float32():
    names = {c.name for c in FLASH_CASES}
    assert any(n.startswith("flash/T=1/") for n in names)
    assert any(n.startswith("flash_gpu/T=1/") for n in names)


# ----------------------------------------------------------------------------- the bench

def _bench_args(argv):
    from equivalence.bench import flash_accuracy
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    flash_accuracy.add_arguments(parser)
    return flash_accuracy, parser.parse_args(argv)


def test_bench_runs_selected_points_and_resumes(tmp_path):
    rows_file = tmp_path / "rows.jsonl"
    bench, args = _bench_args(["--sample", "--only", "Tq1_Tk1", "--backend", "numpy",
                               "--rows", str(rows_file)])
    tables = bench.run(args)
    assert set(tables) == {"worst ratio per tensor", "failures", "run"}
    assert tables["failures"] == [] and tables["run"][0]["points"] == 2
    assert {(s["dtype"], s["tensor"]) for s in tables["worst ratio per tensor"]} == {
        (d, t) for d in fa_acc.DTYPES for t in fa_acc.TENSORS}
    written = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert len(written) == 2 * 3 * 4
    # --resume runs nothing that the file already holds, and reports its rows
    bench, args = _bench_args(["--sample", "--only", "Tq1_Tk1", "--backend", "numpy",
                               "--rows", str(rows_file), "--resume"])
    again = bench.run(args)
    assert again["run"][0]["run now"] == 0 and again["run"][0]["rows"] == len(written)
    assert again["worst ratio per tensor"] == tables["worst ratio per tensor"]


def test_bench_rejects_what_it_cannot_run():
    bench, args = _bench_args(["--only", "no-such-point"])
    with pytest.raises(SystemExit, match="no point matches --only 'no-such-point'"):
        bench.run(args)
    bench, args = _bench_args(["--sample", "--resume"])
    with pytest.raises(SystemExit, match="--resume needs --rows PATH"):
        bench.run(args)
