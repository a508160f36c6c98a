"""Reports: a rich table on the terminal, JSON (every row) and Markdown (summary + failures).

The terminal table has one line per (case, backend, dtype) with the achieved max error and the
share of the tolerance used by its worst tensor; every failure is then listed with the tensor,
its shape, the worst index and both values.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict

from rich.console import Console
from rich.table import Table

from equivalence.compare import Row


def summarize(rows: list[Row]) -> list[dict]:
    """One entry per (case, backend, dtype): worst tensor by fraction of tolerance used."""
    groups: OrderedDict = OrderedDict()
    for r in rows:
        groups.setdefault((r.case, r.backend, r.dtype), []).append(r)
    out = []
    for (case, backend, dtype), rs in groups.items():
        worst = max(rs, key=lambda r: (not r.passed, r.fraction))
        out.append(dict(case=case, backend=backend, dtype=dtype, tensors=len(rs),
                        max_abs=max(r.max_abs for r in rs), worst_tensor=worst.tensor,
                        fraction=worst.fraction, tolerance=worst.tolerance,
                        passed=all(r.passed for r in rs)))
    return out


def _fmt(x: float) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    return f"{x:.2e}" if isinstance(x, float) else str(x)


def print_rows(rows: list[dict], title: str, console: Console | None = None) -> None:
    """Print a list of flat dicts (benchmark or summary rows) as a table."""
    console = console or Console()
    if not rows:
        console.print(f"{title}: no rows")
        return
    table = Table(title=title, show_lines=False)
    for key in rows[0]:
        table.add_column(key, justify="right" if isinstance(rows[0][key], (int, float))
                         and not isinstance(rows[0][key], bool) else "left")
    for r in rows:
        table.add_row(*(_fmt(v) for v in r.values()))
    console.print(table)


def print_report(rows: list[Row], console: Console | None = None, verbose: bool = False) -> None:
    console = console or Console()
    table = Table(title="crosscheck: equivalence report")
    for col in ("case", "backend", "dtype", "tensors", "max abs err", "worst tensor",
                "tol used", "result"):
        table.add_column(col, justify="right" if col in ("tensors", "max abs err", "tol used")
                         else "left")
    items = ([dict(case=r.case, backend=r.backend, dtype=r.dtype, tensors=1, max_abs=r.max_abs,
                   worst_tensor=r.tensor, fraction=r.fraction, passed=r.passed) for r in rows]
             if verbose else summarize(rows))
    for s in items:
        table.add_row(s["case"], s["backend"], s["dtype"], str(s["tensors"]),
                      _fmt(s["max_abs"]), s["worst_tensor"],
                      "-" if s["backend"] in ("torch", "baseline") and s["passed"]
                      and s["fraction"] == 0.0 else f"{s['fraction']:.1e}",
                      "[green]pass[/]" if s["passed"] else "[bold red]FAIL[/]")
    console.print(table)
    failures = [r for r in rows if not r.passed]
    for r in failures:
        console.print(f"[red]FAIL[/] {r.describe()}", highlight=False, soft_wrap=True)


def totals(rows: list[Row]) -> tuple[int, int]:
    passed = sum(r.passed for r in rows)
    return passed, len(rows) - passed


def _clean(v):
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)
    return v


def write_json(path: str, payload) -> None:
    """Write rows (Row objects or dicts) or any JSON-able payload; inf/nan become strings."""
    def conv(o):
        if isinstance(o, Row):
            return {k: _clean(v) for k, v in o.to_dict().items()}
        if isinstance(o, dict):
            return {k: conv(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [conv(v) for v in o]
        return _clean(o)
    with open(path, "w") as f:
        json.dump(conv(payload), f, indent=1)
        f.write("\n")


def write_markdown(path: str, rows: list[Row], header: str = "") -> None:
    lines = ["# crosscheck equivalence report", ""]
    if header:
        lines += [header, ""]
    lines += ["| case | backend | dtype | max abs err | worst tensor | tol used | result |",
              "|---|---|---|---:|---|---:|---|"]
    for s in summarize(rows):
        lines.append(f"| {s['case']} | {s['backend']} | {s['dtype']} | {_fmt(s['max_abs'])} | "
                     f"{s['worst_tensor']} | {s['fraction']:.1e} | "
                     f"{'pass' if s['passed'] else '**FAIL**'} |")
    fails = [r for r in rows if not r.passed]
    if fails:
        lines += ["", "## Failures", ""] + [f"- {r.describe()}" for r in fails]
    p, f = totals(rows)
    lines += ["", f"checks: {p} passed, {f} failed", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
