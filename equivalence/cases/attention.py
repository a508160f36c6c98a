"""Cases for attention: scaled dot-product attention (batched, loop and einsum forms), masks,
dropout, GQA/MQA, ALiBi, multi-head attention (fused and per head) and the KV cache.

Names read ``attention/<variant>/<sizes>`` with sizes B, H, Hkv, Tq, Tk, D. Shapes include
T = 1, T = 97 with D = 59, (Tq, Tk) = (13, 29) and (29, 13), D = 40, H = 6 with
Hkv ∈ {6, 3, 2, 1}, and batch rows with different padding lengths (one of length 0: a fully
masked row). Every SDPA case also compares ``cache["lse"]`` with ``torch.logsumexp``.

Oracles (torch_bridge.attention): ``F.scaled_dot_product_attention`` with ``enable_gqa`` for
SDPA, ``torch.nn.MultiheadAttention`` for MHA, the explicit torch math with the same keep-mask for
dropout. Ops are referenced through their modules so a test can monkeypatch them.
"""
from __future__ import annotations

import numpy as np

from equivalence.registry import Case, register
from ref_numpy import alibi, attention, kv_cache, mha
from torch_bridge import attention as oracle

IMPLS = {  # variant -> (forward, backward) names in ref_numpy.attention
    "batched": ("attention_forward", "attention_backward"),
    "loop": ("attention_forward_loop", "attention_backward_loop"),
    "einsum": ("attention_forward_einsum", "attention_backward_einsum"),
}


def _sizes(B, H, Hkv, Tq, Tk, D) -> str:
    return f"B{B}_H{H}_Hkv{Hkv}_Tq{Tq}_Tk{Tk}_D{D}"


