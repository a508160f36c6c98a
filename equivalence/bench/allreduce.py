"""``crosscheck bench allreduce``: the ring of ``torch_bridge.distributed`` against
``dist.all_reduce``, both over gloo on 127.0.0.1, float32 sum.

For each world size p in ``--ranks`` (default 2 and 4) one bench child of the shared layer
(``equivalence.bench.common``) starts a :class:`~torch_bridge.distributed.LocalGroup` of p ranks
(``--threads`` torch threads each, default 1), and both sides run in those same processes, size
by size, ring then gloo. Each timed call sends one command to every rank, and each rank runs
``reps`` all-reduces back to back (64 up to 64 KiB, fewer above, 1 from 4 MiB), so that the
round trip to the ranks is amortised; the tables give seconds per all-reduce. The buffer holds
zeros, so repeated sums stay finite (the arithmetic costs the same).

Figures (the nccl-tests definitions), for a buffer of S bytes and a time t per all-reduce:
algorithm bandwidth algbw = S / t, bus bandwidth busbw = algbw · 2(p - 1)/p (what each rank
moves through its link, the figure comparable across p). Target: ring / dist.all_reduce <= 1.25
at 16 MiB and above. ``--plot PATH`` draws busbw against size, both sides, every p. The ring runs
with its agreement check (p - 1 small messages before the data), as by default; ``--no-check``
times it without, like dist.all_reduce, which checks nothing.

Quick smoke run: ``crosscheck bench allreduce --ranks 2 --sizes 1K 64K --min-time 0``.
"""
from __future__ import annotations

import argparse
import atexit
import dataclasses

from equivalence.bench.common import (Side, add_timing_arguments, check_timing_arguments,
                                      measure, ratio_row, save_plot, thread_settings,
                                      timing_row)

HERE = "equivalence.bench.allreduce"
KIB, MIB = 2 ** 10, 2 ** 20
TARGET, TARGET_FROM = 1.25, 16 * MIB
SIDES = ("ring", "dist.all_reduce")
_UNITS = {"": 1, "K": KIB, "M": MIB, "G": 2 ** 30}


def _size(text: str) -> int:
    """An argparse type: bytes, with an optional K, M or G suffix (powers of 2).

    >>> _size("16M"), _size("1K"), _size("4096")
    (16777216, 1024, 4096)
    """
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = t[-1:] if t[-1:].isalpha() else ""
    unit, digits = _UNITS.get(suffix), t[:len(t) - len(suffix)]
    if unit is None or not digits.isdigit() or int(digits) == 0 or int(digits) * unit % 4:
        raise argparse.ArgumentTypeError(f"expected a size in bytes, a positive multiple of 4 "
                                         f"(float32), like 4096, 64K or 16M, but got {text!r}")
    return int(digits) * unit


