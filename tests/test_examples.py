"""The examples in tests/examples run: a user's kernel through the public API, right and wrong."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from equivalence import check
from gpu_cupy import runtime

EXAMPLES = Path(__file__).parent / "examples"
OPENCL_OK, OPENCL_WHY = runtime.available("opencl")


def _load(name: str):
    """The example module, imported without keeping the cases it registers."""
    from equivalence import registry
    registry.all_cases()
    saved = dict(registry._CASES)
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        registry._CASES.clear()
        registry._CASES.update(saved)
    return module


@pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
def test_a_user_kernel_on_pocl_passes_and_a_broken_one_fails_at_the_right_index(tmp_path):
    ex = _load("kernel_cases")
    common = dict(inputs=lambda rng: {"x": rng.standard_normal(37)}, cache=True,
                  torch_fn=lambda x: ex.A * __import__("torch").tanh(ex.B * x), name="k")
    right = check(ex.forward, ex.backward, candidates={"opencl": (ex.kernel_forward,
                                                                  ex.kernel_backward)}, **common)
    assert right.passed, str(right)
    assert {r.backend for r in right.rows} >= {"opencl"}
    # the same kernel with element 5 of the forward off by 1e-3
    broken = tmp_path / "broken.cu"
    source = (EXAMPLES / "scaled_tanh.cu").read_text()
    line = "        y[i] = a * tanh(b * x[i]);"
    assert line in source
    broken.write_text(source.replace(line, "        y[i] = a * tanh(b * x[i]) + "
                                           "(i == 5 ? (real)1e-3 : (real)0);"))

    def broken_forward(x):
        return ex.launch("scaled_tanh_forward", x, source=str(broken)), x

    wrong = check(ex.forward, ex.backward, gradcheck=False,
                  candidates={"opencl": (broken_forward, ex.kernel_backward)}, **common)
    fails = wrong.failures()
    assert [(r.backend, r.tensor, r.worst_index) for r in fails] == [
        ("opencl", "out", (5,)), ("opencl", "out", (5,))]
    assert fails[0].got_value - fails[0].ref_value == pytest.approx(1e-3, rel=1e-6)


def test_the_case_files_register_their_cases():
    from equivalence.registry import load_case_file
    names = [c.name for c in load_case_file(str(EXAMPLES / "my_cases.py"))]
    assert names == ["my/scaled_tanh", "my/softplus"]
    (case,) = load_case_file(str(EXAMPLES / "kernel_cases.py"))
    assert case.name == "my/scaled_tanh_kernel" and set(case.backends) == {"opencl"}
    assert np.isfinite(case.inputs(np.random.default_rng(0))["x"]).all()
