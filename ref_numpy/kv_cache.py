"""A key/value cache for incremental (autoregressive) decoding.

When a decoder generates token t it needs the keys and values of positions 0 … t, but those of
positions 0 … t − 1 were already computed at earlier steps. The cache keeps them in preallocated
buffers; each step projects only the new tokens, appends their keys/values, and runs attention of
the new queries (Tq = number of new tokens) against all cached keys (Tk = length so far).

The causal mask of ``ref_numpy.attention`` is aligned bottom-right (query i may attend key j iff
j <= i + Tk − Tq), which is exactly the mask of the last Tq rows of the full sequence's causal mask:

    full sequence, T = 5                      step with 2 new tokens (Tq = 2, Tk = 5)
             key j: 0 1 2 3 4                          key j: 0 1 2 3 4
        query 0:    x . . . .
        query 1:    x x . . .
        query 2:    x x x . .
        query 3:    x x x x .      ==            query 0:    x x x x .
        query 4:    x x x x x                    query 1:    x x x x x

so decoding one token at a time, or in chunks of any size, reproduces the rows of one causal
forward over the whole sequence (to rounding; the row computations are the same numbers).
ALiBi (``ref_numpy.alibi``) uses the same alignment, so its biases match too. With RoPE
(``rope=RoPE(...)``) the new queries and keys are rotated at positions length … length + t − 1
before the keys are cached, so the cache holds rotated keys and decoding still equals one
causal forward (except for the "dynamic" scaling past its trained length: keys already cached
keep the frequencies they were rotated with).

Shape letters: B batch, H query heads, Hkv key/value heads, D head dim, L capacity (max_len),
t new tokens of one step, C model width.
"""
from __future__ import annotations

import numpy as np

from ref_numpy import alibi as alibi_mod
from ref_numpy import attention, mha
from ref_numpy import rope as rope_mod
from ref_numpy._check import check_float, check_scale, check_shape


