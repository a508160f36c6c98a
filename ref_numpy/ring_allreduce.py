"""Ring all-reduce: reduce-scatter, then all-gather, around a ring of p ranks.

Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms for clusters of workstations"
(J. Parallel Distrib. Comput. 69(2)); Gibiansky 2017, "Bringing HPC techniques to deep learning"
(Baidu Research, baidu-allreduce); the ring algorithm of NCCL.

Every rank r holds a buffer x_r of N elements and ends with y = x_0 ⊕ x_1 ⊕ ... ⊕ x_{p-1}
elementwise (⊕: sum, max, min or product; mean is the sum divided by p). Rank r sends only to
rank r + 1 and receives only from rank r - 1 (mod p).

Chunks. The buffer is cut into p chunks, chunk c = [b_c, b_{c+1}) with
b_c = c·⌊N/p⌋ + min(c, N mod p): the first N mod p chunks hold one element more. N need not be
divisible by p; with N < p some chunks are empty, and their transfers carry nothing.

Steps. There are 2(p - 1) steps; at step t rank r sends chunk (r - t) mod p and receives chunk
(r - t - 1) mod p, so the chunk a rank receives at step t is the one it sends at step t + 1:
every chunk streams once around the ring, reduced along the way, then once more, copied.

    reduce-scatter (t < p - 1):  the receiver combines:   x_r[c] <- x_r[c] ⊕ received
    all-gather     (t >= p - 1): the receiver overwrites: x_r[c] <- received

After the reduce-scatter rank r owns chunk (r + 1) mod p fully reduced (for mean it divides that
chunk by p here, once); the all-gather hands each owned chunk to every other rank.

Determinism. Each element of chunk c is reduced exactly once, on its owner, in the fixed ring
order (((x_c ⊕ x_{c+1}) ⊕ x_{c+2}) ⊕ ... ⊕ x_{c+p-1}) (indices mod p); the all-gather copies
those bits unchanged. So every rank ends with bit-for-bit the same float sums (and the same on
every run), although the order starts at a different rank per chunk, so the last bits may differ
from x_0 + x_1 + ... + x_{p-1} summed in rank order or from another library's order. Integer
sums, max and min are exact in any order.

Traffic. Rank r sends the chunks (r - t) mod p for t = 0 ... 2p - 3: every chunk once, and all
but chunks r + 1 and r + 2 a second time, 2N - |c_{r+1}| - |c_{r+2}| elements (and receives
2N - |c_r| - |c_{r+1}|). Each |c| is N/p rounded down or up, so this is 2(p - 1)/p · N to within
2 elements, whatever p is: the bandwidth lower bound of an all-reduce.

Worked example, p = 3, N = 7: chunks [0:3), [3:5), [5:7); rank r starts with 10**r everywhere,
so the digits of a value name the ranks summed into it:

>>> chunk_bounds(3, 7)
[0, 3, 5, 7]
>>> [(t.send_chunk, t.recv_chunk) for t in rank_schedule(3, 7, rank=0)]    # (sent, received)
[(0, 2), (2, 1), (1, 0), (0, 2)]
>>> print(format_trace(3, 7))
ring all-reduce (sum) of N = 7 elements on p = 3 ranks, 2(p - 1) = 4 steps
chunks: 0 = [0:3), 1 = [3:5), 2 = [5:7)
rank r starts with 10**r in every element: the digits of a value name the ranks summed into it
at step t rank r sends chunk (r - t) mod 3 to rank r + 1 and receives chunk (r - t - 1) mod 3
start
  rank 0 |   1   1   1 |   1   1 |   1   1
  rank 1 |  10  10  10 |  10  10 |  10  10
  rank 2 | 100 100 100 | 100 100 | 100 100
step 0, reduce-scatter (the receiver adds): 0->1 chunk 0, 1->2 chunk 1, 2->0 chunk 2
  rank 0 |   1   1   1 |   1   1 | 101 101
  rank 1 |  11  11  11 |  10  10 |  10  10
  rank 2 | 100 100 100 | 110 110 | 100 100
step 1, reduce-scatter (the receiver adds): 0->1 chunk 2, 1->2 chunk 0, 2->0 chunk 1
  rank 0 |   1   1   1 | 111 111 | 101 101
  rank 1 |  11  11  11 |  10  10 | 111 111
  rank 2 | 111 111 111 | 110 110 | 100 100
step 2, all-gather (the receiver copies): 0->1 chunk 1, 1->2 chunk 2, 2->0 chunk 0
  rank 0 | 111 111 111 | 111 111 | 101 101
  rank 1 |  11  11  11 | 111 111 | 111 111
  rank 2 | 111 111 111 | 110 110 | 111 111
step 3, all-gather (the receiver copies): 0->1 chunk 0, 1->2 chunk 1, 2->0 chunk 2
  rank 0 | 111 111 111 | 111 111 | 111 111
  rank 1 | 111 111 111 | 111 111 | 111 111
  rank 2 | 111 111 111 | 111 111 | 111 111
every rank holds 111, the sum; elements sent per rank: 10, 9, 9 (2(p - 1)/p · N = 9.33)
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ref_numpy._check import check_nonneg_int, check_positive_int

OPS = ("sum", "mean", "max", "min", "product")
DTYPES = ("float32", "float64", "int64")
REDUCE_SCATTER, ALL_GATHER = "reduce-scatter", "all-gather"
MAX_TRACE_RANKS = 18        # the trace's digits: 10**0 + ... + 10**17 still fits an int64

_COMBINE = {"sum": np.add, "mean": np.add, "max": np.maximum, "min": np.minimum,
            "product": np.multiply}


class Transfer(NamedTuple):
    """What one rank does at one step: one chunk out to the next rank, one chunk in from the
    previous one. Ranges are element offsets [start, stop) into the flattened buffer."""
    step: int
    phase: str               # "reduce-scatter" (the receiver combines) or "all-gather" (copies)
    rank: int
    send_to: int
    send_chunk: int
    send: tuple[int, int]
    recv_from: int
    recv_chunk: int
    recv: tuple[int, int]


def chunk_bounds(p: int, n: int) -> list[int]:
    """The p + 1 chunk boundaries of N elements: chunk c = [b[c], b[c + 1]).

    b_c = c·⌊N/p⌋ + min(c, N mod p), so sizes differ by at most one, larger first.

    >>> chunk_bounds(4, 10), chunk_bounds(3, 2)
    ([0, 3, 6, 8, 10], [0, 1, 2, 2])
    """
    p = check_positive_int("p", p)
    n = check_nonneg_int("n", n)
    q, rem = divmod(n, p)
    return [c * q + min(c, rem) for c in range(p + 1)]


def rank_schedule(p: int, n: int, rank: int) -> list[Transfer]:
    """The 2(p - 1) transfers of ``rank``: at step t it sends chunk (r - t) mod p to r + 1 and
    receives chunk (r - t - 1) mod p from r - 1."""
    bounds = chunk_bounds(p, n)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < p:
        raise ValueError(f"rank: expected an int in [0, {p}) but got {rank!r}")
    rank = int(rank)
    out = []
    for t in range(2 * (p - 1)):
        send, recv = (rank - t) % p, (rank - t - 1) % p
        out.append(Transfer(step=t, phase=REDUCE_SCATTER if t < p - 1 else ALL_GATHER,
                            rank=rank, send_to=(rank + 1) % p, send_chunk=send,
                            send=(bounds[send], bounds[send + 1]), recv_from=(rank - 1) % p,
                            recv_chunk=recv, recv=(bounds[recv], bounds[recv + 1])))
    return out


def schedule(p: int, n: int) -> list[list[Transfer]]:
    """Every rank's transfers, step by step: ``schedule(p, n)[t][r]``."""
    by_rank = [rank_schedule(p, n, r) for r in range(p)]
    return [[by_rank[r][t] for r in range(p)] for t in range(2 * (p - 1))]


