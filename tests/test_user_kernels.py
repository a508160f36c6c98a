"""A user's own kernel file: built with its defines, build errors at the lines of that file,
``crosscheck kernels --file --define`` and ``crosscheck sanitize --cases``.

The kernel, y = a * tanh(b * x) and its backward (tests/examples/scaled_tanh.cu), is copied to
a temporary file, as a user's own would be.
Tests skip, with the reason, where PoCL, NVRTC or Oclgrind is missing.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from equivalence import registry, sanitize
from equivalence.cli import main
from gpu_cupy import nvrtc, oclgrind, runtime

OPENCL_OK, OPENCL_WHY = runtime.available("opencl")
needs_opencl = pytest.mark.skipif(not OPENCL_OK, reason=OPENCL_WHY)
try:
    import cuda.bindings.nvrtc  # noqa: F401
    NVRTC_OK, NVRTC_WHY = True, ""
except ImportError as _exc:
    NVRTC_OK, NVRTC_WHY = False, f"pip install nvidia-cuda-nvrtc cuda-bindings ({_exc})"
needs_nvrtc = pytest.mark.skipif(not NVRTC_OK, reason=NVRTC_WHY)
OCLGRIND_OK, OCLGRIND_WHY = oclgrind.available()
needs_oclgrind = pytest.mark.skipif(not OCLGRIND_OK, reason=OCLGRIND_WHY)

KERNEL_CU = (Path(__file__).parent / "examples" / "scaled_tanh.cu").read_text()
KERNELS = ("scaled_tanh_backward", "scaled_tanh_forward")
A, B, N, NUM_THREADS = 1.5, 0.7, 37, 16

# A user's case file; @NAME@ becomes the component name (case names are unique per process).
CASES_PY = '''\
"""My kernel's case: scaled_tanh.cu on OpenCL against NumPy and torch autograd."""
from pathlib import Path

import numpy as np
import torch

from equivalence.registry import Case, register
from gpu_cupy import runtime

KERNEL_FILE = str(Path(__file__).with_name("scaled_tanh.cu"))
NUM_THREADS = 16
A, B = 1.5, 0.7


