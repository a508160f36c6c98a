"""``crosscheck bench flash``: memory and speed of tiled (flash) vs naive attention in NumPy.

Both measurements are forward + backward, one head (B = H = 1), float32, no mask, each side in a
fresh child of the shared layer (``equivalence.bench.common``).

1. Memory. Peak memory traced by ``tracemalloc`` while forward then backward run, for each T in
   ``--t`` (default 1k, 2k, 4k, 8k, 16k) at D = ``--d`` (64). The inputs are made before tracing
   starts, so the figure is the *extra* memory. The naive version holds (T, T) matrices
   (T = 16k: 1 GiB per float32 matrix), so it grows like T²; the tiled one holds O(T) arrays
   (the backward keeps one query tile's row of (Br, Bc) tiles, two (Br, T) in all), so it grows
   like T. Targets: tiled peak(16k) / peak(8k) <= 2.2, and
   naive / tiled >= 10 at T = 8k. ``--max-naive-t`` skips naive runs above a size (the table says
   so) on machines without several GiB to spare; ``--plot PATH`` draws peak vs T (log-log).
2. Speed at T = ``--speed-t`` (2048), D = 64, tiles Br = Bc = ``--block`` (128): tiled against
   naive NumPy (the same library, target tiled / naive <= 2) and against torch's
   ``F.scaled_dot_product_attention`` (what a user would call instead: the headline).
   ``--threads`` defaults to 1: the tiled version makes many small (Br, D) x (D, Bc) BLAS calls,
   and a multi-threaded BLAS on a busy machine spends more time handing those to its threads
   than computing them (measured with two threads on two loaded cores: 2.0 s tiled vs 0.2 s
   naive).

Quick smoke run: ``crosscheck bench flash --t 256 512 --speed-t 256 --min-time 0``.
"""
from __future__ import annotations

import argparse

import numpy as np

from equivalence.bench.common import (Side, add_timing_arguments, check_timing_arguments,
                                      measure, measure_memory, ratio_row, save_plot,
                                      thread_settings, timing_row)

HERE = "equivalence.bench.flash"
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
    parser.add_argument("--part", choices=("memory", "speed", "all"), default="all",
                        help="which measurement to run (default all)")
    parser.add_argument("--plot", metavar="PATH", help="save a plot of peak memory vs T")
    parser.add_argument("--seed", type=int, default=0)
    add_timing_arguments(parser, default_threads=[1])


# ----------------------------------------------------------------------------- builders

def _inputs(T: int, D: int, seed: int):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 1, T, D), dtype=np.float32) for _ in range(4)]


def naive(T, D, seed):
    from ref_numpy import attention
    q, k, v, dout = _inputs(T, D, seed)

    def run():
        out, cache = attention.attention_forward(q, k, v)
        return attention.attention_backward(dout, cache)[:3]
    return run


def tiled(T, D, seed, block):
    from ref_numpy import flash_attention
    q, k, v, dout = _inputs(T, D, seed)

    def run():
        out, cache = flash_attention.flash_attention_forward(q, k, v, block_q=block,
                                                             block_k=block)
        return flash_attention.flash_attention_backward(dout, cache)
    return run


def torch_sdpa(T, D, seed):
    import torch
    import torch.nn.functional as F
    q, k, v, dout = (torch.from_numpy(a) for a in _inputs(T, D, seed))
    wrt = [t.requires_grad_(True) for t in (q, k, v)]

    def run():
        out = F.scaled_dot_product_attention(q, k, v)
        return torch.autograd.grad(out, wrt, dout)
    return run


# ----------------------------------------------------------------------------- the bench

