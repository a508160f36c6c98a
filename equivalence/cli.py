"""The ``crosscheck`` command line (also ``python -m equivalence``).

    crosscheck run [--only PATTERN] [--cases FILE] [--dtype float64|float32|all]
                   [--backend NAME ...] [--seed N] [--json PATH] [--markdown PATH] [--verbose]
                   [--no-gradcheck]
    crosscheck list [--only PATTERN]
    crosscheck bench attention|flash|optim|tokenizer|moe|allreduce|paged [options] [--json PATH]
    crosscheck plot positional --out DIR
    crosscheck tokenizer train|encode|decode ...
    crosscheck allreduce trace --ranks P --n N
    crosscheck train [--data FILE] --config tiny-llama|tiny-gpt2 [--steps N] --out DIR
    crosscheck generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T] ...
    crosscheck kernels [--file FILE.cu] [--define NAME=VALUE ...] [--json PATH]
    crosscheck sanitize [--only PATTERN] [--cases FILE] [--json PATH]

``run`` with no arguments is the main job: every registered case, both dtypes, on every backend
this machine has. It exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from rich.console import Console
from rich.markup import escape

from equivalence.bench import BENCHES, KERNEL_BENCHES

PLOTS = {"positional": "equivalence.plot_positional"}   # name -> module, as the benches
TOKENIZER = "equivalence.tokenizer_cli"
ALLREDUCE = "equivalence.allreduce_cli"
MODEL = "equivalence.model_cli"
KERNELS = "equivalence.kernels_report"
SANITIZE = "equivalence.sanitize"


def _backend_list(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    from equivalence.harness import CANDIDATES
    for n in names:
        if n not in CANDIDATES:
            raise SystemExit(f"--backend: expected names among {list(CANDIDATES)} but got {n!r}")
    return names


def _explain_no_rows(backend: str, cases, console: Console) -> None:
    """Why a requested backend produced no row for the selected cases."""
    from equivalence.registry import all_cases
    if backend in ("opencl", "cupy"):
        having = sorted({c.component for c in all_cases() if backend in c.backends})
        console.print(f"--backend {backend}: none of the {len(cases)} selected case(s) has a "
                      f"kernel for {backend}; the components with one: "
                      f"{', '.join(having) or 'none'}", highlight=False, markup=False)
    else:
        console.print(f"--backend {backend}: none of the {len(cases)} selected case(s) is "
                      f"defined in the requested dtype(s)", highlight=False, markup=False)


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an int >= 0 but got {text!r}")
    return int(text)


def cmd_run(args, console: Console) -> int:
    from rich.progress import Progress

    from equivalence import backends, report
    from equivalence.harness import CANDIDATES, check_case, tolerance_policy
    from equivalence.registry import all_cases

    if args.cases:
        from equivalence.registry import load_case_file, select
        try:
            cases = select(load_case_file(args.cases), args.only)
        except (FileNotFoundError, ValueError) as exc:
            console.print(str(exc), markup=False, highlight=False)
            return 2
    else:
        cases = all_cases(args.only)
    if not cases:
        what = f"matches --only {args.only!r}" if args.only else "is registered"
        console.print(f"no case {what} (see `crosscheck list`)", markup=False)
        return 2
    dtypes = ("float64", "float32") if args.dtype == "all" else (args.dtype,)
    requested = _backend_list(args.backend)
    wanted = requested or list(CANDIDATES)
    for name in ("numpy", "torch", "opencl", "cupy"):
        ok, why = backends.available(name)
        console.print(f"{name:>7}: {'[green]yes[/]' if ok else '[yellow]no[/]'}  {escape(why)}",
                      highlight=False)
    for name in requested or ():
        ok, why = backends.available(name)
        if not ok:  # asked for by name: an error, never a silent skip
            console.print(f"--backend {name}: not available here: {why}", highlight=False,
                          markup=False)
            return 2
    runnable = [b for b in wanted if backends.available(b)[0]]
    rows = []
    t0 = time.perf_counter()
    err_console = Console(stderr=True)
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("checking", total=len(cases) * len(dtypes))
        for case in cases:
            for dtype in dtypes:
                progress.update(task, description=escape(f"{case.name} {dtype}"))
                rows += check_case(case, dtype=dtype, backends=runnable, seed=args.seed,
                                   run_gradcheck=not args.no_gradcheck)
                progress.advance(task)
    elapsed = time.perf_counter() - t0
    # the candidates that produced a row (gradcheck rows check the NumPy backward)
    seen = {"numpy" if r.backend == "gradcheck" else r.backend for r in rows}
    produced = [b for b in runnable if b in seen]
    if rows:
        report.print_report(rows, console, verbose=args.verbose)
    passed, failed, unchecked = report.totals(rows)
    header = (f"{len(cases)} cases, dtypes {', '.join(dtypes)}, backends "
              f"{', '.join(produced) or 'none'}, seed {args.seed}, {elapsed:.1f} s")
    if args.json:
        summary = {"passed": passed, "failed": failed, "unchecked": unchecked,
                   "cases": len(cases), "seed": args.seed, "dtypes": list(dtypes),
                   "backends": produced, "seconds": round(elapsed, 3), "header": header,
                   **backends.environment(), "tolerances": tolerance_policy()}
        report.write_json(args.json, {"summary": summary, "rows": rows})
    if args.markdown:
        report.write_markdown(args.markdown, rows, header)
    console.print(header, highlight=False, markup=False)
    console.print(report.footer(rows), highlight=False, markup=False)
    for name in requested or ():
        if name not in produced:
            _explain_no_rows(name, cases, console)
            return 2
    if passed + failed == 0:
        console.print("no check ran: no row was compared with an independent result "
                      f"({unchecked} unchecked)", highlight=False, markup=False)
        return 2
    return 1 if failed else 0


def cmd_list(args, console: Console) -> int:
    from equivalence.registry import all_cases
    for case in all_cases(args.only):
        extra = f"  [{', '.join(sorted(case.backends))}]" if case.backends else ""
        console.print(f"{case.name}{extra}", highlight=False, markup=False, soft_wrap=True)
    return 0


def _run_bench(module: str, args, console: Console, title: str) -> int:
    from equivalence.bench import common
    tables = importlib.import_module(module).run(args)
    common.print_tables(tables, title, console)
    if getattr(args, "json", None):
        common.write_json(args.json, title, tables)
    return 0


def _run_module(module: str, args, console: Console, title: str) -> int:
    from equivalence import report
    rows = importlib.import_module(module).run(args)
    report.print_rows(rows, title, console)
    if getattr(args, "json", None):
        report.write_json(args.json, rows)
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; a benchmark's own options are loaded only when ``argv`` selects it, so that
    ``run`` and ``list`` never import benchmark code."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="crosscheck", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="check every case against torch autograd (the main job)")
    r.add_argument("--only", help="glob or substring of case names, e.g. 'rmsnorm*'")
    r.add_argument("--cases", metavar="FILE",
                   help="check the cases that this Python file (or module) registers, with "
                        "equivalence.register(...), instead of the built-in ones")
    r.add_argument("--dtype", choices=("float64", "float32", "all"), default="all",
                   help="float64: every copy against torch autograd at 1e-6 plus finite "
                        "differences; float32: against torch float64 within 2x a plain float32 "
                        "implementation's error; all (default): both")
    r.add_argument("--backend", action="append",
                   help="candidates to check: numpy, opencl, cupy (repeat or comma-separate; "
                        "default: all this machine has)")
    r.add_argument("--seed", type=_seed, default=0,
                   help="draws other inputs (an int >= 0; default 0); each case's inputs depend "
                        "only on the seed and the case name")
    r.add_argument("--json", metavar="PATH", help="write every row as JSON")
    r.add_argument("--markdown", metavar="PATH", help="write the summary as Markdown")
    r.add_argument("--verbose", action="store_true", help="one line per tensor")
    r.add_argument("--no-gradcheck", action="store_true", help="skip finite differences")

    ls = sub.add_parser("list", help="list the registered cases")
    ls.add_argument("--only")

    b = sub.add_parser("bench", help="benchmarks (print a table; --json PATH writes it)")
    bsub = b.add_subparsers(dest="bench", required=True)
    for name, module in BENCHES.items():
        bp = bsub.add_parser(name)
        bp.add_argument("--json", metavar="PATH")
        if argv[:2] != ["bench", name]:
            continue
        importlib.import_module(module).add_arguments(bp)
        if name in KERNEL_BENCHES:
            bp.add_argument("--backend", choices=("numpy", "opencl", "cupy"), default="numpy",
                            help="numpy: the NumPy benchmark; opencl/cupy: the kernels")
            importlib.import_module(KERNEL_BENCHES[name]).add_arguments(
                bp.add_argument_group("kernel backends"))

    pl = sub.add_parser("plot", help="figures as PNG files (--out DIR)")
    plsub = pl.add_subparsers(dest="plot", required=True)
    for name, module in PLOTS.items():
        pp = plsub.add_parser(name)
        if argv[:2] == ["plot", name]:
            importlib.import_module(module).add_arguments(pp)
    t = sub.add_parser("tokenizer", help="byte-level BPE: train, encode, decode")
    if argv[:1] == ["tokenizer"]:
        importlib.import_module(TOKENIZER).add_arguments(t)
    tr = sub.add_parser("train", help="train the NumPy model on text; checkpoints, loss PNG")
    if argv[:1] == ["train"]:
        importlib.import_module(MODEL).add_train_arguments(tr)
    ge = sub.add_parser("generate", help="sample from a checkpoint, streaming tokens")
    if argv[:1] == ["generate"]:
        importlib.import_module(MODEL).add_generate_arguments(ge)
    a = sub.add_parser("allreduce", help="the ring all-reduce's schedule, step by step")
    if argv[:1] == ["allreduce"]:
        importlib.import_module(ALLREDUCE).add_arguments(a)
    k = sub.add_parser("kernels", help="NVRTC build of every kernel: registers, spills, smem")
    k.add_argument("--json", metavar="PATH")
    if argv[:1] == ["kernels"]:
        importlib.import_module(KERNELS).add_arguments(k)
    s = sub.add_parser("sanitize", help="the kernels under Oclgrind: data races, out-of-bounds "
                                        "accesses, divergent barriers")
    s.add_argument("--json", metavar="PATH")
    if argv[:1] == ["sanitize"]:
        importlib.import_module(SANITIZE).add_arguments(s)
    return p


def cmd_sanitize(args, console: Console) -> int:
    from equivalence import report
    from gpu_cupy import oclgrind
    ok, why = oclgrind.available()
    if not ok:
        console.print(f"sanitize: {why}", highlight=False)
        return 1
    sanitize = importlib.import_module(SANITIZE)
    case_file = getattr(args, "cases", None)
    if case_file is not None:
        from equivalence.registry import select
        try:
            runnable, skipped = sanitize.user_cases(case_file)
        except (FileNotFoundError, ValueError) as exc:  # no such file, no case registered
            console.print(f"sanitize: {exc}", highlight=False, markup=False)
            return 2
        if select(skipped, args.only):
            console.print('note: skipped (no "opencl" backend): '
                          + ", ".join(c.name for c in select(skipped, args.only)),
                          highlight=False, markup=False)
        if not runnable:
            console.print(f'sanitize: none of the {len(skipped)} case(s) of {case_file} has an '
                          f'"opencl" backend, so nothing can run under Oclgrind',
                          highlight=False, markup=False)
            return 2
    if not sanitize.cases(args.only, case_file):
        console.print(f"no sanitizer case matches --only {args.only!r}; the cases are:\n  "
                      + "\n  ".join(c.name for c in sanitize.cases(None, case_file)),
                      highlight=False)
        return 2
    t0 = time.perf_counter()
    rows, problems = sanitize.run(args)
    elapsed = time.perf_counter() - t0
    report.print_rows(rows, "sanitize: the kernels under Oclgrind", console)
    for p in problems:
        console.print(f"[red]problem:[/] {p}", highlight=False)
    failed = sum(not r["passed"] for r in rows)
    if getattr(args, "json", None):
        report.write_json(args.json, {"summary": {"passed": len(rows) - failed, "failed": failed,
                                                  "problems": problems, "seconds": elapsed},
                                      "rows": rows})
    console.print(f"sanitize: {len(rows) - failed} passed, {failed} failed, "
                  f"{len(problems)} other problems, {elapsed:.1f} s", highlight=False)
    return 1 if failed or problems or not rows else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    # Logs and pipes get the full table rather than rich's 80-column default.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if args.command == "run":
        return cmd_run(args, console)
    if args.command == "list":
        return cmd_list(args, console)
    if args.command == "bench":
        module = BENCHES[args.bench]
        if getattr(args, "backend", "numpy") != "numpy":
            module = KERNEL_BENCHES[args.bench]
        return _run_bench(module, args, console, f"bench {args.bench}")
    if args.command == "sanitize":
        return cmd_sanitize(args, console)
    if args.command == "plot":
        return _run_module(PLOTS[args.plot], args, console, f"plot {args.plot}")
    if args.command == "tokenizer":
        return importlib.import_module(TOKENIZER).main(args)
    if args.command == "allreduce":
        return importlib.import_module(ALLREDUCE).main(args)
    if args.command == "train":
        return importlib.import_module(MODEL).train_main(args)
    if args.command == "generate":
        return importlib.import_module(MODEL).generate_main(args)
    return _run_module(KERNELS, args, console, "kernels: NVRTC ptxas figures")


if __name__ == "__main__":
    sys.exit(main())
