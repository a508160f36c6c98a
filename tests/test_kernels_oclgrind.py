"""The kernels under Oclgrind: no data race, no out-of-bounds access, no divergent barrier.

The sanitizer runs once per module (about half a minute). The tests further down show that it
can fail: a barrier taken out of the real forward kernel, a read past the end of a buffer, a
write past the end of a shared-memory array and a barrier inside a branch are each reported, at
the right kernel and line. Without Oclgrind (Debian: ``apt-get install oclgrind``) they skip
with that reason; ``.ci/run`` installs it.
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import pytest

from equivalence import sanitize
from gpu_cupy import oclgrind, runtime

OK, WHY = oclgrind.available()
needs_oclgrind = pytest.mark.skipif(not OK, reason=WHY)

# A report as Oclgrind 21.10 prints it (from a run of the forward kernel with a barrier removed),
# with other output around it: what parse_findings must pick apart without Oclgrind installed.
SAMPLE = """\
some other program's line

@@crosscheck: flash_gpu/x float64

Read-write data race at local memory address 0x4000000000008
\tKernel: flash_attention_forward_v1
\t
\tFirst entity:  Global(129,0,0) Local(1,0,0) Group(1,0,0)
\t  store double %cond, double addrspace(3)* %arrayidx61, align 8
\tAt line 201 (column 23) of input.cl:
\t  s_tile[e] = visible(q0 + r, k0 + c, Tq, Tk, causal)
\t
\tSecond entity: Global(128,0,0) Local(0,0,0) Group(1,0,0)
\t  %6 = load double, double addrspace(3)* %arrayidx82, align 8
\tAt line 216 (column 37) of input.cl:
\t  m_new = fmax(m_new, s_tile[r * BLOCK_K + c]);
\t

@@crosscheck: end

