"""What the paged KV cache's kernels compute: cache write, gather and paged decode attention.

Kwon et al. 2023, "Efficient Memory Management for Large Language Model Serving with
PagedAttention" (SOSP 2023, arXiv:2309.06180), §4. The cache (``ref_numpy.paged_kv``, the block
manager) keeps two pools of fixed-size blocks and one page table per sequence:

    pools        k_pool, v_pool  (N, Hkv, BS, D): N physical blocks of BS positions each
    page table   block_tables[s] = [b_0, b_1, …]: position t of sequence s lives in physical
                 block b_{t // BS} at offset t % BS, i.e. at slot b_{t // BS} · BS + t % BS

and these functions are the references of the kernels of ``gpu_cupy/paged_kv.py``:

    write_kv                new tokens scattered into their slots (a negative slot is skipped)
    gather_kv               page tables → contiguous K, V of each sequence's length
    paged_attention_decode  one new query per sequence against its cache, block by block

Decode (§4.1): the query of sequence s is its newest token, at position n − 1 (n = lengths[s]),
whose key and value are already in the cache, so it sees positions 0 … n − 1:

    O_s = softmax(scale · q_s K_sᵀ + ALiBi) V_s     over the visible positions j of sequence s

with GQA (query head h reads kv head h // (H / Hkv)), the ALiBi bias −m_h (n − 1 − j) of
``ref_numpy.alibi`` (Press et al. 2022) and a sliding window of w positions, n − w <= j
(Mistral, Jiang et al. 2023) — the conventions of ``ref_numpy.attention`` and
``ref_numpy.kv_cache`` for the last query row, so the result equals dense attention over the
gathered cache.

The context is split into partitions of ``partition_size`` positions (vLLM's PagedAttention
v2): each partition p gives the state of its piece of the softmax, its max m_p, its sum
l_p = Σ_j exp(s_j − m_p) and its normalised partial output o_p = Σ_j exp(s_j − m_p) v_j / l_p,
and the pieces are merged with the online-softmax merge (``ref_numpy.online_softmax``,
Milakov & Gimelshein 2018):

    (m, l) = merge_states(m, l, m_p, l_p),   acc = e^(m_old − m) acc + e^(m_p − m) l_p o_p,
    O = acc / l.

Without ``partition_size`` the whole context is one partition (PagedAttention v1). Partitions
wholly before the window hold no visible position and are skipped, as the kernels skip them.

Shape letters: N pool blocks, BS block size, Hkv kv heads, H query heads, D head dim, S
sequences, M page-table entries per sequence (block_tables is (S, M)), L positions of the
gathered cache, T new tokens. New tokens are token-major, (T, Hkv, D), as the outputs of a
model's key/value projection; gathered caches are (S, Hkv, L, D), the layout of
``ref_numpy.attention``. Slots that hold no token may contain anything, NaN included: nothing
here reads them.
"""
from __future__ import annotations

import numpy as np

from ref_numpy import alibi as alibi_mod
from ref_numpy import online_softmax
from ref_numpy._check import check_float, check_int, check_positive_int, check_scale
from ref_numpy.attention import check_window


# ----------------------------------------------------------------------------- checks


def check_pools(k_pool, v_pool) -> tuple[int, int, int, int]:
    """Two float pools of one shape (N, Hkv, BS, D) and dtype; returns (N, Hkv, BS, D).

    Slots that hold no token may contain anything, NaN included: nothing reads them.
    """
    check_float("k_pool", k_pool, ndim=4, allow_nan=True)
    check_float("v_pool", v_pool, ndim=4, allow_nan=True)
    if v_pool.shape != k_pool.shape:
        raise ValueError(f"v_pool: expected shape (N, Hkv, BS, D) = {k_pool.shape} (that of "
                         f"k_pool) but got {v_pool.shape}")
    if v_pool.dtype != k_pool.dtype:
        raise TypeError(f"v_pool: expected dtype {k_pool.dtype} (the dtype of k_pool) but got "
                        f"{v_pool.dtype}")
    if 0 in k_pool.shape:
        raise ValueError(f"k_pool: expected every dimension >= 1 but got shape {k_pool.shape}")
    return k_pool.shape


