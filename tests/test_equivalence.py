"""Every registered case through the harness: float64 against torch autograd plus the
finite-difference gradcheck, and float32 against the same-precision baseline.

Kernel backends (opencl, cupy) take part wherever this machine has them.
"""
import pytest

from equivalence.harness import check_case
from equivalence.registry import all_cases

CASES = all_cases()


def _failures(rows):
    return "\n".join(r.describe() for r in rows if not r.passed)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_float64_against_torch_and_gradcheck(case):
    rows = check_case(case, "float64")
    if not rows:
        pytest.skip(f"{case.name} is not defined in float64")
    assert all(r.passed for r in rows), _failures(rows)
    # The bar is 1e-6; what the float64 copies actually achieve must be far below it.
    copies = [r for r in rows if r.backend != "gradcheck"]
    worst = max(copies, key=lambda r: r.max_abs, default=None)
    if worst is not None:
        assert worst.max_abs <= 1e-10, worst.describe()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_float32_within_twice_the_baseline_error(case):
    rows = check_case(case, "float32")
    if not rows:
        pytest.skip(f"{case.name} is not defined in float32")
    assert all(r.passed for r in rows), _failures(rows)


def test_every_component_has_cases():
    components = {c.component for c in CASES}
    expected = {"softmax", "log_softmax", "online_softmax", "cross_entropy", "rmsnorm",
                "layernorm", "gelu", "silu", "swiglu", "linear", "embedding", "attention",
                "flash", "flash_gpu", "sinusoid", "positional", "rope", "moe", "paged_kv", "optim",
                "schedule", "grad_scaler", "clip_grad_norm", "model",
                # the kernel twins of the core ops
                "softmax_gpu", "log_softmax_gpu", "online_softmax_gpu", "cross_entropy_gpu",
                "rmsnorm_gpu", "layernorm_gpu", "gelu_gpu", "silu_gpu", "swiglu_gate_gpu",
                "linear_gpu", "embedding_gpu", "rope_gpu", "adamw_gpu"}
    assert expected <= components, f"no cases for {sorted(expected - components)}"
