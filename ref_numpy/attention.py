"""Scaled dot-product attention in NumPy: forward, hand-derived backward, masks, dropout, GQA.

    O = softmax(scale · Q Kᵀ + bias + mask) V          (Vaswani et al. 2017, "Attention Is All You
                                                         Need", eq. 1; default scale = 1/√D)

Shape letters, used in every shape comment of this module:

    B    batch
    H    query heads
    Hkv  key/value heads, H % Hkv == 0; G = H // Hkv query heads share one key/value head.
         Query head h reads key/value head h // G. Hkv = H is multi-head attention, 1 < Hkv < H is
         grouped-query attention (GQA, Ainslie et al. 2023), Hkv = 1 is multi-query attention
         (MQA, Shazeer 2019).
    Tq   query positions;  Tk  key/value positions
    D    head dimension

Three implementations of one op; they agree to rounding (float64: 1e-12) and share the
argument checks and the mask conventions below:

    attention_forward / attention_backward                 batched matmul: the one to use
    attention_forward_loop / attention_backward_loop       loops over (b, h, i, j): read this first
    attention_forward_einsum / attention_backward_einsum   the same math as einsum index equations

The three caches hold the same entries except ``cache["op"]``, the name of the forward that made
it: each backward accepts only its own forward's cache (another one is a TypeError naming both),
so a pairing mistake cannot pass unnoticed (no caller crosses the forms).

Mask conventions (every boolean mask in this module means True = "may attend", as the boolean
``attn_mask`` of ``torch.nn.functional.scaled_dot_product_attention``):

* ``causal=True``: query i may attend key j iff j <= i + (Tk − Tq). For Tq ≠ Tk the mask is
  aligned to the bottom-right corner, as when the last Tq queries of a sequence attend all Tk keys
  of a key/value cache::

      Tq = 3, Tk = 5 (offset Tk − Tq = 2)          Tq = 5, Tk = 3 (offset −2)
               key j: 0 1 2 3 4                             key j: 0 1 2
          query 0:    x x x . .                        query 0:    . . .    <- fully masked
          query 1:    x x x x .                        query 1:    . . .    <- fully masked
          query 2:    x x x x x                        query 2:    x . .
                                                       query 3:    x x .
                                                       query 4:    x x x

  With Tq > Tk the first Tq − Tk rows see no key at all; they follow the fully-masked-row rule.
* ``window=w``: query i (at absolute position p_i = i + Tk − Tq) may attend key j iff
  |p_i − j| < w, a band of half-width w − 1 (local attention, Beltagy et al. 2020). With
  ``causal=True`` this is the sliding window of Mistral (Jiang et al. 2023): the w most recent keys,
  p_i − w < j <= p_i.
* ``key_mask``: (B, Tk) bool, True = key j of batch row b is a real token, False = padding.
  NOTE: this is the opposite of ``torch.nn.MultiheadAttention(key_padding_mask=...)``, where True
  marks padding; the torch oracles pass ``~key_mask``. :func:`key_mask_from_lengths` builds it.
* ``mask``: bool (True = may attend) or float (added to the scores; −inf blocks), shape (Tq, Tk)
  or (B|1, H|1, Tq, Tk). A size-1 axis is used for every batch row / head; no other broadcast.
* ``bias``: float, same shapes as ``mask``, added to the scores like a float mask but a
  differentiable input: the backward returns d(bias) reduced to ``bias.shape``.

All masks combine with AND. A fully masked row (every key blocked, or every score −inf) outputs
zeros, has lse = −inf and passes zero gradient; no NaN is produced. (A row that is only *very*
negative, e.g. an additive −1e9, is not masked: it gets the softmax of its scores, as in torch.)

Numerics: the softmax subtracts the row maximum before exp, so every exp is <= 1 and the row sum
is >= 1 for any row with an unmasked key (Milakov & Gimelshein 2018). It records
lse_i = m_i + log l_i, the log-sum-exp of the scaled, masked scores, which ``cache["lse"]`` holds
as (B, H, Tq) for comparison with flash attention (Dao et al. 2022), whose forward saves the
same quantity.

Dropout (Srivastava et al. 2014) acts on the probabilities: A = P ⊙ keep / (1 − p). The keep-mask is
either given (``dropout_mask``, bool (B, H, Tq, Tk), True = keep) or drawn from
``numpy.random.default_rng(seed)`` by :func:`dropout_keep_mask`, so every run is reproducible and
checkable against an oracle that is handed the same mask. ``cache["lse"]`` is before dropout.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ref_numpy._check import (check_cache, check_float, check_nonneg_int, check_same_dtype,
                              check_scale, check_shape)

__all__ = [
    "attention_forward", "attention_backward",
    "attention_forward_loop", "attention_backward_loop",
    "attention_forward_einsum", "attention_backward_einsum",
    "attention_mask", "causal_mask", "window_mask", "key_mask_from_lengths", "dropout_keep_mask",
]


# ----------------------------------------------------------------------------------------------
# Masks


def causal_mask(Tq: int, Tk: int) -> np.ndarray:
    """Bottom-right aligned causal mask: True where query i may attend key j, i.e. j <= i + Tk − Tq.

    >>> causal_mask(2, 3).astype(int)
    array([[1, 1, 0],
           [1, 1, 1]])

    Tq and Tk are ints >= 0.
    """
    Tq, Tk = check_nonneg_int("Tq", Tq), check_nonneg_int("Tk", Tk)
    i = np.arange(Tq)[:, None]
    j = np.arange(Tk)[None, :]
    return j <= i + (Tk - Tq)                                          # (Tq, Tk)


def window_mask(Tq: int, Tk: int, window: int, causal: bool = False) -> np.ndarray:
    """Band mask: True where |p_i − j| < window (p_i = i + Tk − Tq); with ``causal`` also j <= p_i.

    >>> window_mask(4, 4, 2, causal=True).astype(int)
    array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [0, 1, 1, 0],
           [0, 0, 1, 1]])

    Tq and Tk are ints >= 0, window an int >= 1.
    """
    Tq, Tk = check_nonneg_int("Tq", Tq), check_nonneg_int("Tk", Tk)
    check_window(window)
    pos = np.arange(Tq)[:, None] + (Tk - Tq)                            # (Tq, 1)
    j = np.arange(Tk)[None, :]
    allowed = np.abs(pos - j) < window                                 # (Tq, Tk)
    return allowed & (j <= pos) if causal else allowed


def key_mask_from_lengths(lengths, Tk: int) -> np.ndarray:
    """(B, Tk) key mask, True for the first ``lengths[b]`` keys of batch row b (right padding).

    >>> key_mask_from_lengths([3, 1], 4).astype(int)
    array([[1, 1, 1, 0],
           [1, 0, 0, 0]])

    Tk is an int >= 0; lengths a 1-D sequence of ints in [0, Tk].
    """
    Tk = check_nonneg_int("Tk", Tk)
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise TypeError(f"lengths: expected a 1-D sequence of integers but got dtype "
                        f"{lengths.dtype} and shape {lengths.shape}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > Tk):
        raise ValueError(f"lengths: expected values in [0, Tk] = [0, {Tk}] but got "
                         f"{lengths.tolist()}")
    return np.arange(Tk)[None, :] < lengths[:, None]                    # (B, Tk)


def dropout_keep_mask(shape: tuple, p: float, seed: int) -> np.ndarray:
    """Bool keep-mask, True = keep (probability 1 − p), from ``numpy.random.default_rng(seed)``.

    The draw is ``rng.random(shape) >= p`` in float64, so a seed gives the same mask for any
    dtype of the attention inputs.

    Args:
        shape: a tuple of ints >= 0, e.g. (B, H, Tq, Tk).
        p: drop probability in [0, 1).
        seed: an int >= 0.
    Returns:
        bool array of ``shape``.
    """
    if not isinstance(shape, tuple):
        raise TypeError(f"shape: expected a tuple of ints >= 0 but got {type(shape).__name__}")
    for axis, n in enumerate(shape):
        check_nonneg_int(f"shape[{axis}]", n)
    _check_dropout_p(p)
    seed = check_nonneg_int("seed", seed)
    return np.random.default_rng(seed).random(shape) >= p


def attention_mask(B: int, H: int, Tq: int, Tk: int, *, causal: bool = False,
                   window: int | None = None, key_mask: np.ndarray | None = None,
                   mask: np.ndarray | None = None) -> np.ndarray | None:
    """Combine causal, window, key-padding and boolean masks into one "may attend" mask.

    Args:
        B, H, Tq, Tk: ints >= 0, the sizes the masks are checked against.
        causal, window, key_mask, mask: as in :func:`attention_forward` (a float ``mask`` is
            additive and is not part of this boolean mask).

    Returns:
        bool array broadcastable to (B, H, Tq, Tk) — each axis is either full or 1 — with True
        where the query may attend the key; ``None`` when nothing is masked.
    """
    for name, n in (("B", B), ("H", H), ("Tq", Tq), ("Tk", Tk)):
        check_nonneg_int(name, n)
    allowed = None

    def both(a, b):
        return b if a is None else a & b

    if causal:
        allowed = both(allowed, causal_mask(Tq, Tk)[None, None])       # (1, 1, Tq, Tk)
    if window is not None:
        allowed = both(allowed, window_mask(Tq, Tk, window)[None, None])
    if key_mask is not None:
        _check_key_mask(key_mask, B, Tk)
        allowed = both(allowed, key_mask[:, None, None, :])            # (B, 1, 1, Tk)
    if mask is not None:
        if not isinstance(mask, np.ndarray):
            raise TypeError(f"mask: expected a numpy.ndarray (bool or float) but got "
                            f"{type(mask).__name__}")
        if mask.dtype == np.bool_:
            allowed = both(allowed, _as_4d("mask", mask, B, H, Tq, Tk))   # (B|1, H|1, Tq, Tk)
    return allowed


# ----------------------------------------------------------------------------------------------
# Argument checks shared by the three implementations


@dataclass
class _Spec:
    """Checked arguments and derived sizes of one attention call."""
    B: int
    H: int
    Hkv: int
    G: int
    Tq: int
    Tk: int
    D: int
    scale: float
    causal: bool
    window: int | None
    key_mask: np.ndarray | None      # (B, Tk) bool or None
    bool_mask: np.ndarray | None     # (B|1, H|1, Tq, Tk) bool or None
    allowed: np.ndarray | None       # all boolean masks combined, (B|1, H|1, Tq, Tk) or None
    add: np.ndarray | None           # bias + float mask, (B|1, H|1, Tq, Tk) or None
    bias_shape: tuple | None         # shape of the bias argument (for d(bias)) or None
    keep: np.ndarray | None          # dropout keep-mask (B, H, Tq, Tk) bool or None
    drop_scale: float                # 1 / (1 − p), 1.0 without dropout


def check_window(window) -> None:
    """A sliding-window width: an int >= 1."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise TypeError(f"window: expected an int >= 1 or None but got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"window: expected an int >= 1 but got {window}")


