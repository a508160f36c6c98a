"""The public API on a user's op: y = a · tanh(b · x), with a scalar-free, elementwise a and b.

A correct pair passes everywhere; a 1 % wrong backward fails in float64, in float32 and in the
gradcheck alone, each naming the tensor, the index and both values; every misuse of the API is
an error naming the function and what was expected.
"""
import json

import numpy as np
import pytest
import torch

from equivalence import assert_close, assert_equivalent, check, gradcheck, register
from equivalence.cli import main

B = 0.7


def forward(x, a):                      # y = a · tanh(b x)
    t = np.tanh(B * x)
    return a * t, (t, a)


def backward(dy, cache):                # dy/dx = a b (1 − t²),  dy/da = t
    t, a = cache
    return dy * a * B * (1 - t * t), dy * t


def one_percent_off(dy, cache):
    dx, da = backward(dy, cache)
    return dx * 1.01, da


def torch_fn(x, a):
    return a * torch.tanh(B * x)


def inputs(rng):
    return {"x": 2 * rng.standard_normal((7, 13)), "a": rng.standard_normal((7, 13))}


def test_a_correct_op_passes_in_both_dtypes_and_by_finite_differences():
    result = check(forward, backward, inputs=inputs, torch_fn=torch_fn, name="scaled_tanh")
    assert result.passed, str(result)
    assert {(r.backend, r.dtype) for r in result.rows} == {
        ("numpy", "float64"), ("gradcheck", "float64"), ("torch", "float32"),
        ("numpy", "float32")}
    assert max(r.max_abs for r in result.rows if r.backend == "numpy"
               and r.dtype == "float64") <= 1e-12
    assert result.raise_if_failed() is result


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_one_percent_wrong_backward_fails_in_each_dtype_naming_tensor_index_values(dtype):
    result = check(forward, one_percent_off, inputs=inputs, torch_fn=torch_fn, dtypes=(dtype,),
                   gradcheck=False, name="scaled_tanh")
    assert not result.passed
    (fail,) = result.failures()
    assert (fail.backend, fail.dtype, fail.tensor) == ("numpy", dtype, "grad x")
    worst = result.worst()
    assert worst is fail and fail.worst_index is not None
    assert fail.got_value == pytest.approx(1.01 * fail.ref_value, rel=1e-6)
    with pytest.raises(AssertionError) as err:
        result.raise_if_failed()
    line = f"FAIL scaled_tanh [numpy, {dtype}] grad x (7, 13): max abs err"
    assert line in str(err.value) and f"at index {fail.worst_index}" in str(err.value)
    assert f"reference {fail.ref_value!r}, got {fail.got_value!r}" in str(err.value)
    assert line in str(result)


def test_the_gradcheck_alone_catches_it_and_names_the_jacobian_entry():
    assert gradcheck(forward, backward, inputs, mode="projections").passed
    result = gradcheck(forward, one_percent_off, inputs, mode="full")
    (fail,) = result.failures()
    assert (fail.backend, fail.tensor) == ("gradcheck", "x")
    assert "full Jacobian; worst: d out[" in fail.note and "/ d x[" in fail.note
    result = gradcheck(forward, one_percent_off, inputs, mode="projections", n_proj=2)
    assert [r.tensor for r in result.failures()] == ["x"]
    assert "2 random projections" in result.failures()[0].note


def test_gradcheck_options_pass_through_and_are_checked():
    loose = gradcheck(forward, one_percent_off, inputs, rtol=0.02, atol=1e-3)
    assert loose.passed                                     # a 1 % error within rtol = 2 %
    with pytest.raises(ValueError, match="mode: expected one of"):
        gradcheck(forward, backward, inputs, mode="rows")
    with pytest.raises(ValueError, match="gradcheck: unknown options \\['step'\\]"):
        check(forward, backward, inputs=inputs, torch_fn=torch_fn, gradcheck={"step": 1e-6})
    result = check(forward, backward, inputs=inputs, torch_fn=torch_fn, dtypes=("float64",),
                   gradcheck={"mode": "projections", "n_proj": 2})
    assert result.passed and "2 random projections" in next(
        r.note for r in result.rows if r.backend == "gradcheck")