OCLGRIND FATAL ERROR (./src/plugins/Uninitialized.cpp:1805)
Unsupported instruction: freeze
\tKernel: flash_attention_backward_dq
\tEntity: Global(0,0,0) Local(0,0,0) Group(0,0,0)
"""


def test_parse_findings_reads_kind_kernel_line_and_work():
    found = oclgrind.parse_findings(SAMPLE)
    assert [f.kernel for f in found] == ["flash_attention_forward_v1",
                                         "flash_attention_backward_dq"]
    race, fatal = found
    assert race.kind.startswith("Read-write data race at local memory")
    assert race.work == "flash_gpu/x float64" and fatal.work == "end"
    # Line 201 of the compiled text is line 201 - prelude_lines() of the kernel file.
    assert race.line == 201 - oclgrind.prelude_lines()
    assert fatal.line is None and fatal.kind.startswith("OCLGRIND FATAL ERROR")
    assert fatal.kind.endswith("Unsupported instruction: freeze")
    assert race.summary() == (f"Read-write data race (flash_attention_forward_v1 at line "
                              f"{race.line})")


def test_prelude_lines_maps_compiled_lines_to_kernel_file_lines():
    source = runtime.kernel_source("opencl", "flash_attention.cu").splitlines()
    kernel = (runtime.KERNEL_DIR / "flash_attention.cu").read_text().splitlines()
    n = oclgrind.prelude_lines()
    assert source[n:] == kernel  # line n + 1 of the compiled text is the kernel file's line 1


def test_unavailable_reason_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("OCLGRIND_ICD", str(tmp_path / "missing.so"))
    monkeypatch.setattr(oclgrind, "ICD_PATHS", (str(tmp_path),))
    ok, why = oclgrind.available()
    assert not ok and "apt-get install oclgrind" in why and oclgrind.ICD_NAME in why


def test_cli_without_oclgrind_exits_1_and_says_why(monkeypatch, capsys):
    from equivalence import cli
    monkeypatch.setattr(oclgrind, "available", lambda: (False, "Oclgrind is not installed"))
    assert cli.main(["sanitize"]) == 1
    assert "Oclgrind is not installed" in capsys.readouterr().out


def test_cli_with_a_pattern_that_matches_nothing_lists_the_cases(monkeypatch, capsys):
    from equivalence import cli
    monkeypatch.setattr(oclgrind, "available", lambda: (True, "/usr/lib/oclgrind"))
    assert cli.main(["sanitize", "--only", "no-such-case"]) == 2
    out = capsys.readouterr().out
    assert "no sanitizer case matches --only 'no-such-case'" in out
    assert sanitize.cases()[0].name in out


# ----------------------------------------------------------------------------- the real run

@pytest.fixture(scope="module")
def sanitized():
    return sanitize.run(argparse.Namespace(only=None, timeout=900))


@needs_oclgrind
def test_flash_kernels_have_no_findings_and_match_the_reference(sanitized):
    rows, problems = sanitized
    assert problems == []
    expected = [(c.name, d) for c in sanitize.cases() for d in c.dtypes]
    assert [(r["case"], r["dtype"]) for r in rows] == expected
    bad = [r for r in rows if not r["passed"]]
    assert bad == []
    # Every row compared out, lse and the three gradients, so all four kernels ran in each.
    for r in rows:
        assert r["checks"] >= 5 and r["findings"] == 0


def test_sanitizer_shapes_cover_the_kernel_features():
    shapes = [dict(zip(("variant", "B", "H", "Hkv", "Tq", "Tk", "D", "causal", "bq", "bk",
                        "dtypes"), s)) for s in sanitize.SHAPES]
    assert {s["D"] for s in shapes} == {16, 40, 64, 128, 192, 256}
    assert {s["causal"] for s in shapes} == {True, False}
    assert any(s["Tq"] < s["Tk"] for s in shapes) and any(s["Tq"] > s["Tk"] for s in shapes)
    assert any(s["Hkv"] == 1 < s["H"] for s in shapes) and any(1 < s["Hkv"] < s["H"]
                                                                for s in shapes)
    assert any(s["B"] > 1 for s in shapes) and any(s["Tq"] == s["Tk"] == 1 for s in shapes)
    assert any(s["bq"] > max(s["Tq"], s["Tk"]) for s in shapes)
    assert any(s["bq"] & (s["bq"] - 1) or s["bk"] & (s["bk"] - 1) for s in shapes)
    assert any(s["Tq"] % s["bq"] and s["Tk"] % s["bk"] for s in shapes)   # ragged last tiles


# ----------------------------------------------------------------------------- it can fail

def _run_child(code: str, tmp_path: Path) -> oclgrind.Result:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    result = oclgrind.run_python([str(script)], timeout=300, cwd=str(Path(__file__).parents[1]))
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@needs_oclgrind
def test_a_removed_barrier_in_the_forward_kernel_is_reported_as_a_race(tmp_path):
    lines = (runtime.KERNEL_DIR / "flash_attention.cu").read_text().split("\n")
    score = next(i for i, ln in enumerate(lines) if "s_tile[e] = visible(" in ln)
    barrier = next(i for i in range(score, len(lines)) if "BARRIER();" in lines[i])
    lines[barrier] = lines[barrier].replace("BARRIER();", "/* barrier removed */")
    racy = tmp_path / "flash_attention_racy.cu"
    racy.write_text("\n".join(lines))
    result = _run_child(f"""
        import numpy as np
        from gpu_cupy import flash_attention as fa
        fa.KERNEL_FILE = {str(racy)!r}
        x = np.random.default_rng(0).standard_normal((1, 1, 13, 16))
        fa.flash_attention_forward(x, x, x, causal=True, block_q=8, block_k=8)
        """, tmp_path)
    races = [f for f in result.findings if "data race" in f.kind]
    assert races, result.stderr[-2000:]
    assert {f.kernel for f in races} == {"flash_attention_forward_v1"}
    # The first access named is the score tile's write, which the barrier used to order.
    assert any(f.line == score + 1 for f in races)


def _dialect_kernel(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "probe.cu"
    path.write_text(textwrap.dedent(body))
    return path


def _line_of(path: Path, text: str) -> int:
    """1-based line of the kernel file that contains ``text``."""
    return next(n for n, ln in enumerate(path.read_text().split("\n"), 1) if text in ln)


_LAUNCH = """
    import numpy as np
    from gpu_cupy import runtime
    prog = runtime.build("opencl", {path!r}, {{"REAL_IS_DOUBLE": 1}})
    x = runtime.to_device("opencl", np.arange(8.0))
    y = runtime.empty("opencl", (8,), np.float64)
    runtime.launch(prog, "probe", grid=(1,), block=(8,), args=(x, y, np.int32(8)))
    runtime.to_host(y)
    """


@needs_oclgrind
def test_a_read_past_the_end_of_a_buffer_is_reported(tmp_path):
    path = _dialect_kernel(tmp_path, """
        KERNEL void probe(GLOBAL const real* x, GLOBAL real* y, int n)
        {
            int i = THREAD_IDX_X;
            if (i < n) y[i] = x[i + 1];   /* i = n - 1 reads x[n] */
        }
        """)
    found = _run_child(_LAUNCH.format(path=str(path)), tmp_path).findings
    assert [f.kernel for f in found] == ["probe"]
    assert found[0].kind.startswith("Invalid read") and "global memory" in found[0].kind
    assert found[0].line == _line_of(path, "x[i + 1]")


@needs_oclgrind
def test_a_write_past_a_shared_array_is_reported(tmp_path):
    path = _dialect_kernel(tmp_path, """
        KERNEL void probe(GLOBAL const real* x, GLOBAL real* y, int n)
        {
            SHARED real tile[4];
            int i = THREAD_IDX_X;
            tile[i] = x[i];               /* 8 threads, 4 slots */
            BARRIER();
            y[i] = tile[i % 4];
        }
        """)
    found = _run_child(_LAUNCH.format(path=str(path)), tmp_path).findings
    assert found and {f.kernel for f in found} == {"probe"}
    assert any(f.kind.startswith("Invalid write") and "local memory" in f.kind
               and f.line == _line_of(path, "tile[i] = x[i]")
               for f in found), [f.text for f in found]


@needs_oclgrind
def test_a_barrier_that_not_every_thread_reaches_is_reported(tmp_path):
    path = _dialect_kernel(tmp_path, """
        KERNEL void probe(GLOBAL const real* x, GLOBAL real* y, int n)
        {
            int i = THREAD_IDX_X;
            if (i < 2) {
                BARRIER();
            }
            y[i] = x[i];
        }
        """)
    found = _run_child(_LAUNCH.format(path=str(path)), tmp_path).findings
    assert found and {f.kernel for f in found} == {"probe"}
    assert any(f.kind.startswith("Work-group divergence detected (barrier)")
               and f.line == _line_of(path, "BARRIER()")
               for f in found), [f.text for f in found]