def _sdpa_case(variant, B, H, Hkv, Tq, Tk, D, *, impl="batched", causal=False, window=None,
               lengths=None, mask=None, bias=None, scale=None, dropout_p=0.0, use_alibi=False):
    """Register one SDPA case.

    mask: None, "bool" (random, one fully masked row) or "float" (additive, some −inf, one fully
    −inf row); bias: None or the bias shape ((Tq, Tk) or 4-D); lengths: per-row key lengths.
    """
    fwd_name, bwd_name = IMPLS[impl]

    def inputs(rng):
        i = {"q": rng.standard_normal((B, H, Tq, D)),
             "k": rng.standard_normal((B, Hkv, Tk, D)),
             "v": rng.standard_normal((B, Hkv, Tk, D))}
        if bias is not None:
            i["bias"] = rng.standard_normal(bias)
        if lengths is not None:
            i["key_mask"] = attention.key_mask_from_lengths(lengths, Tk)
        if mask == "bool":
            m = rng.random((B, H, Tq, Tk)) < 0.7
            m[0, 0, Tq // 2] = False                    # a fully masked row
            i["mask"] = m
        elif mask == "float":
            m = rng.standard_normal((Tq, Tk))
            m[rng.random((Tq, Tk)) < 0.3] = -np.inf
            m[Tq // 2] = -np.inf                        # a fully masked row
            i["mask"] = m
        if dropout_p:
            i["keep"] = rng.random((B, H, Tq, Tk)) >= dropout_p
        return i

    def np_kwargs(i):
        kw = dict(causal=causal, window=window, scale=scale, bias=i.get("bias"),
                  key_mask=i.get("key_mask"), mask=i.get("mask"))
        if use_alibi:
            kw["mask"] = alibi.alibi_bias(H, Tq, Tk, dtype=i["q"].dtype)
        if dropout_p:
            kw.update(dropout_p=dropout_p, dropout_mask=i["keep"])
        return kw

    def forward(i):
        out, cache = getattr(attention, fwd_name)(i["q"], i["k"], i["v"], **np_kwargs(i))
        return {"out": out, "lse": cache["lse"]}, cache

    def backward(d, c):
        dq, dk, dv, dbias = getattr(attention, bwd_name)(d["out"], c)
        g = {"q": dq, "k": dk, "v": dv}
        if bias is not None:
            g["bias"] = dbias
        return g

    def torch_fn(t):
        kw = dict(causal=causal, window=window, scale=scale, bias=t.get("bias"),
                  key_mask=t.get("key_mask"), mask=t.get("mask"))
        if use_alibi:
            kw["mask"] = oracle.alibi_bias(H, Tq, Tk, dtype=t["q"].dtype)
        if dropout_p:
            out = oracle.attention_math(t["q"], t["k"], t["v"], keep=t["keep"],
                                        dropout_p=dropout_p, **kw)
        else:
            out = oracle.sdpa(t["q"], t["k"], t["v"], **kw)
        return {"out": out, "lse": oracle.attention_lse(t["q"], t["k"], t["v"], **kw)}

    register(Case(
        name=f"attention/{variant}/{_sizes(B, H, Hkv, Tq, Tk, D)}",
        inputs=inputs, forward=forward, backward=backward, torch=torch_fn,
        grad_wrt=("q", "k", "v") + (("bias",) if bias is not None else ()),
        dout_for=("out",)))


# --- plain, causal, T = 1, T = 97, Tq != Tk ---------------------------------------------------
_sdpa_case("sdpa", 2, 2, 2, 13, 13, 40)
_sdpa_case("sdpa/causal", 2, 2, 2, 13, 13, 40, causal=True)
_sdpa_case("sdpa", 2, 2, 2, 1, 1, 8)
_sdpa_case("sdpa/causal", 2, 2, 2, 1, 1, 8, causal=True)
_sdpa_case("sdpa/causal/decode", 2, 2, 2, 1, 17, 8, causal=True)
_sdpa_case("sdpa", 1, 1, 1, 97, 97, 59)
_sdpa_case("sdpa/causal", 1, 1, 1, 97, 97, 59, causal=True)
_sdpa_case("sdpa", 2, 2, 2, 13, 29, 40)
_sdpa_case("sdpa/causal", 2, 2, 2, 13, 29, 40, causal=True)
_sdpa_case("sdpa", 2, 2, 2, 29, 13, 59)
_sdpa_case("sdpa/causal/empty_rows", 2, 2, 2, 29, 13, 59, causal=True)   # rows 0..15 see no key
_sdpa_case("sdpa/scale0.3", 1, 2, 2, 11, 7, 16, scale=0.3)

# --- GQA / MQA: H = 6, Hkv in {6, 3, 2, 1} ---------------------------------------------------
for _hkv in (6, 3, 2, 1):
    _sdpa_case("gqa/causal", 1, 6, _hkv, 11, 11, 40, causal=True)
_sdpa_case("gqa", 2, 6, 2, 13, 29, 16)
_sdpa_case("gqa/causal", 2, 6, 3, 29, 13, 16, causal=True)

# --- padding, boolean / additive masks, bias, sliding window ---------------------------------
_sdpa_case("padding", 2, 2, 2, 13, 13, 16, lengths=[13, 6])
_sdpa_case("padding/causal", 2, 2, 2, 13, 13, 16, causal=True, lengths=[9, 4])
_sdpa_case("padding/empty_row", 2, 6, 2, 7, 11, 16, lengths=[11, 0])   # batch row 1: all padding
_sdpa_case("mask_bool", 2, 3, 3, 13, 29, 16, mask="bool")
_sdpa_case("mask_float", 2, 2, 1, 13, 13, 16, mask="float")
_sdpa_case("bias/TqTk", 2, 2, 2, 13, 29, 16, bias=(13, 29))
_sdpa_case("bias/1H", 2, 6, 3, 11, 11, 16, bias=(1, 6, 11, 11), causal=True)
_sdpa_case("bias/B1", 2, 2, 2, 11, 7, 16, bias=(2, 1, 11, 7), lengths=[7, 3])
_sdpa_case("bias/BH", 2, 2, 1, 5, 9, 8, bias=(2, 2, 5, 9), causal=True)
_sdpa_case("window4/causal", 2, 2, 2, 17, 17, 16, causal=True, window=4)
_sdpa_case("window3", 1, 2, 1, 17, 17, 16, window=3)
_sdpa_case("window5/causal", 1, 6, 2, 7, 23, 16, causal=True, window=5)

# --- dropout with an explicit keep-mask (oracle: torch math with the same mask) --------------
_sdpa_case("dropout0.25", 2, 2, 2, 13, 13, 16, dropout_p=0.25)
_sdpa_case("dropout0.5/causal", 2, 6, 2, 13, 29, 16, dropout_p=0.5, causal=True)

# --- ALiBi (Press et al. 2022): H a power of two and not --------------------------------------
_sdpa_case("alibi/causal", 1, 8, 8, 13, 13, 16, causal=True, use_alibi=True)
_sdpa_case("alibi/causal", 1, 6, 6, 13, 13, 16, causal=True, use_alibi=True)
_sdpa_case("alibi/causal", 2, 6, 2, 5, 12, 16, causal=True, use_alibi=True)

# --- the loop and einsum implementations, on the hardest combinations ------------------------
for _impl in ("loop", "einsum"):
    _sdpa_case(f"{_impl}/causal", 1, 6, 2, 7, 11, 40, impl=_impl, causal=True)
    _sdpa_case(f"{_impl}/causal/empty_rows", 1, 2, 1, 13, 7, 8, impl=_impl, causal=True)
    _sdpa_case(f"{_impl}/bias+padding", 2, 2, 2, 7, 9, 8, impl=_impl, bias=(1, 2, 7, 9),
               lengths=[9, 0])
    _sdpa_case(f"{_impl}/window+mask", 2, 3, 1, 9, 9, 8, impl=_impl, window=3, mask="bool")
    _sdpa_case(f"{_impl}/dropout", 1, 2, 2, 6, 6, 8, impl=_impl, dropout_p=0.3, causal=True)


# --- multi-head attention --------------------------------------------------------------------
MHA_IMPLS = {"fused": ("mha_forward", "mha_backward"),
             "per_head": ("mha_forward_per_head", "mha_backward_per_head")}
MHA_GRADS = ("x", "w_qkv", "b_qkv", "w_o", "b_o")


def _mha_case(variant, B, T, C, H, Hkv=None, *, impl="fused", causal=False, lengths=None,
              mask=None):
    """One MHA case; the oracle is nn.MultiheadAttention (Hkv = H) or SDPA with enable_gqa."""
    Hkv = H if Hkv is None else Hkv
    D = C // H
    E = (H + 2 * Hkv) * D
    fwd_name, bwd_name = MHA_IMPLS[impl]

    def inputs(rng):
        i = {"x": rng.standard_normal((B, T, C)),
             "w_qkv": rng.standard_normal((C, E)) / np.sqrt(C),
             "b_qkv": 0.1 * rng.standard_normal(E),
             "w_o": rng.standard_normal((H * D, C)) / np.sqrt(H * D),
             "b_o": 0.1 * rng.standard_normal(C)}
        if lengths is not None:
            i["key_mask"] = attention.key_mask_from_lengths(lengths, T)
        if mask == "bool":
            m = rng.random((T, T)) < 0.7
            m[:, 0] = True                              # every row keeps a key
            i["mask"] = m
        elif mask == "float":
            i["mask"] = rng.standard_normal((T, T))
        return i

    def forward(i):
        y, cache = getattr(mha, fwd_name)(*(i[n] for n in MHA_GRADS), n_head=H, n_kv_head=Hkv,
                                          causal=causal, key_mask=i.get("key_mask"),
                                          mask=i.get("mask"))
        return {"y": y}, cache

    def backward(d, c):
        return dict(zip(MHA_GRADS, getattr(mha, bwd_name)(d["y"], c)))

    def torch_fn(t):
        args = [t[n] for n in MHA_GRADS]
        kw = dict(causal=causal, key_mask=t.get("key_mask"), mask=t.get("mask"))
        if Hkv == H:
            return {"y": oracle.mha(*args, n_head=H, **kw)}
        return {"y": oracle.mha_gqa(*args, n_head=H, n_kv_head=Hkv, **kw)}

    register(Case(name=f"attention/mha/{impl}/{variant}/B{B}_T{T}_C{C}_H{H}_Hkv{Hkv}",
                  inputs=inputs, forward=forward, backward=backward, torch=torch_fn,
                  grad_wrt=MHA_GRADS))


for _impl in ("fused", "per_head"):
    _mha_case("plain", 2, 7, 24, 3, impl=_impl)
    _mha_case("causal", 2, 11, 24, 6, impl=_impl, causal=True)
    _mha_case("padding", 2, 9, 12, 3, impl=_impl, lengths=[9, 5])
    _mha_case("causal+padding", 2, 9, 12, 2, impl=_impl, causal=True, lengths=[6, 9])
    _mha_case("gqa/causal", 2, 9, 24, 6, 2, impl=_impl, causal=True)
    _mha_case("mqa/padding", 2, 8, 24, 6, 1, impl=_impl, lengths=[8, 3])
    _mha_case("padding/empty_row", 2, 5, 12, 3, impl=_impl, lengths=[5, 0])   # row 1: no key
_mha_case("mask_bool", 1, 7, 12, 3, mask="bool")
_mha_case("mask_float/causal", 1, 7, 12, 3, mask="float", causal=True)
_mha_case("T1", 2, 1, 12, 3, causal=True)


# --- KV cache: decoding step by step == one causal forward (forward only) --------------------


def _kv_case(variant, B, H, Hkv, T, D, chunks, *, window=None, use_alibi=False):
    def inputs(rng):
        return {"q": rng.standard_normal((B, H, T, D)),
                "k": rng.standard_normal((B, Hkv, T, D)),
                "v": rng.standard_normal((B, Hkv, T, D))}

    def forward(i):
        cache = kv_cache.KVCache(B, Hkv, T, D, dtype=i["q"].dtype)
        outs, start = [], 0
        for t in chunks:
            sl = slice(start, start + t)
            outs.append(kv_cache.cached_attention(i["q"][:, :, sl], i["k"][:, :, sl],
                                                  i["v"][:, :, sl], cache, window=window,
                                                  alibi=use_alibi))
            start += t
        return {"out": np.concatenate(outs, axis=2)}, None

    def torch_fn(t):
        mask = oracle.alibi_bias(H, T, T, dtype=t["q"].dtype) if use_alibi else None
        return {"out": oracle.sdpa(t["q"], t["k"], t["v"], causal=True, window=window,
                                   mask=mask)}

    assert sum(chunks) == T
    register(Case(name=f"attention/kv_cache/{variant}/{_sizes(B, H, Hkv, T, T, D)}",
                  inputs=inputs, forward=forward, backward=lambda d, c: {}, torch=torch_fn,
                  grad_wrt=(), gradcheck=False))


_kv_case("one_at_a_time", 2, 2, 2, 13, 16, [1] * 13)
_kv_case("chunks", 2, 6, 2, 17, 16, [5, 1, 7, 4])
_kv_case("chunks/window4", 1, 6, 3, 17, 8, [3, 3, 1, 10], window=4)
_kv_case("chunks/alibi", 1, 6, 6, 12, 8, [4, 1, 7], use_alibi=True)
