"""Multi-head self-attention: projections around scaled dot-product attention, written twice.

    [Q | K | V] = X W_qkv + b_qkv,   O_h = attention(Q_h, K_{h // G}, V_{h // G}),
    Y = [O_0 | … | O_{H−1}] W_o + b_o                          (Vaswani et al. 2017, §3.2.2)

Shape letters:

    B    batch;  T  sequence positions;  C  model width
    H    query heads;  Hkv  key/value heads (H % Hkv == 0);  G = H // Hkv
    D    head dimension (usually C / H; any D works)
    E    = (H + 2·Hkv)·D, the width of the fused projection

Parameters (shared by both forms, so their gradients compare one to one):

    w_qkv  (C, E)      columns [q heads 0 … H−1 | k heads 0 … Hkv−1 | v heads 0 … Hkv−1],
                       D columns per head; with Hkv = H this is the (C, 3C) projection
    b_qkv  (E,) or None
    w_o    (H·D, C)    rows grouped by head in the same order
    b_o    (C,) or None

    torch.nn.MultiheadAttention stores the same numbers transposed, because nn.Linear computes
    x @ Wᵀ: ``in_proj_weight = w_qkv.T`` (3C, C), ``out_proj.weight = w_o.T`` (C, C); the biases
    are equal. ``torch_bridge.attention.mha`` does exactly that copy.

The two forms:

    mha_forward / mha_backward                     fused: one projection, reshape to heads, one
                                                   batched attention, one output projection
    mha_forward_per_head / mha_backward_per_head   a loop over heads with each head's own slice of
                                                   the weights: the textbook picture, for reading

Grouped-query (Ainslie et al. 2023) and multi-query (Shazeer 2019) attention are the same module
with n_kv_head < n_head: fewer key/value columns in w_qkv, and query head h reads key/value head
h // G. :func:`repeat_kv` and its adjoint :func:`sum_kv_groups` show the equivalent "repeat the
shared heads" picture and serve as an oracle; the attention op itself never copies K or V.

Masks are those of ``ref_numpy.attention`` (True = may attend): ``causal``, ``key_mask`` (B, T)
True = real token (NOTE: torch's ``key_padding_mask`` is the opposite, True = padding), and
``mask`` (T, T) bool or additive float.

RoPE (``ref_numpy.rope``): ``mha_forward(..., rope=RoPE(D, ...))`` rotates q and k after the
projection, at positions 0 … T − 1 or at per-row ``position_ids`` (B, T); ``mha_backward``
rotates dq and dk back by −θ before the projection's gradients.
"""
from __future__ import annotations

import numpy as np

from ref_numpy import attention
from ref_numpy import rope as rope_mod
from ref_numpy._check import check_cache, check_float, check_same_dtype, check_shape
from ref_numpy.linear import rows_matmul


# ----------------------------------------------------------------------------------------------
# GQA helpers


def repeat_kv(kv: np.ndarray, n_rep: int) -> np.ndarray:
    """Repeat each key/value head ``n_rep`` times along the head axis (repeat-interleave).

    (B, Hkv, T, D) -> (B, Hkv·n_rep, T, D); output head h is input head h // n_rep.

    >>> repeat_kv(np.arange(2.0).reshape(1, 2, 1, 1), 3)[0, :, 0, 0].tolist()
    [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    """
    check_float("kv", kv, ndim=4)
    if isinstance(n_rep, bool) or not isinstance(n_rep, (int, np.integer)) or n_rep < 1:
        raise ValueError(f"n_rep: expected an int >= 1 but got {n_rep!r}")
    return np.repeat(kv, n_rep, axis=1)                                # (B, Hkv·n_rep, T, D)


