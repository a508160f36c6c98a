"""The crosscheck CLI: run, list, reports, exit status."""
import json

import numpy as np
import pytest

from equivalence.cli import main
from ref_numpy import norms


def test_list_names_cases(capsys):
    assert main(["list", "--only", "rmsnorm*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out and all(name.startswith("rmsnorm") for name in out)


def test_run_writes_json_and_markdown_and_exits_zero(tmp_path, capsys):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    assert main(["run", "--only", "rmsnorm*", "--json", str(js), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "rmsnorm/(7, 13)" in out and "checks:" in out and " 0 failed" in out
    data = json.loads(js.read_text())
    assert data["summary"]["failed"] == 0 and data["summary"]["passed"] == len(data["rows"])
    row = next(r for r in data["rows"] if r["backend"] == "numpy" and r["dtype"] == "float64")
    for key in ("case", "backend", "dtype", "tensor", "shape", "max_abs", "max_rel", "tolerance",
                "fraction", "passed", "worst_index", "ref_value", "got_value"):
        assert key in row
    assert row["max_abs"] <= 1e-10
    assert "| rmsnorm/(7, 13) | numpy | float64 |" in md.read_text()


def test_run_fails_with_exit_1_on_a_wrong_backward(monkeypatch, capsys):
    right = norms.rmsnorm_backward

    def wrong(dout, cache):
        dx, dw = right(dout, cache)
        return dx * 1.01, dw  # a 1 % error in dx only
    monkeypatch.setattr(norms, "rmsnorm_backward", wrong)
    assert main(["run", "--only", "rmsnorm/(7, 13)", "--dtype", "float64"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "grad x" in out and "gradcheck" in out
    assert "reference" in out and "at index" in out


def test_run_with_no_matching_case_and_bad_backend(capsys):
    assert main(["run", "--only", "no-such-op"]) == 2
    with pytest.raises(SystemExit, match="--backend: expected names among"):
        main(["run", "--backend", "tpu"])


def _one_percent_off(module, name, index=0):
    """A stand-in for ``module.name`` whose gradient number ``index`` is 1 % too large."""
    right = getattr(module, name)

    def wrong(dout, cache):
        grads = list(right(dout, cache))
        grads[index] = grads[index] * 1.01
        return tuple(grads)
    return wrong


@pytest.mark.parametrize("module_name, op, only, tensor", [
    ("norms", "rmsnorm_backward", "rmsnorm/(7, 13)", "grad x"),
    ("attention", "attention_backward", "attention/sdpa/causal/B2_H2_Hkv2_Tq13_Tk29_D40",
     "grad q"),
    ("flash_attention", "flash_attention_backward", "flash/causal-tq<tk/", "grad q"),
])
def test_a_one_percent_wrong_backward_fails_in_float32_alone(monkeypatch, capsys, module_name,
                                                             op, only, tensor):
    import importlib
    module = importlib.import_module(f"ref_numpy.{module_name}")
    monkeypatch.setattr(module, op, _one_percent_off(module, op))
    assert main(["run", "--only", only, "--dtype", "float32"]) == 1
    out = capsys.readouterr().out
    fails = [line for line in out.splitlines() if line.startswith("FAIL ")]
    assert fails and all("[numpy, float32]" in line and f"] {tensor} " in line
                         for line in fails), fails


def test_runs_that_check_nothing_exit_nonzero_and_say_why(monkeypatch, capsys):
    assert main(["run", "--only", "rmsnorm/*", "--backend", "opencl"]) == 2
    said = capsys.readouterr().out
    assert "none of the 4 selected case(s) has a kernel for opencl; the components with one: " \
        "adamw_gpu, cross_entropy_gpu," in said and "rmsnorm_gpu" in said
    from equivalence import backends
    real = backends.available
    monkeypatch.setattr(backends, "available",
                        lambda name: (False, "no CUDA device: stand-in") if name == "cupy"
                        else real(name))
    assert main(["run", "--only", "rmsnorm/*", "--backend", "cupy"]) == 2
    assert "--backend cupy: not available here: no CUDA device: stand-in" in \
        capsys.readouterr().out


def test_a_run_of_cases_without_an_oracle_is_unchecked_and_exits_nonzero(monkeypatch, capsys):
    from equivalence import registry
    real = registry.all_cases
    no_oracle = [registry.Case(**{**c.__dict__, "torch": None, "gradcheck": False})
                 for c in real("rmsnorm/(7, 13)")]
    monkeypatch.setattr(registry, "all_cases", lambda pattern=None: no_oracle)
    assert main(["run"]) == 2
    out = capsys.readouterr().out
    assert "unchecked" in out and "pass " not in out
    assert "checks: 0 passed, 0 failed, 6 unchecked (no oracle)" in out
    assert "no check ran" in out


def test_json_summary_records_versions_devices_and_tolerances(tmp_path):
    js = tmp_path / "r.json"
    assert main(["run", "--only", "rmsnorm/(7, 13)", "--seed", "3", "--json", str(js)]) == 0
    s = json.loads(js.read_text())["summary"]
    assert s["seed"] == 3 and s["dtypes"] == ["float64", "float32"] and s["backends"] == ["numpy"]
    assert s["versions"]["numpy"] == np.__version__ and s["versions"]["torch"]
    assert s["devices"]["torch"]["available"] and "detail" in s["devices"]["cupy"]
    assert s["cases"] == 1 and s["seconds"] >= 0
    assert s["passed"] == 11 and s["failed"] == 0 and s["unchecked"] == 0
    assert s["tolerances"]["float64"]["atol"] == 1e-6 and "rule" in s["tolerances"]["float64"]
    assert s["tolerances"]["low_precision"]["sanity_eps"] == 100


def test_seed_must_be_a_nonnegative_int(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--seed", "-1"])
    assert "expected an int >= 0 but got '-1'" in capsys.readouterr().err


def test_list_keeps_bracketed_backend_tags(capsys):
    assert main(["list", "--only", "flash_gpu/decode"]) == 0
    assert "[cupy, opencl]" in capsys.readouterr().out
