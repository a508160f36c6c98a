"""The ring all-reduce across processes (torch_bridge.distributed), over gloo on 127.0.0.1.

Each world size p is spawned once and runs its whole matrix of (shape, op, dtype, segment) cases
in one call. Every result is compared with dist.all_reduce on the same inputs, with a float64
NumPy reduction, and bit for bit with the NumPy simulation of ref_numpy.ring_allreduce; every
rank must hold the same bits, send exactly the schedule's elements and follow its trace. Then bad
input (an error on every rank, the group still usable), and faults: a rank killed or stopped
mid-collective, and a rank that never joins.
"""
import argparse
import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from equivalence.bench import allreduce as bench
from ref_numpy.ring_allreduce import DTYPES, OPS, chunk_bounds, simulate, traffic
from torch_bridge.distributed import (DEFAULT_SEGMENT, GroupError, LocalGroup, RingTimeout,
                                      join_group, ring_all_reduce, _free_port)

PRIME, BIG = 1009, 10 ** 6
SMALL_SEGMENT = 64           # several segments per chunk at the prime, the last one partial
BIG_SEGMENT = 1 << 17        # several segments per chunk at 10^6 too (the default is larger)
DIST_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
            "min": dist.ReduceOp.MIN, "product": dist.ReduceOp.PRODUCT}
REFERENCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "product": np.prod}
FAULT_TIMEOUT = 1.0


def _cases(p):
    """(shape, op, dtype, segment, transposed): every op and dtype (mean is float only) at
    N = 0, 1, p - 1 and a prime with small segments and at 10^6 with larger ones; a 3-D,
    an empty 2-D and a non-contiguous tensor."""
    sizes = [(n, SMALL_SEGMENT) for n in sorted({0, 1, p - 1, PRIME})] + [(BIG, BIG_SEGMENT)]
    cases = [((n,), op, dtype, segment, False)
             for n, segment in sizes for op in OPS for dtype in DTYPES
             if not (op == "mean" and dtype == "int64")]
    cases += [((37,), "sum", "float64", 1, False),
              ((2, 3, 5), "sum", "float32", 4, False),
              ((0, 4), "max", "int64", 4, False),
              ((5, 7), "product", "float64", 3, True)]
    return cases


