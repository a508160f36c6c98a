"""``crosscheck sanitize``: every kernel on small shapes under Oclgrind, which checks each access.

The kernels' values are checked on PoCL by ``crosscheck run``; this command checks what PoCL
cannot show (``gpu_cupy.oclgrind`` says why): data races in shared and global memory,
out-of-bounds accesses and divergent barriers. It runs the equivalence harness's flash-kernel
and paged-KV-cache cases, at shapes small enough for an interpreter, in a child process whose
only OpenCL device is the Oclgrind simulator, and reads Oclgrind's findings back. A row passes
when Oclgrind reported nothing while the case ran and the case's own comparison with the
reference passed (so a launch that Oclgrind aborted part-way cannot pass on its findings alone).

    crosscheck sanitize [--only PATTERN] [--cases FILE] [--json PATH]

Example (abridged):

    case                                                   dtype    findings  worst use of tol  passed
    flash_gpu/causal-tq>tk/B1_H2_Hkv1_Tq29_Tk13_D64 Br12 Bc5  float64         0          3.1e-10    True

The shapes cover every kernel of ``kernels/flash_attention.cu`` (forward, rows, dK/dV, dQ),
causal on and off, Tq < Tk and Tq > Tk (rows that see no key), T = 1, GQA and MQA, B > 1,
D in {16, 40, 64, 128, 192, 256}, tiles that are not powers of two, tiles larger than T and
ragged last tiles. Tiles fit Oclgrind's 32 KiB of local memory in float64.

The paged KV cache kernels of ``kernels/paged_kv.cu`` run as ``paged_kv/step`` cases (write
with a padding slot, gather, decode v1 and v2 in one row) at PAGED_SHAPES: block sizes 4, 5,
16, 24 (two not powers of two), D in {8, 16, 64, 128}, MHA, GQA and MQA, ALiBi, windows that
leave whole partitions out, contexts of several partitions, random non-contiguous page tables
with lengths 1 and L.

The row-reduction kernels of ``kernels/softmax.cu``, ``kernels/cross_entropy.cu`` and
``kernels/norms.cu`` run as one ``step`` case per file that calls every kernel of it
(``equivalence.cases.kernels_reduce.SANITIZE``): rows longer than the 256-thread block, -inf
entries and fully -inf rows, ignored targets, and a ragged last chunk of the norms' two-stage
weight-gradient sum.

The dense kernels of ``kernels/elementwise.cu``, ``embedding.cu``, ``gemm.cu`` and ``rope.cu``
run as four cases that chain every kernel of them
(``equivalence.cases.kernels_dense.SANITIZE_CASES``): the activations over two blocks, an
embedding feeding a vocabulary projection at the default GEMM tiles, a SwiGLU feed-forward at
small tiles that are not powers of two (ragged in M, N and K), and RoPE in both conventions with
both table layouts.

The fused AdamW step of ``kernels/adamw.cu`` runs as one trajectory case
(``equivalence.cases.kernels_adamw.SANITIZE_CASES``): three steps over a buffer of two blocks
with an empty segment, with amsgrad and with maximize. The whole run takes about a minute.

``--cases FILE`` runs your own cases instead: the Python file (or module) is imported with
:func:`equivalence.registry.load_case_file`, and each case it registers that has an ``"opencl"``
backend runs under Oclgrind in the same way, in every dtype of the case. A case without one is
named in a note and skipped; a file without any such case exits with status 2. A finding names
the kernel and the line of your kernel file (``Invalid read of size 8 (my_kernel at line 12)``).
Keep the sizes small: Oclgrind interprets every instruction.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from equivalence.cases.flash_gpu import make_flash_gpu_case
from equivalence.cases.kernels_adamw import SANITIZE_CASES as ADAMW_CASES
from equivalence.cases.kernels_dense import SANITIZE_CASES as DENSE_CASES
from equivalence.cases.kernels_reduce import SANITIZE as REDUCE_CASES
from equivalence.cases.paged_kv import make_step_case
from equivalence.registry import Case, load_case_file, select
from gpu_cupy import oclgrind

F64, BOTH = ("float64",), ("float64", "float32")
#         variant          B  H Hkv  Tq  Tk    D  causal  block_q block_k  dtypes
SHAPES = [("T=1",          2, 2, 1,    1,  1,  16, True,      4,    4,     BOTH),
          ("decode",       1, 2, 1,    1, 17,  16, True,      1,    5,     BOTH),
          ("full",         2, 4, 4,   17, 17,  40, False,     5,    7,     BOTH),
          ("causal-tq<tk", 1, 4, 2,   13, 29,  16, True,      6,   10,     BOTH),
          ("causal-tq>tk", 1, 2, 1,   29, 13,  64, True,     12,    5,     BOTH),
          ("tiles>T",      1, 2, 2,    6, 11,  16, False,    16,   16,     BOTH),
          ("causal",       1, 1, 1,   17, 17, 128, True,      8,    4,     BOTH),
          ("causal",       1, 2, 1,   33, 33,  16, True,     16,    8,     BOTH),
          ("mqa-full",     1, 2, 1,    7,  5, 192, False,     6,    3,     BOTH),
          ("gqa-causal",   1, 4, 2,    5,  9, 256, True,      4,    2,     BOTH)]
#               variant              S  H Hkv  BS    D   L   P  alibi  window  dtypes
PAGED_SHAPES = [("mha",              2, 2, 2,   4,   8,  9,  4, False, None,   BOTH),
                ("gqa-alibi-window", 3, 4, 2,   5,  16, 17, 10, True,  7,      BOTH),
                ("mqa",              3, 2, 1,  16,  64, 40, 16, False, None,   BOTH),
                ("mqa-window",       2, 2, 1,  24, 128, 50, 24, False, 30,     BOTH)]


_USER_CASES: dict[Path, list[Case]] = {}


def user_cases(case_file: str) -> tuple[list[Case], list[Case]]:
    """(the cases with an "opencl" backend, the others) that the user's ``case_file`` registers.
    The file is imported once per process: registering its cases twice would be an error."""
    key = Path(case_file).resolve()
    if key not in _USER_CASES:
        _USER_CASES[key] = load_case_file(case_file)
    loaded = _USER_CASES[key]
    return ([c for c in loaded if "opencl" in c.backends],
            [c for c in loaded if "opencl" not in c.backends])


def cases(pattern: str | None = None, case_file: str | None = None) -> list[Case]:
    """The sanitizer's cases (the flash_gpu cases' code at the SHAPES above, the paged_kv
    step cases' at PAGED_SHAPES, the row-reduction kernels' REDUCE_CASES, the dense
    kernels' DENSE_CASES and the AdamW step's ADAMW_CASES, or the cases of ``case_file`` that
    have an "opencl" backend),
    filtered by a glob or substring of their names."""
    if case_file is not None:
        return select(user_cases(case_file)[0], pattern)
    flash = [make_flash_gpu_case(variant, *sizes, causal=causal, block_q=bq, block_k=bk,
                                 dtypes=dtypes)
             for variant, *sizes, causal, bq, bk, dtypes in SHAPES]
    paged = [make_step_case(variant, *sizes, partition_size=P, alibi=alibi, window=window,
                            dtypes=dtypes)
             for variant, *sizes, P, alibi, window, dtypes in PAGED_SHAPES]
    return select(flash + paged + REDUCE_CASES + DENSE_CASES + ADAMW_CASES, pattern)


def child(pattern: str | None, case_file: str | None = None) -> int:
    """Runs inside Oclgrind: every case on the opencl backend; rows as JSON on stdout."""
    from equivalence.harness import check_case
    from gpu_cupy import runtime

    ok, device = runtime.available("opencl")
    rows = []
    for case in cases(pattern, case_file):
        for dtype in case.dtypes:
            oclgrind.mark(f"{case.name} {dtype}")
            rows += [r.to_dict() for r in check_case(case, dtype=dtype, backends=["opencl"],
                                                     run_gradcheck=False)]
    oclgrind.mark("end")
    json.dump({"device": device if ok else f"none: {device}", "rows": rows}, sys.stdout)
    return 0


def run(args) -> tuple[list[dict], list[str]]:
    """Run the child under Oclgrind; return (one row per case and dtype, problems). Problems
    are what the rows cannot show: the child crashed, ran elsewhere or reported nothing, or a
    case raised (a kernel that does not compile, say: the message is the problem)."""
    case_file = getattr(args, "cases", None)
    argv = ["-m", "equivalence.sanitize", "--child"]
    if getattr(args, "only", None):
        argv += ["--only", args.only]
    if case_file is not None:  # a file's absolute path: the child may run elsewhere
        argv += ["--cases", str(Path(case_file).resolve()) if Path(case_file).exists()
                 else case_file]
    result = oclgrind.run_python(argv, timeout=getattr(args, "timeout", 900))
    problems = []
    if result.returncode != 0:
        problems.append(f"the child exited with status {result.returncode}:\n"
                        f"{result.stderr[-3000:]}")
        return [], problems + [f.summary() for f in result.findings]
    payload = json.loads(result.stdout)
    if "Oclgrind" not in payload["device"]:
        problems.append(f"the child ran on {payload['device']!r}, not on the Oclgrind simulator")
    rows = []
    for case in cases(getattr(args, "only", None), case_file):
        for dtype in case.dtypes:
            label = f"{case.name} {dtype}"
            found = [f for f in result.findings if f.work == label]
            checks = [r for r in payload["rows"] if r["case"] == case.name and r["dtype"] == dtype]
            if not checks:
                problems.append(f"{label}: the harness gave no rows")
            problems += [f"{label}: {r['backend']} raised {r['note']}" for r in checks
                         if r["tensor"] == "(run)"]  # the harness's row for an exception
            rows.append({"case": case.name, "dtype": dtype, "findings": len(found),
                         "first finding": found[0].summary() if found else "-",
                         "checks": len(checks),
                         "max abs err": max((r["max_abs"] for r in checks), default=None),
                         "worst use of tol": max((r["fraction"] for r in checks), default=None),
                         "passed": bool(checks) and not found and all(r["passed"]
                                                                      for r in checks)})
    stray = [f for f in result.findings if f.work not in {f"{r['case']} {r['dtype']}"
                                                          for r in rows}]
    problems += [f"outside any case: {f.summary()}" for f in stray]
    return rows, problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", help="glob or substring of the sanitizer's case names")
    parser.add_argument("--cases", metavar="FILE",
                        help="a Python file (or module) that registers your own cases: those "
                             "with an \"opencl\" backend run under Oclgrind instead of the "
                             "built-in ones")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds the run under Oclgrind may take (default 900)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m equivalence.sanitize")
    p.add_argument("--child", action="store_true", help="run the cases (inside Oclgrind)")
    p.add_argument("--only")
    p.add_argument("--cases")
    args = p.parse_args(argv)
    if not args.child:
        from equivalence.cli import main as cli_main
        return cli_main(["sanitize"] + (["--only", args.only] if args.only else [])
                        + (["--cases", args.cases] if args.cases else []))
    return child(args.only, args.cases)


if __name__ == "__main__":
    sys.exit(main())
