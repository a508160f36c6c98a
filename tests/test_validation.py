"""Sizes, counts, seeds and block sizes are validated like every other argument: a bad one is a
ValueError/TypeError naming the argument with the expected and the actual value.

Before these checks ``causal_mask(-2, 3)`` returned a (0, 3) array, ``dropout_keep_mask`` passed a
negative seed to NumPy (whose message does not say which argument was wrong), a negative
``block_size`` made ``online_normalizer`` skip every block and return (-inf, 0), and
``project_qkv(..., n_head=0, n_kv_head=0)`` divided by zero.
"""
import re

import numpy as np
import pytest

from ref_numpy import attention, mha, online_softmax
from ref_numpy._check import check_nonneg_int

X4 = np.ones((1, 2, 3, 4))


@pytest.mark.parametrize("value, error, message", [
    (-1, ValueError, "n: expected an int >= 0 but got -1"),
    (True, TypeError, "n: expected an int >= 0 but got bool (True)"),
    (2.0, TypeError, "n: expected an int >= 0 but got float (2.0)"),
    ("3", TypeError, "n: expected an int >= 0 but got str ('3')"),
])
def test_check_nonneg_int_rejects(value, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        check_nonneg_int("n", value)


def test_check_nonneg_int_accepts_zero_and_numpy_ints():
    assert check_nonneg_int("n", 0) == 0
    n = check_nonneg_int("n", np.int64(5))
    assert n == 5 and type(n) is int


def test_masks_accept_empty_sizes_and_numpy_ints():
    assert attention.causal_mask(0, 3).shape == (0, 3)
    assert attention.window_mask(np.int32(2), 0, 1).shape == (2, 0)
    assert attention.key_mask_from_lengths([0, 0], 0).shape == (2, 0)
    assert attention.attention_mask(0, 0, 0, 0, causal=True).shape == (1, 1, 0, 0)


@pytest.mark.parametrize("call, error, message", [
    (lambda: attention.causal_mask(-2, 3), ValueError, "Tq: expected an int >= 0 but got -2"),
    (lambda: attention.causal_mask(2, -1), ValueError, "Tk: expected an int >= 0 but got -1"),
    (lambda: attention.causal_mask(True, 3), TypeError,
     "Tq: expected an int >= 0 but got bool (True)"),
    (lambda: attention.causal_mask(2, 3.0), TypeError,
     "Tk: expected an int >= 0 but got float (3.0)"),
    (lambda: attention.window_mask(-1, 4, 2), ValueError, "Tq: expected an int >= 0 but got -1"),
    (lambda: attention.window_mask(4, False, 2), TypeError,
     "Tk: expected an int >= 0 but got bool (False)"),
    (lambda: attention.key_mask_from_lengths([1], -1), ValueError,
     "Tk: expected an int >= 0 but got -1"),
    (lambda: attention.key_mask_from_lengths([1], 4.0), TypeError,
     "Tk: expected an int >= 0 but got float (4.0)"),
    (lambda: attention.attention_mask(-1, 1, 2, 2), ValueError,
     "B: expected an int >= 0 but got -1"),
    (lambda: attention.attention_mask(1, 1.0, 2, 2), TypeError,
     "H: expected an int >= 0 but got float (1.0)"),
    (lambda: attention.attention_mask(1, 1, -3, 2, causal=True), ValueError,
     "Tq: expected an int >= 0 but got -3"),
    (lambda: attention.attention_mask(1, 1, 2, True), TypeError,
     "Tk: expected an int >= 0 but got bool (True)"),
])
def test_mask_sizes_are_checked(call, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call()


@pytest.mark.parametrize("shape, seed, error, message", [
    ((2, 2), -1, ValueError, "seed: expected an int >= 0 but got -1"),
    ((2, 2), True, TypeError, "seed: expected an int >= 0 but got bool (True)"),
    ((2, 2), 1.5, TypeError, "seed: expected an int >= 0 but got float (1.5)"),
    ((2, 2), None, TypeError, "seed: expected an int >= 0 but got NoneType (None)"),
    ([2, 2], 0, TypeError, "shape: expected a tuple of ints >= 0 but got list"),
    (4, 0, TypeError, "shape: expected a tuple of ints >= 0 but got int"),
    ((2, -1), 0, ValueError, "shape[1]: expected an int >= 0 but got -1"),
    ((2.0, 2), 0, TypeError, "shape[0]: expected an int >= 0 but got float (2.0)"),
])
def test_dropout_keep_mask_checks_shape_and_seed(shape, seed, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        attention.dropout_keep_mask(shape, 0.5, seed)


def test_dropout_keep_mask_accepts_numpy_seed_and_empty_shape():
    a = attention.dropout_keep_mask((3, 4), 0.5, np.int64(7))
    np.testing.assert_array_equal(a, attention.dropout_keep_mask((3, 4), 0.5, 7))
    assert attention.dropout_keep_mask((0, np.int64(2)), 0.5, 0).shape == (0, 2)


@pytest.mark.parametrize("fwd", [attention.attention_forward, attention.attention_forward_loop,
                                 attention.attention_forward_einsum])
def test_attention_forward_names_a_bad_seed(fwd):
    with pytest.raises(ValueError, match=r"^seed: expected an int >= 0 but got -1$"):
        fwd(X4, X4, X4, dropout_p=0.5, seed=-1)


@pytest.mark.parametrize("x, block_size, error, message", [
    (np.ones((2, 5)), 0, ValueError, "block_size: expected an int >= 1 but got 0"),
    (np.ones((2, 5)), -1, ValueError, "block_size: expected an int >= 1 but got -1"),
    (np.ones((2, 5)), 2.0, TypeError, "block_size: expected an int but got float"),
    (np.ones((2, 5)), True, TypeError, "block_size: expected an int but got bool"),
    (np.ones((2, 5), dtype=np.int64), 2, TypeError,
     "x: expected dtype float32 or float64 but got int64"),
    (np.array(1.0), 2, ValueError, "x: expected shape (..., N) but got ()"),
])
def test_online_normalizer_checks_its_arguments(x, block_size, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        online_softmax.online_normalizer(x, block_size)


def test_online_normalizer_accepts_a_numpy_block_size():
    x = np.log(np.arange(1.0, 6.0))[None]                    # row sum of exp(x) = 15, max log 5
    m, l = online_softmax.online_normalizer(x, np.int64(2))
    assert m[0] == pytest.approx(np.log(5.0)) and l[0] == pytest.approx(3.0)


@pytest.mark.parametrize("n_head, n_kv_head, error, message", [
    (0, 0, ValueError, "n_head: expected an int >= 1 but got 0"),
    (2, 0, ValueError, "n_kv_head: expected an int >= 1 but got 0"),
    (2.0, 1, ValueError, "n_head: expected an int >= 1 but got 2.0"),
    (3, 2, ValueError, "n_kv_head: expected a divisor of n_head = 3 but got 2"),
    (3, 3, ValueError, "w_qkv: expected shape (C, (H + 2·Hkv)·D) = (4, 9·D) but got (4, 12)"),
])
def test_project_qkv_checks_the_head_counts(n_head, n_kv_head, error, message):
    x, w_qkv = np.ones((2, 3, 4)), np.ones((4, 12))
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        mha.project_qkv(x, w_qkv, None, n_head, n_kv_head)


def test_project_qkv_splits_heads():
    x, w_qkv = np.ones((2, 3, 4)), np.ones((4, 12))          # H = 2, Hkv = 1, D = 3
    q, k, v = mha.project_qkv(x, w_qkv, None, 2, 1)
    assert (q.shape, k.shape, v.shape) == ((2, 2, 3, 3), (2, 1, 3, 3), (2, 1, 3, 3))


def test_nan_scans_skipped_lasts_for_its_block_only():
    from ref_numpy._check import check_float, nan_scans_skipped
    nan = np.array([1.0, np.nan])
    with pytest.raises(ValueError, match=r"x: contains NaN \(first at index \(1,\)\)"):
        check_float("x", nan)
    with pytest.raises(RuntimeError):
        with nan_scans_skipped():
            check_float("x", nan)                       # skipped here
            with pytest.raises(TypeError, match="dtype"):
                check_float("x", np.array([1, 2]))      # other checks still run
            raise RuntimeError
    with pytest.raises(ValueError, match="contains NaN"):
        check_float("x", nan)                           # and back after an exception