def _check_dropout_p(p) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise TypeError(f"dropout_p: expected a float in [0, 1) but got {type(p).__name__}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p: expected a float in [0, 1) but got {p}")


def _check_key_mask(key_mask, B: int, Tk: int) -> None:
    if not isinstance(key_mask, np.ndarray) or key_mask.dtype != np.bool_:
        what = key_mask.dtype if isinstance(key_mask, np.ndarray) else type(key_mask).__name__
        raise TypeError(f"key_mask: expected a bool ndarray (True = real token) but got {what}")
    check_shape("key_mask", key_mask, (B, Tk), "(B, Tk)")


def _as_4d(name: str, m: np.ndarray, B: int, H: int, Tq: int, Tk: int) -> np.ndarray:
    """View a (Tq, Tk) or (B|1, H|1, Tq, Tk) mask/bias as 4-D; any other shape is an error."""
    if m.ndim == 2 and m.shape == (Tq, Tk):
        return m[None, None]                                           # (1, 1, Tq, Tk)
    if (m.ndim == 4 and m.shape[0] in (1, B) and m.shape[1] in (1, H)
            and m.shape[2:] == (Tq, Tk)):
        return m
    raise ValueError(f"{name}: expected shape (Tq, Tk) = ({Tq}, {Tk}) or (B|1, H|1, Tq, Tk) = "
                     f"({B}|1, {H}|1, {Tq}, {Tk}) but got {tuple(m.shape)}")


