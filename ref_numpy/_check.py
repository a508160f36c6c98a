"""Input validation shared by every op: errors name the argument, the expected and the actual value.

Every public op calls these before it computes anything, so that bad input fails loudly with a
message of the form ``"x: expected shape (B, T, 64) but got (2, 3, 65)"`` instead of broadcasting
silently or returning NaN.

Caches: every ``*_forward`` puts ``"op": "<its own name>"`` in the cache dict it returns, and every
``*_backward`` calls :func:`check_cache` before it reads any other key, so that a cache handed to
the wrong backward is a TypeError naming both ops instead of a KeyError or a silently wrong
gradient.
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_NAN_SCANS = contextvars.ContextVar("nan_scans", default=True)


@contextlib.contextmanager
def nan_scans_skipped():
    """Within the block, :func:`check_float` does not scan arrays for NaN; types, ranks, dtypes
    and shapes are still checked.

    For a composite that scans its own inputs once and its outputs at the end, so that its ops
    need not scan the same weights again on every call: ``ref_numpy.generate.Decoder``, where
    those scans were about a sixth of the time of a decoded token.

    >>> with nan_scans_skipped():
    ...     check_float("x", np.array([np.nan])).shape
    (1,)
    """
    token = _NAN_SCANS.set(False)
    try:
        yield
    finally:
        _NAN_SCANS.reset(token)


def check_float(name: str, x, *, ndim: int | tuple[int, ...] | None = None,
                allow_nan: bool = False) -> np.ndarray:
    """Require a float32/float64 ndarray (optionally of a given rank) without NaN.

    >>> check_float("x", np.zeros((2, 3)), ndim=2).shape
    (2, 3)
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray but got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64 but got {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name}: expected {want} dimensions but got {x.ndim} "
                             f"(shape {x.shape})")
    # min propagates NaN (one vectorised pass, no boolean array); an empty array has none
    if not allow_nan and x.size and _NAN_SCANS.get() and np.isnan(x.min()):
        idx = tuple(int(i) for i in np.argwhere(np.isnan(x))[0])
        raise ValueError(f"{name}: contains NaN (first at index {idx})")
    return x


def check_int(name: str, x, *, ndim: int | None = None) -> np.ndarray:
    """Require an integer ndarray (token ids, class targets)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray but got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer dtype but got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions but got {x.ndim} (shape {x.shape})")
    return x


def check_positive_int(name: str, value) -> int:
    """Require a positive int (a tile or block size); bools are rejected.

    >>> check_positive_int("block_q", 16)
    16
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive int but got {type(value).__name__} "
                        f"({value!r})")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int but got {value}")
    return int(value)


def check_nonneg_int(name: str, value) -> int:
    """Require an int >= 0 (a sequence length, a seed); bools are rejected.

    >>> check_nonneg_int("Tq", 0)
    0
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= 0 but got {type(value).__name__} "
                        f"({value!r})")
    if value < 0:
        raise ValueError(f"{name}: expected an int >= 0 but got {value}")
    return int(value)


def check_cache(cache, op: str) -> None:
    """Require ``cache`` to be the dict returned by the forward named ``op`` (its "op" entry).

    >>> check_cache({"op": "silu_forward"}, "silu_forward")
    >>> check_cache({"op": "gelu_forward"}, "silu_forward")
    Traceback (most recent call last):
    ...
    TypeError: cache: expected the cache of silu_forward but got the cache of gelu_forward
    """
    if not isinstance(cache, dict) or "op" not in cache:
        got = "a dict without an 'op' entry" if isinstance(cache, dict) else type(cache).__name__
        raise TypeError(f"cache: expected the cache of {op} (a dict from that function) "
                        f"but got {got}")
    if cache["op"] != op:
        raise TypeError(f"cache: expected the cache of {op} but got the cache of {cache['op']}")


def check_shape(name: str, x: np.ndarray, expected: tuple, letters: str | None = None) -> None:
    """Require ``x.shape == expected``; ``None`` in ``expected`` matches any size.

    ``letters`` (e.g. ``"(B, H, T, D)"``) is added to the message so the reader sees the meaning.
    """
    ok = len(x.shape) == len(expected) and all(
        e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        if len(expected) == 1:
            want = want[:-1] + ",)"
        what = f" {letters}" if letters else ""
        raise ValueError(f"{name}: expected shape{what} {want} but got {tuple(x.shape)}")


def check_same_dtype(**arrays: np.ndarray) -> np.dtype:
    """Require every given float array to share one dtype; return it."""
    names = list(arrays)
    first = arrays[names[0]].dtype
    for n in names[1:]:
        if arrays[n].dtype != first:
            raise TypeError(f"{n}: expected dtype {first} (the dtype of {names[0]}) "
                            f"but got {arrays[n].dtype}")
    return first


def check_scale(scale, D: int) -> float:
    """An attention score scale: ``None`` means 1/√D; otherwise a finite real number.

    >>> check_scale(None, 16)
    0.25
    """
    if scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise TypeError(f"scale: expected a finite float or None but got {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite float or None but got {scale!r}")
    return float(scale)
