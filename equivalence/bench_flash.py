"""``crosscheck bench flash``: memory and speed of tiled (flash) vs naive attention in NumPy.

Two measurements, both forward + backward, one head (B = H = 1), float32, no mask:

1. Memory. Peak memory traced by ``tracemalloc`` while running forward then backward, for each
   T in ``--t`` (default 1k, 2k, 4k, 8k, 16k) at D = ``--d`` (64). NumPy reports its array
   buffers to tracemalloc, so the peak counts every array the op allocates (outputs, cache,
   temporaries); the inputs q, k, v, dout are made before tracing starts and are not counted
   (the figure is the *extra* memory). The naive version holds (T, T) matrices (T = 16k:
   1 GiB per float32 matrix), so it grows like T^2; the tiled one holds O(T) arrays and
   (Br, Bc) tiles, so it grows like T. Targets (issue 4): tiled peak(16k) / peak(8k) <= 2.2, and
   naive / tiled >= 10 at T = 8k. ``--max-naive-t`` skips naive runs above a size (the table
   says so) on machines without several GiB to spare; ``--plot PATH`` draws peak vs T (log-log).
2. Speed. Wall time of one forward + backward at T = ``--speed-t`` (2048), D = 64, tiles
   Br = Bc = ``--block`` (128), naive vs tiled, one run each after one warm-up run. Target:
   tiled / naive <= 2. Both run in a fresh process with ``--blas-threads`` (1) BLAS threads:
   the tiled version makes many small BLAS calls, and a multi-threaded BLAS on a busy machine
   spends more time handing those to its threads than computing them (measured here with two
   threads on two loaded cores: 2.0 s tiled vs 0.2 s naive). ``--blas-threads 0`` measures in
   this process with the environment's setting.

Quick smoke run: ``crosscheck bench flash --t 256 512 --speed-t 256``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from ref_numpy import attention, flash_attention

MIB = 2.0 ** 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--t", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384],
                        metavar="T", help="sequence lengths for the memory table "
                                          "(default 1024 2048 4096 8192 16384)")
    parser.add_argument("--d", type=int, default=64, help="head dimension (default 64)")
    parser.add_argument("--block", type=int, default=128,
                        help="tile size Br = Bc of the tiled version (default 128)")
    parser.add_argument("--max-naive-t", type=int, default=None, metavar="T",
                        help="skip the naive memory run for T above this (default: run all)")
    parser.add_argument("--speed-t", type=int, default=2048, metavar="T",
                        help="sequence length of the speed comparison (default 2048)")
    parser.add_argument("--blas-threads", type=int, default=1, metavar="N",
                        help="run the speed comparison in a fresh process with N BLAS threads "
                             "(default 1); 0 = in this process, with the environment's setting")
    parser.add_argument("--part", choices=("memory", "speed", "all"), default="all",
                        help="which measurement to run (default all)")
    parser.add_argument("--plot", metavar="PATH", help="save a plot of peak memory vs T")
    parser.add_argument("--seed", type=int, default=0)


def _inputs(T: int, D: int, seed: int):
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal((1, 1, T, D), dtype=np.float32) for _ in range(4))
    return q, k, v, dout


def _naive(q, k, v, dout):
    out, cache = attention.attention_forward(q, k, v)
    return attention.attention_backward(dout, cache)[:3]


def _tiled(q, k, v, dout, block: int):
    out, cache = flash_attention.flash_attention_forward(q, k, v, block_q=block, block_k=block)
    return flash_attention.flash_attention_backward(dout, cache)


def peak_traced_bytes(fn, *args) -> int:
    """Peak bytes traced by tracemalloc during ``fn(*args)`` (allocations made before excluded)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return peak


def _wall_time(fn, *args) -> float:
    fn(*args)                                  # warm-up: first-touch pages, BLAS threads
    gc.collect()
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _row(measure, T, naive, tiled, unit, figure, value, target="-", met=None, note=""):
    return {"measure": measure, "T": T, "naive": naive, "tiled": tiled, "unit": unit,
            "figure": figure, "value": value, "target": target,
            "met": "-" if met is None else ("yes" if met else "NO"), "note": note}


