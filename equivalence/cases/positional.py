"""Cases for position encodings: the sinusoidal table, the learned position embedding, RoPE in
both conventions, the RoPE frequency scalings, and RoPE inside multi-head attention and KV-cache
decoding.

Names: ``sinusoid/...``, ``positional/learned/...``, ``rope/<half|interleaved>/<variant>/<sizes>``
with sizes B, H, Hkv, T, D, R (rotary dim), ``rope/scaling/<type>/...`` (the frequencies and the
attention factor alone, float64: they take no float input), ``rope/mha/...`` and
``rope/kv_cache/...``. Sizes: T in {1, 7, 97}, D in {8, 40, 64}, R < D, GQA, offsets up to
1000, per-row position ids with repeats. The scaled cases use a short trained length (32) so
that T = 97 reaches past it and every band of YaRN and Llama 3.1 is in play.

Oracles (torch_bridge.rope): interleaved RoPE as complex multiplication, half-split RoPE as the
full rotation matrix, the frequencies recomputed in torch; ``F.embedding`` for the learned table.
Ops are referenced through their modules so a test can monkeypatch them.
"""
from __future__ import annotations

import numpy as np
import torch

from equivalence.registry import Case, register, single
from ref_numpy import kv_cache, mha, positional, rope, rope_scaling
from torch_bridge import rope as oracle


def _positions_np(T, offset, ids):
    return ids if ids is not None else offset + np.arange(T)


def _positions_torch(T, offset, ids):
    return ids if ids is not None else torch.arange(offset, offset + T)


def _random_ids(rng, B, T, top):
    """Sorted ids per row with a repeated one (as left padding gives), row 0 from 0."""
    ids = np.sort(rng.integers(0, top, size=(B, T)), axis=1)
    ids[0] = np.arange(T)
    if T > 1:
        ids[-1, 1] = ids[-1, 0]
    return ids


# --- sinusoidal: x + PE(positions) ------------------------------------------------------------

def _sinusoid_case(variant, B, T, d, *, base=10000.0, offset=0, ids=False):
    def inputs(rng):
        i = {"x": rng.standard_normal((B, T, d))}
        if ids:
            i["position_ids"] = _random_ids(rng, B, T, 3 * T)
        return i

    def forward(i):
        pos = _positions_np(T, offset, i.get("position_ids"))
        pe = positional.sinusoidal_encoding(pos, d, base=base, dtype=i["x"].dtype)
        return {"out": i["x"] + pe}, None

    def torch_fn(t):
        pos = _positions_torch(T, offset, t.get("position_ids"))
        return {"out": t["x"] + oracle.sinusoidal(pos, d, base, dtype=t["x"].dtype)}

    register(Case(name=f"sinusoid/{variant}/B{B}_T{T}_d{d}", inputs=inputs, forward=forward,
                  backward=lambda dd, c: {"x": dd["out"]}, torch=torch_fn, grad_wrt=("x",)))


_sinusoid_case("base10000", 1, 97, 64)
_sinusoid_case("offset1000", 2, 7, 8, offset=1000)
_sinusoid_case("position_ids", 2, 7, 40, ids=True)
_sinusoid_case("base500", 1, 1, 8, base=500.0)


# --- learned absolute position embedding ------------------------------------------------------

def _learned_case(variant, ids_shape, L, C):
    def inputs(rng):
        T = ids_shape[-1]
        ids = np.broadcast_to(np.arange(T), ids_shape).copy()
        if len(ids_shape) == 2:
            ids = _random_ids(rng, *ids_shape, L)
        return {"position_ids": ids, "table": rng.standard_normal((L, C))}

    register(Case(
        name=f"positional/learned/{variant}/{ids_shape}/L{L}_C{C}", inputs=inputs,
        forward=lambda i: single(positional.learned_position_forward(i["table"],
                                                                     i["position_ids"])),
        backward=lambda d, c: {"table": positional.learned_position_backward(d["out"], c)},
        torch=lambda t: {"out": oracle.learned(t["position_ids"], t["table"])},
        grad_wrt=("table",)))


_learned_case("range", (97,), 128, 40)
_learned_case("position_ids", (3, 7), 16, 8)
_learned_case("range", (1,), 1, 8)


# --- RoPE on q and k --------------------------------------------------------------------------

