"""The harness itself: comparison policy, gradcheck and check_case on small local ops.

These cases are built here and not registered, so they test the machinery, not a component.
"""
import numpy as np
import pytest

from equivalence.compare import compare, float32_bound
from equivalence.gradcheck import gradcheck
from equivalence.harness import check_case
from equivalence.registry import Case, single


def _sin_mul_forward(x, w):
    # y = sin(x) * w, a two-input op with a known gradient.
    return np.sin(x) * w, (x, w)


def _sin_mul_backward(dy, cache, wrong=1.0):
    x, w = cache
    # ``wrong`` scales dx: 1.01 is a 1 % error, above gradcheck's rtol 1e-3 and far above the
    # float64 bar against torch (1e-6); 1.0001 is caught by torch alone.
    dx = dy * np.cos(x) * w * wrong
    return {"x": dx, "w": dy * np.sin(x)}


def _case(shape=(7, 13), wrong=1.0, torch_fn=True):
    import torch
    return Case(
        name=f"toy/sin_mul/{shape}",
        inputs=lambda rng: {"x": rng.standard_normal(shape), "w": rng.standard_normal(shape)},
        forward=lambda i: single(_sin_mul_forward(i["x"], i["w"])),
        backward=lambda d, c: _sin_mul_backward(d["out"], c, wrong=wrong),
        torch=(lambda t: {"out": torch.sin(t["x"]) * t["w"]}) if torch_fn else None,
        grad_wrt=("x", "w"),
    )