def _label(nbytes: int) -> str:
    """A size for the tables: 16 MiB, 4 KiB, 100 B."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", MIB), ("KiB", KIB)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from torch_bridge.distributed import DEFAULT_SEGMENT
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4], metavar="P",
                        help="world sizes, each >= 2 (default 2 4)")
    parser.add_argument("--sizes", type=_size, nargs="+", metavar="BYTES",
                        default=[KIB * 4 ** k for k in range(9)],
                        help="buffer sizes (default 1K 4K 16K ... 64M, powers of 4)")
    parser.add_argument("--segment", type=int, default=DEFAULT_SEGMENT, metavar="ELEMENTS",
                        help=f"the ring's elements per message (default {DEFAULT_SEGMENT})")
    parser.add_argument("--no-check", action="store_true",
                        help="time the ring without its agreement check (p - 1 small messages)")
    parser.add_argument("--plot", metavar="PATH", help="save a plot of busbw against size")
    add_timing_arguments(parser, default_threads=[1])


def _reps(nbytes: int) -> int:
    return max(1, min(64, 4 * MIB // nbytes))


# ----------------------------------------------------------------------------- builders
# In the bench child: one LocalGroup per world size, shared by both sides, closed at exit.

_GROUPS: dict = {}
_BUFFER: dict = {}          # on each rank: the tensor being reduced


def _group(ranks: int, threads):
    if ranks not in _GROUPS:
        from torch_bridge.distributed import LocalGroup
        _GROUPS[ranks] = LocalGroup(ranks, threads=threads)
        atexit.register(_GROUPS[ranks].close)
    return _GROUPS[ranks]


def _rank_allocates(nbytes: int) -> None:
    import torch
    _BUFFER["x"] = torch.zeros(nbytes // 4, dtype=torch.float32)


def _rank_runs(side: str, reps: int, segment: int, check: bool) -> None:
    import torch.distributed as dist
    from torch_bridge.distributed import ring_all_reduce
    x = _BUFFER["x"]
    for _ in range(reps):
        if side == "ring":
            ring_all_reduce(x, "sum", segment=segment, check=check)
        else:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)


def allreduce_side(side: str, ranks: int, nbytes: int, segment: int, check: bool, threads):
    group = _group(ranks, threads)
    group.call(_rank_allocates, nbytes)
    return lambda: group.call(_rank_runs, side, _reps(nbytes), segment, check)


# ----------------------------------------------------------------------------- the bench

def _check(args) -> None:
    check_timing_arguments(args)
    if any(p < 2 for p in args.ranks):
        raise ValueError(f"--ranks: expected world sizes >= 2 (one rank moves nothing) but got "
                         f"{args.ranks}")
    if args.segment < 1:
        raise ValueError(f"--segment: expected a positive int but got {args.segment}")


def _draw(ax, rows, ranks) -> None:
    for color, side in zip(("C0", "C1"), SIDES):
        for style, p in zip(("o-", "s--", "^:", "d-."), ranks):
            mine = [r for r in rows if r["side"] == side and r["ranks"] == p]
            ax.plot([r["bytes"] for r in mine], [r["busbw GB/s"] for r in mine], style,
                    color=color, label=f"{side}, p = {p}")
    sizes = sorted({r["bytes"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [_label(s).replace(" ", "\n") for s in sizes])
    ax.set_xlabel("buffer size S")
    ax.set_ylabel("bus bandwidth S/t · 2(p-1)/p (GB/s)")
    ax.set_title("all-reduce over gloo on 127.0.0.1, float32 sum")
    ax.legend()


def run(args) -> dict[str, list[dict]]:
    """Tables ``bandwidth`` (one row per side, size and p), ``ratios`` (ring / gloo),
    ``timings`` and, with ``--plot``, ``plots``."""
    _check(args)
    bandwidth, ratios, timings = [], [], []
    for threads in thread_settings(args):
        for p in args.ranks:
            sides = [Side(side, f"{HERE}:allreduce_side",
                          dict(side=side, ranks=p, nbytes=nbytes, segment=args.segment,
                               check=not args.no_check, threads=threads))
                     for nbytes in args.sizes for side in SIDES]
            measured = measure(sides, args, threads)
            for k, nbytes in enumerate(args.sizes):
                reps = _reps(nbytes)
                ring, gloo = (dataclasses.replace(t, median=t.median / reps, min=t.min / reps,
                                                  max=t.max / reps)
                              for t in measured[2 * k:2 * k + 2])
                ctx = {"ranks": p, "size": _label(nbytes),
                       "ring check": "off" if args.no_check else "on"}
                for t in (ring, gloo):
                    algbw = nbytes / t.median / 1e9
                    bandwidth.append({**ctx, "bytes": nbytes, "side": t.label,
                                      "threads": "default" if threads is None else threads,
                                      "median s": t.median, "algbw GB/s": algbw,
                                      "busbw GB/s": algbw * 2 * (p - 1) / p})
                    timings.append({**timing_row(t, **ctx), "all-reduces per call": reps})
                target = TARGET if nbytes >= TARGET_FROM else None
                ratios.append(ratio_row(ring, gloo, "ring / dist.all_reduce", target, **ctx))
    tables = {"bandwidth": bandwidth, "ratios": ratios, "timings": timings}
    if args.plot:
        tables["plots"] = [save_plot(args.plot, lambda ax: _draw(ax, bandwidth, args.ranks),
                                     "busbw vs size: the ring and dist.all_reduce, each p")]
    return tables