def _check_additive(name: str, m: np.ndarray, dtype) -> None:
    """A float mask or bias: the dtype of q, no NaN (checked by check_float), no +inf."""
    check_float(name, m)
    if m.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of q) but got {m.dtype}")
    if np.isposinf(m).any():
        idx = tuple(int(i) for i in np.argwhere(np.isposinf(m))[0])
        raise ValueError(f"{name}: contains +inf (first at index {idx}); use -inf to block a key")


def _prepare(q, k, v, *, causal, scale, mask, bias, key_mask, window, dropout_p, dropout_mask,
             seed) -> _Spec:
    check_float("q", q, ndim=4)
    check_float("k", k, ndim=4)
    check_float("v", v, ndim=4)
    dtype = check_same_dtype(q=q, k=k, v=v)
    B, H, Tq, D = q.shape
    _, Hkv, Tk, _ = k.shape
    check_shape("k", k, (B, None, None, D), f"(B, Hkv, Tk, D) with B = {B}, D = {D} from q")
    check_shape("v", v, k.shape, "(B, Hkv, Tk, D), the shape of k")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"k: expected a number of key/value heads Hkv that divides the number of "
                         f"query heads H = {H} but got Hkv = {Hkv}")
    if Tk == 0:
        raise ValueError(f"k: expected at least one key position but got Tk = 0 (shape {k.shape})")
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal: expected a bool but got {type(causal).__name__}")
    scale = check_scale(scale, D)
    if window is not None:
        check_window(window)

    allowed = attention_mask(B, H, Tq, Tk, causal=causal, window=window, key_mask=key_mask,
                             mask=mask)
    bool_mask, add = None, None
    if mask is not None:
        if mask.dtype == np.bool_:
            bool_mask = _as_4d("mask", mask, B, H, Tq, Tk)
        else:
            _check_additive("mask", mask, dtype)
            add = _as_4d("mask", mask, B, H, Tq, Tk)
    bias_shape = None
    if bias is not None:
        _check_additive("bias", bias, dtype)
        bias_shape = bias.shape
        bias4 = _as_4d("bias", bias, B, H, Tq, Tk)
        add = bias4 if add is None else add + bias4                    # (B|1, H|1, Tq, Tk)

    _check_dropout_p(dropout_p)
    keep, drop_scale = None, 1.0
    if dropout_mask is not None:
        if not isinstance(dropout_mask, np.ndarray) or dropout_mask.dtype != np.bool_:
            raise TypeError("dropout_mask: expected a bool ndarray (True = keep)")
        check_shape("dropout_mask", dropout_mask, (B, H, Tq, Tk), "(B, H, Tq, Tk)")
        if seed is not None:
            raise ValueError("dropout_mask and seed: expected one of them but got both")
        if dropout_p == 0:
            raise ValueError("dropout_mask: given but dropout_p = 0; pass the drop probability "
                             "that the mask was drawn with (it sets the 1 / (1 - p) rescaling)")
        keep = dropout_mask
    elif dropout_p > 0:
        if seed is None:
            raise ValueError(f"dropout_p = {dropout_p}: expected a dropout_mask or a seed so that "
                             f"the dropout is reproducible, but got neither")
        keep = dropout_keep_mask((B, H, Tq, Tk), dropout_p, seed)
    elif seed is not None:
        raise ValueError("seed: given but dropout_p = 0; the seed only draws a dropout mask")
    if keep is not None:
        drop_scale = 1.0 / (1.0 - dropout_p)
    return _Spec(B, H, Hkv, H // Hkv, Tq, Tk, D, float(scale), bool(causal), window, key_mask,
                 bool_mask, allowed, add, bias_shape, keep, drop_scale)


