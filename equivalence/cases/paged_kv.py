"""Cases for the paged KV cache kernels (gpu_cupy.paged_kv) on OpenCL (PoCL) and CuPy.

Names read ``paged_kv/<op>/<variant>/S.._H.._Hkv.._BS.._D.._L..`` (S sequences, BS block size,
L the longest context), with ``P..`` for version 2's partition size:

- ``write``: new tokens scattered into their slots (one token with slot -1, padding, is
  skipped). Outputs: the pools after the write.
- ``gather``: page tables → contiguous (S, Hkv, L, D) caches, zero past each length.
- ``decode_v1``, ``decode_v2``: one query per sequence through the page tables.
- ``step``: one decode step of a serving engine, every kernel in turn: each sequence's newest
  token written at position n − 1, the caches gathered, decode v1 and v2 (outputs k_pool,
  v_pool, k, v, out_v1, out_v2). ``equivalence.sanitize`` runs small ones under Oclgrind.

Inputs: random pools; block tables of distinct blocks in a random order (so no sequence's
blocks are contiguous), padded with -1 past each sequence's blocks and by one spare column;
ragged lengths with one at the longest, L, and one of length 1.

Oracles, written with torch's own indexing: the write is ``pool[slot // BS, :, slot % BS] =
new``, the gather ``pool[tables]`` permuted to (S, Hkv, M·BS, D) and zeroed past each length, and
the decode ``F.scaled_dot_product_attention`` on the torch-gathered caches with a (S, 1, 1, L)
mask of the visible positions and the ALiBi bias −m_h (n − 1 − j)
(``torch_bridge.attention.sdpa``).
No gradient: ``grad_wrt=()``, ``gradcheck=False``. float32 baseline: torch's own ops in float32
for write and gather (exact), and for decode the naive ``ref_numpy.attention`` in float32 per
sequence on the gathered cache.
"""
from __future__ import annotations

import numpy as np
import torch

from equivalence.registry import Case, register
from gpu_cupy import paged_kv as gpu_paged
from ref_numpy import alibi as alibi_mod
from ref_numpy import attention, paged_attention
from torch_bridge import attention as oracle

BACKENDS = ("opencl", "cupy")


# ----------------------------------------------------------------------------- inputs

def ragged_lengths(rng, S: int, L: int) -> np.ndarray:
    """(S,) int32: L and 1 first, the others uniform in [1, L]."""
    rest = rng.integers(1, L + 1, size=max(S - 2, 0))
    return np.array([L, 1, *rest][:S], dtype=np.int32)