def sum_kv_groups(dkv: np.ndarray, n_kv_head: int) -> np.ndarray:
    """The adjoint of :func:`repeat_kv`: sum the gradients of each group of G = H // Hkv heads.

    (B, H, T, D) -> (B, Hkv, T, D).

    >>> sum_kv_groups(np.arange(6.0).reshape(1, 6, 1, 1), 2)[0, :, 0, 0].tolist()
    [3.0, 12.0]
    """
    check_float("dkv", dkv, ndim=4)
    B, H, T, D = dkv.shape
    if isinstance(n_kv_head, bool) or not isinstance(n_kv_head, (int, np.integer)) \
            or n_kv_head < 1 or H % n_kv_head:
        raise ValueError(f"n_kv_head: expected an int that divides H = {H} but got {n_kv_head!r}")
    return dkv.reshape(B, n_kv_head, H // n_kv_head, T, D).sum(axis=2)   # (B, Hkv, T, D)


# ----------------------------------------------------------------------------------------------
# Argument checks


def check_qkv_args(x, w_qkv, b_qkv, n_head, n_kv_head) -> tuple[int, int, int]:
    """Check the input, the fused projection and the head counts; return (H, Hkv, D)."""
    check_float("x", x, ndim=3)
    check_float("w_qkv", w_qkv, ndim=2)
    check_same_dtype(x=x, w_qkv=w_qkv)
    for name, n in (("n_head", n_head), ("n_kv_head", n_kv_head)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{name}: expected an int >= 1 but got {n!r}")
    H, Hkv = int(n_head), int(n_kv_head)
    if H % Hkv:
        raise ValueError(f"n_kv_head: expected a divisor of n_head = {H} but got {Hkv}")
    C = x.shape[2]
    E = w_qkv.shape[1]
    if w_qkv.shape[0] != C or E % (H + 2 * Hkv) or E == 0:
        raise ValueError(f"w_qkv: expected shape (C, (H + 2·Hkv)·D) = ({C}, {H + 2 * Hkv}·D) "
                         f"but got {tuple(w_qkv.shape)}")
    D = E // (H + 2 * Hkv)
    _check_bias("b_qkv", b_qkv, x, E, "(E,)")
    return H, Hkv, D


def check_args(x, w_qkv, b_qkv, w_o, b_o, n_head, n_kv_head) -> tuple[int, int, int]:
    """Check the input and weights; return (H, Hkv, D)."""
    H, Hkv, D = check_qkv_args(x, w_qkv, b_qkv, n_head, n_kv_head)
    check_float("w_o", w_o, ndim=2)
    check_same_dtype(x=x, w_o=w_o)
    C = x.shape[2]
    check_shape("w_o", w_o, (H * D, C), "(H·D, C)")
    _check_bias("b_o", b_o, x, C, "(C,)")
    return H, Hkv, D


def _check_bias(name: str, b, x, n: int, letters: str) -> None:
    """An optional bias: None, or (n,) in the dtype of x."""
    if b is not None:
        check_float(name, b, ndim=1)
        check_same_dtype(x=x, **{name: b})
        check_shape(name, b, (n,), letters)


def _check_dy(dy, cache) -> None:
    """dy like the output y, whose shape is that of x (the caller has checked the cache)."""
    check_float("dy", dy, ndim=3)
    check_shape("dy", dy, cache["x"].shape, "(B, T, C), the shape of y")
    check_same_dtype(y=cache["x"], dy=dy)


# ----------------------------------------------------------------------------------------------
# Fused form


def project_qkv(x, w_qkv, b_qkv, n_head: int, n_kv_head: int):
    """[Q | K | V] = X W_qkv + b_qkv split into heads: q (B, H, T, D), k and v (B, Hkv, T, D).

    Arguments as :func:`mha_forward` (x (B, T, C), w_qkv (C, E), b_qkv (E,) or None, n_head and
    n_kv_head ints >= 1), checked by :func:`check_qkv_args`.
    """
    H, Hkv, D = check_qkv_args(x, w_qkv, b_qkv, n_head, n_kv_head)
    B, T, _ = x.shape
    qkv = rows_matmul(x, w_qkv)                                        # (B, T, E)
    if b_qkv is not None:
        qkv += b_qkv
    q = qkv[..., : H * D].reshape(B, T, H, D).transpose(0, 2, 1, 3)   # (B, H, T, D)
    k = qkv[..., H * D: (H + Hkv) * D].reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)  # (B, Hkv, T, D)
    v = qkv[..., (H + Hkv) * D:].reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)        # (B, Hkv, T, D)
    return q, k, v