def _reduce_to(ds: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum a (B, H, Tq, Tk) gradient over the axes a bias of ``shape`` was broadcast along."""
    if len(shape) == 2:
        return ds.sum(axis=(0, 1))                                     # (Tq, Tk)
    axes = tuple(a for a in (0, 1) if shape[a] == 1 and ds.shape[a] != 1)
    return ds.sum(axis=axes, keepdims=True) if axes else ds          # (B|1, H|1, Tq, Tk)


def _check_dout(dout, cache) -> None:
    check_float("dout", dout, ndim=4)
    check_shape("dout", dout, cache["out"].shape, "(B, H, Tq, D), the shape of out")
    check_same_dtype(out=cache["out"], dout=dout)


# ----------------------------------------------------------------------------------------------
# 1. Batched matmul: the implementation to use


def _masked_softmax_(s: np.ndarray, blocked: np.ndarray | None) -> np.ndarray:
    """In place: scores s (..., Tq, Tk) -> probabilities P; return lse (..., Tq).

    ``blocked`` (broadcastable to s, True = may not attend) entries become −inf before the max,
    so they get exp(−inf) = 0. A row whose max is −inf has no unmasked key: its max is replaced
    by 0 (so no −inf − (−inf) = NaN), its exps are all 0, its sum l is 0, and instead of dividing
    by l the row is multiplied by 0.
    """
    if blocked is not None:
        np.copyto(s, -np.inf, where=blocked)
    # m_i = max_j S_ij
    m = s.max(axis=-1, keepdims=True)                                  # (..., Tq, 1)
    m[np.isneginf(m)] = 0.0
    # P_ij = exp(S_ij − m_i) / l_i,  l_i = Σ_j exp(S_ij − m_i)
    s -= m
    np.exp(s, out=s)
    # the row sums as one matrix-vector product E·1: BLAS adds these rows several times faster
    # than s.sum(axis=-1) does
    l = (s @ np.ones(s.shape[-1], dtype=s.dtype))[..., None]          # (..., Tq, 1)
    inv_l = np.divide(1.0, l, out=np.zeros_like(l), where=l > 0)
    s *= inv_l
    # lse_i = m_i + log l_i  (−inf for a fully masked row, where l_i = 0)
    with np.errstate(divide="ignore"):
        return (m + np.log(l))[..., 0]                                 # (..., Tq)


def _part(a: np.ndarray | None, rows: slice, heads: slice) -> np.ndarray | None:
    """The (nb|1, nh|1, Tq, Tk) part of a (B|1, H|1, Tq, Tk) mask, bias or keep-mask that serves
    batch ``rows`` and query ``heads``; a size-1 axis serves every row or head."""
    if a is None:
        return None
    return a[rows if a.shape[0] > 1 else slice(None), heads if a.shape[1] > 1 else slice(None)]


SLAB_BYTES = 1 << 20    # scores of a slab of whole batch rows at most: half a core's 2 MiB L2


def _slabs(spec: _Spec, itemsize: int):
    """(rows, heads, kv): slices of batch rows, of the query heads and of the key/value heads
    that they read, one slab per matmul. Whole batch rows, every head, while their (H, Tq, Tk)
    scores take at most SLAB_BYTES together; else one (batch row, kv head) group at a time,
    its G query heads n·G … n·G + G − 1 and kv head n."""
    row_bytes = max(spec.H * spec.Tq * spec.Tk * itemsize, 1)        # Tq = 0: one empty slab
    if row_bytes <= SLAB_BYTES:
        n = SLAB_BYTES // row_bytes
        for b0 in range(0, spec.B, n):
            yield slice(b0, min(b0 + n, spec.B)), slice(0, spec.H), slice(0, spec.Hkv)
        return
    for b, n in np.ndindex(spec.B, spec.Hkv):
        yield slice(b, b + 1), slice(n * spec.G, (n + 1) * spec.G), slice(n, n + 1)


def attention_forward(q, k, v, *, causal=False, scale=None, mask=None, bias=None, key_mask=None,
                      window=None, dropout_p=0.0, dropout_mask=None, seed=None):
    """Scaled dot-product attention with matmul, one slab of batch rows or heads at a time.

        S = scale · Q Kᵀ + bias + mask (blocked entries −inf),  P = softmax_rows(S),
        A = P ⊙ keep / (1 − p) (A = P without dropout),  O = A V

    The G query heads that share a key/value head are stacked into one (G·Tq, D) matrix, so one
    matmul serves the whole group and K, V are never repeated. The loop runs over slabs: as
    many whole batch rows as have scores within SLAB_BYTES (1 MiB) together, else one
    (batch row, kv head) group per slab. Either way the scores of a slab stay in the CPU's cache
    through the softmax's passes (max, subtract, exp, sum, scale), which a single
    (B, H, Tq, Tk) array four times over the cache's size would not (1.3x faster at
    (4, 8, 512, 64) float32, ``crosscheck bench attention``). Small
    problems thus take a few batched matmuls rather than B·Hkv small ones (one decoded token:
    one slab where a loop over groups would call each of the ~15 NumPy functions B·Hkv times).
    The scale is applied to Q (Tq·D products, not Tq·Tk), and the softmax works in place in the
    probability array that the backward reads.

    Args:
        q: (B, H, Tq, D) float32/float64 queries.
        k, v: (B, Hkv, Tk, D) keys and values, dtype of q; H % Hkv == 0.
        causal: bottom-right aligned causal mask (see the module docstring for the picture).
        scale: multiplies Q Kᵀ; default 1/√D.
        mask: bool (True = may attend) or additive float (dtype of q, −inf blocks), shape (Tq, Tk)
            or (B|1, H|1, Tq, Tk). Not differentiated.
        bias: additive float, same shapes as ``mask``; its gradient is returned by the backward.
        key_mask: (B, Tk) bool, True = real key, False = padding (opposite of torch MHA's
            key_padding_mask).
        window: int >= 1, keys with |p_i − j| < window only (see the module docstring).
        dropout_p: drop probability on the attention probabilities, in [0, 1).
        dropout_mask: (B, H, Tq, Tk) bool keep-mask (True = keep); requires dropout_p > 0.
        seed: int >= 0, draws the keep-mask with :func:`dropout_keep_mask` instead.

    Returns:
        out: (B, H, Tq, D), dtype of q; zeros on fully masked rows.
        cache: dict with "op" ("attention_forward"), "q", "k", "v", "out", "p" (B, H, Tq, Tk)
            probabilities before dropout, "lse" (B, H, Tq) log-sum-exp of the scaled masked
            scores (−inf on fully masked rows), "keep" (the keep-mask or None), "spec" (checked
            arguments: scale, masks, sizes).
    """
    spec = _prepare(q, k, v, causal=causal, scale=scale, mask=mask, bias=bias, key_mask=key_mask,
                    window=window, dropout_p=dropout_p, dropout_mask=dropout_mask, seed=seed)
    B, H, G, Tq, Tk, D = spec.B, spec.H, spec.G, spec.Tq, spec.Tk, spec.D
    dt = q.dtype.type
    qs = np.multiply(q, dt(spec.scale), order="C")                     # (B, H, Tq, D)
    blocked = None if spec.allowed is None else ~spec.allowed          # (B|1, H|1, Tq, Tk)
    p = np.empty((B, H, Tq, Tk), dtype=q.dtype)                        # (B, H, Tq, Tk)
    out = np.empty((B, H, Tq, D), dtype=q.dtype)                       # (B, H, Tq, D)
    lse = np.empty((B, H, Tq), dtype=q.dtype)                          # (B, H, Tq)
    for rows, heads, kv in _slabs(spec, p.itemsize):
        s = p[rows, heads]                                             # (nb, nh, Tq, Tk), a view
        stacked = (s.shape[0], kv.stop - kv.start, G * Tq)            # (nb, nkv, G·Tq)
        # S = (scale · Q) Kᵀ, the G heads of each kv head stacked as (G·Tq, D) x (D, Tk)
        np.matmul(qs[rows, heads].reshape(*stacked, D), k[rows, kv].swapaxes(-1, -2),
                  out=s.reshape(*stacked, Tk))
        if spec.add is not None:  # + bias + float mask
            s += _part(spec.add, rows, heads)
        lse[rows, heads] = _masked_softmax_(s, _part(blocked, rows, heads))  # s is now P
        # A = P ⊙ keep / (1 − p)
        a = s if spec.keep is None else s * spec.keep[rows, heads] * dt(spec.drop_scale)
        # O = A V
        np.matmul(a.reshape(*stacked, Tk), v[rows, kv], out=out[rows, heads].reshape(*stacked, D))
    cache = {"op": "attention_forward", "q": q, "k": k, "v": v, "out": out, "p": p, "lse": lse,
             "keep": spec.keep, "spec": spec}
    return out, cache


def attention_backward(dout, cache):
    """Gradients of attention: dQ, dK, dV and d(bias).

    Forward, for one (b, h) with key/value head n = h // G, rows i (queries), columns j (keys):

        S_ij = scale · q_i·k_j + bias_ij             (blocked entries: −inf)
        P_ij = exp(S_ij − lse_i)                     (softmax over j)
        A_ij = P_ij · keep_ij / (1 − p)              (A = P without dropout)
        O_i  = Σ_j A_ij v_j

    Backward, given dO = ∂L/∂O:

        O_i = Σ_j A_ij v_j        →  dv_j  = Σ_i A_ij dO_i             dV = Aᵀ dO
                                  →  dA_ij = dO_i · v_j                dA = dO Vᵀ
        A = P ⊙ keep/(1 − p)      →  dP = dA ⊙ keep/(1 − p)
        softmax: ∂P_ij/∂S_ik = P_ij (δ_jk − P_ik), so
                 dS_ik = Σ_j dP_ij P_ij (δ_jk − P_ik) = P_ik (dP_ik − Σ_j dP_ij P_ij)
                 dS = P ⊙ (dP − rowsum(dP ⊙ P))
        Mathematically rowsum(dP ⊙ P)_i = Σ_j dA_ij A_ij = dO_i · O_i, the form FlashAttention-2
        (Dao 2023) uses to avoid a (Tq, Tk) product. This code keeps δ_i = rowsum(dP ⊙ P): in
        floating point it cancels exactly when a row has a single nonzero probability (P_ij = 1
        gives dS_ij = dP_ij − dP_ij = 0), whereas dO_i · O_i and dP_ij are two differently
        rounded dot products, and their float32 difference (~1e-6 on causal row 0 of the
        equivalence cases) would be all of that row's d(bias), a spurious nonzero.
        S_ij = scale q_i·k_j      →  dq_i = scale Σ_j dS_ij k_j        dQ = scale · dS K
                                  →  dk_j = scale Σ_i dS_ij q_i        dK = scale · dSᵀ Q
        S = … + bias              →  d(bias) = dS summed over the axes the bias broadcasts along

    GQA: key/value head n serves query heads h = n·G … n·G + G − 1, so its dK and dV are the sum
    over those G heads; stacking the group into rows of one matmul performs that sum.
    Blocked entries have P = 0, hence dS = 0; a fully masked row (P = 0) passes zero gradient.
    Like the forward, the backward works one slab at a time (whole batch rows, or one
    (batch row, kv head) group), with one buffer of the largest slab's size that holds dP and then
    dS for every slab in turn.

    Args:
        dout: (B, H, Tq, D), the gradient of the loss w.r.t. ``out``.
        cache: from :func:`attention_forward`.

    Returns:
        dq (B, H, Tq, D), dk (B, Hkv, Tk, D), dv (B, Hkv, Tk, D), and dbias with the shape of
        ``bias`` (None when no bias was given).
    """
    check_cache(cache, "attention_forward")
    _check_dout(dout, cache)
    spec = cache["spec"]
    q, k, v, p = cache["q"], cache["k"], cache["v"], cache["p"]
    G, Tq, Tk, D = spec.G, spec.Tq, spec.Tk, spec.D
    dt = p.dtype.type
    dq = np.empty(q.shape, dtype=q.dtype)                              # (B, H, Tq, D)
    dk = np.empty(k.shape, dtype=k.dtype)                              # (B, Hkv, Tk, D)
    dv = np.empty(v.shape, dtype=v.dtype)                              # (B, Hkv, Tk, D)
    dbias = None if spec.bias_shape is None else np.zeros(spec.bias_shape, dtype=p.dtype)
    slabs = list(_slabs(spec, p.itemsize))
    rows0, heads0, _ = slabs[0] if slabs else (slice(0), slice(0), None)   # the largest slab
    buf = np.empty((rows0.stop - rows0.start, heads0.stop - heads0.start, Tq, Tk), dtype=p.dtype)
    for rows, heads, kv in slabs:
        pg = p[rows, heads]                                            # (nb, nh, Tq, Tk)
        ds = buf[: pg.shape[0]]                       # dP, then dS, of one slab at a time
        stacked = (pg.shape[0], kv.stop - kv.start, G * Tq)           # (nb, nkv, G·Tq)
        dog = dout[rows, heads].reshape(*stacked, D)                   # (nb, nkv, G·Tq, D)
        a = pg if spec.keep is None else pg * spec.keep[rows, heads] * dt(spec.drop_scale)
        # dV = Aᵀ dO  (the stacked rows sum over the G query heads of each kv head)
        np.matmul(a.reshape(*stacked, Tk).swapaxes(-1, -2), dog, out=dv[rows, kv])
        # dA = dO Vᵀ;  dP = dA ⊙ keep / (1 − p)
        np.matmul(dog, v[rows, kv].swapaxes(-1, -2), out=ds.reshape(*stacked, Tk))
        if spec.keep is not None:
            ds *= spec.keep[rows, heads]
            ds *= dt(spec.drop_scale)
        # dS = P ⊙ (dP − δ),  δ_i = rowsum(dP ⊙ P)_i
        ds -= np.vecdot(ds, pg)[..., None]
        ds *= pg
        if dbias is not None:
            _add_bias_grad(dbias, ds, rows, heads)
        dsg = ds.reshape(*stacked, Tk)                                 # (nb, nkv, G·Tq, Tk)
        # dQ = scale · dS K
        np.matmul(dsg, k[rows, kv], out=dq[rows, heads].reshape(*stacked, D))
        # dK = scale · dSᵀ Q  (summed over the G heads of each kv head)
        np.matmul(dsg.swapaxes(-1, -2), q[rows, heads].reshape(*stacked, D), out=dk[rows, kv])
    dq *= dt(spec.scale)
    dk *= dt(spec.scale)
    return dq, dk, dv, dbias


def _add_bias_grad(dbias: np.ndarray, ds: np.ndarray, rows: slice, heads: slice) -> None:
    """Add one slab's dS (nb, nh, Tq, Tk) to d(bias), summed over the axes the bias broadcasts
    along: a (Tq, Tk) bias over batch rows and heads, a size-1 axis of a 4-D one over its axis."""
    if dbias.ndim == 2:
        dbias += ds.sum(axis=(0, 1))                                   # (Tq, Tk)
        return
    if dbias.shape[0] == 1:
        ds, rows = ds.sum(axis=0, keepdims=True), slice(None)          # (1, nh, Tq, Tk)
    if dbias.shape[1] == 1:
        ds, heads = ds.sum(axis=1, keepdims=True), slice(None)         # (nb|1, 1, Tq, Tk)
    dbias[rows, heads] += ds


# ----------------------------------------------------------------------------------------------
# 2. Explicit loops: the pedagogical version (slow; for reading and for small checks)


def _may_attend(spec: _Spec, b: int, h: int, i: int, j: int) -> bool:
    """The mask rules written out for one (query i, key j) pair."""
    pos = i + spec.Tk - spec.Tq                 # absolute position of query i (bottom-right)
    if spec.causal and j > pos:
        return False
    if spec.window is not None and abs(pos - j) >= spec.window:
        return False
    if spec.key_mask is not None and not spec.key_mask[b, j]:
        return False
    if spec.bool_mask is not None:
        m = spec.bool_mask
        if not m[min(b, m.shape[0] - 1), min(h, m.shape[1] - 1), i, j]:
            return False
    return True


def _additive(spec: _Spec, b: int, h: int, i: int, j: int) -> float:
    if spec.add is None:
        return 0.0
    a = spec.add
    return a[min(b, a.shape[0] - 1), min(h, a.shape[1] - 1), i, j]


def attention_forward_loop(q, k, v, *, causal=False, scale=None, mask=None, bias=None,
                           key_mask=None, window=None, dropout_p=0.0, dropout_mask=None,
                           seed=None):
    """Attention with explicit loops over batch, head, query and key: same math, same arguments
    and same ``cache`` entries as :func:`attention_forward`, except "op": "attention_forward_loop"
    (only :func:`attention_backward_loop` accepts it). O(B·H·Tq·Tk) Python steps.

    For each (b, h, i):   s_j = scale · q_i·k_j + bias_ij  (or −inf when masked)
                          p_j = exp(s_j − m) / Σ exp(s − m),  m = max_j s_j
                          o_i = Σ_j p_j keep_j/(1 − p) v_j
    """
    spec = _prepare(q, k, v, causal=causal, scale=scale, mask=mask, bias=bias, key_mask=key_mask,
                    window=window, dropout_p=dropout_p, dropout_mask=dropout_mask, seed=seed)
    B, H, G, Tq, Tk = spec.B, spec.H, spec.G, spec.Tq, spec.Tk
    out = np.zeros_like(q)                                             # (B, H, Tq, D)
    p_all = np.zeros((B, H, Tq, Tk), dtype=q.dtype)                    # (B, H, Tq, Tk)
    lse = np.full((B, H, Tq), -np.inf, dtype=q.dtype)                  # (B, H, Tq)
    for b in range(B):
        for h in range(H):
            n = h // G                                  # the kv head this query head reads
            for i in range(Tq):
                s = np.full(Tk, -np.inf, dtype=q.dtype)        # (Tk,) scores of query i
                for j in range(Tk):
                    if _may_attend(spec, b, h, i, j):
                        s[j] = spec.scale * np.dot(q[b, h, i], k[b, n, j]) + _additive(
                            spec, b, h, i, j)
                m = s.max()
                if m == -np.inf:                        # no key to attend: output stays 0
                    continue
                e = np.exp(s - m)
                l = e.sum()
                p = e / l
                lse[b, h, i] = m + np.log(l)
                p_all[b, h, i] = p
                for j in range(Tk):
                    a_ij = p[j]
                    if spec.keep is not None:
                        a_ij = a_ij * spec.keep[b, h, i, j] * spec.drop_scale
                    out[b, h, i] += a_ij * v[b, n, j]
    cache = {"op": "attention_forward_loop", "q": q, "k": k, "v": v, "out": out, "p": p_all,
             "lse": lse, "keep": spec.keep, "spec": spec}
    return out, cache


def attention_backward_loop(dout, cache):
    """Gradients of attention with explicit loops (derivation: :func:`attention_backward`).

    For each (b, h, i), with n = h // G:
        dA_j  = dO_i · v_j ;   dP_j = dA_j keep_j/(1 − p) ;   δ = Σ_j dP_j p_j
        dS_j  = p_j (dP_j − δ)
        dq_i += scale Σ_j dS_j k_j ;  dk_j += scale dS_j q_i ;  dv_j += A_j dO_i
    The ``+=`` into dk[b, n] and dv[b, n] from every query head of the group is the GQA sum.

    Args:
        dout: (B, H, Tq, D), the gradient of the loss w.r.t. ``out``.
        cache: from :func:`attention_forward_loop` (only).
    Returns:
        (dq, dk, dv, dbias) as :func:`attention_backward`.
    """
    check_cache(cache, "attention_forward_loop")
    _check_dout(dout, cache)
    spec = cache["spec"]
    q, k, v, p_all = cache["q"], cache["k"], cache["v"], cache["p"]
    B, H, G, Tq, Tk = spec.B, spec.H, spec.G, spec.Tq, spec.Tk
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    ds_all = np.zeros_like(p_all)                                      # (B, H, Tq, Tk)
    for b in range(B):
        for h in range(H):
            n = h // G
            for i in range(Tq):
                p = p_all[b, h, i]
                dp = np.zeros(Tk, dtype=q.dtype)                # (Tk,)
                for j in range(Tk):
                    a_ij, drop = p[j], 1.0
                    if spec.keep is not None:
                        drop = spec.keep[b, h, i, j] * spec.drop_scale
                        a_ij = a_ij * drop
                    dv[b, n, j] += a_ij * dout[b, h, i]
                    dp[j] = np.dot(dout[b, h, i], v[b, n, j]) * drop
                delta = np.dot(dp, p)
                for j in range(Tk):
                    ds = p[j] * (dp[j] - delta)
                    ds_all[b, h, i, j] = ds
                    dq[b, h, i] += spec.scale * ds * k[b, n, j]
                    dk[b, n, j] += spec.scale * ds * q[b, h, i]
    dbias = None if spec.bias_shape is None else _reduce_to(ds_all, spec.bias_shape)
    return dq, dk, dv, dbias


# ----------------------------------------------------------------------------------------------
# 3. einsum: the index equations, one line each
#    b batch, n kv head, g member of the group (h = n·G + g), i query, j key, d head dim


def attention_forward_einsum(q, k, v, *, causal=False, scale=None, mask=None, bias=None,
                             key_mask=None, window=None, dropout_p=0.0, dropout_mask=None,
                             seed=None):
    """Attention as einsum equations; same math, arguments, ``cache`` as :func:`attention_forward`
    except "op": "attention_forward_einsum" (only :func:`attention_backward_einsum` accepts it).

        S[b,n,g,i,j] = scale · Σ_d Q[b,n,g,i,d] K[b,n,j,d]
        O[b,n,g,i,d] = Σ_j A[b,n,g,i,j] V[b,n,j,d]
    """
    spec = _prepare(q, k, v, causal=causal, scale=scale, mask=mask, bias=bias, key_mask=key_mask,
                    window=window, dropout_p=dropout_p, dropout_mask=dropout_mask, seed=seed)
    B, H, Hkv, G, Tq, Tk, D = spec.B, spec.H, spec.Hkv, spec.G, spec.Tq, spec.Tk, spec.D
    q5 = q.reshape(B, Hkv, G, Tq, D)                                   # (B, Hkv, G, Tq, D)
    s = np.einsum("bngid,bnjd->bngij", q5, k) * q.dtype.type(spec.scale)
    s = s.reshape(B, H, Tq, Tk)                                        # (B, H, Tq, Tk)
    if spec.add is not None:
        s = s + spec.add
    p = s                                                              # softmax in place:
    lse = _masked_softmax_(p, None if spec.allowed is None else ~spec.allowed)
    a = p if spec.keep is None else p * spec.keep * p.dtype.type(spec.drop_scale)
    a5 = a.reshape(B, Hkv, G, Tq, Tk)                                  # (B, Hkv, G, Tq, Tk)
    out = np.einsum("bngij,bnjd->bngid", a5, v).reshape(B, H, Tq, D)   # (B, H, Tq, D)
    cache = {"op": "attention_forward_einsum", "q": q, "k": k, "v": v, "out": out, "p": p,
             "lse": lse, "keep": spec.keep, "spec": spec}
    return out, cache


def attention_backward_einsum(dout, cache):
    """Gradients of attention as einsum equations (derivation: :func:`attention_backward`).

        dV[b,n,j,d]   = Σ_{g,i} A[b,n,g,i,j] dO[b,n,g,i,d]       (sum over the group g: GQA)
        dP[b,n,g,i,j] = Σ_d dO[b,n,g,i,d] V[b,n,j,d] · keep/(1 − p)
        dS            = P ⊙ (dP − Σ_j dP ⊙ P)
        dQ[b,n,g,i,d] = scale Σ_j dS[b,n,g,i,j] K[b,n,j,d]
        dK[b,n,j,d]   = scale Σ_{g,i} dS[b,n,g,i,j] Q[b,n,g,i,d]

    Args:
        dout: (B, H, Tq, D), the gradient of the loss w.r.t. ``out``.
        cache: from :func:`attention_forward_einsum` (only).
    Returns:
        (dq, dk, dv, dbias) as :func:`attention_backward`.
    """
    check_cache(cache, "attention_forward_einsum")
    _check_dout(dout, cache)
    spec = cache["spec"]
    q, k, v, p = cache["q"], cache["k"], cache["v"], cache["p"]
    B, H, Hkv, G, Tq, Tk, D = spec.B, spec.H, spec.Hkv, spec.G, spec.Tq, spec.Tk, spec.D
    dt = q.dtype.type
    p5 = p.reshape(B, Hkv, G, Tq, Tk)                                  # (B, Hkv, G, Tq, Tk)
    do5 = dout.reshape(B, Hkv, G, Tq, D)                               # (B, Hkv, G, Tq, D)
    q5 = q.reshape(B, Hkv, G, Tq, D)                                   # (B, Hkv, G, Tq, D)
    # keep / (1 − p) as a factor, 1 without dropout
    drop5 = 1 if spec.keep is None else spec.keep.reshape(B, Hkv, G, Tq, Tk) * dt(spec.drop_scale)
    a5 = p5 * drop5                                                    # (B, Hkv, G, Tq, Tk)
    dv = np.einsum("bngij,bngid->bnjd", a5, do5)                       # (B, Hkv, Tk, D)
    dp = np.einsum("bngid,bnjd->bngij", do5, v) * drop5                # (B, Hkv, G, Tq, Tk)
    ds = p5 * (dp - np.einsum("bngij,bngij->bngi", dp, p5)[..., None])  # (B, Hkv, G, Tq, Tk)
    dq = np.einsum("bngij,bnjd->bngid", ds, k).reshape(B, H, Tq, D) * dt(spec.scale)  # (B,H,Tq,D)
    dk = np.einsum("bngij,bngid->bnjd", ds, q5) * dt(spec.scale)       # (B, Hkv, Tk, D)
    dbias = (None if spec.bias_shape is None
             else _reduce_to(ds.reshape(B, H, Tq, Tk), spec.bias_shape))
    return dq, dk, dv, dbias