def scaled_tanh_opencl(inputs, douts):
    """(inputs, douts) -> (outputs, grads) through the two kernels."""
    x = inputs["x"]
    defines = {"NUM_THREADS": NUM_THREADS}
    if x.dtype == np.float64:
        defines["REAL_IS_DOUBLE"] = 1
    prog = runtime.build("opencl", KERNEL_FILE, defines)
    real, n = x.dtype.type, np.int32(x.size)
    grid, block = (-(-x.size // NUM_THREADS),), (NUM_THREADS,)
    d_x = runtime.to_device("opencl", x)
    d_y = runtime.empty("opencl", x.shape, x.dtype)
    runtime.launch(prog, "scaled_tanh_forward", grid, block, (d_x, d_y, real(A), real(B), n))
    outputs = {"out": runtime.to_host(d_y)}
    if douts is None:
        return outputs, None
    d_dout = runtime.to_device("opencl", douts["out"])
    d_dx = runtime.empty("opencl", x.shape, x.dtype)
    runtime.launch(prog, "scaled_tanh_backward", grid, block,
                   (d_x, d_dout, d_dx, real(A), real(B), n))
    return outputs, {"x": runtime.to_host(d_dx)}


register(Case(
    name="@NAME@/(37,)",
    inputs=lambda rng: {"x": rng.standard_normal(37)},
    forward=lambda i: ({"out": A * np.tanh(B * i["x"])}, i["x"]),
    backward=lambda d, x: {"x": d["out"] * A * B * (1 - np.tanh(B * x) ** 2)},
    torch=lambda t: {"out": A * torch.tanh(B * t["x"])},
    grad_wrt=("x",),
    backends={"opencl": scaled_tanh_opencl},
))
'''
NUMPY_ONLY_PY = '''\
from equivalence.registry import Case, register

register(Case(name="@NAME@/numpy-only", inputs=lambda rng: {"x": rng.standard_normal(3)},
              forward=lambda i: ({"out": 2 * i["x"]}, None),
              backward=lambda d, c: {"x": 2 * d["out"]}, grad_wrt=("x",)))
'''


def _line_of(text: str, snippet: str) -> int:
    """1-based line of ``text`` where ``snippet`` first occurs."""
    return next(n for n, ln in enumerate(text.split("\n"), 1) if snippet in ln)


def _lines_of(text: str, snippet: str) -> list[int]:
    """1-based lines of ``text`` that contain ``snippet``."""
    return [n for n, ln in enumerate(text.split("\n"), 1) if snippet in ln]


# The first use of NUM_THREADS in code (the header comment names it too).
FIRST_USE = _line_of(KERNEL_CU, "BLOCK_IDX_X * NUM_THREADS")


@pytest.fixture
def kernel_file(tmp_path) -> Path:
    path = tmp_path / "scaled_tanh.cu"
    path.write_text(KERNEL_CU)
    return path


@pytest.fixture
def isolated_registry(monkeypatch):
    """Cases a test's file registers are forgotten afterwards (the built-in ones stay)."""
    registry.all_cases()
    monkeypatch.setattr(registry, "_CASES", dict(registry._CASES))
    monkeypatch.setattr(sanitize, "_USER_CASES", {})


def _case_file(directory: Path, name: str, kernel: str = KERNEL_CU,
               extra: str = "") -> Path:
    """Write the kernel and a case file registering ``name/(37,)`` (plus ``extra``) there."""
    directory.mkdir(exist_ok=True)
    (directory / "scaled_tanh.cu").write_text(kernel)
    path = directory / "my_cases.py"
    path.write_text(CASES_PY.replace("@NAME@", name) + extra.replace("@NAME@", name))
    return path


# ----------------------------------------------------------------------------- diagnostics

def test_diagnostics_are_mapped_to_the_kernel_file_and_the_prelude():
    n = runtime.prelude_lines("opencl")
    log = (f"error: /root/.cache/pocl/kcache/tempfile_x.cl:{n + 3}:27: use of undeclared "
           f"identifier 'NUM_THREADS'\n"
           f"input.cl:{n + 7}:5: warning: unused variable 'k'\n"
           f"    int k = 0;\n        ^\n"
           f"input.cl:12:9: note: expanded from macro 'THREAD_IDX_X'\n"
           f"(options: -I /x/pyopencl/cl)\n")
    error = runtime.KernelBuildError.from_log("k.cu", "opencl", log, "could not compile k.cu")
    assert error.diagnostics == [
        (3, "error: use of undeclared identifier 'NUM_THREADS'", "k.cu"),
        (7, "warning: unused variable 'k'", "k.cu"),
        (12, "note: expanded from macro 'THREAD_IDX_X'", "prelude_opencl.h")]
    assert str(error).split("\n") == [
        "k.cu:3: error: use of undeclared identifier 'NUM_THREADS'",
        "k.cu:7: warning: unused variable 'k'",
        "prelude_opencl.h:12: note: expanded from macro 'THREAD_IDX_X'",
        "could not compile k.cu"]
    m = runtime.prelude_lines("cupy")
    nvrtc_log = (f'k.cu({m + 4}): error: identifier "NUM_THREADS" is undefined\n'
                 f"      int i = BLOCK_IDX_X * NUM_THREADS(0): 1;\n              ^\n\n"
                 f'k.cu({m + 9}): warning #177-D: variable "t" was declared but never '
                 f"referenced\n\n1 error detected in the compilation of \"k.cu\".")
    assert runtime.parse_diagnostics(nvrtc_log, "k.cu", "cupy", m) == [
        (4, 'error: identifier "NUM_THREADS" is undefined', "k.cu"),
        (9, 'warning #177-D: variable "t" was declared but never referenced', "k.cu")]


def test_a_log_without_diagnostics_is_shown_whole():
    error = runtime.KernelBuildError.from_log("k.cu", "cupy", "nvrtc: error: invalid value\n",
                                              "NVRTC could not compile k.cu")
    assert error.diagnostics == []
    assert str(error) == "nvrtc: error: invalid value\nNVRTC could not compile k.cu"


def test_kernel_files_are_found_by_name_or_by_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "k.cu").write_text("/* k */\n")
    (tmp_path / "mine.cu").write_text("/* mine */\n")
    assert runtime.kernel_path("src/k.cu") == Path("src/k.cu")
    assert runtime.kernel_path("mine.cu") == Path("mine.cu")
    assert runtime.kernel_source("opencl", "mine.cu").endswith("\n/* mine */\n")
    assert runtime.kernel_path("flash_attention.cu") == runtime.KERNEL_DIR / "flash_attention.cu"
    (tmp_path / "flash_attention.cu").write_text("/* my copy */\n")
    assert runtime.kernel_path("./flash_attention.cu") == Path("flash_attention.cu")
    with pytest.raises(FileNotFoundError, match=r"filename: expected a kernel file in .* but "
                                                r"there is no file 'missing\.cu'"):
        runtime.kernel_source("opencl", "missing.cu")
    with pytest.raises(FileNotFoundError, match=r"there is no file 'src/missing\.cu'"):
        runtime.kernel_path("src/missing.cu")


# ----------------------------------------------------------------------------- OpenCL (PoCL)

def _run_opencl(prog, x: np.ndarray, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, dx) of the two kernels on PoCL."""
    real, n = x.dtype.type, np.int32(x.size)
    grid, block = (-(-x.size // NUM_THREADS),), (NUM_THREADS,)
    d_x, d_dout = runtime.to_device("opencl", x), runtime.to_device("opencl", dout)
    d_y, d_dx = runtime.empty("opencl", x.shape, x.dtype), runtime.empty("opencl", x.shape,
                                                                          x.dtype)
    runtime.launch(prog, "scaled_tanh_forward", grid, block, (d_x, d_y, real(A), real(B), n))
    runtime.launch(prog, "scaled_tanh_backward", grid, block,
                   (d_x, d_dout, d_dx, real(A), real(B), n))
    return runtime.to_host(d_y), runtime.to_host(d_dx)


@needs_opencl
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-13), (np.float32, 2e-6)])
def test_user_kernel_builds_from_a_relative_path_and_matches_numpy(kernel_file, monkeypatch,
                                                                   dtype, rtol):
    monkeypatch.chdir(kernel_file.parent)
    defines = {"NUM_THREADS": NUM_THREADS}
    if dtype == np.float64:
        defines["REAL_IS_DOUBLE"] = 1
    prog = runtime.build("opencl", kernel_file.name, defines)
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal(N).astype(dtype), rng.standard_normal(N).astype(dtype)
    y, dx = _run_opencl(prog, x, dout)
    x64, dout64 = x.astype(np.float64), dout.astype(np.float64)
    assert y.dtype == dx.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y, A * np.tanh(B * x64), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(dx, dout64 * A * B * (1 - np.tanh(B * x64) ** 2), rtol=rtol,
                               atol=rtol)


def _assert_missing_define_error(error: runtime.KernelBuildError, path: Path, backend: str):
    """The error names the user's file at each line that uses NUM_THREADS, and nothing noisy."""
    message = str(error)
    assert message.startswith(f"{path}:{FIRST_USE}: error: "), message
    assert "NUM_THREADS" in message.split("\n")[0]
    assert error.filename == str(path) and error.backend == backend
    uses = _lines_of(KERNEL_CU, "BLOCK_IDX_X * NUM_THREADS")
    assert [d.line for d in error.diagnostics if "NUM_THREADS" in d.message] == uses
    assert {d.file for d in error.diagnostics} == {str(path)}
    assert len(message.split("\n")) == len(error.diagnostics) + 1  # and the summary line
    for noise in ("clBuildProgram", "Build on", "options: -I", "^", "errors detected"):
        assert noise not in message


@needs_opencl
def test_a_missing_define_is_a_build_error_at_the_users_line_on_opencl(kernel_file):
    with pytest.raises(runtime.KernelBuildError) as info:
        runtime.build("opencl", str(kernel_file), {})
    _assert_missing_define_error(info.value, kernel_file, "opencl")
    assert info.value.summary.startswith("OpenCL (")


# ----------------------------------------------------------------------------- NVRTC

@needs_nvrtc
def test_a_missing_define_is_a_build_error_at_the_users_line_with_nvrtc(kernel_file):
    source = runtime.kernel_source("cupy", str(kernel_file))
    with pytest.raises(runtime.KernelBuildError) as info:
        nvrtc.compile_log(source, ["--gpu-architecture=sm_90"], str(kernel_file))
    _assert_missing_define_error(info.value, kernel_file, "cupy")
    assert info.value.summary.startswith(f"NVRTC could not compile {kernel_file}")


@needs_nvrtc
def test_kernels_cli_reports_every_kernel_of_the_users_file(kernel_file, tmp_path, capsys):
    out_json = tmp_path / "kernels.json"
    assert main(["kernels", "--file", str(kernel_file), "--define", "NUM_THREADS=128",
                 "--arch", "sm_90", "--dtype", "float32", "--json", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())
    assert [r["kernel"] for r in rows] == list(KERNELS)
    out = capsys.readouterr().out
    for r in rows:
        assert (r["config"], r["arch"], r["dtype"]) == ("NUM_THREADS=128", "sm_90", "float32")
        assert 0 < r["registers"] <= 255 and r["spill stores"] == 0
        line = next(ln for ln in out.splitlines() if f" {r['kernel']} " in ln)
        assert f" {r['registers']} " in line and "NUM_THREADS=128" in line


@needs_nvrtc
def test_kernels_cli_prints_a_syntax_error_at_the_users_line_without_a_traceback(tmp_path):
    broken = KERNEL_CU.replace("real t = tanh(b * x[i]);", "real t = tanh(b * x[i]));")
    (tmp_path / "K.cu").write_text(broken)
    line = _line_of(broken, "x[i]));")
    proc = subprocess.run([sys.executable, "-m", "equivalence", "kernels", "--file", "K.cu",
                           "--define", "NUM_THREADS=128", "--arch", "sm_90", "--dtype",
                           "float32"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"kernels: K.cu:{line}: error: "), proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("define, expected", [
    ("X", "expected NAME=VALUE with NAME a C identifier but got 'X'"),
    ("1X=2", "expected NAME=VALUE with NAME a C identifier but got '1X=2'"),
    ("REAL_IS_DOUBLE=1", "expected a name other than REAL_IS_DOUBLE (--dtype sets it)")])
def test_kernels_cli_rejects_a_bad_define(capsys, define, expected):
    with pytest.raises(SystemExit) as info:
        main(["kernels", "--define", define])
    assert info.value.code == 2
    assert f"argument --define: {expected}" in capsys.readouterr().err


def test_kernels_cli_names_a_missing_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["kernels", "--file", "nothere.cu"])
    assert info.value.code == 2
    assert "argument --file: expected a file of gpu_cupy/kernels or a path to your own file " \
           "but got 'nothere.cu'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sanitize

def _sanitize(case_file: Path, tmp_path: Path) -> tuple[int, list[dict]]:
    """Exit status and rows of ``crosscheck sanitize --cases case_file``."""
    out_json = tmp_path / "sanitize.json"
    status = main(["sanitize", "--cases", str(case_file), "--json", str(out_json)])
    return status, json.loads(out_json.read_text())["rows"] if out_json.exists() else []


@needs_oclgrind
def test_sanitize_runs_the_users_opencl_cases_with_no_finding(tmp_path, capsys,
                                                             isolated_registry):
    case_file = _case_file(tmp_path / "ok", "user_tanh_ok", extra=NUMPY_ONLY_PY)
    status, rows = _sanitize(case_file, tmp_path)
    out = capsys.readouterr().out
    assert status == 0, out
    assert 'note: skipped (no "opencl" backend): user_tanh_ok/numpy-only' in out
    assert [(r["case"], r["dtype"]) for r in rows] == [("user_tanh_ok/(37,)", "float64"),
                                                       ("user_tanh_ok/(37,)", "float32")]
    for r in rows:
        assert r["findings"] == 0 and r["passed"] and r["checks"] >= 2, r


@needs_oclgrind
def test_sanitize_reports_an_out_of_bounds_read_at_the_users_line(tmp_path, capsys,
                                                                  isolated_registry):
    # ``i <= n``: the thread i = n reads x[n] and writes y[n], one past the end.
    oob = KERNEL_CU.replace("    if (i < n)\n        y[i]", "    if (i <= n)\n        y[i]")
    assert oob != KERNEL_CU
    case_file = _case_file(tmp_path / "oob", "user_tanh_oob", kernel=oob)
    status, rows = _sanitize(case_file, tmp_path)
    assert status == 1, capsys.readouterr().out
    line = _line_of(oob, "y[i] = a * tanh(b * x[i]);")
    assert [r["dtype"] for r in rows] == ["float64", "float32"]
    for r, size in zip(rows, (8, 4)):
        assert r["findings"] >= 1 and not r["passed"], r
        assert r["first finding"] == (f"Invalid read of size {size} (scaled_tanh_forward at "
                                      f"line {line})"), r


@needs_oclgrind
def test_sanitize_shows_a_build_error_of_the_users_kernel(tmp_path, capsys, isolated_registry):
    broken = KERNEL_CU.replace("real t = tanh(b * x[i]);", "real t = tanh(b * x[i]));")
    case_file = _case_file(tmp_path / "broken", "user_tanh_broken", kernel=broken)
    status, rows = _sanitize(case_file, tmp_path)
    out = capsys.readouterr().out
    assert status == 1 and rows and not any(r["passed"] for r in rows)
    kernel = tmp_path / "broken" / "scaled_tanh.cu"
    assert (f"opencl raised KernelBuildError: {kernel}:{_line_of(broken, 'x[i]));')}: error: "
            in out), out


def test_sanitize_without_an_opencl_case_exits_2(tmp_path, capsys, monkeypatch,
                                                 isolated_registry):
    monkeypatch.setattr(oclgrind, "available", lambda: (True, "/usr/lib/oclgrind"))
    case_file = tmp_path / "numpy_cases.py"
    case_file.write_text(NUMPY_ONLY_PY.replace("@NAME@", "user_numpy"))
    assert main(["sanitize", "--cases", str(case_file)]) == 2
    out = capsys.readouterr().out
    assert 'note: skipped (no "opencl" backend): user_numpy/numpy-only' in out
    assert (f'sanitize: none of the 1 case(s) of {case_file} has an "opencl" backend'
            in out.replace("\n", " ")), out


def test_sanitize_with_a_missing_case_file_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(oclgrind, "available", lambda: (True, "/usr/lib/oclgrind"))
    missing = tmp_path / "missing.py"
    assert main(["sanitize", "--cases", str(missing)]) == 2
    assert f"sanitize: --cases: no such file {str(missing)!r}" in capsys.readouterr().out
