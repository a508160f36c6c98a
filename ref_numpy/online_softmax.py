"""Online softmax: one streaming pass over blocks of a row keeps (running max m, running sum l).

Milakov & Gimelshein 2018, "Online normalizer calculation for softmax" (arXiv:1805.02867),
Algorithm 3; the same recurrence is the inner loop of FlashAttention.

The state of a piece of a row (any set of its entries) is the pair

    m = max_j x_j,     l = sum_j exp(x_j - m).

Two states of disjoint pieces merge into the state of their union:

    m = max(m_a, m_b)
    l = l_a * exp(m_a - m) + l_b * exp(m_b - m)

(each partial sum is rescaled from its own max to the common one). The merge is associative and
commutative, so a row may be cut into blocks of any size and the block states combined in any
order or tree: left to right (the streaming pass below) or as a parallel reduction (a GPU block
reduction). At the end softmax(x)_i = exp(x_i - m) / l, the same numbers as ref_numpy.softmax.

Masking: an empty or fully -inf piece has the state (m, l) = (-inf, 0), the identity of the merge.
Merging two such states would compute exp(-inf - (-inf)) = NaN; the merge shifts by 0 instead
when m = -inf, so exp(-inf - 0) = 0 and the result stays (-inf, 0). A fully -inf row therefore
ends with l = 0 and returns zeros (the attention convention for a fully masked query row; torch's
softmax returns NaN there), and passes zero gradient.

Backward: the output is softmax(x), so the gradient is softmax's, dx = y * (dout - sum(dout * y));
online_softmax_backward computes it with the helper that ref_numpy.softmax.softmax_backward uses
(each backward accepts only its own forward's cache).

Shapes: x (..., N) after moving ``axis`` last; N is the row length, (...) the rows. A state is a
pair of arrays of shape (...), one entry per row.
"""
from __future__ import annotations

import numpy as np

from ref_numpy import softmax
from ref_numpy._check import check_cache, check_float


def block_state(x_block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The state (m, l) of a block of entries along the last axis.

    m = max_j x_j,  l = sum_j exp(x_j - m);  an empty or fully -inf block gives (-inf, 0).

    >>> m, l = block_state(np.array([0.0, np.log(3.0)]))
    >>> float(m), round(float(l), 12)      # max is log 3; l = exp(-log 3) + exp(0) = 4/3
    (1.0986122886681098, 1.333333333333)

    Args:
        x_block: (..., n) float32 or float64, n >= 0.
    Returns:
        (m, l): each (...), the dtype of x_block.
    """
    m = np.max(x_block, axis=-1, initial=-np.inf)                  # (...)
    # shift by 0 where m = -inf so that exp(-inf - 0) = 0 instead of exp(NaN)
    m_shift = np.where(np.isneginf(m), 0.0, m)
    l = np.sum(np.exp(x_block - m_shift[..., None]), axis=-1)       # (...)
    return m, l


def merge_states(m_a: np.ndarray, l_a: np.ndarray, m_b: np.ndarray, l_b: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Merge the states of two disjoint pieces of the same rows into the state of their union.

    m = max(m_a, m_b),  l = l_a exp(m_a - m) + l_b exp(m_b - m).  Associative and commutative;
    (-inf, 0) is its identity.

    >>> m, l = merge_states(np.array(0.0), np.array(1.0), np.array(np.log(3.0)), np.array(1.0))
    >>> round(float(l), 12)                  # the state of [0, log 3] again: 4/3
    1.333333333333

    Args:
        m_a, l_a, m_b, l_b: (...) each, one entry per row.
    Returns:
        (m, l): each (...).
    """
    for name, arr in (("l_a", l_a), ("m_b", m_b), ("l_b", l_b)):
        if np.shape(arr) != np.shape(m_a):
            raise ValueError(f"{name}: expected the shape of m_a {np.shape(m_a)} but got "
                             f"{np.shape(arr)}")
    m = np.maximum(m_a, m_b)
    # rescale each partial sum to the common max; where m = -inf both sums are 0 and stay 0
    m_shift = np.where(np.isneginf(m), 0.0, m)
    l = l_a * np.exp(m_a - m_shift) + l_b * np.exp(m_b - m_shift)
    return m, l


def online_normalizer(x: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The state (m, l) of whole rows (last axis), streamed over blocks of ``block_size``.

    for each block b:  (m, l) <- merge((m, l), block_state(b)),  starting from (-inf, 0).

    Args:
        x: (..., N) float32 or float64.
        block_size: entries per block, an int >= 1 (a block larger than N is the whole row).
    Returns:
        (m, l): each (...).
    """
    check_float("x", x)
    if x.ndim < 1:
        raise ValueError(f"x: expected shape (..., N) but got {x.shape}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(f"block_size: expected an int but got {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size: expected an int >= 1 but got {block_size}")
    n = x.shape[-1]
    m = np.full(x.shape[:-1], -np.inf, dtype=x.dtype)               # (...)
    l = np.zeros(x.shape[:-1], dtype=x.dtype)                        # (...)
    for start in range(0, n, block_size):
        m_b, l_b = block_state(x[..., start:start + block_size])
        m, l = merge_states(m, l, m_b, l_b)
    return m, l


def online_softmax_forward(x: np.ndarray, axis: int = -1, block_size: int = 32,
                           ) -> tuple[np.ndarray, dict]:
    """Softmax along ``axis`` computed by the online normalizer (streaming over blocks).

    (m, l) = streamed state of the row;  y_i = exp(x_i - m) / l  (a fully -inf row gives y = 0).

    Args:
        x: (...) float32 or float64; finite or -inf (masked), no NaN or +inf.
        axis: the dimension that is normalised.
        block_size: entries streamed per step, any int >= 1.
    Returns:
        out: (...) like x, equal to softmax(x, axis) up to rounding.
        cache: {"op": "online_softmax_forward", "out": y, "axis": axis}.
    """
    check_float("x", x)
    axis = softmax.check_axis(axis, x.ndim)
    softmax.check_no_posinf("x", x)
    rows = np.moveaxis(x, axis, -1)                                  # (..., N)
    # block_size is checked by online_normalizer before any block is read
    m, l = online_normalizer(rows, block_size)                       # (...), (...)
    # second pass: y_i = exp(x_i - m) / l; a fully masked row has m = -inf, l = 0 and gets 0
    m_shift = np.where(np.isneginf(m), 0.0, m)
    y = np.exp(rows - m_shift[..., None]) / np.where(l == 0, 1.0, l)[..., None]   # (..., N)
    y = np.moveaxis(y, -1, axis)                                     # like x
    return y, {"op": "online_softmax_forward", "out": y, "axis": axis}


def online_softmax_backward(dout: np.ndarray, cache: dict) -> np.ndarray:
    """Gradient of online softmax with respect to x: exactly softmax's.

    The forward computes the same function y = softmax(x) (only the order of the reduction
    differs), so its Jacobian is dy_i/dx_j = y_i (delta_ij - y_j) and
        dx_j = y_j (dout_j - sum_i dout_i y_i),
    the formula of ref_numpy.softmax.softmax_backward (one shared helper computes both).
    A fully masked row passes dx = 0.

    Args:
        dout: (...) like the forward output.
        cache: from :func:`online_softmax_forward`.
    Returns:
        dx: (...) like x.
    """
    check_cache(cache, "online_softmax_forward")
    return softmax._softmax_vjp(dout, cache["out"], cache["axis"])
