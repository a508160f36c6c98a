"""Absolute position encodings (ref_numpy.positional): the sinusoidal table at hand-computed
positions and its rotation property, the learned table's lookup and scatter-add backward,
torch in float64 and float32, bad input, and the ``plot positional`` PNGs at a tiny size."""
import argparse
import math
import re

import numpy as np
import pytest

from equivalence import plot_positional
from ref_numpy import positional
from torch_bridge import rope as oracle
from torch_bridge.autograd import run_autograd


# --- sinusoidal -----------------------------------------------------------------------------

def test_sinusoidal_table_at_hand_computed_positions():
    """d = 4, base 10000: ω = (10000^0, 10000^(−2/4)) = (1, 0.01).
        PE(0)   = (sin 0, cos 0, sin 0, cos 0)                 = (0, 1, 0, 1)
        PE(1)   = (sin 1, cos 1, sin 0.01, cos 0.01)
        PE(100) = (sin 100, cos 100, sin 1, cos 1)
    and with base 100, ω = (1, 0.1): PE(10) = (sin 10, cos 10, sin 1, cos 1)."""
    table = positional.sinusoidal_table(101, 4)
    np.testing.assert_array_equal(table[0], [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(table[1], [math.sin(1), math.cos(1), math.sin(0.01),
                                          math.cos(0.01)], rtol=1e-15)
    np.testing.assert_allclose(table[100], [math.sin(100), math.cos(100), math.sin(1),
                                            math.cos(1)], rtol=1e-13)
    pe = positional.sinusoidal_encoding(np.array([10]), 4, base=100.0)
    np.testing.assert_allclose(pe[0], [math.sin(10), math.cos(10), math.sin(1), math.cos(1)],
                               rtol=1e-14)


def test_pe_of_pos_plus_k_is_a_fixed_rotation_of_pe_of_pos():
    """Vaswani §3.5: for each pair, (sin ω(p+k), cos ω(p+k)) = [[cos ωk, sin ωk],
    [−sin ωk, cos ωk]] (sin ωp, cos ωp), the same matrix for every p."""
    d, k = 16, 7
    table = positional.sinusoidal_table(60, d)
    omega = 10000.0 ** (-np.arange(0, d, 2) / d)
    c, s = np.cos(omega * k), np.sin(omega * k)
    sin_p, cos_p = table[:-k, 0::2], table[:-k, 1::2]
    np.testing.assert_allclose(table[k:, 0::2], c * sin_p + s * cos_p, atol=1e-13)
    np.testing.assert_allclose(table[k:, 1::2], -s * sin_p + c * cos_p, atol=1e-13)


def test_sinusoidal_offsets_position_ids_dtype_and_torch():
    table = positional.sinusoidal_table(20, 8)
    np.testing.assert_array_equal(positional.sinusoidal_table(5, 8, offset=15), table[15:])
    ids = np.array([[0, 3, 3], [19, 2, 0]])
    np.testing.assert_array_equal(positional.sinusoidal_encoding(ids, 8), table[ids])
    t32 = positional.sinusoidal_table(20, 8, dtype=np.float32)
    assert t32.dtype == np.float32
    np.testing.assert_array_equal(t32, table.astype(np.float32))
    import torch
    ref = oracle.sinusoidal(torch.arange(1000, 1097), 64).numpy()
    np.testing.assert_allclose(positional.sinusoidal_table(97, 64, offset=1000), ref, rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("call, error, message", [
    (lambda: positional.sinusoidal_table(4, 7), ValueError,
     "d: expected an even int (the table interleaves sin and cos pairs) but got 7"),
    (lambda: positional.sinusoidal_table(4, 0), ValueError, "d: expected a positive int but got 0"),
    (lambda: positional.sinusoidal_table(4, 8, base=0.0), ValueError,
     "base: expected a finite number > 0 but got 0.0"),
    (lambda: positional.sinusoidal_table(4, 8, dtype=np.int64), TypeError,
     "dtype: expected float32 or float64 but got int64"),
    (lambda: positional.sinusoidal_encoding(np.array([0, -2]), 8), ValueError,
     "positions: expected positions >= 0 but got -2 at index (1,)"),
    (lambda: positional.sinusoidal_encoding(np.array([0.5]), 8), TypeError,
     "positions: expected an integer dtype but got float64"),
])
def test_sinusoidal_bad_input(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# --- learned --------------------------------------------------------------------------------

def test_learned_known_answer_and_scatter_add():
    table = np.arange(12.0).reshape(4, 3)                          # row l = (3l, 3l + 1, 3l + 2)
    ids = np.array([[0, 1, 1], [3, 0, 1]])
    out, cache = positional.learned_position_forward(table, ids)
    np.testing.assert_array_equal(out[1, 0], [9.0, 10.0, 11.0])
    dout = np.ones((2, 3, 3))
    dout[0, 1] = 2.0
    # row 0 is used twice, row 1 three times (once with dout 2), row 2 never, row 3 once
    np.testing.assert_array_equal(positional.learned_position_backward(dout, cache),
                                  [[2.0] * 3, [4.0] * 3, [0.0] * 3, [1.0] * 3])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_learned_matches_torch_embedding(dtype):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((16, 5)).astype(dtype)
    ids = rng.integers(0, 16, size=(3, 9))
    dout = rng.standard_normal((3, 9, 5)).astype(dtype)
    out, cache = positional.learned_position_forward(table, ids)
    grad = positional.learned_position_backward(dout, cache)
    assert out.dtype == grad.dtype == dtype
    t_out, t_g = run_autograd(lambda t: {"out": oracle.learned(t["ids"], t["table"])},
                              {"ids": ids, "table": table}, ("table",), {"out": dout})
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out, t_out["out"], rtol=0, atol=tol)
    np.testing.assert_allclose(grad, t_g["table"], rtol=0, atol=tol)


def test_position_beyond_the_learned_table_names_its_length():
    table = np.zeros((16, 4))
    message = ("position_ids: position 16 at index (1, 2) is beyond the learned table of L = 16 "
               "positions (max_position_embeddings); expected positions in [0, 16)")
    with pytest.raises(ValueError, match=re.escape(message)):
        positional.learned_position_forward(table, np.array([[0, 1, 2], [13, 14, 16]]))


@pytest.mark.parametrize("call, error, message", [
    (lambda c: positional.learned_position_forward(np.zeros((4, 2)), np.array([-1])),
     ValueError, "position_ids: expected positions >= 0 but got -1 at index (0,)"),
    (lambda c: positional.learned_position_forward(np.zeros(4), np.array([0])), ValueError,
     "table: expected 2 dimensions but got 1"),
    (lambda c: positional.learned_position_backward(np.zeros((2, 3)), c), ValueError,
     "dout: expected shape (..., C) with (...) the shape of position_ids (3, 2) but got (2, 3)"),
    (lambda c: positional.learned_position_backward(np.zeros((3, 2), np.float32), c), TypeError,
     "dout: expected dtype float64 (the dtype of table) but got float32"),
])
def test_learned_bad_input(call, error, message):
    _, cache = positional.learned_position_forward(np.zeros((4, 2)), np.array([0, 1, 3]))
    with pytest.raises(error, match=re.escape(message)):
        call(cache)


# --- plot positional ------------------------------------------------------------------------

def _plot_args(*argv):
    parser = argparse.ArgumentParser()
    plot_positional.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_plot_positional_writes_three_non_empty_pngs(tmp_path):
    out = tmp_path / "plots"
    rows = plot_positional.run(_plot_args("--out", str(out), "--d", "8", "--positions", "16",
                                          "--original-max", "64"))
    assert [r["wrote"] for r in rows] == [str(out / n) for n in
                                          ("sinusoid.png", "rope_frequencies.png",
                                           "rope_relative.png")]
    for r in rows:
        data = open(r["wrote"], "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, r
        assert r["shows"]


@pytest.mark.parametrize("argv, message", [
    (("--d", "7"), "--d: expected an even int (sin/cos and RoPE pairs) but got 7"),
    (("--positions", "0"), "--positions: expected a positive int but got 0"),
])
def test_plot_positional_bad_arguments(tmp_path, argv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        plot_positional.run(_plot_args("--out", str(tmp_path), *argv))
