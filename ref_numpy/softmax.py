"""Softmax and log-softmax along one axis, with the max subtraction that keeps exp finite.

    softmax(x)_i     = exp(x_i - m) / s,            m = max_j x_j,   s = sum_j exp(x_j - m)
    log_softmax(x)_i = (x_i - m) - log(s)

Subtracting the maximum m changes nothing mathematically (exp(-m) cancels between numerator and
denominator) but makes every exponent <= 0, so exp cannot overflow, and the largest term is
exactly 1, so s >= 1 and log(s) is finite (the "safe softmax" of Milakov & Gimelshein 2018, §2,
"Online normalizer calculation for softmax", arXiv:1805.02867).

Masked entries: x_i = -inf is allowed and gets probability exactly 0 (log-probability -inf).
A row that is entirely -inf has no softmax (0 / 0). Here such a row returns zeros from softmax
and -inf from log-softmax, and passes zero gradient: the convention attention uses for a fully
masked query row. (torch returns NaN for it.) +inf and NaN are rejected with ValueError.

Shapes: x has any shape (...); ``axis`` is one of its dimensions ("the row"); every output and
gradient has the shape of x.
"""
from __future__ import annotations

import numpy as np

from ref_numpy._check import check_cache, check_float, check_same_dtype, check_shape


def check_axis(axis, ndim: int) -> int:
    """Return ``axis`` as a non-negative int, or raise if it is not an axis of an ndim-array.

    >>> check_axis(-1, 3)
    2
    """
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis: expected an int but got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis: expected a value in [{-ndim}, {ndim}) for a {ndim}-d input "
                         f"but got {axis}")
    return int(axis) % ndim


def check_no_posinf(name: str, x: np.ndarray) -> None:
    """Reject +inf: only finite values and -inf (a masked entry) have a defined softmax."""
    if np.isposinf(x).any():
        idx = tuple(int(i) for i in np.argwhere(np.isposinf(x))[0])
        raise ValueError(f"{name}: contains +inf (first at index {idx}); expected finite "
                         f"values or -inf for masked entries")