def test_compare_known_answer():
    ref = np.array([1.0, -2.0, 3.0])
    got = ref + np.array([0.0, 1e-7, -4e-6])
    row = compare(got, ref, case="c", backend="numpy", dtype="float64", tensor="out")
    # worst element: |4e-6| / (1e-6 + 3e-6) = 1.0 exactly at the boundary -> passes
    assert row.worst_index == (2,)
    assert row.fraction == pytest.approx(1.0)
    assert row.max_abs == pytest.approx(4e-6)
    assert row.max_rel == pytest.approx(4e-6 / 3.0)
    row = compare(ref + np.array([0, 0, -4.1e-6]), ref, case="c", backend="numpy",
                  dtype="float64", tensor="out")
    assert not row.passed and row.got_value == pytest.approx(3.0 - 4.1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_compare_nonfinite_is_a_failure_with_its_index(bad):
    ref = np.zeros((3, 4))
    got = ref.copy()
    got[2, 1] = bad
    row = compare(got, ref, case="c", backend="numpy", dtype="float64", tensor="out")
    assert not row.passed
    assert row.worst_index == (2, 1)
    assert "non-finite" in row.note and "(2, 1)" in row.describe()


def test_compare_matching_infinities_agree_and_shape_mismatch_fails():
    ref = np.array([-np.inf, 1.0])
    assert compare(ref.copy(), ref, case="c", backend="b", dtype="float64", tensor="lse").passed
    row = compare(np.zeros(3), np.zeros(2), case="c", backend="b", dtype="float64", tensor="t")
    assert not row.passed and "shape mismatch" in row.note


def test_float32_bound_is_twice_baseline_plus_four_unit_roundoffs():
    ref = np.array([0.5, -4.0])
    assert float32_bound(1e-6, ref, "float32") == pytest.approx(
        2e-6 + 4 * np.finfo(np.float32).eps * 4.0)


@pytest.mark.parametrize("shape", [(1,), (7, 13), (3, 5, 97)])
def test_correct_op_passes_in_both_dtypes(shape):
    case = _case(shape)
    rows64 = check_case(case, "float64")
    assert rows64 and all(r.passed for r in rows64), [r.describe() for r in rows64 if not r.passed]
    assert {r.backend for r in rows64} == {"numpy", "gradcheck"}
    assert max(r.max_abs for r in rows64 if r.backend == "numpy") <= 1e-12
    rows32 = check_case(case, "float32")
    assert all(r.passed for r in rows32), [r.describe() for r in rows32 if not r.passed]
    assert {r.backend for r in rows32} == {"numpy", "torch"}


@pytest.mark.parametrize("shape", [(7, 13), (3, 5, 97)])  # full Jacobian and projections
def test_wrong_backward_is_caught_by_torch_and_by_gradcheck(shape):
    rows = check_case(_case(shape, wrong=1.01), "float64")
    failed = {(r.backend, r.tensor) for r in rows if not r.passed}
    assert ("numpy", "grad x") in failed
    assert ("gradcheck", "x") in failed
    assert all(r.passed for r in rows if r.tensor in ("out", "grad w", "w"))


def test_tiny_error_is_caught_by_torch_comparison_but_within_gradcheck_tolerance():
    rows = check_case(_case((7, 13), wrong=1.0001), "float64")
    failed = {(r.backend, r.tensor) for r in rows if not r.passed}
    assert failed == {("numpy", "grad x")}


def test_gradcheck_failure_names_input_output_index_and_values():
    case = _case((2, 3), wrong=1.01)
    rng = np.random.default_rng(0)
    inputs = case.inputs(rng)
    (row,) = [r for r in gradcheck(case, inputs, rng=rng) if r.tensor == "x"]
    assert not row.passed
    assert "d out[" in row.note and "/ d x[" in row.note
    assert row.ref_value is not None and row.got_value != pytest.approx(row.ref_value, rel=1e-4)


def test_nan_from_a_candidate_fails_the_row():
    good = _case((4, 5))
    broken = Case(**{**good.__dict__, "name": "toy/nan",
                     "forward": lambda i: ({"out": np.full_like(i["x"], np.nan)}, None),
                     "backward": lambda d, c: {"x": d["out"], "w": d["out"]},
                     "gradcheck": False})
    rows = check_case(broken, "float64")
    assert rows and not any(r.passed for r in rows if r.tensor == "out")


def test_a_raising_candidate_becomes_a_failing_row_and_the_rest_still_runs(monkeypatch):
    from equivalence import backends
    monkeypatch.setattr(backends, "available", lambda name: (True, "stand-in device"))

    def boom(inputs, douts):
        raise RuntimeError("launch failed")
    case = Case(**{**_case((4, 5)).__dict__, "name": "toy/raise", "backends": {"opencl": boom}})
    for dtype in ("float64", "float32"):
        rows = check_case(case, dtype)
        bad = [r for r in rows if not r.passed]
        assert [(r.backend, r.tensor) for r in bad] == [("opencl", "(run)")]
        assert "RuntimeError: launch failed" in bad[0].note
        assert any(r.backend == "numpy" and r.passed for r in rows)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_raising_reference_gives_one_failing_row_not_an_exception(dtype):
    def backward_boom(d, c):
        raise ValueError("dout: expected shape (4, 5) but got (5, 4)")
    case = Case(**{**_case((4, 5)).__dict__, "name": "toy/raise-ref", "backward": backward_boom})
    rows = check_case(case, dtype)
    assert rows and not any(r.passed for r in rows if r.tensor == "(run)")
    assert any("expected shape (4, 5)" in r.note for r in rows)


def test_dtype_not_preserved_is_a_failure():
    good = _case((4, 5))
    upcasting = Case(**{**good.__dict__, "name": "toy/upcast",
                        "forward": lambda i: single(_sin_mul_forward(
                            i["x"].astype(np.float64), i["w"].astype(np.float64)))})
    rows = check_case(upcasting, "float32")
    assert any(not r.passed and "dtype not preserved" in r.note for r in rows)


def test_no_torch_oracle_checks_finiteness_and_says_so():
    rows = check_case(_case((3,), torch_fn=False), "float64")
    assert all(r.passed for r in rows)
    assert {r.backend for r in rows} == {"numpy", "gradcheck"}
    assert all(r.note == "no torch oracle: finiteness only" for r in rows if r.backend == "numpy")


def test_nan_without_an_oracle_still_fails_in_both_rows():
    def forward(i):
        out = np.sin(i["x"]) * i["w"]
        out[1] = np.nan
        return {"out": out}, (i["x"], i["w"])
    case = Case(**{**_case((3,), torch_fn=False).__dict__, "name": "toy/nan-no-oracle",
                   "forward": forward})
    rows = check_case(case, "float64")
    failed = {(r.backend, r.tensor) for r in rows if not r.passed}
    assert ("numpy", "out") in failed
    assert ("gradcheck", "x") in failed and ("gradcheck", "w") in failed
