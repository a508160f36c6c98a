"""The shared bench layer: sides timed in fresh interpreters, statistics, ratios, output.

Why fresh interpreters. Measured in one process, torch's intra-op threads keep spinning for a
while after each torch call and take the cores that OpenBLAS needs next, so a NumPy candidate
timed right after its torch peer is slowed by the peer (on two cores, (4, 8, 512, 64) attention
fwd+bwd read 0.17-0.19 s that way against 0.10 s alone). Here every group of *sides* runs in a
new ``python -m equivalence.bench.common`` child whose thread settings are fixed in its
environment before NumPy or torch is imported. A bench puts the sides of one library in one
child (NumPy sides together, torch sides together): they share one thread pool and do not compete
with each other, while sides of different libraries never share a process.

A side is a *builder*, named ``"module:function"`` and called in the child with JSON-able keyword
arguments; it makes its inputs (untimed) and returns the zero-argument callable to time.
A callable that launches asynchronous work (CUDA) synchronises before it returns.

Timing one side (like ``timeit``'s autorange):

    warm-up    ``warmup`` calls: first-touch pages, BLAS threads, torch's kernel choice, programs
    calibrate  inner = calls per repeat, so that one repeat lasts at least ``min_time`` seconds
               (a call that alone lasts that long counts as the first repeat)
    repeat     ``repeats`` times: time ``inner`` calls back to back, keep seconds per call

The result is the median seconds per call with the min and max over the repeats; ``spread`` is
max / min. A ratio is always formed from two medians of one invocation.

Memory of one side: ``tracemalloc``'s peak while the callable runs once, after one warm-up call;
inputs made by the builder are allocated before tracing starts and are not counted. NumPy reports
its array buffers to tracemalloc, so the figure counts every array the op allocates.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass, field

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Side:
    """One thing to time: ``builder(**kwargs)`` returns the callable."""
    label: str                 # e.g. "numpy batched"
    builder: str               # "module:function"
    kwargs: dict = field(default_factory=dict)


@dataclass
class Timing:
    """Seconds per call of one side, over the repeats of one child."""
    label: str
    median: float
    min: float
    max: float
    repeats: int
    inner: int                 # calls per repeat
    threads: int | None        # the thread setting asked for (None: the libraries' default)
    runtime: dict              # what the child saw: versions, thread pools, BLAS kernel

    @property
    def spread(self) -> float:
        return self.max / self.min


# ----------------------------------------------------------------------------- parent side

def add_timing_arguments(parser, default_threads: list[int] | None = None) -> None:
    """The options every timing bench shares."""
    default = ("the libraries' own default" if default_threads is None
               else " ".join(map(str, default_threads)))
    parser.add_argument("--threads", type=int, nargs="+", default=default_threads, metavar="N",
                        help=f"thread counts to measure at, each in its own children, for torch "
                             f"and BLAS alike (default: {default})")
    parser.add_argument("--repeats", "--repeat", type=int, default=7,
                        help="timed repeats per side; the median is reported (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    parser.add_argument("--min-time", type=float, default=0.5, metavar="S",
                        help="seconds one repeat lasts at least; fast calls are repeated inside "
                             "it (default 0.5)")


def shape_type(letters: str):
    """An argparse type for ``--shape``: comma-separated positive ints, one per letter.

    >>> shape_type("B,H,T,D")("4,8,512,64")
    (4, 8, 512, 64)
    """
    def parse(text: str) -> tuple[int, ...]:
        parts = text.split(",")
        if len(parts) != len(letters.split(",")) or not all(
                p.strip().isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"expected {letters} ({len(letters.split(','))} "
                                             f"positive ints, comma-separated) but got {text!r}")
        return tuple(int(p) for p in parts)
    parse.__name__ = f"shape {letters}"
    return parse


def check_timing_arguments(args) -> None:
    for name in ("repeats", "warmup"):
        value = getattr(args, name)
        if value < (1 if name == "repeats" else 0):
            raise ValueError(f"--{name}: expected an int >= {1 if name == 'repeats' else 0} "
                             f"but got {value}")
    if not args.min_time >= 0:
        raise ValueError(f"--min-time: expected seconds >= 0 but got {args.min_time}")
    if args.threads is not None and any(n < 1 for n in args.threads):
        raise ValueError(f"--threads: expected ints >= 1 but got {args.threads}")


def thread_settings(args) -> list[int | None]:
    """The thread counts to measure at: ``--threads`` or [None] (the libraries' default)."""
    return list(args.threads) if args.threads else [None]


def _child_env(threads: int | None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        env.update({v: str(threads) for v in THREAD_VARIABLES})
    # the package root first, so the child imports this very checkout from any directory
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    return env


def _run_child(job: dict, threads: int | None) -> dict:
    done = subprocess.run([sys.executable, "-m", "equivalence.bench.common", json.dumps(job)],
                          env=_child_env(threads), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        labels = ", ".join(s["label"] for s in job["sides"])
        raise RuntimeError(f"bench child for {labels} (threads {threads}) failed:\n"
                           f"{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(sides: list[Side], args, threads: int | None) -> list[Timing]:
    """Time ``sides`` one after another in one fresh child with ``threads`` threads."""
    job = {"mode": "time", "threads": threads, "repeats": args.repeats, "warmup": args.warmup,
           "min_time": args.min_time, "sides": [asdict(s) for s in sides]}
    result = _run_child(job, threads)
    return [Timing(label=r["label"], median=statistics.median(r["seconds"]),
                   min=min(r["seconds"]), max=max(r["seconds"]), repeats=len(r["seconds"]),
                   inner=r["inner"], threads=threads, runtime=result["runtime"])
            for r in result["sides"]]


def measure_memory(sides: list[Side], threads: int | None = None) -> list[int]:
    """Peak traced bytes of each side's callable, in one fresh child."""
    job = {"mode": "memory", "threads": threads, "sides": [asdict(s) for s in sides]}
    return [r["peak_bytes"] for r in _run_child(job, threads)["sides"]]


def libraries(runtime: dict) -> str:
    """A short description of the thread pools a child ran with, e.g.
    ``"openblas 0.3.31 SkylakeX x2; torch 2.13.0 x2"``.

    >>> libraries({"pools": [{"internal_api": "openblas", "version": "0.3.31",
    ...                       "architecture": "SkylakeX", "num_threads": 2}]})
    'openblas 0.3.31 SkylakeX x2'
    """
    parts = []
    for pool in runtime.get("pools", []):
        arch = f" {pool['architecture']}" if pool.get("architecture") else ""
        parts.append(f"{pool['internal_api']} {pool.get('version') or '?'}{arch} "
                     f"x{pool['num_threads']}")
    if runtime.get("torch"):
        parts.append(f"torch {runtime['torch']} x{runtime['torch_threads']}")
    return "; ".join(parts) or "-"


def timing_row(t: Timing, **context) -> dict:
    """One line of a timings table: the context columns, then the figures."""
    return {**context, "side": t.label,
            "threads": "default" if t.threads is None else t.threads,
            "median s": t.median, "min s": t.min, "max s": t.max, "spread": t.spread,
            "repeats x calls": f"{t.repeats} x {t.inner}", "libraries": libraries(t.runtime)}


def ratio_row(candidate: Timing, peer: Timing, comparison: str, target: float | None = None,
              **context) -> dict:
    """candidate / peer from their medians; ``target`` is the largest ratio asked for."""
    ratio = candidate.median / peer.median
    return {**context, "threads": "default" if candidate.threads is None else candidate.threads,
            "candidate": candidate.label, "peer": peer.label, "comparison": comparison,
            "ratio": ratio, "target": "-" if target is None else f"<= {target:g}",
            "met": "-" if target is None else ("yes" if ratio <= target else "NO")}


def save_plot(path: str, draw, what: str, *, size=(6.0, 4.0)) -> dict:
    """Draw on one matplotlib Axes with ``draw(ax)``, write a PNG at ``path``, and return the
    row that says so (a bench adds it to its ``plots`` table)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        draw(ax)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return {"wrote": os.path.abspath(path), "shows": what}


def print_tables(tables: dict[str, list[dict]], title: str, console) -> None:
    """Every table of a bench result, one after another."""
    from equivalence import report
    for name, rows in tables.items():
        report.print_rows(rows, f"{title}: {name}", console)


def write_json(path: str, title: str, tables: dict[str, list[dict]]) -> None:
    """A bench result as JSON: its tables and the parent's platform."""
    from equivalence import report
    report.write_json(path, {"bench": title, "platform": platform.platform(),
                             "python": platform.python_version(), "cpus": os.cpu_count(),
                             "tables": tables})


# ----------------------------------------------------------------------------- child side

def _build(side: dict):
    module, name = side["builder"].split(":")
    return getattr(importlib.import_module(module), name)(**side["kwargs"])


def _runtime() -> dict:
    """Versions and thread pools as this process sees them (after the builders ran). Without
    threadpoolctl (a GPU image may lack it) the pools are not listed, and it says so."""
    import numpy
    info = {"python": platform.python_version(), "numpy": numpy.__version__, "pools": []}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["pools_note"] = "threadpoolctl is not installed: thread pools not listed"
    else:
        info["pools"] = [{k: pool.get(k) for k in ("user_api", "internal_api", "version",
                                                    "num_threads", "architecture")}
                         for pool in threadpool_info()]
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


def _time_side(fn, repeats: int, warmup: int, min_time: float) -> tuple[list[float], int]:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-9)
    inner = max(1, math.ceil(min_time / one))
    # A call that fills a repeat alone (a slow one) is timed once as the first repeat already.
    seconds = [one] if inner == 1 else []
    while len(seconds) < repeats:
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        seconds.append((time.perf_counter() - t0) / inner)
    return seconds, inner


def peak_traced_bytes(fn) -> int:
    """Peak bytes traced by tracemalloc while ``fn()`` runs, after one untraced warm-up call
    (allocations made before, such as the inputs, are not counted)."""
    fn()
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak


def _child(job: dict) -> dict:
    out = []
    for side in job["sides"]:
        fn = _build(side)
        if job["threads"] is not None and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(job["threads"])
        if job["mode"] == "memory":
            out.append({"label": side["label"], "peak_bytes": peak_traced_bytes(fn)})
        else:
            seconds, inner = _time_side(fn, job["repeats"], job["warmup"], job["min_time"])
            out.append({"label": side["label"], "seconds": seconds, "inner": inner})
        del fn
        gc.collect()
    return {"sides": out, "runtime": _runtime()}


if __name__ == "__main__":  # a child: one JSON job in argv, one JSON result line on stdout
    print(json.dumps(_child(json.loads(sys.argv[1]))))
