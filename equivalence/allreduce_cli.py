"""``crosscheck allreduce trace``: the ring all-reduce of ``ref_numpy.ring_allreduce``, stepwise.

    crosscheck allreduce trace [--ranks P] [--n N]

prints the chunks, then each of the 2(p - 1) steps (who sends which chunk to whom) and every
rank's buffer after it, for a sum in which rank r starts with 10**r everywhere, so the digits of
a value name the ranks summed into it; then each rank's element count sent. A bad --ranks or --n
prints one line naming the problem and exits with status 2.
"""
from __future__ import annotations

import argparse
import sys

from ref_numpy.ring_allreduce import MAX_TRACE_RANKS, format_trace

OPTIONS = {"p": "--ranks", "n": "--n"}


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int but got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand ``trace``, added to ``parser``."""
    sub = parser.add_subparsers(dest="allreduce_command", required=True)
    t = sub.add_parser("trace", help="print the ring's schedule and buffers step by step")
    t.add_argument("--ranks", type=_int, default=4, metavar="P",
                   help=f"ranks in the ring, 1 to {MAX_TRACE_RANKS} (default 4)")
    t.add_argument("--n", type=_int, default=10, metavar="N",
                   help="elements per rank, >= 0 (default 10)")


def main(args) -> int:
    """Run the parsed ``crosscheck allreduce ...`` command; returns the exit status."""
    try:
        text = format_trace(args.ranks, args.n)
    except ValueError as exc:
        name, _, rest = str(exc).partition(": ")          # ref_numpy names p and n
        print(f"allreduce trace: {OPTIONS.get(name, name)}: {rest}", file=sys.stderr)
        return 2
    print(text)
    return 0
