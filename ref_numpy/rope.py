"""Rotary position embedding (RoPE), applied to q and k after projection: forward and backward.

Su, Lu, Pan, Murtadha, Wen & Liu 2021, "RoFormer: Enhanced Transformer with Rotary Position
Embedding", arXiv:2104.09864, §3.2–3.4. Feature pair i = (a, b) of the first R = rotary_dim
features of a head, at position m, is rotated by the angle m·θ_i (θ_i from
``ref_numpy.rope_scaling``); the other D − R features pass through unchanged (partial rotary,
as GPT-NeoX and Phi do):

    a' = a cos(mθ_i) − b sin(mθ_i)
    b' = a sin(mθ_i) + b cos(mθ_i)

Written as complex numbers z_i = a + ib this is z_i' = z_i e^{i m θ_i}, so for a query at m and
a key at n,  ⟨RoPE(q, m), RoPE(k, n)⟩ = Re Σ_i q_i conj(k_i) e^{i(m − n)θ_i}: the score depends on
the positions only through m − n (§3.4.2), and every rotated vector keeps its norm.

Two conventions decide which features form pair i, and both are in use:

    interleaved   a = x[2i],  b = x[2i + 1]     RoFormer, GPT-J, Meta's original Llama code
                                                (``torch.view_as_complex`` on adjacent features)
    half-split    a = x[i],   b = x[i + R/2]    GPT-NeoX, Hugging Face Llama (``rotate_half``)

They are the same map up to a permutation of the features (:func:`half_split_permutation`).
Because q·k is unchanged when q and k are permuted alike, a checkpoint trained with one
convention runs with the other once the q and k columns of each head are permuted
(:func:`permute_qkv_to_half_split`, the permutation of transformers'
``convert_llama_weights_to_hf.py``). The default here is half-split, transformers' convention.

Tables: :func:`rope_tables` builds cos(mθ_i) and sin(mθ_i) once per (positions, frequencies), in
float64, then casts them to the dtype of q, as transformers' rotary embedding returns them in
the dtype of x (transformers forms the angles m·θ in float32, which at m ~ 10⁵ costs ~10⁻²
rad; float64 keeps them exact to 10⁻¹¹). The attention factor of a scaling (YaRN) multiplies
both tables, as in transformers and in the paper (√(1/t) on q and on k).

Positions: ``offset + arange(T)`` (decoding against a KV cache: offset = tokens already
cached), or per-row ``position_ids`` (B, T) (left padding, packed sequences).

Shape letters: B batch, H heads (Hkv for k), T positions, D head dim, R rotary dim (even,
2 <= R <= D), R/2 frequencies.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ref_numpy import rope_scaling
from ref_numpy._check import (FLOAT_DTYPES, check_cache, check_float, check_int,
                              check_nonneg_int, check_positive_int, check_same_dtype, check_shape)

__all__ = ["RoPE", "rope_positions", "rope_tables", "rope_forward", "rope_backward", "rope_qk",
           "rope_qk_grads", "half_split_permutation", "permute_qkv_to_half_split"]


# ----------------------------------------------------------------------------------------------
# Configuration, positions and tables


@dataclass(frozen=True)
class RoPE:
    """What RoPE a model uses: sizes, base, convention and scaling; checked on construction.

    Args:
        head_dim: D, an even int.
        rotary_dim: R, the rotated features per head (even, 2 <= R <= D); None means D.
        base: rope_theta; None means the scaling dict's "rope_theta", else 10000.
        interleaved: True for the interleaved convention, False (default) for half-split.
        scaling: a rope_scaling / rope_parameters dict (``ref_numpy.rope_scaling``) or None.
        max_position_embeddings: the trained length, read by the "dynamic" scaling only.

    >>> RoPE(8, scaling={"rope_type": "linear", "factor": 2.0}).frequencies()[0].tolist()
    [0.5, 0.05, 0.005, 0.0005]
    """
    head_dim: int
    rotary_dim: int | None = None
    base: float | None = None
    interleaved: bool = False
    scaling: dict | None = field(default=None)
    max_position_embeddings: int | None = None

    def __post_init__(self):
        D = check_positive_int("head_dim", self.head_dim)
        if D % 2:
            raise ValueError(f"head_dim: expected an even int for RoPE but got {D}")
        R = D if self.rotary_dim is None else check_positive_int("rotary_dim", self.rotary_dim)
        if R % 2 or R > D:
            raise ValueError(f"rotary_dim: expected an even int in [2, head_dim] = [2, {D}] but "
                             f"got {R}")
        object.__setattr__(self, "rotary_dim", R)
        if not isinstance(self.interleaved, (bool, np.bool_)):
            raise TypeError(f"interleaved: expected a bool but got "
                            f"{type(self.interleaved).__name__}")
        self.frequencies()                   # a bad scaling dict fails here, not at first use

    def frequencies(self, seq_len: int | None = None) -> tuple[np.ndarray, float]:
        """(inv_freq (R/2,) float64, attention_factor) at the current length ``seq_len``."""
        return rope_scaling.rope_frequencies(
            self.scaling, self.rotary_dim, base=self.base,
            max_position_embeddings=self.max_position_embeddings, seq_len=seq_len)

    def tables(self, positions: np.ndarray, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin (T, R/2) or (B, T, R/2) for ``positions`` (T,) or (B, T); the current
        length (for "dynamic") is the largest position + 1, as in transformers."""
        seq_len = int(positions.max()) + 1 if positions.size else None
        inv_freq, factor = self.frequencies(seq_len)
        return rope_tables(inv_freq, positions, attention_factor=factor, dtype=dtype)