def check_block_tables(block_tables, lengths, num_blocks: int, block_size: int, *,
                       min_length: int = 0) -> None:
    """Page tables (S, M) and lengths (S,), both int32, against a pool of ``num_blocks``.

    Row s uses its first ceil(lengths[s] / block_size) entries, which must be block ids in
    [0, num_blocks); the entries after them are padding and are never read. lengths[s] must lie
    in [min_length, M · block_size].

    >>> check_block_tables(np.array([[3, -1]], np.int32), np.array([5], np.int32), 4, 4)
    Traceback (most recent call last):
    ...
    ValueError: block_tables[0, 1]: expected a block id in [0, 4) but got -1 (sequence 0 has length 5, so its first 2 entries are read)
    """
    for name, a, ndim in (("block_tables", block_tables, 2), ("lengths", lengths, 1)):
        check_int(name, a, ndim=ndim)
        if a.dtype != np.int32:
            raise TypeError(f"{name}: expected dtype int32 but got {a.dtype}")
    S, M = block_tables.shape
    if lengths.shape != (S,):
        raise ValueError(f"lengths: expected shape (S,) = ({S},) (one per row of block_tables) "
                         f"but got {lengths.shape}")
    capacity = M * block_size
    for s in range(S):
        n = int(lengths[s])
        if not min_length <= n <= capacity:
            raise ValueError(f"lengths[{s}]: expected a length in [{min_length}, {capacity}] "
                             f"({M} table entries of block_size {block_size}) but got {n}")
    used = np.arange(M)[None, :] < -(-lengths[:, None].astype(np.int64) // block_size)
    bad = used & ((block_tables < 0) | (block_tables >= num_blocks))
    if bad.any():
        s, j = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"block_tables[{s}, {j}]: expected a block id in [0, {num_blocks}) but "
                         f"got {int(block_tables[s, j])} (sequence {s} has length "
                         f"{int(lengths[s])}, so its first {-(-int(lengths[s]) // block_size)} "
                         f"entries are read)")


def check_slot_mapping(slot_mapping, n_tokens: int, num_slots: int) -> None:
    """One int32 slot per new token: in [0, num_slots), or negative for "skip" (padding).
    No slot may appear twice: two tokens written to one slot in one call would race.

    >>> check_slot_mapping(np.array([5, -1, 5], np.int32), 3, 8)
    Traceback (most recent call last):
    ...
    ValueError: slot_mapping: slot 5 appears at indices 0 and 2; each slot may be written once per call
    """
    check_int("slot_mapping", slot_mapping, ndim=1)
    if slot_mapping.dtype != np.int32:
        raise TypeError(f"slot_mapping: expected dtype int32 but got {slot_mapping.dtype}")
    if slot_mapping.shape != (n_tokens,):
        raise ValueError(f"slot_mapping: expected shape (T,) = ({n_tokens},) (one slot per new "
                         f"token) but got {slot_mapping.shape}")
    over = np.flatnonzero(slot_mapping >= num_slots)
    if over.size:
        i = int(over[0])
        raise ValueError(f"slot_mapping[{i}]: expected a slot in [0, {num_slots}) (N · BS) or a "
                         f"negative value (skip) but got {int(slot_mapping[i])}")
    live = np.flatnonzero(slot_mapping >= 0)
    slots, counts = np.unique(slot_mapping[live], return_counts=True)
    if (counts > 1).any():
        slot = int(slots[counts > 1][0])
        i, j = np.flatnonzero(slot_mapping == slot)[:2]
        raise ValueError(f"slot_mapping: slot {slot} appears at indices {i} and {j}; each slot "
                         f"may be written once per call")


