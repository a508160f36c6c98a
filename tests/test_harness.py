"""The harness itself: comparison policy, gradcheck and check_case on small local ops.

These cases are built here and not registered, so they test the machinery, not a component.
"""
import numpy as np
import pytest

from equivalence.compare import compare, float32_bound
from equivalence.finite_differences import gradcheck
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


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_no_torch_oracle_rows_are_unchecked_never_passed(dtype):
    rows = check_case(_case((3,), torch_fn=False), dtype)
    numpy_rows = [r for r in rows if r.backend == "numpy"]
    assert numpy_rows and all(r.status == "unchecked" and not r.passed for r in numpy_rows)
    assert all(r.note.startswith("unchecked: no oracle") for r in numpy_rows)
    # finite differences are independent of torch: those rows are real checks
    assert all(r.status == "pass" for r in rows if r.backend == "gradcheck")


def test_a_kernel_that_disagrees_with_numpy_fails_even_without_an_oracle(monkeypatch):
    from equivalence import backends
    monkeypatch.setattr(backends, "available", lambda name: (name != "torch", "stand-in"))

    def off(inputs, douts):
        outs, cache = _case((4, 5)).forward(inputs)
        return {"out": outs["out"] + 1e-3}, _sin_mul_backward(douts["out"], cache)
    case = Case(**{**_case((4, 5), torch_fn=False).__dict__, "backends": {"opencl": off}})
    rows = check_case(case, "float64")
    assert [(r.backend, r.tensor) for r in rows if r.status == "FAIL"] == [("opencl", "out")]
    assert all(r.status == "unchecked" for r in rows if r.backend == "opencl" and r.tensor != "out")


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


def test_float32_reference_is_torch_float64_so_a_wrong_backward_fails_in_float32_alone():
    rows = check_case(_case((7, 13), wrong=1.01), "float32")
    failed = {(r.backend, r.tensor) for r in rows if r.status == "FAIL"}
    assert failed == {("numpy", "grad x")}
    # the torch float32 baseline is judged against the same independent reference and passes
    assert all(r.passed for r in rows if r.backend == "torch")


def _broken_baseline(scale):
    def run(inputs, douts):
        outs, cache = _sin_mul_forward(inputs["x"], inputs["w"])
        grads = _sin_mul_backward(douts["out"], cache)
        return {"out": outs}, {"x": grads["x"] * scale, "w": grads["w"]}
    return run


def test_a_baseline_beyond_rounding_fails_naming_its_tensor_and_does_not_widen_the_bar():
    case = Case(**{**_case((7, 13)).__dict__, "baseline32": _broken_baseline(1.01)})
    rows = check_case(case, "float32")
    base = {r.tensor: r for r in rows if r.backend == "baseline"}
    assert base["grad x"].status == "FAIL" and "beyond 100 eps" in base["grad x"].note
    assert base["out"].passed and base["grad w"].passed
    # the candidate's bar for grad x is the rounding floor, not 2 x the broken baseline's error
    (cand,) = [r for r in rows if r.backend == "numpy" and r.tensor == "grad x"]
    assert float(cand.tolerance) < 1e-5 < 2 * base["grad x"].max_abs


def test_a_baseline_within_rounding_defines_the_bar():
    case = Case(**{**_case((7, 13)).__dict__, "baseline32": _broken_baseline(1.0 + 2e-6)})
    rows = check_case(case, "float32")
    base = {r.tensor: r for r in rows if r.backend == "baseline"}
    assert all(r.passed for r in base.values())
    assert base["grad x"].note.startswith("defines the bar")


def test_an_unchecked_row_cannot_be_marked_passed():
    from equivalence.compare import Row
    with pytest.raises(ValueError, match="unchecked row cannot be passed"):
        Row(case="c", backend="numpy", dtype="float64", tensor="out", shape=(), max_abs=0.0,
            max_rel=0.0, tolerance="-", fraction=0.0, passed=True, unchecked=True)
