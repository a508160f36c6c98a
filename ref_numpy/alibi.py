"""ALiBi: attention with linear biases instead of position embeddings.

    S_hij = scale · q_i·k_j − m_h · (p_i − j),    p_i = i + Tk − Tq  (position of query i)

Press, Smith & Lewis 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input
Length Extrapolation" (ICLR 2022), §3. Each head h gets a fixed slope m_h; a key d positions behind
the query is penalised by m_h · d, so heads with large slopes look locally and heads with small
slopes look far. The bias is a constant (no parameters, no gradient needed), passed to attention
as an additive ``mask`` together with ``causal=True``.

Slopes (the paper's §3 and its reference code): for H a power of two, the geometric sequence that
starts at 2^(−8/H) with ratio 2^(−8/H), i.e. m_h = 2^(−8(h+1)/H); for H = 8: 1/2, 1/4, …, 1/256.
For other H, take the slopes of the closest smaller power of two P, then every other slope of 2P
(its 1st, 3rd, 5th, …) until there are H of them; for H = 6 (P = 4):
1/4, 1/16, 1/64, 1/256 and then 1/2, 1/8.

Positions are bottom-right aligned as the causal mask of ``ref_numpy.attention``: the last query
sits at the last key, so a step of incremental decoding with a cache sees the same biases as the
full sequence. On the causal side (j <= p_i) the bias is exactly the paper's −m_h (p_i − j); for
non-causal use this module takes the symmetric distance −m_h |p_i − j|.

Shape letters: H heads, Tq queries, Tk keys.
"""
from __future__ import annotations

import math

import numpy as np


def alibi_slopes(n_head: int) -> np.ndarray:
    """The ALiBi slope m_h of each head, (H,) float64.

    >>> alibi_slopes(4).tolist()
    [0.25, 0.0625, 0.015625, 0.00390625]
    """
    if isinstance(n_head, bool) or not isinstance(n_head, (int, np.integer)) or n_head < 1:
        raise ValueError(f"n_head: expected an int >= 1 but got {n_head!r}")
    if n_head & (n_head - 1) == 0:
        # m_h = 2^(−8(h+1)/H), h = 0 … H−1
        return 2.0 ** (-8.0 * np.arange(1, n_head + 1) / n_head)       # (H,)
    closest = 2 ** int(math.floor(math.log2(n_head)))
    extra = alibi_slopes(2 * closest)[0::2][: n_head - closest]
    return np.concatenate([alibi_slopes(closest), extra])              # (H,)


def alibi_bias(n_head: int, Tq: int, Tk: int, dtype=np.float64) -> np.ndarray:
    """The ALiBi bias −m_h |p_i − j| for every head, query and key, (1, H, Tq, Tk).

    >>> (alibi_bias(1, 2, 3)[0, 0] / -alibi_slopes(1)[0]).tolist()   # |p_i − j|, p = (1, 2)
    [[1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]
    """
    for name, n in (("Tq", Tq), ("Tk", Tk)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name}: expected an int >= 0 but got {n!r}")
    slopes = alibi_slopes(n_head)                                      # (H,)
    pos = np.arange(Tq)[:, None] + (Tk - Tq)                            # (Tq, 1)
    dist = np.abs(pos - np.arange(Tk)[None, :])                        # (Tq, Tk)
    return (-slopes[None, :, None, None] * dist).astype(dtype)        # (1, H, Tq, Tk)
