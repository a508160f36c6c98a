"""Tiled ("flash") attention: online-softmax forward, recomputing backward, O(T) extra memory.

This follows FlashAttention (Dao, Fu, Ermon, Rudra, Ré 2022, "FlashAttention: Fast and
Memory-Efficient Exact Attention with IO-Awareness", arXiv:2205.14135) in the loop order of
FlashAttention-2 (Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning", arXiv:2307.08691). It computes exactly the same function as the naive attention in
``ref_numpy.attention``,

    O = softmax(scale * Q K^T + mask) V,

but never forms the (Tq, Tk) score matrix: queries are cut into tiles of Br = ``block_q`` rows,
keys and values into tiles of Bc = ``block_k`` rows, and only one (Br, Bc) tile of scores exists
at a time (per batch row and head). The Python loops run over tiles only; inside a tile every
batch row and head is handled by one batched matmul. The GPU kernels follow the same tiling, so
this module is also their step-by-step reference.

Shape letters (used in every shape comment below):
    B    batch
    H    query heads
    Hkv  key/value heads (H % Hkv == 0)
    G    query heads per key/value head, G = H // Hkv (query head h uses kv head h // G)
    Tq   query positions;  Tk  key/value positions
    D    head dimension
    Br   query rows in a tile (block_q);  Bc  key rows in a tile (block_k)

Grouped-query attention (GQA). ``q`` is viewed as (B, Hkv, G, Tq, D): the G query heads that share
a key/value head sit on their own axis, and a key tile of shape (B, Hkv, 1, Bc, D) broadcasts over
that axis in the matmul, so no copy of K or V per query head is ever made (unlike
``repeat_interleave``). Where gradients flow back into the shared K and V (dK, dV), the G and Br
axes are folded into one (B, Hkv, G*Br, ...) row axis, so that one matmul also sums over the heads
of the group. (``ref_numpy.attention`` stacks the whole group as rows, (B, Hkv, G*Tq, D); here a
query tile must hold rows r0..r1 of *every* head, because the causal mask of a tile depends on
the row positions, so the group keeps its own axis and is folded only inside a tile.)

Causal masking, bottom-right aligned (the last query row sees every key; as in
``ref_numpy.attention``): query i may attend key j iff j <= i + (Tk - Tq). For Tq = 3, Tk = 5
(x = visible):

            key j:  0 1 2 3 4
    query 0         x x x . .
    query 1         x x x x .
    query 2         x x x x x

and for Tq = 5, Tk = 3 the first two query rows see no key at all:

            key j:  0 1 2
    query 0         . . .      fully masked: output 0, lse = -inf, zero gradient
    query 1         . . .
    query 2         x . .
    query 3         x x .
    query 4         x x x

Tiles that lie wholly above this staircase are skipped (never computed); tiles wholly below it
are computed without a mask; only the tiles the staircase cuts through build a (Br, Bc) mask.

Memory. Apart from its outputs, the forward holds per query tile the running max m and sum l
(Br,), the accumulator (Br, D) and one (Br, Bc) tile of scores/probabilities; the backward holds
per query tile psum = rowsum(exp(S - L)) and delta = rowsum(P ⊙ dP) (Br,), the dQ accumulator
(Br, D) and the P and dP tiles of the query tile's row of key tiles (two (Br, Tk) in all), and
the dK and dV accumulators (Tk, D) (all per batch row and head); every running sum has its
compensation of the same shape ("Running sums" below). No array has Tq * Tk elements, so the
extra memory is O(T) for fixed tile sizes (``crosscheck bench flash`` measures it).

Precision. In float64 the result equals the naive attention to about 1e-15. In float32 it is
about as accurate as the naive version, not bit-equal. The backward recomputes P = exp(S - L)
from the rounded L, whose error (its rounding and that of the online softmax's rescales, a few
ulps of |L|) becomes a relative error shared by every P of the row, where the naive version
divides by l; so the backward divides P by its row sum psum = rowsum(exp(S - L)), which cancels
that error (``flash_attention_backward``). FlashAttention (v1) saved m and l separately and
recomputed exp(S - m) / l; FlashAttention-2 saves L alone, and so does this module. The float32
errors stay within FlashAttention-3's bar, 2x the naive float32 version's error plus a rounding
term, on FlashAttention's own test matrix (``equivalence.fa_accuracy``).

Running sums. Every sum over tiles (O and l over key tiles in the forward; psum, delta and dQ_i
over key tiles, dK_j and dV_j over query tiles in the backward) adds each tile's matmul or row
sum into its running sum with Kahan's compensated addition (``_add_compensated``), as the
kernels do. A plain running sum gains a rounding per tile, so its float32 error grows with the
number of tiles while the naive version's matmuls sum in BLAS blocks: at FlashAttention's
point mqa/Tq4224_Tk4224_D224_causal (tiles 32 x 32, so dK_j and dV_j sum 132 query tiles of
G * Br = 128 rows each) dv's error was 1.07x FlashAttention-3's bar (1.13e-5) and is 0.29x
(3.1e-6) compensated. The extra work is a few elementwise passes over (Br, D) and (Bc, D)
arrays per tile pair, next to the matmuls' Br * Bc * D: forward and backward at T = 2048,
D = 64, one head, tiles 128 x 128, float32, take about 7 % longer.
"""
from __future__ import annotations