def random_tables(rng, lengths: np.ndarray, block_size: int, spare: int = 3):
    """(block_tables (S, M) int32, N): distinct physical blocks in a random order, -1 past each
    sequence's blocks; M = the longest table + 1, N = the blocks used + ``spare``."""
    counts = -(-lengths.astype(np.int64) // block_size)
    M = int(counts.max()) + 1
    N = int(counts.sum()) + spare
    perm = rng.permutation(N).astype(np.int32)
    tables = np.full((len(lengths), M), -1, dtype=np.int32)
    start = 0
    for s, c in enumerate(counts):
        tables[s, :c] = perm[start:start + c]
        start += c
    return tables, N


def _pool_inputs(rng, S, Hkv, BS, D, L) -> dict:
    lengths = ragged_lengths(rng, S, L)
    tables, N = random_tables(rng, lengths, BS)
    return {"k_pool": rng.standard_normal((N, Hkv, BS, D)),
            "v_pool": rng.standard_normal((N, Hkv, BS, D)),
            "block_tables": tables, "lengths": lengths}


# ----------------------------------------------------------------------------- torch oracles

def torch_write(pool, new, slots):
    """pool[slot // BS, :, slot % BS] = new[t] for slot >= 0, on a copy."""
    BS = pool.shape[2]
    keep = slots >= 0
    out = pool.clone()
    out[slots[keep] // BS, :, slots[keep] % BS] = new[keep]
    return out


def torch_gather(pool, tables, lengths, L: int):
    """(S, Hkv, L, D): the blocks of each table in order, zero past each length."""
    S, M = tables.shape
    _, Hkv, BS, D = pool.shape
    blocks = pool[tables.clamp(min=0)]                               # (S, M, Hkv, BS, D)
    dense = blocks.permute(0, 2, 1, 3, 4).reshape(S, Hkv, M * BS, D)[:, :, :L]
    keep = torch.arange(L)[None, :] < lengths[:, None]              # (S, L)
    return torch.where(keep[:, None, :, None], dense, torch.zeros((), dtype=pool.dtype))


def torch_decode(q, k, v, lengths, *, alibi: bool, window):
    """F.scaled_dot_product_attention of q (S, H, D) on gathered k, v (S, Hkv, L, D)."""
    S, H, _ = q.shape
    L = k.shape[2]
    j = torch.arange(L)[None, :]                                     # (1, L)
    n = lengths[:, None]                                             # (S, 1)
    allowed = j < n
    if window is not None:
        allowed = allowed & (j >= n - window)
    bias = None
    if alibi:
        slopes = torch.tensor(oracle.alibi_slopes(H), dtype=q.dtype)
        bias = -slopes[None, :, None, None] * (n - 1 - j).to(q.dtype)[:, None, None, :]
    out = oracle.sdpa(q[:, :, None], k, v, mask=allowed[:, None, None, :], bias=bias)
    return out[:, :, 0]                                              # (S, H, D)


def naive_decode(q, k_pool, v_pool, block_tables, lengths, *, alibi: bool = False,
                 window=None) -> np.ndarray:
    """The plain decode: ``ref_numpy.attention`` per sequence on the gathered cache, the query
    at the last position (causal, bottom-right aligned), (S, H, D)."""
    k, v = paged_attention.gather_kv(k_pool, v_pool, block_tables, lengths)
    H = q.shape[1]
    out = np.empty_like(q)
    for s, n in enumerate(lengths):
        mask = alibi_mod.alibi_bias(H, 1, int(n), dtype=q.dtype) if alibi else None
        o, _ = attention.attention_forward(q[s][None, :, None], k[s:s + 1, :, :n],
                                           v[s:s + 1, :, :n], causal=True, window=window,
                                           mask=mask)
        out[s] = o[0, :, 0]
    return out


def _naive_float32(alibi: bool, window):
    """The float32 baseline of the decode cases: :func:`naive_decode`."""
    def run(i, douts):
        return {"out": naive_decode(i["q"], i["k_pool"], i["v_pool"], i["block_tables"],
                                    i["lengths"], alibi=alibi, window=window)}, {}
    return run


def poisoned_problem(seed: int, S: int, H: int, Hkv: int, BS: int, D: int, L: int,
                     dtype=np.float64):
    """(q, k_pool, v_pool, block_tables, lengths) with NaN in every slot that holds no token,
    so that a reader of an unused slot cannot pass; tables and lengths as the cases'."""
    rng = np.random.default_rng(seed)
    lengths = ragged_lengths(rng, S, L)
    tables, N = random_tables(rng, lengths, BS)
    k_pool, v_pool = np.full((2, N, Hkv, BS, D), np.nan)
    for s, n in enumerate(lengths):
        pos = np.arange(n)
        k_pool[tables[s, pos // BS], :, pos % BS] = rng.standard_normal((n, Hkv, D))
        v_pool[tables[s, pos // BS], :, pos % BS] = rng.standard_normal((n, Hkv, D))
    q = rng.standard_normal((S, H, D))
    return q.astype(dtype), k_pool.astype(dtype), v_pool.astype(dtype), tables, lengths


# ----------------------------------------------------------------------------- case factories

def _sizes(S, H, Hkv, BS, D, L) -> str:
    return f"S{S}_H{H}_Hkv{Hkv}_BS{BS}_D{D}_L{L}"


def make_write_case(variant: str, S: int, Hkv: int, BS: int, D: int, L: int,
                    dtypes=("float64", "float32")) -> Case:
    """One new token per sequence at a free slot of the pool, and one padding token."""
    def inputs(rng):
        i = _pool_inputs(rng, S, Hkv, BS, D, L)
        N = i["k_pool"].shape[0]
        slots = rng.choice(N * BS, size=S + 1, replace=False).astype(np.int32)
        slots[rng.integers(S + 1)] = -1                              # padding: skipped
        return {"k_pool": i["k_pool"], "v_pool": i["v_pool"], "slot_mapping": slots,
                "k_new": rng.standard_normal((S + 1, Hkv, D)),
                "v_new": rng.standard_normal((S + 1, Hkv, D))}

    def forward(i):
        k_pool, v_pool = i["k_pool"].copy(), i["v_pool"].copy()
        paged_attention.write_kv(k_pool, v_pool, i["k_new"], i["v_new"], i["slot_mapping"])
        return {"k_pool": k_pool, "v_pool": v_pool}, None

    def torch_fn(t):
        return {"k_pool": torch_write(t["k_pool"], t["k_new"], t["slot_mapping"]),
                "v_pool": torch_write(t["v_pool"], t["v_new"], t["slot_mapping"])}

    def kernel(backend):
        def run(i, douts):
            k_pool, v_pool = i["k_pool"].copy(), i["v_pool"].copy()
            gpu_paged.paged_kv_write(i["k_new"], i["v_new"], k_pool, v_pool, i["slot_mapping"],
                                     backend=backend)
            return {"k_pool": k_pool, "v_pool": v_pool}, {}
        return run

    return Case(name=f"paged_kv/write/{variant}/S{S}_Hkv{Hkv}_BS{BS}_D{D}_L{L}",
                inputs=inputs, forward=forward, backward=lambda d, c: {}, grad_wrt=(),
                torch=torch_fn, backends={b: kernel(b) for b in BACKENDS}, gradcheck=False,
                dtypes=dtypes)


def make_gather_case(variant: str, S: int, Hkv: int, BS: int, D: int, L: int,
                     dtypes=("float64", "float32")) -> Case:
    def inputs(rng):
        return _pool_inputs(rng, S, Hkv, BS, D, L)

    def forward(i):
        k, v = paged_attention.gather_kv(i["k_pool"], i["v_pool"], i["block_tables"], i["lengths"])
        return {"k": k, "v": v}, None

    def torch_fn(t):
        return {name: torch_gather(t[f"{name}_pool"], t["block_tables"], t["lengths"], L)
                for name in ("k", "v")}

    def kernel(backend):
        def run(i, douts):
            k, v = gpu_paged.paged_kv_gather(i["k_pool"], i["v_pool"], i["block_tables"],
                                             i["lengths"], backend=backend)
            return {"k": k, "v": v}, {}
        return run

    return Case(name=f"paged_kv/gather/{variant}/S{S}_Hkv{Hkv}_BS{BS}_D{D}_L{L}",
                inputs=inputs, forward=forward, backward=lambda d, c: {}, grad_wrt=(),
                torch=torch_fn, backends={b: kernel(b) for b in BACKENDS}, gradcheck=False,
                dtypes=dtypes)


def make_decode_case(variant: str, S: int, H: int, Hkv: int, BS: int, D: int, L: int, *,
                     version: int, partition_size: int | None = None, alibi: bool = False,
                     window: int | None = None, dtypes=("float64", "float32")) -> Case:
    part = {} if version == 1 else {"partition_size": partition_size}

    def inputs(rng):
        return {"q": rng.standard_normal((S, H, D)), **_pool_inputs(rng, S, Hkv, BS, D, L)}

    def forward(i):
        return {"out": paged_attention.paged_attention_decode(
            i["q"], i["k_pool"], i["v_pool"], i["block_tables"], i["lengths"], alibi=alibi,
            window=window, **part)}, None

    def torch_fn(t):
        k, v = (torch_gather(t[f"{n}_pool"], t["block_tables"], t["lengths"], L)
                for n in ("k", "v"))
        return {"out": torch_decode(t["q"], k, v, t["lengths"], alibi=alibi, window=window)}

    def kernel(backend):
        def run(i, douts):
            return {"out": gpu_paged.paged_attention_decode(
                i["q"], i["k_pool"], i["v_pool"], i["block_tables"], i["lengths"],
                alibi=alibi, window=window, version=version, backend=backend, **part)}, {}
        return run

    tail = f" P{partition_size}" if version == 2 else ""
    return Case(name=f"paged_kv/decode_v{version}/{variant}/{_sizes(S, H, Hkv, BS, D, L)}{tail}",
                inputs=inputs, forward=forward, backward=lambda d, c: {}, grad_wrt=(),
                torch=torch_fn, backends={b: kernel(b) for b in BACKENDS},
                baseline32=_naive_float32(alibi, window), gradcheck=False, dtypes=dtypes)


def make_step_case(variant: str, S: int, H: int, Hkv: int, BS: int, D: int, L: int, *,
                   partition_size: int, alibi: bool = False, window: int | None = None,
                   dtypes=("float64", "float32")) -> Case:
    """Write each sequence's newest token (and a padding token), gather, decode v1 and v2."""
    def inputs(rng):
        i = {"q": rng.standard_normal((S, H, D)), **_pool_inputs(rng, S, Hkv, BS, D, L)}
        last = i["lengths"] - 1                                      # the newest positions
        slots = i["block_tables"][np.arange(S), last // BS] * BS + last % BS
        i["slot_mapping"] = np.append(slots, -1).astype(np.int32)
        i["k_new"] = rng.standard_normal((S + 1, Hkv, D))
        i["v_new"] = rng.standard_normal((S + 1, Hkv, D))
        return i

    def forward(i):
        k_pool, v_pool = i["k_pool"].copy(), i["v_pool"].copy()
        paged_attention.write_kv(k_pool, v_pool, i["k_new"], i["v_new"], i["slot_mapping"])
        k, v = paged_attention.gather_kv(k_pool, v_pool, i["block_tables"], i["lengths"])
        args = (i["q"], k_pool, v_pool, i["block_tables"], i["lengths"])
        out = {f"out_v{n}": paged_attention.paged_attention_decode(
            *args, alibi=alibi, window=window, partition_size=p)
            for n, p in ((1, None), (2, partition_size))}
        return {"k_pool": k_pool, "v_pool": v_pool, "k": k, "v": v, **out}, None

    def torch_fn(t):
        k_pool = torch_write(t["k_pool"], t["k_new"], t["slot_mapping"])
        v_pool = torch_write(t["v_pool"], t["v_new"], t["slot_mapping"])
        k, v = (torch_gather(p, t["block_tables"], t["lengths"], L) for p in (k_pool, v_pool))
        out = torch_decode(t["q"], k, v, t["lengths"], alibi=alibi, window=window)
        return {"k_pool": k_pool, "v_pool": v_pool, "k": k, "v": v, "out_v1": out,
                "out_v2": out}

    def kernel(backend):
        def run(i, douts):
            k_pool, v_pool = i["k_pool"].copy(), i["v_pool"].copy()
            gpu_paged.paged_kv_write(i["k_new"], i["v_new"], k_pool, v_pool, i["slot_mapping"],
                                     backend=backend)
            k, v = gpu_paged.paged_kv_gather(k_pool, v_pool, i["block_tables"], i["lengths"],
                                             backend=backend)
            args = (i["q"], k_pool, v_pool, i["block_tables"], i["lengths"])
            out = {f"out_v{n}": gpu_paged.paged_attention_decode(
                *args, alibi=alibi, window=window, version=n, backend=backend, **p)
                for n, p in ((1, {}), (2, {"partition_size": partition_size}))}
            return {"k_pool": k_pool, "v_pool": v_pool, "k": k, "v": v, **out}, {}
        return run

    dense = _naive_float32(alibi, window)

    def baseline(inputs, douts):  # the naive float32 decode on the written pools
        k_pool, v_pool = inputs["k_pool"].copy(), inputs["v_pool"].copy()
        paged_attention.write_kv(k_pool, v_pool, inputs["k_new"], inputs["v_new"],
                          inputs["slot_mapping"])
        k, v = paged_attention.gather_kv(k_pool, v_pool, inputs["block_tables"], inputs["lengths"])
        out = dense({**inputs, "k_pool": k_pool, "v_pool": v_pool}, douts)[0]["out"]
        return {"k_pool": k_pool, "v_pool": v_pool, "k": k, "v": v, "out_v1": out,
                "out_v2": out}, {}

    return Case(name=f"paged_kv/step/{variant}/{_sizes(S, H, Hkv, BS, D, L)} P{partition_size}",
                inputs=inputs, forward=forward, backward=lambda d, c: {}, grad_wrt=(),
                torch=torch_fn, backends={b: kernel(b) for b in BACKENDS}, baseline32=baseline,
                gradcheck=False, dtypes=dtypes)


# Block sizes 16, 24 (not a power of two) and 32 with head dims 64, 80 and 128, one pairing
# each so that a dtype needs three programs; Hkv in {H, H/2, 1}; every longest context spans
# several version-2 partitions (two blocks each), and the window of "mqa-window" leaves whole
# partitions before it.
#            variant        S  H Hkv  BS    D    L  alibi  window
DECODE = [("mha",           4, 4, 4,  16,  64,  67, False, None),
          ("gqa-alibi",     4, 4, 2,  24,  80, 100, True,  None),
          ("mqa-window",    4, 4, 1,  32, 128, 130, False, 40)]
for _variant, _S, _H, _Hkv, _BS, _D, _L, _alibi, _window in DECODE:
    register(make_write_case(_variant.split("-")[0], _S, _Hkv, _BS, _D, _L))
    register(make_gather_case(_variant.split("-")[0], _S, _Hkv, _BS, _D, _L))
    for _version in (1, 2):
        register(make_decode_case(_variant, _S, _H, _Hkv, _BS, _D, _L, version=_version,
                                  partition_size=2 * _BS, alibi=_alibi, window=_window))
register(make_step_case("gqa-alibi-window", 3, 4, 2, 24, 80, 90, partition_size=48, alibi=True,
                        window=50))