def check_new_tokens(k_new, v_new, pool_shape, dtype) -> int:
    """k_new, v_new (T, Hkv, D) in the pools' dtype; returns T."""
    _, Hkv, _, D = pool_shape
    for name, a in (("k_new", k_new), ("v_new", v_new)):
        check_float(name, a, ndim=3)
        if a.shape[1:] != (Hkv, D):
            raise ValueError(f"{name}: expected shape (T, Hkv, D) = (*, {Hkv}, {D}) but got "
                             f"{a.shape}")
        if a.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} (the pools') but got {a.dtype}")
    if v_new.shape != k_new.shape:
        raise ValueError(f"v_new: expected shape {k_new.shape} (that of k_new) but got "
                         f"{v_new.shape}")
    return k_new.shape[0]


# ----------------------------------------------------------------------------- write and gather


def write_kv(k_pool, v_pool, k_new, v_new, slot_mapping) -> None:
    """Scatter T new tokens into their slots, in place (the cache-write kernel's reference).

        pool[slot // BS, :, slot % BS, :] = new[t]   for each t with slot = slot_mapping[t] >= 0

    Args:
        k_pool, v_pool: (N, Hkv, BS, D) float32/float64, written in place.
        k_new, v_new: (T, Hkv, D), the pools' dtype.
        slot_mapping: (T,) int32; a negative slot skips its token (padding); no slot twice.
    """
    N, Hkv, BS, D = check_pools(k_pool, v_pool)
    T = check_new_tokens(k_new, v_new, k_pool.shape, k_pool.dtype)
    check_slot_mapping(slot_mapping, T, N * BS)
    keep = np.flatnonzero(slot_mapping >= 0)                         # tokens to write
    slots = slot_mapping[keep]
    k_pool[slots // BS, :, slots % BS] = k_new[keep]                 # (n, Hkv, D) each
    v_pool[slots // BS, :, slots % BS] = v_new[keep]


def gather_kv(k_pool, v_pool, block_tables, lengths, max_len: int | None = None):
    """Page tables → contiguous caches, zero past each length (the gather kernel's reference).

        k[s, :, t] = k_pool[block_tables[s, t // BS], :, t % BS]   for t < lengths[s], else 0

    Args:
        k_pool, v_pool: (N, Hkv, BS, D) float32/float64.
        block_tables: (S, M) int32 (see :func:`check_block_tables`); lengths: (S,) int32.
        max_len: L, the gathered length (default max(lengths)); at least max(lengths).

    Returns:
        k, v: (S, Hkv, L, D) in the pools' dtype.
    """
    N, Hkv, BS, D = check_pools(k_pool, v_pool)
    check_block_tables(block_tables, lengths, N, BS)
    S = len(lengths)
    longest = int(lengths.max(initial=0))
    L = longest if max_len is None else int(max_len)
    if L < longest:
        raise ValueError(f"max_len: expected at least max(lengths) = {longest} but got {L}")
    k = np.zeros((S, Hkv, L, D), dtype=k_pool.dtype)
    v = np.zeros_like(k)
    heads = np.arange(Hkv)[:, None]                                  # (Hkv, 1)
    for s in range(S):
        n = int(lengths[s])
        pos = np.arange(n)
        blocks = block_tables[s, pos // BS]                          # (n,) physical block ids
        k[s, :, :n] = k_pool[blocks, heads, pos % BS]                # (Hkv, n, D)
        v[s, :, :n] = v_pool[blocks, heads, pos % BS]
    return k, v


# ----------------------------------------------------------------------------- decode


def check_decode(q, k_pool, v_pool, block_tables, lengths, scale, window,
                 partition_size) -> tuple[float, int, int]:
    """Every argument of a paged decode; returns (scale, window or 0, partition size or 0)."""
    N, Hkv, BS, D = check_pools(k_pool, v_pool)
    check_float("q", q, ndim=3)
    S, H, Dq = q.shape
    if (Dq, q.dtype) != (D, k_pool.dtype):
        raise ValueError(f"q: expected shape (S, H, D) with D = {D} and dtype {k_pool.dtype} "
                         f"(those of the pools) but got {q.shape}, {q.dtype}")
    if H % Hkv:
        raise ValueError(f"q: expected a number of heads H divisible by Hkv = {Hkv} but got "
                         f"H = {H}")
    check_block_tables(block_tables, lengths, N, BS, min_length=1)
    if block_tables.shape[0] != S:
        raise ValueError(f"block_tables: expected one row per sequence of q ({S}) but got "
                         f"{block_tables.shape[0]}")
    if window is not None:
        check_window(window)
    if partition_size is not None:
        check_positive_int("partition_size", partition_size)
    return check_scale(scale, D), int(window or 0), int(partition_size or 0)


def paged_attention_decode(q, k_pool, v_pool, block_tables, lengths, *, scale=None,
                           alibi: bool = False, window: int | None = None,
                           partition_size: int | None = None) -> np.ndarray:
    """Decode attention of one query per sequence through the page tables.

    Args:
        q: (S, H, D) float32/float64, the newest token's queries; H % Hkv == 0.
        k_pool, v_pool: (N, Hkv, BS, D), dtype of q; only the sequences' slots are read.
        block_tables: (S, M) int32; lengths: (S,) int32, each in [1, M · BS]
            (:func:`check_block_tables`).
        scale: multiplies q·k; default 1/√D.
        alibi: add the ALiBi bias −m_h (n − 1 − j) for H heads.
        window: an int >= 1: only the last ``window`` positions are visible.
        partition_size: positions per partition (v2); None: one partition (v1).

    Returns:
        out: (S, H, D), dtype of q.
    """
    scale, window, P = check_decode(q, k_pool, v_pool, block_tables, lengths, scale, window,
                                    partition_size)
    S, H, D = q.shape
    _, Hkv, BS, _ = k_pool.shape
    G = H // Hkv
    dtype = q.dtype
    slopes = alibi_mod.alibi_slopes(H).reshape(Hkv, G, 1) if alibi else None   # (Hkv, G, 1)
    out = np.empty_like(q)
    heads = np.arange(Hkv)[:, None]                              # (Hkv, 1)
    for s in range(S):
        n = int(lengths[s])
        pos = np.arange(n)
        blocks = block_tables[s, pos // BS]                      # the page-table walk: (n,)
        k = k_pool[blocks, heads, pos % BS]                      # (Hkv, n, D)
        v = v_pool[blocks, heads, pos % BS]
        qs = q[s].reshape(Hkv, G, D)
        start = max(0, n - window) if window else 0              # first visible position
        size = P or n
        m = np.full((Hkv, G), -np.inf, dtype=dtype)
        l = np.zeros((Hkv, G), dtype=dtype)
        acc = np.zeros((Hkv, G, D), dtype=dtype)
        for p0 in range(start // size * size, n, size):          # partitions with a visible key
            lo, hi = max(p0, start), min(p0 + size, n)           # their visible positions
            sc = scale * (qs @ k[:, lo:hi].transpose(0, 2, 1))   # (Hkv, G, hi - lo)
            if alibi:
                sc += (-slopes * (n - 1 - pos[lo:hi])).astype(dtype)
            m_p, l_p = online_softmax.block_state(sc)            # (Hkv, G) each
            o_p = (np.exp(sc - m_p[..., None]) @ v[:, lo:hi]) / l_p[..., None]   # (Hkv, G, D)
            m_new, l = online_softmax.merge_states(m, l, m_p, l_p)
            acc = (np.exp(m - m_new)[..., None] * acc
                   + (np.exp(m_p - m_new) * l_p)[..., None] * o_p)
            m = m_new
        out[s] = (acc / l[..., None]).reshape(H, D)
    return out
