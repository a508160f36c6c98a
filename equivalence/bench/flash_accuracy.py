"""``crosscheck bench flash-accuracy``: FlashAttention's accuracy test matrix on the NumPy flash
attention and the kernels, judged by FlashAttention-3's criterion (``equivalence.fa_accuracy``
says which matrix, which bar, which candidates).

Prints the worst ratio (error / bar; at most 1 passes) per backend, dtype and tensor, with the
point where it occurs, then every failing row ("failures: no rows" when all passed). float64
rows are judged against 1e-10, and a tensor whose reference is identically zero must come out
exactly zero.

    crosscheck bench flash-accuracy                         # all 1386 points, every backend here
    crosscheck bench flash-accuracy --sample                # the CI subset (its test's)
    crosscheck bench flash-accuracy --only 'mqa/*D256*' --backend opencl --dtype float32
    crosscheck bench flash-accuracy --rows rows.jsonl --resume   # continue an interrupted run

The full matrix is long on a CPU (the (4096, 4096) and (4224, 4224) points are most of it):
``--rows`` appends each point's rows to a JSON-lines file as it finishes, and ``--resume`` skips
the points already there and includes their rows in the tables.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from equivalence import fa_accuracy


def add_arguments(parser) -> None:
    parser.add_argument("--sample", action="store_true",
                        help="the CI subset instead of the whole matrix")
    parser.add_argument("--only", metavar="PATTERN",
                        help="points whose name (e.g. mqa/Tq1023_Tk1024_D59_full) matches this "
                             "glob or contains this text")
    parser.add_argument("--backend", dest="backends", action="append",
                        choices=("numpy", "opencl", "cupy"),
                        help="candidates (repeatable; default: numpy and every kernel backend "
                             "this machine has)")
    parser.add_argument("--dtype", dest="dtypes", action="append", choices=fa_accuracy.DTYPES,
                        help="dtypes (repeatable; default: all; the kernels run float64 and "
                             "float32)")
    parser.add_argument("--seed", type=int, default=0, help="draws other inputs (default 0)")
    parser.add_argument("--rows", metavar="PATH",
                        help="append every row to this JSON-lines file as its point finishes")
    parser.add_argument("--resume", action="store_true",
                        help="with --rows: skip the points already in the file")


def _done_rows(path: str | None, resume: bool) -> list[dict]:
    if not resume:
        return []
    if path is None:
        raise SystemExit("bench flash-accuracy: --resume needs --rows PATH")
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run(args) -> dict[str, list[dict]]:
    """Every selected point through ``fa_accuracy.run_point``; the tables."""
    points = fa_accuracy.select(fa_accuracy.SAMPLE if args.sample else fa_accuracy.full_plan(),
                                args.only)
    if not points:
        raise SystemExit(f"bench flash-accuracy: no point matches --only {args.only!r}")
    available = ["numpy", *fa_accuracy.kernel_backends()]
    backends = args.backends or available
    missing = [b for b in backends if b not in available]
    if missing:
        raise SystemExit(f"bench flash-accuracy: backend {', '.join(missing)} is not available "
                         f"on this machine (available: {', '.join(available)})")
    dtypes = args.dtypes or list(fa_accuracy.DTYPES)
    rows = _done_rows(args.rows, args.resume)
    done = {r["point"] for r in rows}
    todo = [p for p in points if p.name not in done]
    t0 = time.perf_counter()
    for i, point in enumerate(todo, 1):
        t = time.perf_counter()
        new = fa_accuracy.run_point(point.point, backends=backends,
                                    dtypes=[d for d in dtypes if d in point.dtypes],
                                    kernel_dtypes=point.kernel_dtypes, seed=args.seed)
        rows += new
        if args.rows:
            with open(args.rows, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
        worst = max((r["ratio"] for r in new if r["dtype"] != "float64"), default=0.0)
        print(f"[{i}/{len(todo)}] {point.name}: worst ratio {worst:.3g}, "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    wanted = {p.name for p in points}
    rows = [r for r in rows if r["point"] in wanted]
    failures = [{**{k: r[k] for k in ("point", "backend", "dtype", "tensor", "err", "bar",
                                      "ratio")}, "note": r.get("note", "")}
                for r in rows if not r["passed"]]
    return {"worst ratio per tensor": fa_accuracy.summary(rows),
            "failures": failures,
            "run": [{"points": len(points), "run now": len(todo), "rows": len(rows),
                     "failed": len(failures), "seconds": time.perf_counter() - t0,
                     "backends": ", ".join(backends), "dtypes": ", ".join(dtypes)}]}