def rope_positions(T: int, *, offset: int = 0, position_ids: np.ndarray | None = None,
                   batch: int | None = None) -> np.ndarray:
    """The positions of T tokens: ``offset + arange(T)`` (T,), or ``position_ids`` (B, T) checked.

    >>> rope_positions(3, offset=5).tolist()
    [5, 6, 7]
    """
    T = check_nonneg_int("T", T)
    offset = check_nonneg_int("offset", offset)
    if position_ids is None:
        return offset + np.arange(T)                                   # (T,)
    if offset:
        raise ValueError(f"offset: expected 0 with position_ids (they say every position) but "
                         f"got {offset}")
    check_int("position_ids", position_ids, ndim=2)
    check_shape("position_ids", position_ids, (batch, T), "(B, T)")
    if position_ids.size and position_ids.min() < 0:
        raise ValueError(f"position_ids: expected ints >= 0 but got {int(position_ids.min())}")
    return position_ids                                                # (B, T)


def rope_tables(inv_freq: np.ndarray, positions: np.ndarray, *, attention_factor: float = 1.0,
                dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the angles m·θ_i, times the attention factor, computed in float64.

    Args:
        inv_freq: (R/2,) θ_i (``ref_numpy.rope_scaling``).
        positions: (T,) or (B, T) ints >= 0.
        attention_factor: multiplies both tables (1 unless the scaling defines one).
        dtype: float32 or float64, the dtype the tables are cast to (that of q and k).
    Returns:
        (cos, sin), each (T, R/2) or (B, T, R/2) in ``dtype``.

    >>> c, s = rope_tables(np.array([1.0, 0.5]), np.arange(2))
    >>> s.round(4).tolist()
    [[0.0, 0.0], [0.8415, 0.4794]]
    """
    check_float("inv_freq", inv_freq, ndim=1)
    if inv_freq.size == 0:
        raise ValueError("inv_freq: expected at least one frequency but got shape (0,)")
    check_int("positions", positions)
    if positions.ndim not in (1, 2):
        raise ValueError(f"positions: expected shape (T,) or (B, T) but got {positions.shape}")
    if positions.size and positions.min() < 0:
        raise ValueError(f"positions: expected ints >= 0 but got {int(positions.min())}")
    if np.dtype(dtype) not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64 but got {np.dtype(dtype)}")
    factor = float(attention_factor)
    # m θ_i for every position and frequency, in float64 whatever the dtype of q
    angles = positions.astype(np.float64)[..., None] * inv_freq.astype(np.float64)  # (.., T, R/2)
    return (factor * np.cos(angles)).astype(dtype), (factor * np.sin(angles)).astype(dtype)


# ----------------------------------------------------------------------------------------------
# The op


def _check_tables(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
    check_float("x", x, ndim=4)
    B, H, T, D = x.shape
    if D % 2:
        raise ValueError(f"x: expected an even head dimension D for RoPE but got D = {D} "
                         f"(shape {x.shape})")
    check_float("cos", cos, ndim=(2, 3))
    check_float("sin", sin, ndim=(2, 3))
    check_same_dtype(x=x, cos=cos, sin=sin)
    if cos.ndim == 2:
        check_shape("cos", cos, (T, None), f"(T, R/2) with T = {T} from x")
    else:
        check_shape("cos", cos, (B, T, None), f"(B, T, R/2) with B = {B}, T = {T} from x")
    check_shape("sin", sin, cos.shape, "the shape of cos")
    half = cos.shape[-1]
    if half == 0 or 2 * half > D:
        raise ValueError(f"cos: expected 1 to D/2 = {D // 2} frequencies (rotary_dim = 2 x "
                         f"frequencies <= D = {D}) but got {half}")


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray:
    """(a, b) -> (a c − b s, a s + b c) on every pair of the first R features of x (B, H, T, D)."""
    R = 2 * cos.shape[-1]
    c = cos[None, None] if cos.ndim == 2 else cos[:, None]              # (1|B, 1, T, R/2)
    s = sin[None, None] if sin.ndim == 2 else sin[:, None]
    ia, ib = (slice(0, R, 2), slice(1, R, 2)) if interleaved else (slice(0, R // 2),
                                                                    slice(R // 2, R))
    a, b = x[..., ia], x[..., ib]                                       # (B, H, T, R/2)
    out = x.copy()                                                      # features R … D−1 stay
    out[..., ia] = a * c - b * s
    out[..., ib] = a * s + b * c
    return out


def rope_forward(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, *, interleaved: bool = False,
                 ) -> tuple[np.ndarray, dict]:
    """Rotate every feature pair of the first R features of x by its angle m·θ_i.

        x'_a = x_a cos(mθ_i) − x_b sin(mθ_i),   x'_b = x_a sin(mθ_i) + x_b cos(mθ_i)

    with (a, b) = (2i, 2i + 1) when ``interleaved``, else (i, i + R/2); R = 2 · cos.shape[-1].

    Args:
        x: (B, H, T, D) queries or keys after projection, D even.
        cos, sin: (T, R/2) or (B, T, R/2) from :func:`rope_tables`, the dtype of x.
        interleaved: the convention (module docstring).
    Returns:
        out: (B, H, T, D), the dtype of x.
        cache: {"op": "rope_forward", "cos", "sin", "interleaved", "shape": x.shape}.
    """
    _check_tables(x, cos, sin)
    if not isinstance(interleaved, (bool, np.bool_)):
        raise TypeError(f"interleaved: expected a bool but got {type(interleaved).__name__}")
    out = _rotate(x, cos, sin, bool(interleaved))
    return out, {"op": "rope_forward", "cos": cos, "sin": sin, "interleaved": bool(interleaved),
                 "shape": x.shape}


def rope_backward(dout: np.ndarray, cache: dict) -> np.ndarray:
    """Gradient of RoPE with respect to x: the rotation by −θ.

    For one pair, with c = f cos(mθ), s = f sin(mθ) (f the attention factor):

        [a']   [c  −s] [a]                       [da]   [ c  s] [da']
        [b'] = [s   c] [b]     so   dx = Mᵀ dx':  [db] = [−s  c] [db']

    Mᵀ is M with s → −s: f times the rotation by −mθ (the inverse rotation when f = 1, since a
    rotation matrix is orthogonal). The D − R features that passed through get dout unchanged.

    Args:
        dout: (B, H, T, D), the gradient of the loss w.r.t. the rotated x.
        cache: from :func:`rope_forward`.
    Returns:
        dx: (B, H, T, D).
    """
    check_cache(cache, "rope_forward")
    check_float("dout", dout, ndim=4)
    check_shape("dout", dout, cache["shape"], "(B, H, T, D), the shape of x")
    check_same_dtype(x=cache["cos"], dout=dout)
    return _rotate(dout, cache["cos"], -cache["sin"], cache["interleaved"])


# ----------------------------------------------------------------------------------------------
# Helpers for attention: q and k together, and the convention permutation


def rope_qk(q: np.ndarray, k: np.ndarray, rope: RoPE, positions: np.ndarray,
            ) -> tuple[np.ndarray, np.ndarray, tuple[dict, dict]]:
    """Rotate q (B, H, T, D) and k (B, Hkv, T, D) at the same positions with one pair of tables.

    Returns (q', k', (cache_q, cache_k)); :func:`rope_qk_grads` maps (dq', dk') back.
    """
    if not isinstance(rope, RoPE):
        raise TypeError(f"rope: expected a ref_numpy.rope.RoPE but got {type(rope).__name__}")
    check_float("q", q, ndim=4)
    if q.shape[-1] != rope.head_dim:
        raise ValueError(f"rope: expected head_dim = D = {q.shape[-1]} (the head dim of q) but "
                         f"got {rope.head_dim}")
    cos, sin = rope.tables(positions, q.dtype)
    q_rot, cache_q = rope_forward(q, cos, sin, interleaved=rope.interleaved)
    k_rot, cache_k = rope_forward(k, cos, sin, interleaved=rope.interleaved)
    return q_rot, k_rot, (cache_q, cache_k)


def rope_qk_grads(dq: np.ndarray, dk: np.ndarray, caches: tuple[dict, dict],
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(dq, dk) with respect to q and k before :func:`rope_qk` rotated them."""
    return rope_backward(dq, caches[0]), rope_backward(dk, caches[1])


def half_split_permutation(head_dim: int, rotary_dim: int | None = None) -> np.ndarray:
    """Feature order that turns an interleaved head into a half-split one: x_half = x_int[perm].

    Half-split feature c·R/2 + i (c = 0 for a, 1 for b) is interleaved feature 2i + c; the
    features R … D − 1 keep their place. Then
    rope(x[perm], half-split) = rope(x, interleaved)[perm] at every position.

    >>> half_split_permutation(6, 4).tolist()
    [0, 2, 1, 3, 4, 5]
    """
    D = check_positive_int("head_dim", head_dim)
    R = D if rotary_dim is None else check_positive_int("rotary_dim", rotary_dim)
    if D % 2 or R % 2 or R > D:
        raise ValueError(f"rotary_dim: expected an even int in [2, head_dim] with head_dim even "
                         f"but got rotary_dim = {R}, head_dim = {D}")
    perm = np.arange(D)
    perm[:R] = np.arange(R).reshape(R // 2, 2).T.reshape(-1)           # row c, column i: 2i + c
    return perm


def permute_qkv_to_half_split(w_qkv: np.ndarray, b_qkv: np.ndarray | None, n_head: int,
                              n_kv_head: int, rotary_dim: int | None = None,
                              ) -> tuple[np.ndarray, np.ndarray | None]:
    """The fused projection (``ref_numpy.mha`` layout) of an interleaved-RoPE checkpoint,
    rearranged for half-split RoPE: the D columns of every q and k head permuted by
    :func:`half_split_permutation`, the v columns unchanged. Attention scores, and so the whole
    layer's output, are equal: q'·k' = (P q)·(P k) = q·k for the permutation P.

    Args:
        w_qkv: (C, E), E = (H + 2·Hkv)·D; b_qkv: (E,) or None.
        n_head, n_kv_head: H and Hkv; rotary_dim: R (None: D).
    Returns:
        (w_qkv (C, E), b_qkv (E,) or None), new arrays.
    """
    H = check_positive_int("n_head", n_head)
    Hkv = check_positive_int("n_kv_head", n_kv_head)
    check_float("w_qkv", w_qkv, ndim=2)
    E = w_qkv.shape[1]
    if E % (H + 2 * Hkv):
        raise ValueError(f"w_qkv: expected (H + 2·Hkv)·D = {H + 2 * Hkv}·D columns but got {E}")
    D = E // (H + 2 * Hkv)
    perm = half_split_permutation(D, rotary_dim)
    cols = np.arange(E)
    for h in range(H + Hkv):                      # q heads, then k heads; v keeps its columns
        cols[h * D:(h + 1) * D] = h * D + perm
    if b_qkv is not None:
        check_float("b_qkv", b_qkv, ndim=1)
        check_shape("b_qkv", b_qkv, (E,), "(E,)")
        b_qkv = b_qkv[cols]
    return w_qkv[:, cols], b_qkv
