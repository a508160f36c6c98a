"""Run kernels under Oclgrind, an OpenCL device simulator that checks every memory access.

PoCL runs the kernels on a CPU, but it hides the bugs a GPU shows first: it runs the threads of a
block one after another between barriers, so a missing ``BARRIER()`` usually still gives the
right numbers, and a read past the end of a buffer returns whatever lies there. Oclgrind
interprets the same OpenCL C and reports, per access, what a GPU would punish:

* data races: two threads of a block touching the same shared-memory word between barriers
  (one of them writing), or two blocks writing the same global-memory element in one launch;
* reads and writes outside an allocation, in global, shared (local) or private memory;
* barriers that not every thread of a block reaches (work-group divergence).

An OpenCL API call that fails (a bad work-group size, say) needs no simulator: PyOpenCL raises,
and the harness turns the exception into a failing row. ``OCLGRIND_CHECK_API`` is left off
because it also prints the device-info queries that PyOpenCL makes for OpenCL 3.0 parameters,
which this OpenCL 1.2 device refuses and PyOpenCL expects to be refused.

Its uninitialised-value checker is not used: Oclgrind 21.10 stops with "Unsupported instruction:
freeze" on the LLVM code of these kernels.

How: Oclgrind is an OpenCL platform (an ICD). :func:`run_python` starts a child Python whose
OpenCL loader sees only that platform (``OCL_ICD_VENDORS`` names a one-line ``.icd`` file), so
``gpu_cupy.runtime`` launches on the simulator without any change to the launchers; Oclgrind
writes its findings to the child's standard error, and :func:`parse_findings` reads them back.

    >>> result = run_python(["-m", "equivalence.sanitize", "--child"])   # doctest: +SKIP
    >>> [f.kind for f in result.findings]                                 # doctest: +SKIP
    []

Oclgrind comes from Debian's package ``oclgrind`` (``apt-get install oclgrind``); the ICD
library is looked for in ``$OCLGRIND_ICD`` and then in the directories of :data:`ICD_PATHS`.
It interprets every instruction of every thread, a few hundred thousand multiply-adds a second
with race checking on a two-core machine, so it is for small shapes: correctness of indexing and
synchronisation, not speed.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gpu_cupy import runtime

ICD_NAME = "liboclgrind-rt-icd.so"
ICD_PATHS = ("/usr/lib/oclgrind", "/usr/local/lib/oclgrind", "/usr/lib/x86_64-linux-gnu/oclgrind",
             "/usr/lib/aarch64-linux-gnu/oclgrind")
# What the child's Oclgrind checks (see the module docstring).
CHECKS = {"OCLGRIND_DATA_RACES": "1"}
# A line Python code in the child writes to standard error before a piece of work, so that the
# findings that follow it (Oclgrind writes to the same stream) are attributed to that piece.
MARKER = "@@crosscheck:"

# Oclgrind's report of one finding: a header line, then tab-indented detail lines such as
#     Kernel: flash_attention_forward_v1
#     At line 201 (column 23) of input.cl:
_KERNEL = re.compile(r"^\s*Kernel:\s*(\S+)")
_LINE = re.compile(r"At line (\d+)(?: \(column \d+\))? of input\.cl")


@dataclass
class Finding:
    """One problem Oclgrind reported."""
    kind: str            # its header line, e.g. "Read-write data race at local memory address ..."
    kernel: str          # the kernel it happened in ("" when Oclgrind names none)
    line: int | None     # line in the kernel file (the prelude's lines taken off), if given
    text: str            # the whole report, as Oclgrind printed it
    work: str = ""       # the MARKER label of the work it happened during

    def summary(self) -> str:
        where = f" at line {self.line}" if self.line is not None else ""
        kind = re.sub(r" at (global|local|private|constant) memory address 0x[0-9a-f]+", "",
                      self.kind)
        return f"{kind} ({self.kernel or 'no kernel named'}{where})"


@dataclass
class Result:
    """What a child run under Oclgrind gave."""
    returncode: int
    stdout: str
    stderr: str
    findings: list[Finding] = field(default_factory=list)


def icd_library() -> Path | None:
    """Path of Oclgrind's ICD library, or None if it is not installed."""
    candidates = [os.environ.get("OCLGRIND_ICD", "")] + [str(Path(d) / ICD_NAME)
                                                         for d in ICD_PATHS]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def available() -> tuple[bool, str]:
    """``(True, path of the ICD library)`` or ``(False, reason)``; never raises."""
    lib = icd_library()
    if lib is None:
        return False, (f"Oclgrind is not installed: no {ICD_NAME} in $OCLGRIND_ICD or "
                       f"{', '.join(ICD_PATHS)} (Debian: apt-get install oclgrind)")
    try:
        import pyopencl  # noqa: F401
    except ImportError as exc:
        return False, f"pyopencl is not installed ({exc}); pip install 'pyopencl[pocl]'"
    return True, str(lib)