import numpy as np

from ref_numpy._check import (check_cache, check_positive_int, check_same_dtype, check_scale,
                              check_shape)

_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------------------------
# input checks


def _check_array(name: str, x) -> np.ndarray:
    """Require a 4-D float16/32/64 ndarray without NaN (float16 is allowed here, unlike
    ``_check.check_float``, because half inputs with float32 accumulators are supported)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray but got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name}: expected dtype float16, float32 or float64 but got {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected 4 dimensions but got {x.ndim} (shape {x.shape})")
    if np.isnan(x).any():
        idx = tuple(int(i) for i in np.argwhere(np.isnan(x))[0])
        raise ValueError(f"{name}: contains NaN (first at index {idx})")
    return x


def _check_accum_dtype(accum_dtype, dtype: np.dtype) -> np.dtype:
    """The dtype tiles are computed in: ``dtype`` itself by default, never narrower."""
    if accum_dtype is None:
        return dtype
    try:
        acc = np.dtype(accum_dtype)
    except TypeError:
        raise TypeError(f"accum_dtype: expected None, float16, float32 or float64 but got "
                        f"{accum_dtype!r}") from None
    if acc not in _DTYPES:
        raise TypeError(f"accum_dtype: expected None, float16, float32 or float64 but got {acc}")
    if acc.itemsize < dtype.itemsize:
        raise ValueError(f"accum_dtype: expected a dtype at least as wide as the inputs ({dtype}) "
                         f"but got {acc}")
    return acc


# ----------------------------------------------------------------------------------------------
# which tiles the causal mask lets through


def _key_tiles(r0: int, r1: int, Tk: int, block_k: int, causal: bool, offset: int) -> range:
    """Start columns of the key tiles that query rows r0:r1 must visit.

    Row i sees keys j <= i + offset, so the last row of the tile, r1 - 1, sees keys up to
    r1 - 1 + offset; key tiles starting beyond that are wholly masked and are skipped.

    >>> list(_key_tiles(0, 4, Tk=10, block_k=4, causal=True, offset=0))  # rows 0..3 see keys 0..3
    [0]
    """
    stop = min(Tk, max(0, r1 + offset)) if causal else Tk
    return range(0, stop, block_k)


def _tile_mask(r0: int, r1: int, c0: int, c1: int, causal: bool, offset: int):
    """Visibility of the (r0:r1, c0:c1) tile: None if every key is visible to every row (no mask
    needed), else a boolean (Br, Bc) array, True where query i may attend key j (j <= i + offset).

    >>> _tile_mask(0, 2, 0, 3, causal=True, offset=0).astype(int)
    array([[1, 0, 0],
           [1, 1, 0]])
    """
    # The first row sees the fewest keys: if it sees the whole tile, every row does.
    if not causal or c1 - 1 <= r0 + offset:
        return None
    rows = np.arange(r0, r1)[:, None]                                 # (Br, 1)
    cols = np.arange(c0, c1)[None, :]                                 # (1, Bc)
    return cols <= rows + offset                                      # (Br, Bc)


def _add_compensated(total: np.ndarray, comp: np.ndarray, term: np.ndarray) -> np.ndarray:
    """Return total + term by Kahan's compensated summation: comp is updated in place, term is
    used as scratch, and total is left as it was (the caller rebinds or stores the result).

    The pair (total, comp) holds the value total - comp, comp being what the earlier additions
    rounded away (start both at 0, and take total - comp at the end):

        y = term - comp;   t = total + y;   comp = (t - total) - y;   total = t

    A plain running sum of n terms, each rounded, gains an error of up to about n eps |total|;
    the compensated one stays at about 2 eps |total| whatever n is (Higham 2002, "Accuracy and
    Stability of Numerical Algorithms", sec. 4.3). Each running sum here (O and l in the
    forward; psum, delta, dQ, dK and dV in the backward) has one term per tile, so n grows with
    the length.
    """
    term -= comp                                                      # y
    t = total + term                                                  # t
    np.subtract(t, total, out=comp)
    comp -= term                                                      # (t - total) - y
    return t


# ----------------------------------------------------------------------------------------------
# forward


def flash_attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False,
                            scale: float | None = None, block_q: int = 64, block_k: int = 64,
                            accum_dtype=None) -> tuple[np.ndarray, dict]:
    """Exact attention computed tile by tile with an online softmax, never storing (Tq, Tk).

    Forward equation (masked scores are -inf; a row with no visible key outputs zeros):

        S = scale * Q K^T,   L_i = log sum_j exp(S_ij),   P = exp(S - L),   O = P V

    Online softmax (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax";
    Dao et al. 2022, Algorithm 1; Dao 2023, Algorithm 1). For one query tile, per row, keep the
    running max m, the running sum l = sum_j exp(S_ij - m) and the *unnormalised* accumulator
    acc = sum_j exp(S_ij - m) V_j over the key tiles seen so far. For the next key tile S_t:

        m_new = max(m, rowmax(S_t))
        alpha = exp(m - m_new)                     # rescales everything summed against old m
        l     = alpha * l   + rowsum(exp(S_t - m_new))
        acc   = alpha * acc + exp(S_t - m_new) V_t      # l and acc: compensated running sums

    After the last key tile, O = acc / l (one division per row, FlashAttention-2's change) and
    L = m + log l. While a row has seen only masked keys, m = -inf; the exponents are then taken
    against 0 instead of -inf so that exp(-inf - (-inf)) = NaN never occurs. A row that never sees
    a key keeps l = 0: its output is 0 and its L is -inf.

    Args:
        q: (B, H, Tq, D) queries, float16/float32/float64.
        k: (B, Hkv, Tk, D) keys, same dtype; H % Hkv == 0 (GQA: query head h uses kv head h // G).
        v: (B, Hkv, Tk, D) values, same dtype.
        causal: bottom-right aligned causal mask: query i sees key j iff j <= i + (Tk - Tq).
        scale: multiplies Q K^T; default 1 / sqrt(D).
        block_q: Br, query rows per tile (positive int; may exceed Tq).
        block_k: Bc, key rows per tile (positive int; may exceed Tk).
        accum_dtype: dtype the tiles, running statistics and accumulators are computed in;
            default the input dtype. ``np.float32`` with float16 inputs is the FlashAttention
            practice (half inputs, float32 accumulation). Must not be narrower than the inputs.

    Returns:
        out: (B, H, Tq, D), the input dtype.
        cache: dict with "op" ("flash_attention_forward"), "q", "k", "v", "out" (the arrays
            above), "lse" (B, H, Tq) log-sum-exp L of the scaled, masked scores in
            ``accum_dtype`` (-inf for fully masked rows), and the settings "causal", "scale",
            "block_q", "block_k", "accum_dtype". Only O(T) memory: backward recomputes the
            probabilities from q, k and lse.
    """
    q, k, v = _check_array("q", q), _check_array("k", k), _check_array("v", v)
    dtype = check_same_dtype(q=q, k=k, v=v)
    B, H, Tq, D = q.shape
    check_shape("k", k, (B, None, None, D), "(B, Hkv, Tk, D)")
    Hkv, Tk = k.shape[1], k.shape[2]
    check_shape("v", v, (B, Hkv, Tk, D), "(B, Hkv, Tk, D)")
    if D == 0:
        raise ValueError(f"q: expected a head dimension D >= 1 but got shape {q.shape}")
    if Tk == 0:
        raise ValueError(f"k: expected at least one key position but got Tk = 0 (shape {k.shape})")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"k: expected a number of kv heads Hkv that divides H = {H} "
                         f"but got Hkv = {Hkv}")
    block_q = check_positive_int("block_q", block_q)
    block_k = check_positive_int("block_k", block_k)
    acc_dtype = _check_accum_dtype(accum_dtype, dtype)
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal: expected a bool but got {type(causal).__name__}")
    scale = check_scale(scale, D)
    G = H // Hkv
    offset = Tk - Tq                           # bottom-right alignment of the causal staircase

    qg = q.reshape(B, Hkv, G, Tq, D)                                  # (B, Hkv, G, Tq, D)
    kg = k[:, :, None]                                                # (B, Hkv, 1, Tk, D)
    vg = v[:, :, None]                                                # (B, Hkv, 1, Tk, D)
    out = np.empty((B, Hkv, G, Tq, D), dtype=dtype)                   # (B, Hkv, G, Tq, D)
    lse = np.empty((B, Hkv, G, Tq), dtype=acc_dtype)                  # (B, Hkv, G, Tq)

    for r0 in range(0, Tq, block_q):
        r1 = min(r0 + block_q, Tq)
        q_i = qg[:, :, :, r0:r1].astype(acc_dtype, copy=False)        # (B, Hkv, G, Br, D)
        m = np.full((B, Hkv, G, r1 - r0), -np.inf, dtype=acc_dtype)   # (B, Hkv, G, Br)
        l = np.zeros((B, Hkv, G, r1 - r0), dtype=acc_dtype)           # (B, Hkv, G, Br)
        acc = np.zeros((B, Hkv, G, r1 - r0, D), dtype=acc_dtype)      # (B, Hkv, G, Br, D)
        l_comp, acc_comp = np.zeros_like(l), np.zeros_like(acc)       # Kahan compensations
        for c0 in _key_tiles(r0, r1, Tk, block_k, causal, offset):
            c1 = min(c0 + block_k, Tk)
            k_j = kg[:, :, :, c0:c1].astype(acc_dtype, copy=False)    # (B, Hkv, 1, Bc, D)
            v_j = vg[:, :, :, c0:c1].astype(acc_dtype, copy=False)    # (B, Hkv, 1, Bc, D)
            # S_ij = scale * q_i . k_j   (the K tile broadcasts over the G heads of its group)
            s = q_i @ k_j.swapaxes(-1, -2)                            # (B, Hkv, G, Br, Bc)
            s *= acc_dtype.type(scale)
            mask = _tile_mask(r0, r1, c0, c1, causal, offset)
            if mask is not None:
                np.copyto(s, -np.inf, where=~mask)
            # m_new = max(m, rowmax S); exponents are taken against m_safe (0 where m_new = -inf)
            m_new = np.maximum(m, s.max(axis=-1))                     # (B, Hkv, G, Br)
            m_safe = np.where(m_new == -np.inf, 0, m_new).astype(acc_dtype, copy=False)
            s -= m_safe[..., None]
            p = np.exp(s, out=s)                                      # (B, Hkv, G, Br, Bc)
            # alpha = exp(m_old - m_new) rescales what was summed against the old max
            alpha = np.exp(m - m_safe)                                # (B, Hkv, G, Br)
            # l = alpha l + rowsum(P) and acc = alpha acc + P V_j, compensated; a sum and its
            # compensation scale alike (alpha is exactly 1 while the row max stays put)
            l *= alpha
            l_comp *= alpha
            acc *= alpha[..., None]
            acc_comp *= alpha[..., None]
            l = _add_compensated(l, l_comp, p.sum(axis=-1))
            acc = _add_compensated(acc, acc_comp, p @ v_j)            # (B, Hkv, G, Br, D)
            m = m_new
        l -= l_comp                                                   # the compensated sums
        acc -= acc_comp
        # Normalise once: O = acc / l; rows that saw no key (l = 0) output 0 and L = -inf.
        seen = l > 0
        l_safe = np.where(seen, l, 1).astype(acc_dtype, copy=False)
        out[:, :, :, r0:r1] = acc / l_safe[..., None]
        # L = m + log l
        lse[:, :, :, r0:r1] = np.where(seen, m + np.log(l_safe), -np.inf)

    out = out.reshape(B, H, Tq, D)                                    # (B, H, Tq, D)
    lse = lse.reshape(B, H, Tq)                                       # (B, H, Tq)
    cache = {"op": "flash_attention_forward", "q": q, "k": k, "v": v, "out": out, "lse": lse,
             "causal": bool(causal), "scale": float(scale), "block_q": block_q,
             "block_k": block_k, "accum_dtype": acc_dtype}
    return out, cache


# ----------------------------------------------------------------------------------------------
# backward


def flash_attention_backward(dout: np.ndarray, cache: dict
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of flash attention, recomputing P tile by tile from Q, K and the saved L.

    Derivation (one head; s = scale; rows i are queries, columns j keys; dX = dLoss/dX):

        forward:  S = s Q K^T,   P_ij = exp(S_ij - L_i),   O = P V

        O = P V                 =>  dV = P^T dO,          dP = dO V^T
        P_i = softmax(S_i)      =>  dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik)
        so with delta_i = rowsum(P ⊙ dP)_i (one number per row, O(T)):
                                    dS = P ⊙ (dP - delta)
        S = s Q K^T             =>  dQ = s dS K,          dK = s dS^T Q

    Mathematically delta_i = sum_k P_ik (dO_i . V_k) = dO_i . O_i, the form FlashAttention uses.
    Here delta is summed from the very P and dP tiles that the gradients use, in a first walk
    over a query tile's key tiles, so that delta and dP are rounded alike: where a row has a
    single nonzero probability (one key per query, Tk = 1, or the first row of a causal tile),
    P = 1 and delta = dP exactly, so dP - delta, dS and that row's share of dQ and dK are
    exactly 0, as in ``ref_numpy.attention``. dO . O is a dot product that BLAS rounds
    differently from the matmul giving dP; in float32 their difference (up to ~1e-6) would be
    all of those gradients.

    The same first walk sums psum_i = rowsum(exp(S - L))_i, which is 1 up to rounding, and the
    gradients use P = exp(S - L) / psum (delta accordingly divided by psum). The saved L
    carries the rounding of the online softmax's rescales (l is multiplied by every
    alpha = exp(m_old - m_new)), a few ulps of |L| in float32, and exp(S - L) turns that into the
    same relative error in every P of the row, which dQ, dK and dV inherit; the division cancels
    it, as the naive softmax's division by its own sum does (flash/causal/(2, 2, 2, 17, 17, 8),
    tiles 3 x 16, float32: dq error 1.11 x FlashAttention's bar without it, 0.77 with it). A
    single visible key gives psum = P, so P / psum is exactly 1.

    Every product above is a sum over tiles of products of tiles (Dao et al. 2022, Algorithm 4;
    Dao 2023, Algorithm 2). With i running over query tiles and j over key tiles:

        P_ij  = exp(s Q_i K_j^T - L_i)               recomputed: Q_i, K_j and L_i suffice
        dP_ij = dO_i V_j^T
        psum_i = sum_j rowsum(P_ij)                  the first walk over j, with
        delta_i = sum_j rowsum(P_ij ⊙ dP_ij) / psum_i
        P_ij <- P_ij / psum_i                        the second walk over j
        dS_ij = P_ij ⊙ (dP_ij - delta_i)
        dV_j  = sum_i P_ij^T dO_i
        dK_j  = s sum_i dS_ij^T Q_i
        dQ_i  = s sum_j dS_ij K_j

    The outer loop runs over query tiles i. For each, the first walk over its key tiles keeps
    every P_ij and dP_ij (two (Br, Tk) arrays per head: O(T) memory), and the second walk takes
    the gradients from them, so S and dP are computed once per tile pair: five matmuls per tile
    pair (S, dP, dQ, dV, dK), where recomputing S and dP in the second walk would take seven.
    dQ_i is finished with its row of key tiles and written once; dK_j and dV_j are running sums
    over the outer loop, kept in (Tk, D) arrays. The kernels split the same arithmetic into
    three kernels (psum and delta; dK and dV; dQ), each giving one block one tile of its output,
    and so recompute P and dP where this module keeps them. Each of these sums, and psum and
    delta, is compensated ("Running sums" in the module docstring). With GQA the G query heads
    that share kv head h // G each add their term to dK and dV of that head. Masked scores have
    P = 0 and so pass no gradient; a fully masked row has L = -inf, and P is taken as 0 for it
    (exp(S - L) with L replaced by +inf), so its dQ is 0 and it adds nothing to dK, dV.

    Args:
        dout: (B, H, Tq, D) upstream gradient dO, the dtype of ``out``.
        cache: from ``flash_attention_forward``.

    Returns:
        dq: (B, H, Tq, D), dk: (B, Hkv, Tk, D), dv: (B, Hkv, Tk, D), in the input dtype.
    """
    check_cache(cache, "flash_attention_forward")
    q, k, v, out, lse = cache["q"], cache["k"], cache["v"], cache["out"], cache["lse"]
    causal, scale = cache["causal"], cache["scale"]
    block_q, block_k, acc_dtype = cache["block_q"], cache["block_k"], cache["accum_dtype"]
    _check_array("dout", dout)
    check_shape("dout", dout, out.shape, "(B, H, Tq, D)")
    check_same_dtype(out=out, dout=dout)
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    offset = Tk - Tq
    sc = acc_dtype.type(scale)

    qg = q.reshape(B, Hkv, G, Tq, D)                                  # (B, Hkv, G, Tq, D)
    dog = dout.reshape(B, Hkv, G, Tq, D)                              # (B, Hkv, G, Tq, D)
    # A fully masked row has S = -inf and L = -inf, and exp(-inf - (-inf)) is NaN; with L set
    # to +inf there, P = exp(S - L) = 0.
    lse_g = lse.reshape(B, Hkv, G, Tq)                                # (B, Hkv, G, Tq)
    lse_g = np.where(lse_g == -np.inf, np.inf, lse_g).astype(acc_dtype, copy=False)

    def p_and_dp(q_i, do_i, r0, r1, c0, c1):
        """P_ij = exp(s Q_i K_j^T - L_i) (masked entries -inf -> P = 0) and dP_ij = dO_i V_j^T."""
        k_j = k[:, :, None, c0:c1].astype(acc_dtype, copy=False)      # (B, Hkv, 1, Bc, D)
        v_j = v[:, :, None, c0:c1].astype(acc_dtype, copy=False)      # (B, Hkv, 1, Bc, D)
        p = q_i @ k_j.swapaxes(-1, -2)                                # (B, Hkv, G, Br, Bc)
        p *= sc                                                       # S_ij, then in place:
        mask = _tile_mask(r0, r1, c0, c1, causal, offset)
        if mask is not None:
            np.copyto(p, -np.inf, where=~mask)
        p -= lse_g[:, :, :, r0:r1, None]
        np.exp(p, out=p)                                              # P_ij = exp(S_ij - L_i)
        dp = do_i @ v_j.swapaxes(-1, -2)                              # (B, Hkv, G, Br, Bc)
        return p, dp

    dq = np.empty((B, Hkv, G, Tq, D), dtype=acc_dtype)                # (B, Hkv, G, Tq, D)
    # dK and dV sum over query tiles, the outer loop: running sums of the whole (Tk, D)
    dk = np.zeros((B, Hkv, Tk, D), dtype=acc_dtype)                   # (B, Hkv, Tk, D)
    dv = np.zeros((B, Hkv, Tk, D), dtype=acc_dtype)                   # (B, Hkv, Tk, D)
    dk_comp, dv_comp = np.zeros_like(dk), np.zeros_like(dv)           # Kahan compensations

    for r0 in range(0, Tq, block_q):
        r1 = min(r0 + block_q, Tq)
        Br = r1 - r0
        q_i = qg[:, :, :, r0:r1].astype(acc_dtype, copy=False)        # (B, Hkv, G, Br, D)
        do_i = dog[:, :, :, r0:r1].astype(acc_dtype, copy=False)      # (B, Hkv, G, Br, D)

        # First walk over the key tiles: P_ij and dP_ij, kept for the second walk, and
        # psum_i = rowsum(exp(S - L))_i, delta_i = rowsum(P ⊙ dP)_i / psum_i
        tiles = []
        psum = np.zeros((B, Hkv, G, Br), dtype=acc_dtype)             # (B, Hkv, G, Br)
        delta = np.zeros((B, Hkv, G, Br), dtype=acc_dtype)            # (B, Hkv, G, Br)
        psum_comp, delta_comp = np.zeros_like(psum), np.zeros_like(delta)  # compensations
        for c0 in _key_tiles(r0, r1, Tk, block_k, causal, offset):
            c1 = min(c0 + block_k, Tk)
            p, dp = p_and_dp(q_i, do_i, r0, r1, c0, c1)
            psum = _add_compensated(psum, psum_comp, p.sum(axis=-1))
            delta = _add_compensated(delta, delta_comp, np.vecdot(p, dp))
            tiles.append((c0, c1, p, dp))
        psum -= psum_comp                                             # the compensated sums
        delta -= delta_comp
        psum[psum == 0] = 1                                           # fully masked rows: P = 0
        delta /= psum

        # Second walk: the gradients from the kept tiles
        dq_i = np.zeros((B, Hkv, G, Br, D), dtype=acc_dtype)          # (B, Hkv, G, Br, D)
        dq_comp = np.zeros_like(dq_i)                                 # Kahan compensation
        for c0, c1, p, dp in tiles:
            k_j = k[:, :, c0:c1].astype(acc_dtype, copy=False)        # (B, Hkv, Bc, D)
            p /= psum[..., None]                                      # P_ij, renormalised
            # dS_ij = P_ij ⊙ (dP_ij - delta_i), in dP's place
            ds = dp
            ds -= delta[..., None]
            ds *= p                                                   # (B, Hkv, G, Br, Bc)
            # dQ_i += dS_ij K_j (times s once, at the end)
            dq_i = _add_compensated(dq_i, dq_comp, ds @ k_j[:, :, None])  # (B, Hkv, G, Br, D)
            # dV_j += P_ij^T dO_i and dK_j += dS_ij^T Q_i (times s at the end), summed over the
            # G heads of the group by folding (G, Br) into one row axis of G*Br rows.
            p_rows = p.reshape(B, Hkv, G * Br, c1 - c0)               # (B, Hkv, G*Br, Bc)
            ds_rows = ds.reshape(B, Hkv, G * Br, c1 - c0)             # (B, Hkv, G*Br, Bc)
            keys = slice(c0, c1)
            dv_part = p_rows.swapaxes(-1, -2) @ do_i.reshape(B, Hkv, G * Br, D)  # (B, Hkv, Bc, D)
            dv[:, :, keys] = _add_compensated(dv[:, :, keys], dv_comp[:, :, keys], dv_part)
            dk_part = ds_rows.swapaxes(-1, -2) @ q_i.reshape(B, Hkv, G * Br, D)  # (B, Hkv, Bc, D)
            dk[:, :, keys] = _add_compensated(dk[:, :, keys], dk_comp[:, :, keys], dk_part)
        dq_i -= dq_comp
        dq_i *= sc
        dq[:, :, :, r0:r1] = dq_i

    dk -= dk_comp
    dk *= sc
    dv -= dv_comp
    dq = dq.reshape(B, H, Tq, D).astype(q.dtype, copy=False)          # (B, H, Tq, D)
    dk = dk.astype(k.dtype, copy=False)                               # (B, Hkv, Tk, D)
    dv = dv.astype(v.dtype, copy=False)                               # (B, Hkv, Tk, D)
    return dq, dk, dv