def _input(case, p, rank):
    """Rank ``rank``'s input for ``case`` as NumPy (the transposed case: a transposed view)."""
    shape, op, dtype, _, transposed = case
    rng = np.random.default_rng([p, rank, int(np.prod(shape)), OPS.index(op), DTYPES.index(dtype)])
    if dtype == "int64":
        hi = {"sum": 10 ** 12, "product": 9}.get(op, 10 ** 15)
        x = rng.integers(-hi, hi + 1, size=shape)
    elif op == "product":
        x = rng.uniform(0.5, 1.5, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    else:
        x = rng.standard_normal(shape)
    x = x.astype(dtype)
    return x.T if transposed else x


def _rank_runs_cases(cases):
    """On each rank: the ring and dist.all_reduce on the same inputs, for every case."""
    p, rank = dist.get_world_size(), dist.get_rank()
    out = []
    for case in cases:
        x = torch.from_numpy(_input(case, p, rank))
        ring = x.clone()                                   # keeps a transposed view's strides
        before = (ring.data_ptr(), ring.stride())
        stats = ring_all_reduce(ring, case[1], segment=case[3])
        ref = x.contiguous().clone()
        dist.all_reduce(ref, op=DIST_OPS[case[1]])
        if case[1] == "mean":
            ref.div_(p)
        got = ring.numpy()
        out.append({"stats": stats, "in_place": (ring.data_ptr(), ring.stride()) == before,
                    "digest": hashlib.sha256(np.ascontiguousarray(got).tobytes()).hexdigest(),
                    "ring": got if rank == 0 else None, "dist": ref.numpy() if rank == 0 else None})
    return out


@pytest.fixture(scope="module", params=[1, 2, 3, 4, 5], ids=lambda p: f"p{p}")
def ring(request):
    """(p, cases, the per-case results of every rank, the inputs of every case)."""
    p = request.param
    cases = _cases(p)
    with LocalGroup(p, timeout=30) as group:
        results = group.call(_rank_runs_cases, cases)
    inputs = [[np.ascontiguousarray(_input(c, p, r)) for r in range(p)] for c in cases]
    return p, cases, results, inputs


def _tolerance(op, xs, ref, dtype):
    """A bound on the rounding of a p-term sum / mean / product in ``dtype`` (and of the float64
    reference itself): 2p·eps times the sum of magnitudes (sum, mean) or the magnitude
    (product)."""
    p, eps = len(xs), np.finfo(dtype).eps
    if op == "product":
        return 2 * p * eps * np.abs(ref)
    magnitude = sum(np.abs(x.astype(np.float64)) for x in xs)
    return 2 * p * eps * magnitude / (p if op == "mean" else 1)


def test_results_equal_dist_all_reduce_numpy_and_the_simulation(ring):
    p, cases, results, inputs = ring
    for case, xs, r0 in zip(cases, inputs, results[0]):
        shape, op, dtype, _, transposed = case
        got, theirs = r0["ring"], r0["dist"]
        assert got.shape == (shape[::-1] if transposed else shape), case
        assert got.dtype == np.dtype(dtype) and r0["in_place"], case
        assert np.array_equal(got, simulate(xs, op)[0][0]), f"not the simulation's bits: {case}"
        ref = REFERENCE[op](np.stack([x.astype(np.float64) for x in xs]), axis=0)
        if dtype == "int64" or op in ("max", "min"):
            assert np.array_equal(got, ref.astype(dtype)), case
            assert np.array_equal(got, theirs), f"not dist.all_reduce's: {case}"
        else:
            tol = _tolerance(op, xs, ref, dtype)
            assert np.all(np.abs(got - ref) <= tol), case
            assert np.all(np.abs(got.astype(np.float64) - theirs) <= 2 * tol), case


def test_every_rank_holds_the_same_bits(ring):
    p, cases, results, _ = ring
    for k, case in enumerate(cases):
        assert len({results[r][k]["digest"] for r in range(p)}) == 1, case


def test_each_rank_sends_the_schedules_elements(ring):
    p, cases, results, _ = ring
    for k, (shape, op, dtype, segment, _) in enumerate(cases):
        n = int(np.prod(shape))
        bounds = chunk_bounds(p, n)
        size = np.dtype(dtype).itemsize
        for rank in range(p):
            s = results[rank][k]["stats"]
            sent, received = traffic(p, n, rank)
            assert (s.elements_sent, s.elements_received) == (sent, received)
            assert (s.bytes_sent, s.bytes_received) == (sent * size, received * size)
            assert abs(s.elements_sent - 2 * (p - 1) / p * n) < 2
            chunks = [(rank - t) % p for t in range(2 * (p - 1))]        # sent at step t
            assert s.messages_sent == sum(-(-(bounds[c + 1] - bounds[c]) // segment)
                                          for c in chunks)


def test_the_process_trace_is_the_simulations(ring):
    p, cases, results, inputs = ring
    for k, (xs, case) in enumerate(zip(inputs, cases)):
        trace = simulate(xs, case[1])[1]
        for rank in range(p):
            assert results[rank][k]["stats"].trace == tuple(t for t in trace if t.rank == rank)


# ----------------------------------------------------------------------------- bad input

def _rank_makes_bad_calls():
    """Each bad call's (exception type, message) on this rank, then a good call's result."""
    rank = dist.get_rank()
    calls = [
        lambda: ring_all_reduce(torch.zeros((3, 4) if rank == 1 else (12,))),
        lambda: ring_all_reduce(torch.zeros(6, dtype=torch.float64 if rank == 2 else None)),
        lambda: ring_all_reduce(torch.zeros(5 if rank == 0 else 6)),
        lambda: ring_all_reduce(torch.zeros(6), "max" if rank == 1 else "sum"),
        lambda: ring_all_reduce(torch.zeros(6), "median"),
        lambda: ring_all_reduce(torch.zeros(6, dtype=torch.int64), "mean"),
        lambda: ring_all_reduce(torch.zeros(6, dtype=torch.int32)),
        lambda: ring_all_reduce(torch.zeros(6), segment=0),
        lambda: ring_all_reduce([1.0, 2.0]),
        lambda: ring_all_reduce(torch.zeros(6), timeout=-1),
    ]
    out = []
    for call in calls:
        try:
            call()
            out.append(None)
        except (TypeError, ValueError) as exc:
            out.append((type(exc).__name__, str(exc)))
    x, y = torch.full((4,), float(rank)), torch.full((4,), float(rank))
    ring_all_reduce(x)
    ring_all_reduce(y, check=False)
    return out, x.tolist() + y.tolist()


def test_bad_input_is_a_clear_error_on_every_rank_and_the_group_stays_usable():
    with LocalGroup(3, timeout=10) as group:
        results = group.call(_rank_makes_bad_calls)
    errors = [r[0] for r in results]
    assert errors[0] == errors[1] == errors[2]          # the same error, word for word
    same = "tensor: ring_all_reduce needs the same shape, dtype, op and segment on every rank "
    seg = f"segment {DEFAULT_SEGMENT}"
    assert errors[0] == [
        ("ValueError", same + f"but got ranks 0, 2: shape (12,) float32, op 'sum', {seg}; "
                              f"rank 1: shape (3, 4) float32, op 'sum', {seg}"),
        ("ValueError", same + f"but got ranks 0, 1: shape (6,) float32, op 'sum', {seg}; "
                              f"rank 2: shape (6,) float64, op 'sum', {seg}"),
        ("ValueError", same + f"but got rank 0: shape (5,) float32, op 'sum', {seg}; "
                              f"ranks 1, 2: shape (6,) float32, op 'sum', {seg}"),
        ("ValueError", same + f"but got ranks 0, 2: shape (6,) float32, op 'sum', {seg}; "
                              f"rank 1: shape (6,) float32, op 'max', {seg}"),
        ("ValueError", "op: expected one of sum, mean, max, min, product but got 'median'"),
        ("TypeError", "op: 'mean' needs a float dtype (float32 or float64) but got int64"),
        ("TypeError", "tensor: expected dtype float32, float64, int64 but got torch.int32"),
        ("ValueError", "segment: expected a positive int but got 0"),
        ("TypeError", "tensor: expected a torch.Tensor but got list"),
        ("ValueError", "timeout: expected seconds > 0 but got -1"),
    ]
    assert [r[1] for r in results] == [[3.0] * 8] * 3      # 0 + 1 + 2, with check and without


def test_without_a_process_group_it_says_so():
    with pytest.raises(RuntimeError, match=r"no process group; call dist.init_process_group"):
        ring_all_reduce(torch.zeros(3))


def test_a_world_of_zero_ranks_is_an_error():
    with pytest.raises(ValueError, match=r"world_size: expected a positive int but got 0"):
        LocalGroup(0)
    with pytest.raises(ValueError, match=r"world_size: expected a positive int but got 0"):
        join_group(0, 0, port=1)


# ----------------------------------------------------------------------------- faults

def _rank_reduces_until(victim, how, after):
    """Every rank all-reduces a 2M-element tensor over and over; ``victim`` sends itself
    ``how`` (SIGKILL: dies; SIGSTOP: hangs) ``after`` seconds in, mid-collective."""
    if dist.get_rank() == victim:
        threading.Timer(after, os.kill, (os.getpid(), how)).start()
    x = torch.ones(1 << 21)
    for _ in range(100_000):
        ring_all_reduce(x, "max", timeout=FAULT_TIMEOUT)


def _alive(pids):
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        left = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
        if not left:
            return []
        time.sleep(0.05)
    return left


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_rank_that_dies_or_hangs_mid_collective_fails_the_others_in_bounded_time(how):
    p, victim = 4, 2
    group = LocalGroup(p, timeout=FAULT_TIMEOUT)
    pids = group.pids
    t0 = time.monotonic()
    with pytest.raises(GroupError) as info:
        group.call(_rank_reduces_until, victim, how, 0.3)
    elapsed = time.monotonic() - t0 - 0.3
    failures = info.value.failures
    assert set(failures) == set(range(p))
    if how == signal.SIGKILL:
        assert failures[victim] == "the process was killed by SIGKILL"
    else:
        assert failures[victim].startswith(f"no report {FAULT_TIMEOUT:g} s after rank ")
    named = set()
    for rank in set(range(p)) - {victim}:
        message = failures[rank]
        assert message.startswith(f"RingTimeout: rank {rank}: "), message
        peer = int(message.split(" rank ")[2].split()[0])
        assert peer in ((rank - 1) % p, (rank + 1) % p), message      # a neighbour
        named.add(peer)
    assert victim in named
    if how == signal.SIGSTOP:       # alive but silent: only the timeout can notice
        assert any(f"timed out after {FAULT_TIMEOUT:g} s" in m for m in failures.values())
    assert elapsed < 2 * FAULT_TIMEOUT + 3, elapsed
    left = _alive(pids)
    for pid in left:                    # leave nothing behind, even when failing
        os.kill(pid, signal.SIGKILL)
    assert left == [], "processes left behind"


def _join(rank, world_size, port, conn):
    try:
        join_group(rank, world_size, port=port, timeout=1.0)
        conn.send("joined")
    except RingTimeout as exc:
        conn.send(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("absent", [2, 0])
def test_a_rank_that_never_joins_is_named_by_the_others(absent):
    ctx = multiprocessing.get_context("forkserver")
    port = _free_port()
    started = []
    for rank in sorted({0, 1, 2} - {absent}):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_join, args=(rank, 3, port, theirs), daemon=True)
        proc.start()
        started.append((rank, proc, ours))
    t0 = time.monotonic()
    for rank, proc, conn in started:
        assert conn.poll(10), f"rank {rank} did not report"
        message = conn.recv()
        proc.join(5)
        assert message.startswith(f"RingTimeout: rank {rank}: rank {absent} never joined"), message
    assert time.monotonic() - t0 < 6


# ----------------------------------------------------------------------------- torchrun, bench

def test_the_same_function_runs_under_torchrun(tmp_path):
    root = Path(__file__).resolve().parent.parent
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    # Each worker's stdout goes to its own log file (--redirects 1): the console copy that
    # torchrun relays can lose a worker's last line when the job ends.
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", "--log-dir", str(tmp_path), "--redirects", "1",
                           "-m", "torch_bridge.distributed",
                           "--elements", "1009", "--op", "max", "--dtype", "int64"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    logs = sorted(tmp_path.glob("**/stdout.log"))
    assert len(logs) == 2, logs
    lines = sorted(l for log in logs for l in log.read_text().splitlines() if l.startswith("rank "))
    assert [l.split(":")[0] for l in lines] == ["rank 0/2", "rank 1/2"]
    assert all("ring == dist.all_reduce (max, 1009 int64, max |difference| 0)" in l
               for l in lines), lines


def _bench_parser():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser


def test_bench_runs_at_a_tiny_size_and_plots(tmp_path):
    parser = _bench_parser()
    plot = tmp_path / "busbw.png"
    args = parser.parse_args(["--ranks", "2", "--sizes", "1M", "16M", "--repeats", "2",
                              "--warmup", "0", "--min-time", "0", "--plot", str(plot)])
    tables = bench.run(args)
    assert list(tables) == ["bandwidth", "ratios", "timings", "plots"]
    rows = tables["bandwidth"]
    assert [(r["size"], r["side"]) for r in rows] == [
        ("1 MiB", "ring"), ("1 MiB", "dist.all_reduce"),
        ("16 MiB", "ring"), ("16 MiB", "dist.all_reduce")]
    for r in rows:
        assert r["algbw GB/s"] == pytest.approx(r["bytes"] / r["median s"] / 1e9)
        assert r["busbw GB/s"] == pytest.approx(r["algbw GB/s"] * 2 * (2 - 1) / 2)
    by = {(r["size"], r["side"]): r["median s"] for r in rows}
    for r in tables["ratios"]:
        assert r["ratio"] == pytest.approx(by[r["size"], "ring"] / by[r["size"], "dist.all_reduce"])
    assert [r["target"] for r in tables["ratios"]] == ["-", "<= 1.25"]
    assert [r["all-reduces per call"] for r in tables["timings"]] == [4, 4, 1, 1]
    assert tables["plots"] == [{"wrote": str(plot.resolve()),
                                "shows": "busbw vs size: the ring and dist.all_reduce, each p"}]
    assert plot.stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--ranks", "1"], "--ranks: expected world sizes >= 2"),
    (["--segment", "0"], "--segment: expected a positive int but got 0"),
])
def test_bench_rejects_bad_arguments(argv, message):
    with pytest.raises(ValueError, match=message):
        bench.run(_bench_parser().parse_args(argv))
    with pytest.raises(argparse.ArgumentTypeError, match="a positive multiple of 4"):
        bench._size("6")
