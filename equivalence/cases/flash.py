"""Equivalence cases for tiled flash attention (``ref_numpy.flash_attention``).

Each case runs the tiled forward/backward at one shape, mask and pair of tile sizes (Br, Bc),
chosen so that the tiles do not divide T, are 1, or exceed T. Outputs compared: ``out`` and the
saved log-sum-exp ``lse`` (forward only: ``dout_for=("out",)``), and the gradients of q, k, v.

Torch oracle: ``F.scaled_dot_product_attention`` under autograd, plus ``torch.logsumexp`` of the
scaled, masked scores for ``lse``.

- GQA (Hkv < H) uses ``enable_gqa=True``.
- SDPA's ``is_causal`` is top-left aligned; it is used only when Tq == Tk, where top-left and
  bottom-right coincide. For Tq != Tk the bottom-right mask (key j visible to query i iff
  j <= i + Tk - Tq) is passed as an explicit boolean ``attn_mask``.
- Fully masked rows (causal with Tq > Tk): torch >= 2.5 gives zeros for a row with no visible
  key, but older versions and some kernels give NaN. The oracle therefore lets such rows see
  every key (so SDPA computes something finite) and multiplies the output by 0 on those rows; the product
  makes their output exactly 0 and their gradient contribution to q, k, v exactly 0 — the
  convention of ``ref_numpy.attention``. Their ``lse`` is -inf on both sides.

float32 baseline: the naive ``ref_numpy.attention`` in float32 (the issue's bar: the tiled error
against float64 at most 2x the naive float32 error).
"""
from __future__ import annotations

import math

from equivalence.registry import Case, register
from ref_numpy import attention, flash_attention


def _torch_oracle(causal: bool, Tq: int, Tk: int, G: int, scale: float):
    """SDPA (+ logsumexp) with the bottom-right causal mask and the masked-row fix-up."""
    def run(t):
        import torch
        import torch.nn.functional as F
        q, k, v = t["q"], t["k"], t["v"]
        i = torch.arange(Tq)[:, None]
        j = torch.arange(Tk)[None, :]
        visible = (j <= i + (Tk - Tq)) if causal else torch.ones(Tq, Tk, dtype=torch.bool)
        row_seen = visible.any(dim=-1)                               # (Tq,)
        if causal and Tq == Tk:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                 enable_gqa=G > 1)
        elif causal:
            # rows with no visible key attend to every key here and are zeroed below
            mask = visible | ~row_seen[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                 enable_gqa=G > 1)
            out = out * row_seen[:, None].to(out.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=G > 1)
        scores = scale * (q @ k.repeat_interleave(G, dim=1).transpose(-1, -2))
        lse = torch.logsumexp(scores.masked_fill(~visible, -math.inf), dim=-1)
        return {"out": out, "lse": lse}
    return run


def _naive_float32(causal: bool, scale: float):
    """The plain same-precision implementation: ``ref_numpy.attention`` (naive, (Tq, Tk))."""
    def run(inputs, douts):
        out, cache = attention.attention_forward(inputs["q"], inputs["k"], inputs["v"],
                                                 causal=causal, scale=scale)
        outs = {"out": out, "lse": cache["lse"]}
        if douts is None:
            return outs, None
        dq, dk, dv, _ = attention.attention_backward(douts["out"], cache)
        return outs, {"q": dq, "k": dk, "v": dv}
    return run


def flash_case(variant: str, B: int, H: int, Hkv: int, Tq: int, Tk: int, D: int, *,
               causal: bool, block_q: int, block_k: int,
               dtypes: tuple[str, ...] = ("float64", "float32")) -> Case:
    """Register the case ``flash/<variant>/(B, H, Hkv, Tq, Tk, D) Br=.. Bc=..``."""
    scale = 1.0 / math.sqrt(D)

    def inputs(rng):
        return {"q": rng.standard_normal((B, H, Tq, D)),
                "k": rng.standard_normal((B, Hkv, Tk, D)),
                "v": rng.standard_normal((B, Hkv, Tk, D))}

    def forward(i):
        out, cache = flash_attention.flash_attention_forward(
            i["q"], i["k"], i["v"], causal=causal, block_q=block_q, block_k=block_k)
        return {"out": out, "lse": cache["lse"]}, cache

    def backward(d, cache):
        dq, dk, dv = flash_attention.flash_attention_backward(d["out"], cache)
        return {"q": dq, "k": dk, "v": dv}

    return register(Case(
        name=f"flash/{variant}/{(B, H, Hkv, Tq, Tk, D)} Br={block_q} Bc={block_k}",
        inputs=inputs, forward=forward, backward=backward, grad_wrt=("q", "k", "v"),
        torch=_torch_oracle(causal, Tq, Tk, H // Hkv, scale), dout_for=("out",),
        baseline32=_naive_float32(causal, scale), dtypes=dtypes))


#          variant            B  H Hkv  Tq  Tk   D   causal  Br  Bc
flash_case("full",            2, 3, 3,  17, 17,  8, causal=False, block_q=4, block_k=5)
flash_case("full",            1, 2, 2,  13, 29, 59, causal=False, block_q=16, block_k=3)
flash_case("causal",          2, 2, 2,  17, 17,  8, causal=True, block_q=3, block_k=16)
flash_case("causal",          1, 2, 2,  19, 19,  6, causal=True, block_q=5, block_k=5)
flash_case("causal-tq<tk",    2, 2, 2,  13, 29,  8, causal=True, block_q=4, block_k=7)
flash_case("causal-tq>tk",    2, 2, 2,  29, 13,  8, causal=True, block_q=5, block_k=4)
flash_case("gqa",             1, 6, 2,  11, 11,  8, causal=False, block_q=4, block_k=3)
flash_case("gqa-causal",      1, 6, 3,  11, 11,  8, causal=True, block_q=3, block_k=4)
flash_case("mqa-causal",      2, 4, 1,  15, 9,   8, causal=True, block_q=4, block_k=2)
flash_case("tile-1",          1, 2, 2,   7, 5,   4, causal=True, block_q=1, block_k=1)
flash_case("tile>T",          2, 2, 1,  17, 17, 16, causal=True, block_q=64, block_k=64)
flash_case("Tq=1",            2, 2, 2,   1, 9,   8, causal=True, block_q=64, block_k=64)
# Tq = Tk = 1: one key, P = 1, so dq = dk = 0 exactly and the float32 bar (2 x the baseline's
# error + 4 eps x max|ref|) is 0: the tiled backward must give exact zeros, which it does because
# its delta = rowsum(P ⊙ dP) is rounded like dP (see flash_attention_backward).
flash_case("T=1",             2, 2, 2,   1, 1,   8, causal=True, block_q=64, block_k=64)
flash_case("Tk=1",            1, 4, 1,  23, 1,  16, causal=False, block_q=8, block_k=8)
