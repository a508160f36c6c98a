"""The ring all-reduce schedule and its NumPy simulation (ref_numpy.ring_allreduce), and the
``crosscheck allreduce trace`` command."""
import argparse

import numpy as np
import pytest

from equivalence import allreduce_cli
from ref_numpy.ring_allreduce import (ALL_GATHER, DTYPES, OPS, REDUCE_SCATTER, chunk_bounds,
                                      format_trace, rank_schedule, schedule, simulate, traffic)

REFERENCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "product": np.prod}


def test_chunk_bounds_known_values():
    assert chunk_bounds(3, 7) == [0, 3, 5, 7]
    assert chunk_bounds(4, 10) == [0, 3, 6, 8, 10]
    assert chunk_bounds(5, 3) == [0, 1, 2, 3, 3, 3]          # N < p: empty chunks at the end
    assert chunk_bounds(4, 0) == [0, 0, 0, 0, 0]
    assert chunk_bounds(1, 9) == [0, 9]


@pytest.mark.parametrize("p", range(1, 9))
def test_chunks_cover_the_buffer_in_sizes_that_differ_by_at_most_one(p):
    for n in range(0, 3 * p + 2):
        b = chunk_bounds(p, n)
        sizes = np.diff(b)
        assert b[0] == 0 and b[-1] == n and len(b) == p + 1
        assert set(sizes) <= {n // p, -(-n // p)} and list(sizes) == sorted(sizes, reverse=True)


@pytest.mark.parametrize("p", range(1, 7))
def test_schedule_is_a_ring_and_every_chunk_flows_once_per_phase(p):
    n = 2 * p + 1
    steps = schedule(p, n)
    assert len(steps) == 2 * (p - 1)
    for t, step in enumerate(steps):
        assert [tr.rank for tr in step] == list(range(p))
        for tr in step:
            assert tr.step == t and tr.phase == (REDUCE_SCATTER if t < p - 1 else ALL_GATHER)
            assert (tr.send_to, tr.recv_from) == ((tr.rank + 1) % p, (tr.rank - 1) % p)
            assert (tr.send_chunk, tr.recv_chunk) == ((tr.rank - t) % p, (tr.rank - t - 1) % p)
            # what r receives is what r - 1 sends, range and all
            sender = step[tr.recv_from]
            assert (sender.send_chunk, sender.send) == (tr.recv_chunk, tr.recv)
            if t + 1 < len(steps):                     # received at t, forwarded at t + 1
                assert steps[t + 1][tr.rank].send_chunk == tr.recv_chunk
    for r in range(p):
        mine = [steps[t][r] for t in range(len(steps))]
        rs = [tr.recv_chunk for tr in mine if tr.phase == REDUCE_SCATTER]
        ag = [tr.recv_chunk for tr in mine if tr.phase == ALL_GATHER]
        assert sorted(rs) == sorted(set(range(p)) - {r})            # all but its own chunk
        assert sorted(ag) == sorted(set(range(p)) - {(r + 1) % p})  # all but the one it owns
    assert rank_schedule(p, n, p - 1) == [s[p - 1] for s in steps]


@pytest.mark.parametrize("p", range(1, 8))
def test_traffic_is_two_n_minus_two_chunks_and_near_the_bound(p):
    for n in (0, 1, p - 1, p, 97, 1000):
        sizes = np.diff(chunk_bounds(p, n))
        for r in range(p):
            sent, received = traffic(p, n, r)
            expect = 0 if p == 1 else 2 * n - sizes[(r + 1) % p] - sizes[(r + 2) % p]
            assert sent == expect
            assert received == (0 if p == 1 else 2 * n - sizes[r] - sizes[(r + 1) % p])
            assert abs(sent - 2 * (p - 1) / p * n) < 2
    if p == 2:
        assert traffic(2, 1001, 0)[0] == traffic(2, 1001, 1)[0] == 1001


def _inputs(p, n, op, dtype, seed=0):
    rng = np.random.default_rng([seed, p, n, OPS.index(op), DTYPES.index(dtype)])
    if dtype == "int64":
        return [rng.integers(-9, 10, n) if op == "product" else rng.integers(-10 ** 12, 10 ** 12, n)
                for _ in range(p)]
    if op == "product":
        return [rng.uniform(0.5, 1.5, n).astype(dtype) for _ in range(p)]
    return [rng.standard_normal(n).astype(dtype) for _ in range(p)]


@pytest.mark.parametrize("p", range(1, 6))
def test_simulation_equals_a_float64_reduction_on_every_rank(p):
    for n in sorted({0, 1, p - 1, 13, 1000}):
        for op in OPS:
            for dtype in DTYPES:
                if op == "mean" and dtype == "int64":
                    continue
                xs = _inputs(p, n, op, dtype)
                outs, trace = simulate(xs, op)
                ref = REFERENCE[op](np.stack([x.astype(np.float64) for x in xs]), axis=0)
                for out in outs:
                    assert out.dtype == np.dtype(dtype) and out.shape == (n,)
                    assert out.tobytes() == outs[0].tobytes()       # identical bits everywhere
                if dtype == "int64" or op in ("max", "min"):
                    assert np.array_equal(outs[0], ref.astype(dtype)), (p, n, op, dtype)
                else:
                    scale = np.abs(ref) if op == "product" else sum(np.abs(x) for x in xs)
                    tol = 2 * p * np.finfo(dtype).eps * scale
                    assert np.all(np.abs(outs[0] - ref) <= tol), (p, n, op, dtype)
                assert trace == [tr for step in schedule(p, n) for tr in step]


def test_float_sums_follow_the_ring_order_from_the_chunks_first_rank():
    """Chunk c is summed as (((x_c + x_{c+1}) + x_{c+2}) + ...), the order the docstring states."""
    p, n = 5, 23
    xs = [np.random.default_rng(k).standard_normal(n).astype(np.float32) * 10.0 ** k
          for k in range(p)]
    out = simulate(xs, "sum")[0][0]
    b = chunk_bounds(p, n)
    for c in range(p):
        acc = xs[c][b[c]:b[c + 1]].copy()
        for k in range(1, p):
            acc = acc + xs[(c + k) % p][b[c]:b[c + 1]]
        assert acc.tobytes() == out[b[c]:b[c + 1]].tobytes()
    plain = xs[0] + xs[1] + xs[2] + xs[3] + xs[4]
    assert not np.array_equal(plain, out)      # another order does round differently here


def test_mean_is_the_sum_divided_once_by_p():
    xs = _inputs(3, 10, "mean", "float64")
    assert np.array_equal(simulate(xs, "mean")[0][1], simulate(xs, "sum")[0][1] / 3)


def test_any_shape_is_reduced_flattened_and_inputs_are_untouched():
    xs = [np.arange(12.0).reshape(3, 4) + k for k in range(3)]
    copies = [x.copy() for x in xs]
    outs, _ = simulate(xs, "max")
    assert outs[2].shape == (3, 4) and np.array_equal(outs[2], xs[2])
    assert all(np.array_equal(x, c) for x, c in zip(xs, copies))


@pytest.mark.parametrize("call, error, message", [
    (lambda: chunk_bounds(0, 5), ValueError, "p: expected a positive int but got 0"),
    (lambda: chunk_bounds(3, -1), ValueError, "n: expected an int >= 0 but got -1"),
    (lambda: rank_schedule(3, 5, 3), ValueError, r"rank: expected an int in \[0, 3\) but got 3"),
    (lambda: simulate([]), ValueError, "inputs: expected at least one rank's array but got 0"),
    (lambda: simulate(np.zeros(3)), TypeError, "inputs: expected a list of numpy arrays"),
    (lambda: simulate([np.zeros(3), [0, 0, 0]]), TypeError,
     "inputs\\[1\\]: expected a numpy.ndarray but got list"),
    (lambda: simulate([np.zeros(3), np.zeros(4)]), ValueError,
     r"inputs\[1\]: expected shape \(3,\) \(the shape of inputs\[0\]\) but got \(4,\)"),
    (lambda: simulate([np.zeros(3), np.zeros(3, np.float32)]), TypeError,
     r"inputs\[1\]: expected dtype float64 \(the dtype of inputs\[0\]\) but got float32"),
    (lambda: simulate([np.zeros(3, np.int32)]), TypeError,
     "inputs\\[0\\]: expected dtype float32, float64, int64 but got int32"),
    (lambda: simulate([np.zeros(3)], "median"), ValueError,
     "op: expected one of sum, mean, max, min, product but got 'median'"),
    (lambda: simulate([np.zeros(3, np.int64)], "mean"), TypeError,
     r"op: 'mean' needs a float dtype \(float32 or float64\) but got int64"),
    (lambda: format_trace(19, 3), ValueError, "p: expected at most 18 ranks for a trace"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_trace_shows_chunks_steps_and_the_sum():
    text = format_trace(4, 10)
    lines = text.splitlines()
    assert lines[1] == "chunks: 0 = [0:3), 1 = [3:6), 2 = [6:8), 3 = [8:10)"
    assert lines[5] == "  rank 0 |    1    1    1 |    1    1    1 |    1    1 |    1    1"
    assert "step 0, reduce-scatter (the receiver adds): 0->1 chunk 0, 1->2 chunk 1, " \
           "2->3 chunk 2, 3->0 chunk 3" in lines
    assert "step 3, all-gather (the receiver copies): 0->1 chunk 1, 1->2 chunk 2, " \
           "2->3 chunk 3, 3->0 chunk 0" in lines
    # after the reduce-scatter (step 2) rank r owns chunk r + 1: the full sum 1111 is there
    start = next(i for i, line in enumerate(lines) if line.startswith("step 2,")) + 1
    for r, line in enumerate(lines[start:start + 4]):
        chunks = line.split(" | ")[1:]
        assert set(chunks[(r + 1) % 4].split()) == {"1111"}
        assert all("1111" not in c for k, c in enumerate(chunks) if k != (r + 1) % 4)
    assert lines[-5:-1] == ["  rank %d | " % r + " | ".join(
        ["1111 1111 1111"] * 2 + ["1111 1111"] * 2) for r in range(4)]
    assert lines[-1] == "every rank holds 1111, the sum; elements sent per rank: 15, 16, 15, 14 " \
                        "(2(p - 1)/p · N = 15.00)"


def _parser():
    parser = argparse.ArgumentParser(prog="crosscheck")
    allreduce_cli.add_arguments(parser.add_subparsers(dest="command").add_parser("allreduce"))
    return parser


def test_cli_trace_prints_the_trace(capsys):
    args = _parser().parse_args(["allreduce", "trace", "--ranks", "4", "--n", "10"])
    assert allreduce_cli.main(args) == 0
    assert capsys.readouterr().out == format_trace(4, 10) + "\n"


@pytest.mark.parametrize("argv, message", [
    (["--ranks", "0"], "allreduce trace: --ranks: expected a positive int but got 0"),
    (["--n", "-3"], "allreduce trace: --n: expected an int >= 0 but got -3"),
    (["--ranks", "40"], "allreduce trace: --ranks: expected at most 18 ranks"),
])
def test_cli_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert allreduce_cli.main(_parser().parse_args(["allreduce", "trace", *argv])) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