def _rope_case(variant, B, H, Hkv, T, D, R=None, *, interleaved=False, offset=0, ids=False,
               scaling=None, max_pos=None):
    R = D if R is None else R
    conv = "interleaved" if interleaved else "half"

    def make_rope():
        return rope.RoPE(D, rotary_dim=R, interleaved=interleaved, scaling=scaling,
                         max_position_embeddings=max_pos)

    def inputs(rng):
        i = {"q": rng.standard_normal((B, H, T, D)), "k": rng.standard_normal((B, Hkv, T, D))}
        if ids:
            i["position_ids"] = _random_ids(rng, B, T, 4 * T)
        return i

    def forward(i):
        pos = rope.rope_positions(T, offset=offset, position_ids=i.get("position_ids"), batch=B)
        q, k, caches = rope.rope_qk(i["q"], i["k"], make_rope(), pos)
        return {"q_rot": q, "k_rot": k}, caches

    def backward(d, caches):
        dq, dk = rope.rope_qk_grads(d["q_rot"], d["k_rot"], caches)
        return {"q": dq, "k": dk}

    def torch_fn(t):
        pos = _positions_torch(T, offset, t.get("position_ids"))
        freqs, factor = oracle.inv_freq(scaling, R, max_position_embeddings=max_pos,
                                        seq_len=int(pos.max()) + 1)
        return {name: oracle.rope(t[x], pos, freqs, factor, interleaved=interleaved)
                for name, x in (("q_rot", "q"), ("k_rot", "k"))}

    register(Case(name=f"rope/{conv}/{variant}/B{B}_H{H}_Hkv{Hkv}_T{T}_D{D}_R{R}",
                  inputs=inputs, forward=forward, backward=backward, torch=torch_fn,
                  grad_wrt=("q", "k")))


for _inter in (False, True):
    _rope_case("plain", 2, 2, 2, 1, 8, interleaved=_inter)
    _rope_case("gqa/offset5", 1, 6, 2, 7, 40, 24, interleaved=_inter, offset=5)
    _rope_case("plain", 1, 2, 1, 97, 64, interleaved=_inter)
    _rope_case("position_ids", 2, 4, 2, 7, 64, 32, interleaved=_inter, ids=True)
    _rope_case("decode/offset1000", 2, 2, 1, 1, 40, interleaved=_inter, offset=1000)

SCALINGS = {  # name -> (rope_scaling dict, max_position_embeddings)
    "linear": ({"type": "linear", "factor": 4.0}, None),
    "ntk": ({"rope_type": "ntk", "factor": 4.0}, None),
    "dynamic": ({"rope_type": "dynamic", "factor": 2.0}, 32),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}, None),
    "yarn-deepseek": ({"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 32,
                       "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.707,
                       "truncate": False}, None),
    "llama3": ({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32}, None),
}
for _name, (_cfg, _max) in SCALINGS.items():
    _rope_case(_name, 1, 4, 2, 97, 64, scaling=_cfg, max_pos=_max)
_rope_case("yarn-deepseek", 2, 2, 2, 7, 40, 24, interleaved=True, ids=True,
           scaling=SCALINGS["yarn-deepseek"][0])
_rope_case("llama3", 2, 2, 1, 7, 8, interleaved=True, offset=40, scaling=SCALINGS["llama3"][0])


# --- the frequencies and attention factor alone (no float input: float64 only) ----------------

def _freq_case(name, R, *, seq_len=None):
    cfg, max_pos = SCALINGS[name]

    def forward(_):
        inv, factor = rope_scaling.rope_frequencies(cfg, R, max_position_embeddings=max_pos,
                                                    seq_len=seq_len)
        return {"inv_freq": inv, "attention_factor": np.array(factor)}, None

    def torch_fn(_):
        inv, factor = oracle.inv_freq(cfg, R, max_position_embeddings=max_pos, seq_len=seq_len)
        return {"inv_freq": inv, "attention_factor": torch.tensor(factor, dtype=torch.float64)}

    register(Case(name=f"rope/scaling/{name}/R{R}" + (f"/seq{seq_len}" if seq_len else ""),
                  inputs=lambda rng: {}, forward=forward, backward=lambda d, c: {},
                  torch=torch_fn, grad_wrt=(), gradcheck=False, dtypes=("float64",)))


for _name in SCALINGS:
    for _R in (8, 40, 128):
        _freq_case(_name, _R)
_freq_case("dynamic", 64, seq_len=16)
_freq_case("dynamic", 64, seq_len=1000)


# --- RoPE inside multi-head attention, and KV-cache decoding ----------------------------------

MHA_GRADS = ("x", "w_qkv", "b_qkv", "w_o", "b_o")