def _shifted_exp(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x - m, exp(x - m) and its row sum s; m is the row max, replaced by 0 in a fully -inf row.

    In a fully -inf row, x - m would be -inf - (-inf) = NaN; shifting by 0 instead gives
    exp(-inf) = 0 everywhere and s = 0, which marks the row as fully masked.
    Returns (xs, e, s): xs and e shaped like x, s with a size-1 ``axis``.
    """
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)   # x.shape with 1 at axis
    m = np.where(np.isneginf(m), 0.0, m)
    xs = x - m
    e = np.exp(xs)
    s = np.sum(e, axis=axis, keepdims=True)                    # x.shape with 1 at axis
    return xs, e, s


def softmax_forward(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, dict]:
    """Softmax of x along ``axis``.

    y_i = exp(x_i - m) / sum_j exp(x_j - m),  m = max_j x_j  (a fully -inf row gives y = 0).

    Args:
        x: (...) float32 or float64; finite or -inf (masked), no NaN or +inf.
        axis: the dimension that is normalised.
    Returns:
        out: (...) like x, each row sums to 1 (or is all zeros when fully masked).
        cache: {"op": "softmax_forward", "out": y, "axis": axis} -- the backward needs only y.
    """
    check_float("x", x)
    axis = check_axis(axis, x.ndim)
    check_no_posinf("x", x)
    _, e, s = _shifted_exp(x, axis)
    # y = e / s; a fully masked row has e = 0 and s = 0, and gets 0 / 1 = 0
    y = e / np.where(s == 0, 1.0, s)
    return y, {"op": "softmax_forward", "out": y, "axis": axis}


def _softmax_vjp(dout: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    """dx = y * (dout - sum_i dout_i y_i) for y = softmax(x) along ``axis`` (derivation:
    :func:`softmax_backward`); shared by every op whose output is a softmax.

    Args:
        dout: (...) like y, checked here.
        y: (...) the softmax, one row along ``axis`` (a non-negative int).
    Returns:
        dx: (...) like y.
    """
    check_float("dout", dout)
    check_shape("dout", dout, y.shape)
    check_same_dtype(out=y, dout=dout)
    # dx = y * (dout - <dout, y>) along the row
    return y * (dout - np.sum(dout * y, axis=axis, keepdims=True))


def softmax_backward(dout: np.ndarray, cache: dict) -> np.ndarray:
    """Gradient of softmax with respect to x.

    Forward: y_i = exp(x_i) / sum_k exp(x_k) (the shift by m cancels).
    Local Jacobian: dy_i/dx_j = y_i (delta_ij - y_j).
    Chain rule:     dx_j = sum_i dout_i y_i (delta_ij - y_j)
                         = y_j dout_j - y_j sum_i dout_i y_i
                         = y_j (dout_j - sum_i dout_i y_i).
    A fully masked row has y = 0 and so passes dx = 0. A -inf entry has y_j = 0 and gets dx_j = 0.

    Args:
        dout: (...) like the forward output.
        cache: from :func:`softmax_forward`.
    Returns:
        dx: (...) like x.
    """
    check_cache(cache, "softmax_forward")
    return _softmax_vjp(dout, cache["out"], cache["axis"])


def log_softmax_forward(x: np.ndarray, axis: int = -1) -> tuple[np.ndarray, dict]:
    """Log-softmax of x along ``axis``, computed without forming log(softmax(x)).

    z_i = (x_i - m) - log(sum_j exp(x_j - m)),  m = max_j x_j  (a fully -inf row gives z = -inf).

    Args:
        x: (...) float32 or float64; finite or -inf (masked), no NaN or +inf.
        axis: the dimension that is normalised.
    Returns:
        out: (...) like x; exp(out) sums to 1 along the row (-inf where x is -inf).
        cache: {"op": "log_softmax_forward", "out": z, "axis": axis, "masked": (...) bool with
            a size-1 axis, True for a fully -inf row} -- the backward recomputes softmax = exp(z).
    """
    check_float("x", x)
    axis = check_axis(axis, x.ndim)
    check_no_posinf("x", x)
    xs, _, s = _shifted_exp(x, axis)
    masked = s == 0
    # z = (x - m) - log(s); a fully masked row has x - m = -inf and log(1) = 0, so z = -inf
    z = xs - np.log(np.where(masked, 1.0, s))
    return z, {"op": "log_softmax_forward", "out": z, "axis": axis, "masked": masked}


def log_softmax_backward(dout: np.ndarray, cache: dict) -> np.ndarray:
    """Gradient of log-softmax with respect to x.

    Forward: z_i = x_i - log sum_k exp(x_k).
    Local Jacobian: dz_i/dx_j = delta_ij - p_j,  with p = softmax(x) = exp(z).
    Chain rule:     dx_j = sum_i dout_i (delta_ij - p_j) = dout_j - p_j sum_i dout_i.
    A -inf entry of a live row has p_j = 0 and gets dx_j = dout_j (as in torch). A fully masked
    row passes dx = 0 by convention (its forward is not a function of x there).

    Args:
        dout: (...) like the forward output.
        cache: from :func:`log_softmax_forward`.
    Returns:
        dx: (...) like x.
    """
    check_cache(cache, "log_softmax_forward")
    z, axis, masked = cache["out"], cache["axis"], cache["masked"]
    check_float("dout", dout)
    check_shape("dout", dout, z.shape)
    check_same_dtype(out=z, dout=dout)
    # p = exp(z) recomputed (cheap); dx = dout - p * sum(dout)
    p = np.exp(z)
    dx = dout - p * np.sum(dout, axis=axis, keepdims=True)
    return np.where(masked, 0.0, dx)