def merge_heads(o: np.ndarray) -> np.ndarray:
    """(B, H, T, D) -> (B, T, H·D): the heads side by side, head h in columns h·D … h·D + D − 1."""
    B, H, T, D = o.shape
    return o.transpose(0, 2, 1, 3).reshape(B, T, H * D)                # (B, T, H·D)


def _check_mask_2d(mask) -> None:
    """The module takes a (T, T) mask shared by every batch row and head (or None)."""
    if mask is not None and (not isinstance(mask, np.ndarray) or mask.ndim != 2):
        raise ValueError(f"mask: expected a (T, T) array but got "
                         f"{getattr(mask, 'shape', type(mask).__name__)}")


def mha_forward(x, w_qkv, b_qkv, w_o, b_o, *, n_head, n_kv_head=None, causal=False,
                key_mask=None, mask=None, scale=None, rope=None, position_ids=None):
    """Multi-head self-attention, fused: one projection, all heads in one batched attention.

        [Q | K | V] = X W_qkv + b_qkv,  O = attention(Q, K, V),  Y = merge(O) W_o + b_o

    Args:
        x: (B, T, C) float32/float64.
        w_qkv: (C, E), E = (H + 2·Hkv)·D; b_qkv: (E,) or None.
        w_o: (H·D, C); b_o: (C,) or None. All weights in the dtype of x.
        n_head: H; n_kv_head: Hkv (default H; 1 = multi-query).
        causal, key_mask, mask, scale: as in ``ref_numpy.attention.attention_forward``
            (key_mask (B, T) True = real token; mask (T, T) bool or additive float).
        rope: a ``ref_numpy.rope.RoPE`` with head_dim D to rotate q and k, or None.
        position_ids: (B, T) ints, the positions RoPE uses (default 0 … T − 1); needs rope.

    Returns:
        y: (B, T, C).
        cache: dict with "op" ("mha_forward"), "x", the weights, "o" (B, T, H·D) merged
            attention output, "attn" (the cache of ``attention_forward``, whose "lse" is
            (B, H, T)) and "rope" (the two ``rope_forward`` caches, or None).
    """
    if n_kv_head is None:
        n_kv_head = n_head
    H, Hkv, D = check_args(x, w_qkv, b_qkv, w_o, b_o, n_head, n_kv_head)
    _check_mask_2d(mask)
    if position_ids is not None and rope is None:
        raise ValueError("position_ids: given without rope; positions enter only through RoPE "
                         "here")
    q, k, v = project_qkv(x, w_qkv, b_qkv, H, Hkv)                    # (B, H|Hkv, T, D)
    rope_caches = None
    if rope is not None:
        positions = rope_mod.rope_positions(x.shape[1], position_ids=position_ids,
                                            batch=x.shape[0])          # (T,) or (B, T)
        q, k, rope_caches = rope_mod.rope_qk(q, k, rope, positions)
    o, attn = attention.attention_forward(q, k, v, causal=causal, key_mask=key_mask, mask=mask,
                                          scale=scale)                 # (B, H, T, D)
    o = merge_heads(o)                                                 # (B, T, H·D)
    y = rows_matmul(o, w_o)                                            # (B, T, C)
    if b_o is not None:
        y += b_o
    cache = {"op": "mha_forward", "x": x, "w_qkv": w_qkv, "b_qkv": b_qkv, "w_o": w_o, "b_o": b_o,
             "o": o, "attn": attn, "n_head": H, "n_kv_head": Hkv, "rope": rope_caches}
    return y, cache