def _memory(args) -> tuple[list[dict], list[dict]]:
    Ts = sorted(set(args.t))
    sides, where = [], {}
    for T in Ts:
        common = dict(T=T, D=args.d, seed=args.seed)
        where[T, "tiled"] = len(sides)
        sides.append(Side("tiled", f"{HERE}:tiled", {**common, "block": args.block}))
        if args.max_naive_t is None or T <= args.max_naive_t:
            where[T, "naive"] = len(sides)
            sides.append(Side("naive", f"{HERE}:naive", common))
    peaks = [p / MIB for p in measure_memory(sides)]
    rows, mib = [], {}
    for T in Ts:
        tiled_mib = peaks[where[T, "tiled"]]
        naive_mib = peaks[where[T, "naive"]] if (T, "naive") in where else None
        mib[T] = (naive_mib, tiled_mib)
        ratio = None if naive_mib is None else naive_mib / tiled_mib
        met = None if T != 8192 or ratio is None else ratio >= 10
        rows.append({"T": T, "naive MiB": naive_mib, "tiled MiB": tiled_mib,
                     "naive/tiled": ratio, "target": ">= 10" if met is not None else "-",
                     "met": "-" if met is None else ("yes" if met else "NO"),
                     "note": (f"naive skipped (T > --max-naive-t {args.max_naive_t})"
                              if naive_mib is None
                              else f"one (T, T) float32 matrix = {T * T * 4 / MIB:g} MiB")})
    growth = []
    if len(Ts) >= 2:  # between the two largest sizes: linear memory gives peak ratio ~ T ratio
        T1, T2 = Ts[-2], Ts[-1]
        (n1, t1), (n2, t2) = mib[T1], mib[T2]
        met = t2 / t1 <= 2.2 if (T1, T2) == (8192, 16384) else None
        growth.append({"from T": T1, "to T": T2, "tiled growth": t2 / t1,
                       "naive growth": None if n1 is None or n2 is None else n2 / n1,
                       "linear": T2 / T1, "quadratic": (T2 / T1) ** 2,
                       "target": "<= 2.2" if met is not None else "-",
                       "met": "-" if met is None else ("yes" if met else "NO")})
    plots = []
    if args.plot:
        plots.append(save_plot(args.plot, lambda ax: _draw_memory(ax, Ts, mib, args.d,
                                                                   args.block),
                               "peak traced memory of naive and tiled attention vs T"))
    return rows, growth, plots


def _draw_memory(ax, Ts, mib, D: int, block: int) -> None:
    naive_points = [(T, n) for T, (n, _) in mib.items() if n is not None]
    if naive_points:
        ax.plot(*zip(*naive_points), "o-", label="naive (T x T matrices)")
    ax.plot(Ts, [mib[T][1] for T in Ts], "s-", label=f"tiled, Br = Bc = {block}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("peak traced memory, fwd+bwd (MiB)")
    ax.set_title(f"attention memory, float32, D = {D}, one head")
    ax.legend()


def _speed(args, threads, timings, ratios) -> None:
    common = dict(T=args.speed_t, D=args.d, seed=args.seed)
    tiled_t, naive_t = measure([Side(f"numpy tiled, Br = Bc = {args.block}", f"{HERE}:tiled",
                                     {**common, "block": args.block}),
                                Side("numpy naive", f"{HERE}:naive", common)], args, threads)
    (sdpa_t,) = measure([Side("torch F.scaled_dot_product_attention", f"{HERE}:torch_sdpa",
                              common)], args, threads)
    ctx = dict(op="attention fwd+bwd", T=args.speed_t, D=args.d, dtype="float32")
    timings += [timing_row(t, **ctx) for t in (tiled_t, naive_t, sdpa_t)]
    target = 2.0 if (args.speed_t, args.d, args.block) == (2048, 64, 128) else None
    ratios.append(ratio_row(tiled_t, sdpa_t, "user's pick (headline)", **ctx))
    ratios.append(ratio_row(tiled_t, naive_t, "tiled vs naive (same library)", target, **ctx))


def run(args) -> dict[str, list[dict]]:
    """Tables ``memory``, ``memory growth`` and (with ``--plot``) ``plots`` for ``--part memory``;
    ``ratios`` and ``timings`` for ``--part speed``."""
    for name in ("d", "block", "speed_t"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive int but got "
                             f"{getattr(args, name)}")
    if any(T <= 0 for T in args.t):
        raise ValueError(f"--t: expected positive sizes but got {args.t}")
    check_timing_arguments(args)
    tables: dict[str, list[dict]] = {}
    if args.part in ("memory", "all"):
        tables["memory"], tables["memory growth"], plots = _memory(args)
        if plots:
            tables["plots"] = plots
    if args.part in ("speed", "all"):
        timings, ratios = [], []
        for threads in thread_settings(args):
            _speed(args, threads, timings, ratios)
        tables["ratios"], tables["timings"] = ratios, timings
    return tables