def _memory_rows(args) -> list[dict]:
    Ts = sorted(set(args.t))
    peaks = {}                                 # T -> (naive MiB or None, tiled MiB)
    rows = []
    for T in Ts:
        q, k, v, dout = _inputs(T, args.d, args.seed)
        tiled = peak_traced_bytes(_tiled, q, k, v, dout, args.block) / MIB
        skip = args.max_naive_t is not None and T > args.max_naive_t
        naive = None if skip else peak_traced_bytes(_naive, q, k, v, dout) / MIB
        peaks[T] = (naive, tiled)
        ratio = None if naive is None else naive / tiled
        target, met = "-", None
        if T == 8192 and ratio is not None:
            target, met = ">= 10", ratio >= 10
        note = (f"naive skipped (T > --max-naive-t {args.max_naive_t})" if skip
                else f"one (T, T) float32 matrix = {T * T * 4 / MIB:g} MiB")
        rows.append(_row("peak traced memory fwd+bwd", T, naive, tiled, "MiB", "naive/tiled",
                         ratio, target, met, note))
    if len(Ts) >= 2:
        # Growth between the two largest sizes: linear memory gives peak ratio ~ T ratio.
        T1, T2 = Ts[-2], Ts[-1]
        (n1, t1), (n2, t2) = peaks[T1], peaks[T2]
        target, met = "-", None
        if (T1, T2) == (8192, 16384):
            target, met = "<= 2.2", t2 / t1 <= 2.2
        naive_growth = None if n1 is None or n2 is None else n2 / n1
        rows.append(_row(f"peak growth T={T2} / T={T1}", T2, naive_growth, t2 / t1, "x",
                         "tiled growth", t2 / t1, target, met,
                         f"linear: {T2 / T1:g}x, quadratic: {(T2 / T1) ** 2:g}x"))
    if args.plot:
        _plot(args.plot, Ts, peaks, args.d, args.block)
    return rows


def _speed_rows(args) -> list[dict]:
    if args.blas_threads > 0:
        return _speed_rows_in_subprocess(args)
    q, k, v, dout = _inputs(args.speed_t, args.d, args.seed)
    naive = _wall_time(_naive, q, k, v, dout)
    tiled = _wall_time(_tiled, q, k, v, dout, args.block)
    ratio = tiled / naive
    target, met = "-", None
    if (args.speed_t, args.d, args.block) == (2048, 64, 128):
        target, met = "<= 2", ratio <= 2
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    return [_row("time fwd+bwd", args.speed_t, naive, tiled, "s", "tiled/naive", ratio,
                 target, met, f"Br = Bc = {args.block}; one run after warm-up; "
                              f"BLAS threads: {threads}")]


def _speed_rows_in_subprocess(args) -> list[dict]:
    """The speed rows measured in a new interpreter whose BLAS uses ``--blas-threads`` threads.

    BLAS libraries read their thread count when NumPy is imported, so it is set through the
    environment of a fresh process. The tiled version makes many small (Br, D) x (D, Bc) calls;
    on a busy machine a multi-threaded BLAS can spend more time handing those to its threads
    than computing them, so one thread is the steadier comparison there.
    """
    n = str(args.blas_threads)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
    # the package root, so that the child imports this very checkout from any working directory
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "equivalence.bench_flash", "--part", "speed",
           "--speed-t", str(args.speed_t), "--d", str(args.d), "--block", str(args.block),
           "--seed", str(args.seed), "--blas-threads", "0"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"speed run with {n} BLAS thread(s) failed:\n{done.stderr}")
    return json.loads(done.stdout)


def _plot(path: str, Ts, peaks, D: int, block: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    naive = [(T, n) for T, (n, _) in peaks.items() if n is not None]
    if naive:
        ax.plot(*zip(*naive), "o-", label="naive (T x T matrices)")
    ax.plot(Ts, [peaks[T][1] for T in Ts], "s-", label=f"tiled, Br = Bc = {block}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("peak traced memory, fwd+bwd (MiB)")
    ax.set_title(f"attention memory, float32, D = {D}, one head")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> list[dict]:
    """Run the selected measurements; one row per figure (see the module docstring)."""
    for name in ("d", "block", "speed_t"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive int but got "
                             f"{getattr(args, name)}")
    if args.blas_threads < 0:
        raise ValueError(f"--blas-threads: expected an int >= 0 but got {args.blas_threads}")
    if any(T <= 0 for T in args.t):
        raise ValueError(f"--t: expected positive sizes but got {args.t}")
    rows = []
    if args.part in ("memory", "all"):
        rows += _memory_rows(args)
    if args.part in ("speed", "all"):
        rows += _speed_rows(args)
    return rows


if __name__ == "__main__":        # the child process of --blas-threads: rows as JSON on stdout
    _parser = argparse.ArgumentParser(prog="python -m equivalence.bench_flash")
    add_arguments(_parser)
    print(json.dumps(run(_parser.parse_args())))