def traffic(p: int, n: int, rank: int) -> tuple[int, int]:
    """(elements sent, elements received) by ``rank``: 2N - |c_{r+1}| - |c_{r+2}| and
    2N - |c_r| - |c_{r+1}|, each 2(p - 1)/p · N to within 2.

    >>> traffic(3, 7, 0), traffic(2, 5, 1)
    ((10, 9), (5, 5))
    """
    steps = rank_schedule(p, n, rank)
    return (sum(b - a for a, b in (t.send for t in steps)),
            sum(b - a for a, b in (t.recv for t in steps)))


def check_op(op, dtype) -> str:
    """Require a reduction of OPS that ``dtype`` can hold: the mean of integers is no integer,
    and an int64 buffer reduced in place cannot hold it."""
    if op not in OPS:
        raise ValueError(f"op: expected one of {', '.join(OPS)} but got {op!r}")
    if op == "mean" and not np.issubdtype(np.dtype(dtype), np.floating):
        raise TypeError(f"op: 'mean' needs a float dtype (float32 or float64) but got {dtype}")
    return op


def _check_inputs(inputs) -> list[np.ndarray]:
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"inputs: expected a list of numpy arrays, one per rank, but got "
                        f"{type(inputs).__name__}")
    if not inputs:
        raise ValueError("inputs: expected at least one rank's array but got 0 ranks")
    for i, x in enumerate(inputs):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"inputs[{i}]: expected a numpy.ndarray but got {type(x).__name__}")
        if x.dtype.name not in DTYPES:
            raise TypeError(f"inputs[{i}]: expected dtype {', '.join(DTYPES)} but got {x.dtype}")
        if x.shape != inputs[0].shape:
            raise ValueError(f"inputs[{i}]: expected shape {inputs[0].shape} (the shape of "
                             f"inputs[0]) but got {x.shape}")
        if x.dtype != inputs[0].dtype:
            raise TypeError(f"inputs[{i}]: expected dtype {inputs[0].dtype} (the dtype of "
                            f"inputs[0]) but got {x.dtype}")
    return list(inputs)