def mha_backward(dy, cache):
    """Gradients of fused multi-head attention.

        Y = O W_o + b_o          →  dW_o = Oᵀ dY (summed over B, T),  db_o = Σ_{B,T} dY,
                                    dO = dY W_oᵀ
        O = merge(attention(Q, K, V))  →  dQ, dK, dV from ``attention_backward`` on the split dO
        Q, K = RoPE(Q), RoPE(K)        →  dQ, dK rotated back by −θ (``rope_backward``)
        [Q | K | V] = X W_qkv + b_qkv  →  dW_qkv = Xᵀ [dQ | dK | dV],
                                          db_qkv = Σ_{B,T} [dQ | dK | dV],
                                          dX = [dQ | dK | dV] W_qkvᵀ
    (Self-attention: X feeds Q, K and V, so dX is the sum of the three paths; the single matmul
    with the concatenated gradient performs that sum.)

    Args:
        dy: (B, T, C) upstream gradient, the dtype of x.
        cache: from :func:`mha_forward`.
    Returns:
        dx (B, T, C), dw_qkv (C, E), db_qkv (E,) or None, dw_o (H·D, C), db_o (C,) or None.
    """
    check_cache(cache, "mha_forward")
    _check_dy(dy, cache)
    x, w_qkv, w_o, o = cache["x"], cache["w_qkv"], cache["w_o"], cache["o"]
    B, T, C = x.shape
    H, Hkv = cache["n_head"], cache["n_kv_head"]
    D = w_o.shape[0] // H
    dy2 = dy.reshape(B * T, C)                                         # (B·T, C)
    dw_o = o.reshape(B * T, H * D).T @ dy2                             # (H·D, C)
    db_o = None if cache["b_o"] is None else dy2.sum(axis=0)           # (C,)
    do = (dy2 @ w_o.T).reshape(B, T, H, D).transpose(0, 2, 1, 3)       # (B, H, T, D)
    dq, dk, dv, _ = attention.attention_backward(do, cache["attn"])
    if cache["rope"] is not None:
        dq, dk = rope_mod.rope_qk_grads(dq, dk, cache["rope"])
    dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, T, E)
    dqkv2 = dqkv.reshape(B * T, -1)                                    # (B·T, E)
    dw_qkv = x.reshape(B * T, C).T @ dqkv2                             # (C, E)
    db_qkv = None if cache["b_qkv"] is None else dqkv2.sum(axis=0)     # (E,)
    dx = (dqkv2 @ w_qkv.T).reshape(B, T, C)                            # (B, T, C)
    return dx, dw_qkv, db_qkv, dw_o, db_o


# ----------------------------------------------------------------------------------------------
# Per-head form


def _head_columns(h: int, H: int, Hkv: int, D: int) -> tuple[slice, slice, slice]:
    """Columns of w_qkv for query head h and for its key/value head n = h // G."""
    n = h // (H // Hkv)
    return (slice(h * D, (h + 1) * D),
            slice((H + n) * D, (H + n + 1) * D),
            slice((H + Hkv + n) * D, (H + Hkv + n + 1) * D))


