"""The README's snippets run, and print what the README says they print.

Every ```python block of README.md is executed in order in one namespace (later blocks use the
functions of earlier ones), from the repository root; a block that lists a file of the project
(introduced by "This is `path`") must match that file, whose own tests run it. Where an output block (a plain ```) follows
a python block, the lines that carry the verdict must match: each ``FAIL ...`` line up to its
errors (case, backend, dtype, tensor, shape) and the ``checks: ...`` footer. A README test
function of the plugin's fixture is called with it. Every ``crosscheck run`` line of a ```bash
block in "Check your own code" runs, and exits 0 unless the line ends in ``# exits N``.
"""
import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from equivalence.cli import main
from equivalence.pytest_plugin import Crosscheck

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


LISTING = re.compile(r"This is `([^`]+)`[^`]*:\s*$")


def _blocks():
    """(language, text, listed file or None) of every fenced block; a block introduced by
    "This is `path`...:" is a listing of (or an excerpt from) that file."""
    out, end = [], 0
    for m in BLOCK.finditer(README):
        intro = LISTING.search(README[end:m.start()])
        out.append((m.group(1), m.group(2), intro.group(1) if intro else None))
        end = m.end()
    return out


def _verdict(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if line.startswith("FAIL "):
            lines.append(line.split(": max abs err")[0])
        elif line.startswith("checks: "):
            lines.append(line.strip())
    return lines


def test_python_snippets_run_and_print_what_the_readme_shows(monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = _blocks()
    namespace: dict = {}
    ran = 0
    for i, (lang, code, listed) in enumerate(blocks):
        if listed is not None:  # a file's text: it must be in the file (which its tests run)
            assert code.strip() in (ROOT / listed).read_text(), f"README drifted from {listed}"
            continue
        if lang != "python":
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md python block {ran + 1}", "exec"), namespace)
        ran += 1
        if i + 1 < len(blocks) and blocks[i + 1][0] == "" and blocks[i + 1][2] is None:
            shown = _verdict(blocks[i + 1][1])
            if shown:
                assert _verdict(out.getvalue()) == shown, out.getvalue()
    assert ran >= 3
    tests = [f for n, f in namespace.items() if n.startswith("test_") and callable(f)]
    assert tests
    for test in tests:
        test(Crosscheck())


def _own_code_section() -> str:
    start = README.index("## Check your own code")
    return README[start:README.index("\n## ", start + 1)]


def _status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # e.g. `crosscheck kernels` on a build error
        return exc.code if isinstance(exc.code, int) else 1


@pytest.mark.parametrize("line", [
    line for lang, code in BLOCK.findall(_own_code_section()) if lang == "bash"
    for line in code.splitlines() if line.startswith("crosscheck ")])
def test_cli_snippets_of_the_own_code_section_exit_as_shown(line, monkeypatch, capsys):
    from gpu_cupy import oclgrind
    if line.startswith("crosscheck sanitize") and not oclgrind.available()[0]:
        pytest.skip(oclgrind.available()[1])
    monkeypatch.chdir(ROOT)
    command, _, comment = line.partition("#")
    expected = int(comment.split()[-1]) if comment.strip().startswith("exits") else 0
    assert _status(shlex.split(command)[1:]) == expected, capsys.readouterr()
