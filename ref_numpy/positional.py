"""Absolute position encodings: the sinusoidal table and the learned position embedding.

Attention itself is blind to order (permuting the tokens permutes its output), so a model is
told where each token is. These two add a vector that depends on the position to the token's
embedding; RoPE (``ref_numpy.rope``) instead rotates q and k by the position.

Sinusoidal (Vaswani et al. 2017, "Attention Is All You Need", §3.5), fixed, no parameters:

    PE(pos, 2i)     = sin(pos / base^(2i/d))
    PE(pos, 2i + 1) = cos(pos / base^(2i/d)),      i = 0 … d/2 − 1,  base = 10000

Each pair (2i, 2i + 1) is a point on a circle turning at frequency ω_i = base^(−2i/d), so
PE(pos + k) is a fixed rotation of PE(pos) for every pos (the paper's reason for choosing it),
with wavelengths from 2π to 2π·base. An odd d would leave a sin without its cos, and is an error.

Learned (Radford et al. 2018, GPT; Devlin et al. 2019, BERT; GPT-2's ``wpe``): a trained table
P (L, C), one row per position, L = max_position_embeddings, looked up by position id:

    y[..., :] = P[position_ids[...], :]

A position >= L has no row: it is an error naming L (a learned table cannot extrapolate).

Shape letters: T positions, d (or C) model width, L table length, (...) any leading dims
(B, T).
"""
from __future__ import annotations

import math

import numpy as np

from ref_numpy._check import (FLOAT_DTYPES, check_cache, check_float, check_int,
                              check_nonneg_int, check_positive_int, check_shape)

__all__ = ["sinusoidal_encoding", "sinusoidal_table", "learned_position_forward",
           "learned_position_backward"]


def _check_positions(name: str, positions) -> np.ndarray:
    check_int(name, positions)
    if positions.size and positions.min() < 0:
        idx = tuple(int(i) for i in np.argwhere(positions < 0)[0])
        raise ValueError(f"{name}: expected positions >= 0 but got {int(positions[idx])} at "
                         f"index {idx}")
    return positions


def sinusoidal_encoding(positions: np.ndarray, d: int, *, base: float = 10000.0,
                        dtype=np.float64) -> np.ndarray:
    """PE(pos, 2i) = sin(pos·ω_i), PE(pos, 2i + 1) = cos(pos·ω_i), ω_i = base^(−2i/d).

    Computed in float64, then cast to ``dtype``.

    Args:
        positions: (...) ints >= 0, e.g. (T,) or per-row position ids (B, T).
        d: the model width, an even int.
        base: a finite number > 0 (10000 in the paper).
        dtype: float32 or float64.
    Returns:
        (..., d).

    >>> sinusoidal_encoding(np.array([0, 1]), 2).round(4).tolist()
    [[0.0, 1.0], [0.8415, 0.5403]]
    """
    _check_positions("positions", positions)
    d = check_positive_int("d", d)
    if d % 2:
        raise ValueError(f"d: expected an even int (the table interleaves sin and cos pairs) "
                         f"but got {d}")
    if (isinstance(base, bool) or not isinstance(base, (int, float, np.integer, np.floating))
            or not math.isfinite(base) or base <= 0):
        raise ValueError(f"base: expected a finite number > 0 but got {base!r}")
    if np.dtype(dtype) not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64 but got {np.dtype(dtype)}")
    omega = float(base) ** (-np.arange(0, d, 2, dtype=np.float64) / d)    # (d/2,) ω_i
    angle = positions.astype(np.float64)[..., None] * omega               # (..., d/2)
    pe = np.empty((*positions.shape, d), dtype=np.float64)                # (..., d)
    pe[..., 0::2] = np.sin(angle)
    pe[..., 1::2] = np.cos(angle)
    return pe.astype(dtype)


def sinusoidal_table(T: int, d: int, *, base: float = 10000.0, offset: int = 0,
                     dtype=np.float64) -> np.ndarray:
    """The table for positions offset … offset + T − 1, (T, d); see :func:`sinusoidal_encoding`.

    >>> sinusoidal_table(3, 4).shape
    (3, 4)
    """
    T = check_nonneg_int("T", T)
    offset = check_nonneg_int("offset", offset)
    return sinusoidal_encoding(offset + np.arange(T), d, base=base, dtype=dtype)   # (T, d)


def learned_position_forward(table: np.ndarray, position_ids: np.ndarray,
                             ) -> tuple[np.ndarray, dict]:
    """Look up one row of the position table per position: y[..., :] = P[position_ids[...], :].

    Args:
        table: (L, C) float32 or float64, L = max_position_embeddings.
        position_ids: (...) ints in [0, L), e.g. (T,) or (B, T).
    Returns:
        out: (..., C).
        cache: {"op": "learned_position_forward", "position_ids", "table_shape": (L, C),
            "dtype": the table's dtype}.
    """
    check_float("table", table, ndim=2)
    _check_positions("position_ids", position_ids)
    L = table.shape[0]
    beyond = position_ids >= L
    if beyond.any():
        idx = tuple(int(i) for i in np.argwhere(beyond)[0])
        raise ValueError(f"position_ids: position {int(position_ids[idx])} at index {idx} is "
                         f"beyond the learned table of L = {L} positions "
                         f"(max_position_embeddings); expected positions in [0, {L})")
    out = table[position_ids]                                             # (..., C)
    return out, {"op": "learned_position_forward", "position_ids": position_ids,
                 "table_shape": table.shape, "dtype": table.dtype}


def learned_position_backward(dout: np.ndarray, cache: dict) -> np.ndarray:
    """Gradient of the lookup with respect to the table: a scatter-add of dout into its rows.

    y[p, :] = P[pos[p], :] for every token p, so dP[l, :] = Σ_{p : pos[p] = l} dout[p, :].
    A position used by several tokens (every batch row at position 0, or repeated ids of
    left padding) receives the sum of their gradients: np.add.at accumulates repeated indices,
    where dP[pos] += dout would keep only one. Rows never looked up get 0.

    Args:
        dout: (..., C) with (...) the shape of position_ids.
        cache: from :func:`learned_position_forward`.
    Returns:
        dtable: (L, C).
    """
    check_cache(cache, "learned_position_forward")
    ids, (L, C) = cache["position_ids"], cache["table_shape"]
    check_float("dout", dout)
    check_shape("dout", dout, (*ids.shape, C), "(..., C) with (...) the shape of position_ids")
    if dout.dtype != cache["dtype"]:
        raise TypeError(f"dout: expected dtype {cache['dtype']} (the dtype of table) but got "
                        f"{dout.dtype}")
    dtable = np.zeros((L, C), dtype=dout.dtype)                           # (L, C)
    np.add.at(dtable, ids.reshape(-1), dout.reshape(-1, C))
    return dtable
