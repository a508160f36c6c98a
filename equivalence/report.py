"""Reports: a rich table on the terminal, JSON (every row) and Markdown (summary + failures).

The terminal table has one line per (case, backend, dtype) with the achieved max error and the
share of the tolerance used by its worst tensor; every failure is then listed with the tensor,
its shape, the worst index and both values. Every string is printed as text, never as rich
markup (case names hold brackets), and the numeric columns never wrap or shrink: on a narrow
terminal the case name folds instead.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from equivalence.compare import Row


def summarize(rows: list[Row]) -> list[dict]:
    """One entry per (case, backend, dtype): worst tensor by fraction of tolerance used."""
    groups: OrderedDict = OrderedDict()
    for r in rows:
        groups.setdefault((r.case, r.backend, r.dtype), []).append(r)
    out = []
    for (case, backend, dtype), rs in groups.items():
        worst = max(rs, key=lambda r: (r.status == "FAIL", r.fraction))
        statuses = {r.status for r in rs}
        status = next(s for s in ("FAIL", "unchecked", "pass") if s in statuses)
        out.append(dict(case=case, backend=backend, dtype=dtype, tensors=len(rs),
                        max_abs=max(r.max_abs for r in rs), worst_tensor=worst.tensor,
                        fraction=worst.fraction, tolerance=worst.tolerance,
                        passed=status == "pass", status=status))
    return out


def _fmt(x: float) -> str:
    """A cell: three significant digits, in exponent form outside [0.01, 1e5).

    >>> [_fmt(v) for v in (1.2345e-15, 0.0832, 1.4312, 2.0, None, float("inf"))]
    ['1.23e-15', '0.0832', '1.43', '2', '-', 'inf']
    """
    if x is None:
        return "-"
    if not isinstance(x, float):
        return str(x)
    if math.isinf(x) or math.isnan(x):
        return str(x)
    return f"{x:.3g}" if 1e-2 <= abs(x) < 1e5 else f"{x:.2e}"


def print_rows(rows: list[dict], title: str, console: Console | None = None) -> None:
    """Print a list of flat dicts (benchmark or summary rows) as a table."""
    console = console or Console()
    if not rows:
        console.print(f"{title}: no rows")
        return
    table = Table(title=escape(title), show_lines=False)
    for key in rows[0]:
        numeric = isinstance(rows[0][key], (int, float)) and not isinstance(rows[0][key], bool)
        table.add_column(escape(str(key)), justify="right" if numeric else "left",
                         no_wrap=numeric, overflow="fold")
    for r in rows:
        table.add_row(*(escape(_fmt(v)) for v in r.values()))
    console.print(table)


STATUS_STYLE = {"pass": "green", "FAIL": "bold red", "unchecked": "yellow"}
# (header, justify, may wrap): only the case name and the tensor name fold on a narrow terminal
REPORT_COLUMNS = (("case", "left", True), ("backend", "left", False), ("dtype", "left", False),
                  ("n", "right", False), ("max abs err", "right", False),
                  ("worst tensor", "left", True), ("tol used", "right", False),
                  ("result", "left", False))


def print_report(rows: list[Row], console: Console | None = None, verbose: bool = False) -> None:
    """The equivalence table (one line per case, backend and dtype; ``verbose``: per tensor),
    then one line per failure. ``n`` is the number of tensors compared; ``tol used`` is the
    worst tensor's share of its tolerance (for a baseline row: of the limit that rounding
    explains)."""
    console = console or Console()
    table = Table(title="crosscheck: equivalence report", box=box.SIMPLE_HEAD, show_edge=False)
    for header, justify, wraps in REPORT_COLUMNS:
        table.add_column(header, justify=justify, no_wrap=not wraps, overflow="fold")
    items = ([dict(case=r.case, backend=r.backend, dtype=r.dtype, tensors=1, max_abs=r.max_abs,
                   worst_tensor=r.tensor, fraction=r.fraction, status=r.status) for r in rows]
             if verbose else summarize(rows))
    for s in items:
        status = s["status"]
        table.add_row(escape(s["case"]), escape(s["backend"]), s["dtype"], str(s["tensors"]),
                      _fmt(s["max_abs"]), escape(s["worst_tensor"]), f"{s['fraction']:.1e}",
                      f"[{STATUS_STYLE[status]}]{status}[/]")
    console.print(table)
    for r in rows:
        if r.status == "FAIL":
            console.print(f"[red]FAIL[/] {escape(r.describe())}", highlight=False, soft_wrap=True)


def totals(rows: list[Row]) -> tuple[int, int, int]:
    """(passed, failed, unchecked) row counts."""
    passed = sum(r.status == "pass" for r in rows)
    unchecked = sum(r.status == "unchecked" for r in rows)
    return passed, len(rows) - passed - unchecked, unchecked


def _clean(v):
    if isinstance(v, float) and (math.isinf(v) or math.isnan(v)):
        return str(v)
    return v


def jsonable(payload):
    """Rows (Row objects or dicts) or any nest of dicts and lists, with Row objects as dicts and
    inf/nan as strings, ready for ``json.dump``."""
    if isinstance(payload, Row):
        return {k: _clean(v) for k, v in payload.to_dict().items()}
    if isinstance(payload, dict):
        return {k: jsonable(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [jsonable(v) for v in payload]
    return _clean(payload)


def write_json(path: str, payload) -> None:
    """Write rows (Row objects or dicts) or any JSON-able payload; inf/nan become strings."""
    with open(path, "w") as f:
        json.dump(jsonable(payload), f, indent=1)
        f.write("\n")


def footer(rows: list[Row]) -> str:
    """``checks: P passed, F failed`` and, when there are any, the unchecked rows."""
    p, f, u = totals(rows)
    extra = f", {u} unchecked (no oracle)" if u else ""
    return f"checks: {p} passed, {f} failed{extra}"


def _md(text: str) -> str:
    """Text for a Markdown table cell: ``|`` escaped."""
    return text.replace("|", "\\|")


def write_markdown(path: str, rows: list[Row], header: str = "") -> None:
    lines = ["# crosscheck equivalence report", ""]
    if header:
        lines += [header, ""]
    lines += ["| case | backend | dtype | max abs err | worst tensor | tol used | result |",
              "|---|---|---|---:|---|---:|---|"]
    for s in summarize(rows):
        status = "**FAIL**" if s["status"] == "FAIL" else s["status"]
        lines.append(f"| {_md(s['case'])} | {s['backend']} | {s['dtype']} | "
                     f"{_fmt(s['max_abs'])} | {_md(s['worst_tensor'])} | {s['fraction']:.1e} | "
                     f"{status} |")
    fails = [r for r in rows if r.status == "FAIL"]
    if fails:
        lines += ["", "## Failures", ""] + [f"- {_md(r.describe())}" for r in fails]
    lines += ["", footer(rows), ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