def prelude_lines(backend: str = "opencl") -> int:
    """Lines that :func:`gpu_cupy.runtime.kernel_source` puts before a kernel file's first line
    (the same for the built-in kernels and a user's own file)."""
    return runtime.prelude_lines(backend)


def parse_findings(stderr: str) -> list[Finding]:
    r"""Oclgrind's reports in ``stderr``: blocks separated by empty lines, each a header (one or
    more unindented lines) followed by indented details. Lines of other programs (and MARKER
    lines) are not findings; a block is one when it names a kernel or its header is one of
    Oclgrind's own error reports. Lines are those of the kernel file (the prelude taken off); a
    line inside the prelude, or Oclgrind's line 0 (no source position), is given as None, and
    the finding's text keeps what Oclgrind printed.

    >>> report = ("\nInvalid read of size 8 at global memory address 0x1000000000040\n"
    ...           "\tKernel: probe\n\tAt line 45 (column 22) of input.cl:\n\n")
    >>> [f.summary() for f in parse_findings(report)] == [
    ...     f"Invalid read of size 8 (probe at line {45 - prelude_lines()})"]
    True
    >>> parse_findings(report.replace("line 45", "line 0"))[0].line is None
    True
    """
    offset = prelude_lines()
    findings: list[Finding] = []
    work = ""
    block: list[str] = []

    def close():
        if not block:
            return
        header = " ".join(ln.strip() for ln in block if ln[0] not in " \t")
        body = "\n".join(block)
        kernel = next((m.group(1) for ln in block if (m := _KERNEL.match(ln))), "")
        if kernel or "oclgrind" in header.lower():
            at = _LINE.search(body)
            line = int(at.group(1)) - offset if at else 0
            findings.append(Finding(kind=header, kernel=kernel, line=line if line > 0 else None,
                                    text=body, work=work))
        block.clear()

    for raw in stderr.splitlines():
        if raw.startswith(MARKER):
            close()
            work = raw[len(MARKER):].strip()
        elif not raw:  # a line of only a tab belongs to a report; an empty one ends it
            close()
        else:
            block.append(raw)
    close()
    return findings


def environment(icd_dir: str) -> dict[str, str]:
    """The child's environment: only Oclgrind visible to the OpenCL loader, checks switched on."""
    lib = icd_library()
    if lib is None:
        raise RuntimeError(available()[1])
    icd = Path(icd_dir) / "oclgrind.icd"
    icd.write_text(f"{lib}\n")
    env = dict(os.environ)
    env.update(CHECKS)
    env["OCL_ICD_VENDORS"] = str(icd)  # a file, not a directory: PoCL stays out of sight
    env.pop("PYOPENCL_CTX", None)
    return env


def run_python(args: list[str], timeout: float = 600.0, cwd: str | None = None) -> Result:
    """Run ``python *args`` with Oclgrind as its only OpenCL device; return its output and the
    findings Oclgrind reported (a child that fails or times out raises RuntimeError)."""
    with tempfile.TemporaryDirectory(prefix="crosscheck-oclgrind-") as tmp:
        try:
            proc = subprocess.run([sys.executable, *args], env=environment(tmp), cwd=cwd,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"the run under Oclgrind took longer than {timeout:.0f} s "
                               f"(python {' '.join(args)})") from exc
    return Result(proc.returncode, proc.stdout, proc.stderr, parse_findings(proc.stderr))


def mark(label: str) -> None:
    """In a child: attribute the findings that follow to ``label`` (see :data:`MARKER`)."""
    sys.stderr.write(f"\n{MARKER} {label}\n")
    sys.stderr.flush()
