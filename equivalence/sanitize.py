"""``crosscheck sanitize``: every kernel on small shapes under Oclgrind, which checks each access.

The kernels' values are checked on PoCL by ``crosscheck run``; this command checks what PoCL
cannot show (``gpu_cupy.oclgrind`` says why): data races in shared and global memory,
out-of-bounds accesses and divergent barriers. It runs the equivalence harness's flash-kernel
cases, at shapes small enough for an interpreter, in a child process whose only OpenCL device is
the Oclgrind simulator, and reads Oclgrind's findings back. A row passes when Oclgrind reported
nothing while the case ran and the case's own comparison with the reference passed (so a launch
that Oclgrind aborted part-way cannot pass on its findings alone).

    crosscheck sanitize [--only PATTERN] [--json PATH]

Example (abridged):

    case                                                   dtype    findings  worst use of tol  passed
    flash_gpu/causal-tq>tk/B1_H2_Hkv1_Tq29_Tk13_D64 Br12 Bc5  float64         0          3.1e-10    True

The shapes cover every kernel of ``kernels/flash_attention.cu`` (forward, Drow, dK/dV, dQ),
causal on and off, Tq < Tk and Tq > Tk (rows that see no key), T = 1, GQA and MQA, B > 1,
D in {16, 40, 64, 128}, tiles that are not powers of two, tiles larger than T and ragged last
tiles. Tiles fit Oclgrind's 32 KiB of local memory in float64. The whole run takes about half a
minute.
"""
from __future__ import annotations

import argparse
import json
import sys

from equivalence.cases.flash_gpu import make_flash_gpu_case
from equivalence.registry import select
from gpu_cupy import oclgrind

F64, BOTH = ("float64",), ("float64", "float32")
#         variant          B  H Hkv  Tq  Tk    D  causal  block_q block_k  dtypes
SHAPES = [("T=1",          2, 2, 1,    1,  1,  16, True,      4,    4,     F64),
          ("decode",       1, 2, 1,    1, 17,  16, True,      1,    5,     BOTH),
          ("full",         2, 4, 4,   17, 17,  40, False,     5,    7,     BOTH),
          ("causal-tq<tk", 1, 4, 2,   13, 29,  16, True,      6,   10,     BOTH),
          ("causal-tq>tk", 1, 2, 1,   29, 13,  64, True,     12,    5,     BOTH),
          ("tiles>T",      1, 2, 2,    6, 11,  16, False,    16,   16,     BOTH),
          ("causal",       1, 1, 1,   17, 17, 128, True,      8,    4,     BOTH),
          ("causal",       1, 2, 1,   33, 33,  16, True,     16,    8,     BOTH)]


def cases(pattern: str | None = None):
    """The sanitizer's cases (the flash_gpu cases' code at the SHAPES above), filtered by a glob
    or substring of their names."""
    return select([make_flash_gpu_case(variant, *sizes, causal=causal, block_q=bq, block_k=bk,
                                       dtypes=dtypes)
                   for variant, *sizes, causal, bq, bk, dtypes in SHAPES], pattern)


def child(pattern: str | None) -> int:
    """Runs inside Oclgrind: every case on the opencl backend; rows as JSON on stdout."""
    from equivalence.harness import check_case
    from gpu_cupy import runtime

    ok, device = runtime.available("opencl")
    rows = []
    for case in cases(pattern):
        for dtype in case.dtypes:
            oclgrind.mark(f"{case.name} {dtype}")
            rows += [r.to_dict() for r in check_case(case, dtype=dtype, backends=["opencl"],
                                                     run_gradcheck=False)]
    oclgrind.mark("end")
    json.dump({"device": device if ok else f"none: {device}", "rows": rows}, sys.stdout)
    return 0


def run(args) -> tuple[list[dict], list[str]]:
    """Run the child under Oclgrind; return (one row per case and dtype, problems). Problems
    are what fails the run besides a row: the child crashed, ran elsewhere, reported nothing."""
    argv = ["-m", "equivalence.sanitize", "--child"]
    if getattr(args, "only", None):
        argv += ["--only", args.only]
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
    for case in cases(getattr(args, "only", None)):
        for dtype in case.dtypes:
            label = f"{case.name} {dtype}"
            found = [f for f in result.findings if f.work == label]
            checks = [r for r in payload["rows"] if r["case"] == case.name and r["dtype"] == dtype]
            if not checks:
                problems.append(f"{label}: the harness gave no rows")
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
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds the run under Oclgrind may take (default 900)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m equivalence.sanitize")
    p.add_argument("--child", action="store_true", help="run the cases (inside Oclgrind)")
    p.add_argument("--only")
    args = p.parse_args(argv)
    if not args.child:
        from equivalence.cli import main as cli_main
        return cli_main(["sanitize"] + (["--only", args.only] if args.only else []))
    return child(args.only)


if __name__ == "__main__":
    sys.exit(main())