def ring_steps(buffers: list[np.ndarray], op: str = "sum"):
    """Run the ring over ``buffers`` (p flat arrays, one per rank, changed in place), yielding
    each step's p transfers after the step. All sends of a step leave before any receive lands,
    as when the ranks run at once."""
    p, n = len(buffers), buffers[0].size
    combine = _COMBINE[op]
    for transfers in schedule(p, n):
        sent = [buffers[t.rank][t.send[0]:t.send[1]].copy() for t in transfers]
        for t in transfers:
            region = buffers[t.rank][t.recv[0]:t.recv[1]]
            if t.phase == REDUCE_SCATTER:
                combine(region, sent[t.recv_from], out=region)
                if op == "mean" and t.step == p - 2:     # the owner divides its chunk, once
                    region /= p
            else:
                region[...] = sent[t.recv_from]
        yield transfers


def simulate(inputs: list[np.ndarray], op: str = "sum") -> tuple[list[np.ndarray], list[Transfer]]:
    """The ring all-reduce of ``inputs`` (one array per rank) over p in-memory buffers.

    Args:
        inputs: p >= 1 arrays of one shape and dtype (float32, float64 or int64), any shape
            (flattened); they are not changed.
        op: sum, mean, max, min or product (mean: float dtypes only).
    Returns:
        outputs: p arrays of the inputs' shape, bit-for-bit equal to each other.
        trace: every Transfer, step by step, rank by rank within a step.
    """
    inputs = _check_inputs(inputs)
    check_op(op, inputs[0].dtype)
    buffers = [x.reshape(-1).copy() for x in inputs]
    trace = [t for step in ring_steps(buffers, op) for t in step]
    return [b.reshape(inputs[0].shape) for b in buffers], trace


def format_trace(p: int, n: int) -> str:
    """The step-by-step picture of a sum over p ranks of N elements, rank r starting with 10**r
    everywhere (so each digit of a value names a rank summed into it). See the module example."""
    p, n = check_positive_int("p", p), check_nonneg_int("n", n)
    if p > MAX_TRACE_RANKS:
        raise ValueError(f"p: expected at most {MAX_TRACE_RANKS} ranks for a trace (one decimal "
                         f"digit per rank in an int64) but got {p}")
    bounds = chunk_bounds(p, n)
    buffers = [np.full(n, 10 ** r, dtype=np.int64) for r in range(p)]

    def table():
        return [f"  rank {r} | " + " | ".join(" ".join(f"{v:>{p}}" for v in b[lo:hi])
                                             for lo, hi in zip(bounds, bounds[1:]))
                for r, b in enumerate(buffers)]

    lines = [f"ring all-reduce (sum) of N = {n} elements on p = {p} ranks, "
             f"2(p - 1) = {2 * (p - 1)} steps",
             "chunks: " + ", ".join(f"{c} = [{bounds[c]}:{bounds[c + 1]})" for c in range(p)),
             "rank r starts with 10**r in every element: the digits of a value name the ranks "
             "summed into it",
             f"at step t rank r sends chunk (r - t) mod {p} to rank r + 1 and receives chunk "
             f"(r - t - 1) mod {p}", "start", *table()]
    for transfers in ring_steps(buffers):
        what = "adds" if transfers[0].phase == REDUCE_SCATTER else "copies"
        moves = ", ".join(f"{t.rank}->{t.send_to} chunk {t.send_chunk}" for t in transfers)
        lines += [f"step {transfers[0].step}, {transfers[0].phase} (the receiver {what}): "
                  f"{moves}", *table()]
    sent = ", ".join(str(traffic(p, n, r)[0]) for r in range(p))
    lines.append(f"every rank holds {'1' * p}, the sum; elements sent per rank: {sent} "
                 f"(2(p - 1)/p · N = {2 * (p - 1) / p * n:.2f})")
    return "\n".join(line.rstrip() for line in lines)
