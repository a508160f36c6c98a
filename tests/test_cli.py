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