class KVCache:
    """Preallocated keys and values, (B, Hkv, L, D) each, filled from position 0 up to ``length``.

    >>> c = KVCache(batch=1, n_kv_head=1, max_len=4, head_dim=2)
    >>> k, v = c.append(np.ones((1, 1, 3, 2)), np.ones((1, 1, 3, 2)))
    >>> c.length, k.shape
    (3, (1, 1, 3, 2))
    """

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype=np.float64):
        for name, n in (("batch", batch), ("n_kv_head", n_kv_head), ("max_len", max_len),
                        ("head_dim", head_dim)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"{name}: expected an int >= 1 but got {n!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64 but got {dtype}")
        self.k = np.zeros((batch, n_kv_head, max_len, head_dim), dtype=dtype)   # (B, Hkv, L, D)
        self.v = np.zeros_like(self.k)                                          # (B, Hkv, L, D)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def keys(self) -> np.ndarray:
        """Cached keys so far, a view (B, Hkv, length, D)."""
        return self.k[:, :, : self.length]

    def values(self) -> np.ndarray:
        """Cached values so far, a view (B, Hkv, length, D)."""
        return self.v[:, :, : self.length]

    def check_append(self, k_new: np.ndarray, v_new: np.ndarray) -> None:
        """Raise (and change nothing) if ``append(k_new, v_new)`` would be invalid."""
        B, Hkv, L, D = self.k.shape
        check_float("k_new", k_new, ndim=4)
        check_float("v_new", v_new, ndim=4)
        check_shape("k_new", k_new, (B, Hkv, None, D), f"(B, Hkv, t, D) = ({B}, {Hkv}, t, {D})")
        check_shape("v_new", v_new, k_new.shape, "(B, Hkv, t, D), the shape of k_new")
        for name, a in (("k_new", k_new), ("v_new", v_new)):
            if a.dtype != self.k.dtype:
                raise TypeError(f"{name}: expected dtype {self.k.dtype} (the cache's) but got "
                                f"{a.dtype}")
        t = k_new.shape[2]
        if t == 0:
            raise ValueError("k_new: expected at least one new position but got t = 0")
        if self.length + t > L:
            raise ValueError(f"KVCache overflow: cannot append {t} position(s); the cache holds "
                             f"{self.length} of max_len = {L} ({L - self.length} free). "
                             f"The cache is unchanged.")

    def append(self, k_new: np.ndarray, v_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store t new positions after the current ones; return all keys and values so far.

        Args:
            k_new, v_new: (B, Hkv, t, D), the cache's dtype, t >= 1.

        Returns:
            (keys, values): views (B, Hkv, length, D) of the filled part.

        Raises ValueError without changing the cache when the positions do not fit, or
        ValueError/TypeError for a wrong shape or dtype.
        """
        self.check_append(k_new, v_new)
        t = k_new.shape[2]
        self.k[:, :, self.length: self.length + t] = k_new
        self.v[:, :, self.length: self.length + t] = v_new
        self.length += t
        return self.keys(), self.values()

    def reset(self) -> None:
        """Forget every position (the buffers are reused)."""
        self.length = 0


def cached_attention(q_new, k_new, v_new, cache: KVCache, *, scale=None, window=None,
                     alibi: bool = False, rope=None):
    """One decoding step: append k_new, v_new to the cache, attend q_new to everything cached.

        O = softmax(scale · Q_new [K_past | K_new]ᵀ + causal (+ ALiBi)) [V_past | V_new]

    Args:
        q_new: (B, H, t, D) queries of the t new positions, H % Hkv == 0.
        k_new, v_new: (B, Hkv, t, D) their keys and values.
        cache: the :class:`KVCache` of this sequence (appended to).
        scale, window: as in ``ref_numpy.attention.attention_forward``.
        alibi: add the ALiBi bias of ``ref_numpy.alibi`` for H heads.
        rope: a ``ref_numpy.rope.RoPE`` that rotates q_new and k_new at their positions
            (length … length + t − 1) before k_new is cached, or None.

    Returns:
        out: (B, H, t, D), equal to rows length − t … length − 1 of a causal forward over the
        whole sequence. Nothing is appended when an argument is invalid.
    """
    check_float("q_new", q_new, ndim=4)
    cache.check_append(k_new, v_new)
    B, H, t, D = q_new.shape
    check_shape("q_new", q_new, (cache.k.shape[0], None, k_new.shape[2], cache.k.shape[3]),
                "(B, H, t, D) with B, t, D of k_new")
    if H % cache.k.shape[1]:
        raise ValueError(f"q_new: expected a number of heads H divisible by Hkv = "
                         f"{cache.k.shape[1]} but got H = {H}")
    if q_new.dtype != cache.k.dtype:
        raise TypeError(f"q_new: expected dtype {cache.k.dtype} (the cache's) but got "
                        f"{q_new.dtype}")
    # Every argument is checked before the cache changes: a failed step leaves it as it was.
    check_scale(scale, D)
    if window is not None:
        attention.check_window(window)
    if rope is not None:
        positions = rope_mod.rope_positions(t, offset=cache.length)   # (t,)
        q_new, k_new, _ = rope_mod.rope_qk(q_new, k_new, rope, positions)
    k_all, v_all = cache.append(k_new, v_new)                         # (B, Hkv, length, D)
    Tk = k_all.shape[2]
    bias = alibi_mod.alibi_bias(H, t, Tk, dtype=q_new.dtype) if alibi else None   # (1, H, t, Tk)
    out, _ = attention.attention_forward(q_new, k_all, v_all, causal=True, scale=scale,
                                         window=window, mask=bias)
    return out


def mha_decode(x_new, w_qkv, b_qkv, w_o, b_o, cache: KVCache, *, n_head, n_kv_head=None,
               scale=None, rope=None):
    """One decoding step of causal multi-head self-attention (``ref_numpy.mha``) with a cache.

        [q | k | v] = x_new W_qkv + b_qkv;  append k, v;  y = merge(attend(q, cache)) W_o + b_o

    Args:
        x_new: (B, t, C) the new positions' inputs; weights as ``ref_numpy.mha.mha_forward``.
        cache: KVCache with Hkv = n_kv_head heads and D = head dim.
        rope: as in :func:`cached_attention`.

    Returns:
        y: (B, t, C), equal to the last t rows of ``mha_forward(x, ..., causal=True,
        rope=rope)`` over the whole sequence.
    """
    if n_kv_head is None:
        n_kv_head = n_head
    mha.check_args(x_new, w_qkv, b_qkv, w_o, b_o, n_head, n_kv_head)
    q, k, v = mha.project_qkv(x_new, w_qkv, b_qkv, n_head, n_kv_head)  # (B, H|Hkv, t, D)
    o = cached_attention(q, k, v, cache, scale=scale, rope=rope)      # (B, H, t, D)
    y = mha.merge_heads(o) @ w_o                                       # (B, t, C)
    if b_o is not None:
        y += b_o
    return y
