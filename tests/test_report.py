"""The terminal report prints every string as text and never cuts a number, at 80 columns too."""
import io

import pytest
from rich.console import Console

from equivalence import report
from equivalence.compare import Row

NAME = "toy/[bold]markup[/bold]/(3, 5) [opencl] Br12 Bc10 with a name too long to fit"


def _row(backend, dtype, tensor, max_abs, fraction, passed, case=NAME):
    return Row(case=case, backend=backend, dtype=dtype, tensor=tensor, shape=(3, 5),
               max_abs=max_abs, max_rel=max_abs, tolerance="1.00e-06", fraction=fraction,
               passed=passed, worst_index=(2, 4), ref_value=0.5, got_value=0.5 + max_abs)


ROWS = [_row("numpy", "float64", "out", 1.234567e-15, 1.2e-9, True),
        _row("numpy", "float64", "grad [x]", 3.4e-3, 3.4e3, False),
        _row("opencl", "float64", "grad [x]", 3.4e-3, 3.4e3, False),
        _row("numpy", "float32", "grad [x]", 3.4e-3, 3.4e3, False)]


def _printed(rows, width=80, verbose=False):
    console = Console(width=width, record=True, file=io.StringIO())
    report.print_report(rows, console, verbose=verbose)
    return console.export_text()


def _case_column(text: str) -> str:
    """The case column's text, read back from the table: the cells of every body line up to
    the start of the backend column, joined."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if " backend " in line)
    width = lines[header].index(" backend ")
    body = []
    for line in lines[header + 2:]:
        if line.startswith("FAIL "):
            break
        body.append(line[:width].strip())
    return "".join(body)


def test_failure_lines_keep_their_brackets_and_are_distinct():
    text = _printed(ROWS)
    fails = [line for line in text.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 3 and len(set(fails)) == 3
    for backend, dtype in (("numpy", "float64"), ("opencl", "float64"), ("numpy", "float32")):
        assert any(f"FAIL {NAME} [{backend}, {dtype}] grad [x] (3, 5): max abs err 3.400e-03 > "
                   f"tolerance 1.00e-06 at index (2, 4)" in line for line in fails)


@pytest.mark.parametrize("width", [80, 72])
@pytest.mark.parametrize("verbose", [False, True])
def test_numbers_are_never_cut_and_the_case_name_folds_intact(width, verbose):
    text = _printed(ROWS, width=width, verbose=verbose)
    # every number the rows hold, whole (the summary shows each group's worst)
    assert "3.40e-03" in text and "3.4e+03" in text
    assert ("1.23e-15" in text and "1.2e-09" in text) == verbose
    assert "opencl " in text and "float32 " in text and "FAIL " in text
    assert _case_column(text).replace(" ", "").startswith(NAME.replace(" ", ""))
    assert max(len(line) for line in text.splitlines()
               if not line.startswith("FAIL ")) <= width


def test_unchecked_and_baseline_rows_show_their_kind_and_tolerance_use():
    rows = [_row("torch", "float32", "out", 2e-7, 3.0e-3, True, case="c"),
            Row(case="c", backend="numpy", dtype="float32", tensor="out", shape=(3,),
                max_abs=0.0, max_rel=0.0, tolerance="finite", fraction=0.0, passed=False,
                unchecked=True, note="unchecked: no oracle")]
    text = _printed(rows)
    assert "unchecked" in text and "3.0e-03" in text and "FAIL" not in text
    assert report.footer(rows) == "checks: 1 passed, 0 failed, 1 unchecked (no oracle)"


def test_markdown_escapes_pipes_and_shows_the_same_tolerance_use(tmp_path):
    rows = [_row("torch", "float32", "out", 2e-7, 3.0e-3, True, case="a|b")]
    path = tmp_path / "r.md"
    report.write_markdown(str(path), rows)
    text = path.read_text()
    assert "| a\\|b | torch | float32 | 2.00e-07 | out | 3.0e-03 | pass |" in text


def test_print_rows_prints_bracketed_values_as_text():
    console = Console(width=80, record=True, file=io.StringIO())
    report.print_rows([{"name": "[red]x[/red]", "seconds": 1.234567e-3}], "bench [a]", console)
    text = console.export_text()
    assert "[red]x[/red]" in text and "1.23e-03" in text and "bench [a]" in text