def test_a_nondeterministic_backward_or_one_that_changes_its_cache_fails_nondet_tol():
    calls = []

    def noisy(dy, cache):
        calls.append(1)
        dx, da = backward(dy, cache)
        return dx + 1e-9 * len(calls), da

    result = gradcheck(forward, noisy, inputs)
    assert [r.tensor for r in result.failures()] == ["x"]
    assert "two backward calls with the same upstream gradient differ" in \
        result.failures()[0].note
    assert gradcheck(forward, noisy, inputs, nondet_tol=1e-6).passed

    def mutating(dy, cache):
        t, a = cache
        a *= 2.0                                            # changes the cache in place
        return dy * a * B * (1 - t * t), dy * t
    assert "x" in [r.tensor for r in gradcheck(forward, mutating, inputs).failures()]


def test_without_an_oracle_the_rows_are_unchecked_and_the_result_does_not_pass():
    result = check(forward, backward, inputs=inputs)
    assert not result.passed and not result.failures()
    assert {r.status for r in result.rows if r.backend == "numpy"} == {"unchecked"}
    with pytest.raises(AssertionError, match="unchecked scaled|unchecked forward"):
        result.raise_if_failed()


def test_result_json_and_text():
    result = check(forward, one_percent_off, inputs=inputs, torch_fn=torch_fn,
                   dtypes=("float64",), name="scaled_tanh")
    data = json.loads(result.to_json())
    assert data["name"] == "scaled_tanh" and data["passed"] is False
    assert data["summary"]["failed"] == 2 and len(data["rows"]) == len(result.rows)
    assert data["rows"][0]["status"] in ("pass", "FAIL")
    text = str(result)
    assert "crosscheck: equivalence report" in text and "checks: " in text


