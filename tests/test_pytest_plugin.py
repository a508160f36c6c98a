"""The ``crosscheck`` pytest plugin, run by pytest itself on a small test file (pytester)."""
from importlib.metadata import entry_points

TEST_FILE = '''
import numpy as np
import torch


def forward(x):
    return np.tanh(x), np.tanh(x)


def backward(dy, t):
    return dy * (1 - t * t)


def wrong(dy, t):
    return dy * (1 - t * t) * 1.01


X = {"x": np.linspace(-2.0, 2.0, 9)}


def test_right(crosscheck):
    result = crosscheck.check(forward, backward, inputs=X, torch_fn=torch.tanh, cache=True)
    assert result.passed


def test_wrong(crosscheck):
    crosscheck.check(forward, wrong, inputs=X, torch_fn=torch.tanh, cache=True, name="tanh")


def test_wrong_gradcheck(crosscheck):
    crosscheck.gradcheck(forward, wrong, X, cache=True, name="tanh")


def test_close(crosscheck):
    crosscheck.assert_close(np.ones(3) + 1e-3, np.ones(3))
'''


def _plugin_args() -> list[str]:
    """Nothing when the package is installed (the entry point loads the plugin); else -p."""
    installed = any(e.name == "crosscheck" and e.value == "equivalence.pytest_plugin"
                    for e in entry_points(group="pytest11"))
    return [] if installed else ["-p", "equivalence.pytest_plugin"]


def test_the_fixture_passes_a_right_op_and_fails_a_wrong_one_with_the_report_line(pytester):
    pytester.makepyfile(test_user_op=TEST_FILE)
    result = pytester.runpytest_subprocess(*_plugin_args(), "-q")
    result.assert_outcomes(passed=1, failed=3)
    out = result.stdout.str()
    assert "FAIL tanh [numpy, float64] grad x (9,): max abs err" in out
    assert "FAIL tanh [gradcheck, float64] x (9,)" in out
    assert "FAIL out [got, float64] out (3,): max abs err 1.000e-03 > tolerance" in out
    # the failure is the report's line, not a traceback into the package
    assert "equivalence/api.py" not in out and "raise AssertionError" not in out


def test_the_plugin_is_registered_as_crosscheck():
    eps = [e.value for e in entry_points(group="pytest11") if e.name == "crosscheck"]
    assert eps == ["equivalence.pytest_plugin"], (
        "the pytest11 entry point 'crosscheck' is missing: install the package "
        "(python -m pip install -e .)")
