""".ci/gpu-check, the one script a lent GPU machine runs: its dry run, its shapes, its logic."""
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "gpu-check"


def _module():
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_dry_run_prints_every_step_and_parses_the_project_commands(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("[")]
    assert names == ["nvidia-smi", "versions", "pytest-gpu", "run-cupy", "bench-flash-cupy",
                     "bench-kernels-cupy"]
    assert "--backend cupy" in done.stdout and "10 flash shapes" in done.stdout


def test_flash_shapes_are_the_flashattention_papers():
    shapes = [tuple(map(int, s.split(","))) for s in _module().flash_shapes()]
    assert {(T, D) for *_, T, D in shapes} == {(T, D) for T in (512, 1024, 2048, 4096, 8192)
                                               for D in (64, 128)}
    for B, H, Hkv, T, D in shapes:
        assert B * T == 16384 and H * D == 2048 and Hkv == H


def test_only_files_with_gpu_tests_are_collected():
    files = _module().gpu_test_files()
    assert "tests/test_gpu_flash_attention.py" in files
    assert all("mark.gpu" in (ROOT / f).read_text() or "needs_cupy" in (ROOT / f).read_text()
               for f in files)
    assert "tests/test_api.py" not in files


def test_every_status_is_printed_and_a_failed_step_fails_the_script(tmp_path, monkeypatch,
                                                                     capsys):
    m = _module()
    monkeypatch.setattr(m, "steps", lambda out: [
        ("ok", [sys.executable, "-c", "print('fine')"], 30),
        ("fails", [sys.executable, "-c", "raise SystemExit(3)"], 30),
        ("missing", ["no-such-program-here"], 30),
        ("slow", [sys.executable, "-c", "import time; time.sleep(5)"], 1)])
    assert m.run(tmp_path) == 1
    printed = capsys.readouterr().out
    assert "[1] ok: exit 0" in printed and "[2] fails: exit 3" in printed
    assert "[3] missing: exit not found" in printed and "[4] slow: exit timeout" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["status"] for s in summary][:2] == [0, 3]
    assert (tmp_path / "01-ok.log").read_text().endswith("fine\n")