def mha_forward_per_head(x, w_qkv, b_qkv, w_o, b_o, *, n_head, n_kv_head=None, causal=False,
                         key_mask=None, mask=None, scale=None):
    """Multi-head self-attention as a loop over heads; same arguments and result as
    :func:`mha_forward`.

        for h:  q_h = X Wq_h + bq_h,  k_h = X Wk_n + bk_n,  v_h = X Wv_n + bv_n   (n = h // G)
                o_h = attention(q_h, k_h, v_h)
        Y = Σ_h o_h W_o[h·D : h·D + D, :] + b_o

    Each head uses its own D columns of w_qkv (key/value columns shared within a group) and its
    own D rows of w_o: concatenating the heads and multiplying by W_o is this sum over heads.

    Returns:
        y: (B, T, C); cache: dict with "op" ("mha_forward_per_head"), "x", the weights and
        "heads": one (o_h (B, T, D), the cache of ``attention_forward``) per head.
    """
    if n_kv_head is None:
        n_kv_head = n_head
    H, Hkv, D = check_args(x, w_qkv, b_qkv, w_o, b_o, n_head, n_kv_head)
    _check_mask_2d(mask)
    y = np.zeros((x.shape[0], x.shape[1], w_o.shape[1]), dtype=x.dtype)   # (B, T, C)
    heads = []
    for h in range(H):
        cq, ck, cv = _head_columns(h, H, Hkv, D)
        q_h, k_h, v_h = x @ w_qkv[:, cq], x @ w_qkv[:, ck], x @ w_qkv[:, cv]   # (B, T, D)
        if b_qkv is not None:
            q_h, k_h, v_h = q_h + b_qkv[cq], k_h + b_qkv[ck], v_h + b_qkv[cv]
        # one head: (B, 1, T, D) for the attention op
        o_h, attn = attention.attention_forward(q_h[:, None], k_h[:, None], v_h[:, None],
                                                causal=causal, key_mask=key_mask, mask=mask,
                                                scale=scale)
        o_h = o_h[:, 0]                                                # (B, T, D)
        y += o_h @ w_o[cq]
        heads.append((o_h, attn))
    if b_o is not None:
        y += b_o
    cache = {"op": "mha_forward_per_head", "x": x, "w_qkv": w_qkv, "b_qkv": b_qkv, "w_o": w_o,
             "b_o": b_o, "heads": heads, "n_head": H, "n_kv_head": Hkv}
    return y, cache


def mha_backward_per_head(dy, cache):
    """Gradients of the per-head form, head by head (derivation: :func:`mha_backward`).

        for h:  dW_o[rows h] = o_hᵀ dY,   do_h = dY W_o[rows h]ᵀ
                dq_h, dk_h, dv_h = attention_backward(do_h)
                dWq_h = Xᵀ dq_h;  dWk_n += Xᵀ dk_h;  dWv_n += Xᵀ dv_h      (GQA: sum over group)
                dX += dq_h Wq_hᵀ + dk_h Wk_nᵀ + dv_h Wv_nᵀ

    Args:
        dy: (B, T, C) upstream gradient, the dtype of x.
        cache: from :func:`mha_forward_per_head` (only).
    Returns:
        dx, dw_qkv, db_qkv, dw_o, db_o as :func:`mha_backward`.
    """
    check_cache(cache, "mha_forward_per_head")
    _check_dy(dy, cache)
    x, w_qkv, w_o = cache["x"], cache["w_qkv"], cache["w_o"]
    B, T, C = x.shape
    H, Hkv = cache["n_head"], cache["n_kv_head"]
    D = w_o.shape[0] // H
    x2 = x.reshape(B * T, C)                                           # (B·T, C)
    dy2 = dy.reshape(B * T, C)                                         # (B·T, C)
    dx = np.zeros_like(x2)
    dw_qkv, dw_o = np.zeros_like(w_qkv), np.zeros_like(w_o)
    db_qkv = None if cache["b_qkv"] is None else np.zeros_like(cache["b_qkv"])
    for h, (o_h, attn) in enumerate(cache["heads"]):
        cq, ck, cv = _head_columns(h, H, Hkv, D)
        dw_o[cq] = o_h.reshape(B * T, D).T @ dy2                       # (D, C)
        do_h = (dy2 @ w_o[cq].T).reshape(B, 1, T, D)                   # (B, 1, T, D)
        dq_h, dk_h, dv_h, _ = attention.attention_backward(do_h, attn)
        for cols, g in ((cq, dq_h), (ck, dk_h), (cv, dv_h)):
            g2 = g.reshape(B * T, D)                                   # (B·T, D)
            dw_qkv[:, cols] += x2.T @ g2
            if db_qkv is not None:
                db_qkv[cols] += g2.sum(axis=0)
            dx += g2 @ w_qkv[:, cols].T
    db_o = None if cache["b_o"] is None else dy2.sum(axis=0)
    return dx.reshape(B, T, C), dw_qkv, db_qkv, dw_o, db_o