@pytest.mark.parametrize("make, message", [
    (lambda: check(lambda x, a: [1, 2], None, inputs=inputs, torch_fn=torch_fn),
     "forward: expected the outputs as an ndarray, a tuple of ndarrays or a dict of ndarrays "
     "but got a list of 2"),
    (lambda: check(forward, lambda dy, c: backward(dy, c)[0], inputs=inputs, torch_fn=torch_fn),
     "backward: expected the gradients of \\['x', 'a'\\] as a tuple or a dict but got an "
     "ndarray"),
    (lambda: check(forward, lambda dy, c: {"x": backward(dy, c)[0]}, inputs=inputs,
                   torch_fn=torch_fn),
     "backward: missing gradient for \\['a'\\]"),
    (lambda: check(forward, lambda dy, c: (backward(dy, c)[0], None), inputs=inputs,
                   torch_fn=torch_fn),
     "backward: missing gradient for 'a' \\(got None\\)"),
    (lambda: check(forward, lambda dy, c: (backward(dy, c)[0], backward(dy, c)[1][0]),
                   inputs=inputs, torch_fn=torch_fn),
     "backward: gradient for 'a': expected shape \\(7, 13\\) \\(the shape of a\\) but got "
     "\\(13,\\)"),
    (lambda: check(forward, backward, inputs={"x": np.ones(3), "b": np.ones(3)},
                   torch_fn=torch_fn),
     "forward: inputs \\['b'\\] are not arguments of forward\\(x, a\\)"),
    (lambda: check(forward, backward, inputs={"x": [1.0, 2.0]}, torch_fn=torch_fn),
     "inputs\\['x'\\]: expected an ndarray but got a list of 2"),
    (lambda: check(forward, backward, inputs=inputs, torch_fn=torch_fn, grad_wrt=("y",)),
     "grad_wrt: \\['y'\\] are not among the inputs \\['x', 'a'\\]"),
    (lambda: check(forward, backward, inputs=inputs, torch_fn=torch_fn, dtypes=("float16",)),
     "dtypes: expected some of"),
])
def test_misuse_is_an_error_naming_the_function_and_what_was_expected(make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make()


def test_a_torch_fn_with_other_outputs_fails_its_row_with_the_reason():
    result = check(forward, backward, inputs=inputs, dtypes=("float64",), gradcheck=False,
                   torch_fn=lambda x, a: (torch_fn(x, a), x))
    (fail,) = result.failures()
    assert fail.tensor == "(run)" and "torch_fn: expected outputs named ['out'] (array)" in \
        fail.note


def test_dict_outputs_and_upstream_gradients_keep_their_names():
    def two(x):
        return {"sin": np.sin(x), "cos": np.cos(x)}, x

    def two_backward(d, x):
        return d["sin"] * np.cos(x) - d["cos"] * np.sin(x)

    result = check(two, two_backward, cache=True, inputs={"x": np.linspace(-3, 3, 11)},
                   torch_fn=lambda x: {"sin": torch.sin(x), "cos": torch.cos(x)})
    assert result.passed, str(result)
    assert {r.tensor for r in result.rows if r.backend == "numpy"} == {"sin", "cos", "grad x"}


def test_candidates_are_compared_at_the_right_index(monkeypatch):
    from equivalence import backends
    monkeypatch.setattr(backends, "available", lambda name: (True, "stand-in device"))

    def broken_forward(x, a):
        y, cache = forward(x, a)
        y = y.copy()
        y[3, 5] += 1e-3
        return y, cache

    result = check(forward, backward, inputs=inputs, torch_fn=torch_fn, gradcheck=False,
                   candidates={"opencl": (broken_forward, backward)}, name="k")
    fails = result.failures()
    assert [(r.backend, r.tensor, r.worst_index) for r in fails] == [
        ("opencl", "out", (3, 5)), ("opencl", "out", (3, 5))]
    assert {r.dtype for r in fails} == {"float64", "float32"}


def test_assert_close_applies_the_policy():
    ref = np.linspace(-1, 1, 5)
    assert assert_close(ref + 1e-9, ref).passed
    with pytest.raises(AssertionError, match=r"FAIL out \[got, float64\] out \(5,\): max abs "
                                             r"err 1.000e-05 > tolerance"):
        assert_close(ref + 1e-5, ref)
    r32 = ref.astype(np.float32)
    plain = (ref + 3e-7).astype(np.float32)
    assert assert_close(r32, ref, baseline=plain).passed
    with pytest.raises(AssertionError, match=r"\[got, float32\]"):
        assert_close((ref * 1.001).astype(np.float32), ref, baseline=plain)


def test_assert_equivalent_raises_with_the_failure_lines():
    assert assert_equivalent(forward, backward, inputs=inputs, torch_fn=torch_fn).passed
    with pytest.raises(AssertionError, match=r"FAIL one_percent_off|FAIL forward"):
        assert_equivalent(forward, one_percent_off, inputs=inputs, torch_fn=torch_fn)


def test_registered_cases_run_through_the_cli(tmp_path, capsys):
    good = tmp_path / "good_cases.py"
    good.write_text(
        "import numpy as np, torch\n"
        "from equivalence import register\n"
        "from tests.test_api import forward, backward, torch_fn, inputs\n"
        "register('user/scaled_tanh', forward, backward, inputs=inputs, torch_fn=torch_fn)\n")
    assert main(["run", "--cases", str(good)]) == 0
    assert "user/scaled_tanh" in capsys.readouterr().out
    bad = tmp_path / "bad_cases.py"
    bad.write_text(
        "from equivalence import register\n"
        "from tests.test_api import forward, one_percent_off, torch_fn, inputs\n"
        "register('user/wrong', forward, one_percent_off, inputs=inputs, torch_fn=torch_fn)\n")
    assert main(["run", "--cases", str(bad), "--dtype", "float32"]) == 1
    assert "FAIL user/wrong [numpy, float32] grad x (7, 13)" in capsys.readouterr().out
    empty = tmp_path / "empty_cases.py"
    empty.write_text("x = 1\n")
    assert main(["run", "--cases", str(empty)]) == 2
    assert "registered no case" in capsys.readouterr().out
    assert main(["run", "--cases", str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().out


def test_register_rejects_gradcheck_options():
    with pytest.raises(ValueError, match="options are not kept in the registry"):
        register("user/opts", forward, backward, inputs=inputs, torch_fn=torch_fn,
                 gradcheck={"mode": "full"})