def _mha_inputs(B, T, C, H, Hkv, D, ids):
    def inputs(rng):
        E = (H + 2 * Hkv) * D
        i = {"x": rng.standard_normal((B, T, C)),
             "w_qkv": rng.standard_normal((C, E)) / np.sqrt(C),
             "b_qkv": 0.1 * rng.standard_normal(E),
             "w_o": rng.standard_normal((H * D, C)) / np.sqrt(H * D),
             "b_o": 0.1 * rng.standard_normal(C)}
        if ids:
            i["position_ids"] = _random_ids(rng, B, T, 3 * T)
        return i
    return inputs


def _mha_torch(t, *, T, H, Hkv, R, interleaved, scaling, max_pos):
    pos = _positions_torch(T, 0, t.get("position_ids"))
    freqs, factor = oracle.inv_freq(scaling, R, max_position_embeddings=max_pos,
                                    seq_len=int(pos.max()) + 1)
    return oracle.mha_rope(*(t[n] for n in MHA_GRADS), n_head=H, n_kv_head=Hkv, positions=pos,
                           freqs=freqs, attention_factor=factor, interleaved=interleaved)


def _mha_rope_case(variant, B, T, C, H, Hkv, R=None, *, interleaved=False, ids=False,
                   scaling=None):
    D = C // H
    R = D if R is None else R
    conv = "interleaved" if interleaved else "half"

    def forward(i):
        r = rope.RoPE(D, rotary_dim=R, interleaved=interleaved, scaling=scaling)
        y, cache = mha.mha_forward(*(i[n] for n in MHA_GRADS), n_head=H, n_kv_head=Hkv,
                                   causal=True, rope=r, position_ids=i.get("position_ids"))
        return {"y": y}, cache

    register(Case(
        name=f"rope/mha/{conv}/{variant}/B{B}_T{T}_C{C}_H{H}_Hkv{Hkv}_R{R}",
        inputs=_mha_inputs(B, T, C, H, Hkv, D, ids), forward=forward,
        backward=lambda d, c: dict(zip(MHA_GRADS, mha.mha_backward(d["y"], c))),
        torch=lambda t: {"y": _mha_torch(t, T=T, H=H, Hkv=Hkv, R=R, interleaved=interleaved,
                                         scaling=scaling, max_pos=None)},
        grad_wrt=MHA_GRADS))


def _decode_case(variant, B, T, C, H, Hkv, chunks, R=None, *, interleaved=False, scaling=None):
    D = C // H
    R = D if R is None else R
    conv = "interleaved" if interleaved else "half"
    assert sum(chunks) == T

    def forward(i):
        r = rope.RoPE(D, rotary_dim=R, interleaved=interleaved, scaling=scaling)
        cache = kv_cache.KVCache(B, Hkv, T, D, dtype=i["x"].dtype)
        outs, start = [], 0
        for t in chunks:
            outs.append(kv_cache.mha_decode(i["x"][:, start:start + t],
                                            *(i[n] for n in MHA_GRADS[1:]), cache, n_head=H,
                                            n_kv_head=Hkv, rope=r))
            start += t
        return {"y": np.concatenate(outs, axis=1)}, None

    register(Case(
        name=f"rope/kv_cache/{conv}/{variant}/B{B}_T{T}_C{C}_H{H}_Hkv{Hkv}_R{R}",
        inputs=_mha_inputs(B, T, C, H, Hkv, D, False), forward=forward,
        backward=lambda d, c: {},
        torch=lambda t: {"y": _mha_torch(t, T=T, H=H, Hkv=Hkv, R=R, interleaved=interleaved,
                                         scaling=scaling, max_pos=None)},
        grad_wrt=(), gradcheck=False))


for _inter in (False, True):
    _mha_rope_case("causal/gqa", 2, 9, 24, 6, 2, interleaved=_inter)
    _mha_rope_case("causal/mqa/position_ids", 2, 7, 24, 3, 1, 4, interleaved=_inter, ids=True)
    _decode_case("gqa/chunks", 2, 13, 24, 6, 2, [5, 1, 4, 3], interleaved=_inter)
_mha_rope_case("causal/gqa/yarn", 1, 97, 32, 4, 2, 6, scaling=SCALINGS["yarn"][0])
_decode_case("gqa/one_at_a_time/llama3", 1, 11, 32, 4, 2, [1] * 11, 6,
             scaling=SCALINGS["llama3"][0])
