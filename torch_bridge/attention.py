"""Torch oracles for attention, multi-head attention, GQA/MQA, ALiBi and the KV cache.

Every function takes and returns torch tensors (autograd flows through all of them) and follows
the conventions of ``ref_numpy.attention``: q (B, H, Tq, D), k/v (B, Hkv, Tk, D); causal masks
aligned bottom-right; boolean masks True = may attend; ``key_mask`` (B, Tk) True = real token.
The masks are rebuilt here from torch ops, independently of the NumPy code they check.

Note on ``F.scaled_dot_product_attention(is_causal=True)``: torch aligns that mask top-left
(query i sees keys j <= i) when Tq != Tk, so the oracles pass an explicit bottom-right mask.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Masks


def causal_allowed(Tq: int, Tk: int, device=None) -> torch.Tensor:
    """(Tq, Tk) bool, True where j <= i + Tk − Tq."""
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).tril(diagonal=Tk - Tq)


def window_allowed(Tq: int, Tk: int, window: int, device=None) -> torch.Tensor:
    """(Tq, Tk) bool, True where |i + Tk − Tq − j| < window."""
    i = torch.arange(Tq, device=device)[:, None] + (Tk - Tq)
    j = torch.arange(Tk, device=device)[None, :]
    return (i - j).abs() < window


def allowed_and_additive(B, H, Tq, Tk, *, causal=False, window=None, key_mask=None, mask=None,
                         bias=None, device=None):
    """The combined bool "may attend" mask (broadcastable to (B, H, Tq, Tk), or None) and the
    additive term (bias + float mask, or None)."""
    allowed = torch.ones(1, 1, Tq, Tk, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed & causal_allowed(Tq, Tk, device)
    if window is not None:
        allowed = allowed & window_allowed(Tq, Tk, window, device)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    additive = bias
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            additive = mask if additive is None else additive + mask
    return allowed, additive


# ----------------------------------------------------------------------------------------------
# Scaled dot-product attention


def sdpa(q, k, v, *, causal=False, scale=None, mask=None, bias=None, key_mask=None, window=None):
    """``F.scaled_dot_product_attention`` with every mask folded into ``attn_mask``; GQA through
    ``enable_gqa``. Fully masked rows give zeros (torch >= 2.5 uses a safe softmax)."""
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    allowed, additive = allowed_and_additive(B, H, Tq, Tk, causal=causal, window=window,
                                             key_mask=key_mask, mask=mask, bias=bias,
                                             device=q.device)
    if additive is None:
        attn_mask = allowed
    else:
        attn_mask = torch.where(allowed, additive, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale,
                                          enable_gqa=k.shape[1] != H)


def repeat_kv(kv, n_rep: int):
    """(B, Hkv, T, D) -> (B, Hkv·n_rep, T, D) by ``repeat_interleave``: the GQA oracle."""
    return kv.repeat_interleave(n_rep, dim=1)


def attention_math(q, k, v, *, causal=False, scale=None, mask=None, bias=None, key_mask=None,
                   window=None, keep=None, dropout_p=0.0):
    """Attention written out in torch ops, with repeat-interleaved K/V and an optional explicit
    dropout keep-mask: S = scale·QKᵀ + bias, P = softmax(S), O = (P ⊙ keep / (1 − p)) V.

    Fully masked rows give zeros: the row max is taken as 0 and the row sum as 1 there.
    """
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    G = H // k.shape[1]
    k, v = repeat_kv(k, G), repeat_kv(v, G)
    allowed, additive = allowed_and_additive(B, H, Tq, Tk, causal=causal, window=window,
                                             key_mask=key_mask, mask=mask, bias=bias,
                                             device=q.device)
    s = (q @ k.transpose(-1, -2)) * scale
    if additive is not None:
        s = s + additive
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(dim=-1, keepdim=True).detach()
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    e = torch.exp(s - m)
    l = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(l > 0, l, torch.ones_like(l))
    if keep is not None:
        p = p * keep / (1.0 - dropout_p)
    return p @ v


def attention_lse(q, k, v, *, causal=False, scale=None, mask=None, bias=None, key_mask=None,
                  window=None):
    """(B, H, Tq) log-sum-exp of the scaled, masked scores (−inf for a fully masked row), from
    ``torch.logsumexp``; detached (a reference value, not differentiated)."""
    with torch.no_grad():
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        scale = 1.0 / math.sqrt(D) if scale is None else scale
        G = H // k.shape[1]
        allowed, additive = allowed_and_additive(B, H, Tq, Tk, causal=causal, window=window,
                                                 key_mask=key_mask, mask=mask, bias=bias,
                                                 device=q.device)
        s = (q @ repeat_kv(k, G).transpose(-1, -2)) * scale
        if additive is not None:
            s = s + additive
        s = s.masked_fill(~allowed, float("-inf"))
        return torch.logsumexp(s, dim=-1)


# ----------------------------------------------------------------------------------------------
# ALiBi (Press et al. 2022): the slopes exactly as the paper's reference code computes them


def alibi_slopes(n: int) -> list[float]:
    """get_slopes(n) of github.com/ofirpress/attention_with_linear_biases (fairseq)."""
    def get_slopes_power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        ratio = start
        return [start * ratio ** i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (get_slopes_power_of_2(closest_power_of_2)
            + alibi_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2])


def alibi_bias(n_head: int, Tq: int, Tk: int, dtype=torch.float64) -> torch.Tensor:
    """(1, H, Tq, Tk) bias −m_h |i + Tk − Tq − j|."""
    slopes = torch.tensor(alibi_slopes(n_head), dtype=dtype)
    pos = torch.arange(Tq)[:, None] + (Tk - Tq)
    dist = (pos - torch.arange(Tk)[None, :]).abs().to(dtype)
    return -slopes[None, :, None, None] * dist


# ----------------------------------------------------------------------------------------------
# Multi-head attention


def mha(x, w_qkv, b_qkv, w_o, b_o, *, n_head, causal=False, key_mask=None, mask=None):
    """``torch.nn.MultiheadAttention(batch_first=True)`` self-attention with our weights.

    The module computes x @ Wᵀ, so our (C, 3C) ``w_qkv`` becomes ``in_proj_weight = w_qkv.T``
    (3C, C) and our (C, C) ``w_o`` becomes ``out_proj.weight = w_o.T``; the biases are equal.
    ``torch.func.functional_call`` runs the real module with those tensors in place of its
    parameters, so gradients flow back to ``w_qkv`` etc. Mask conventions of the module are the
    opposite of ours (True = blocked) and are converted here: ``key_padding_mask = ~key_mask``,
    ``attn_mask = ~allowed``.
    """
    B, T, C = x.shape
    module = torch.nn.MultiheadAttention(C, n_head, bias=b_qkv is not None, batch_first=True,
                                         dtype=x.dtype)
    params = {"in_proj_weight": w_qkv.T, "out_proj.weight": w_o.T}
    if (b_qkv is None) != (b_o is None):
        raise ValueError("b_qkv, b_o: nn.MultiheadAttention has both biases or neither, but got "
                         f"b_qkv {'None' if b_qkv is None else 'given'} and "
                         f"b_o {'None' if b_o is None else 'given'}")
    if b_qkv is not None:
        params["in_proj_bias"] = b_qkv
        params["out_proj.bias"] = b_o
    allowed = torch.ones(T, T, dtype=torch.bool)
    if causal:
        allowed = allowed & causal_allowed(T, T)
    if mask is not None and mask.dtype != torch.bool:
        attn_mask = mask.masked_fill(~allowed, float("-inf"))          # additive float mask
        kpm = None if key_mask is None else torch.zeros(B, T, dtype=x.dtype).masked_fill(
            ~key_mask, float("-inf"))
    else:
        if mask is not None:
            allowed = allowed & mask
        attn_mask = ~allowed
        kpm = None if key_mask is None else ~key_mask
    y, _ = torch.func.functional_call(module, params, (x, x, x),
                                      {"key_padding_mask": kpm, "attn_mask": attn_mask,
                                       "need_weights": False})
    return y


def mha_gqa(x, w_qkv, b_qkv, w_o, b_o, *, n_head, n_kv_head, causal=False, key_mask=None,
            mask=None):
    """Grouped-query self-attention in torch: F.linear projections, SDPA with ``enable_gqa``."""
    B, T, C = x.shape
    H, Hkv = n_head, n_kv_head
    D = w_qkv.shape[1] // (H + 2 * Hkv)
    qkv = F.linear(x, w_qkv.T, b_qkv)
    q = qkv[..., : H * D].reshape(B, T, H, D).transpose(1, 2)
    k = qkv[..., H * D: (H + Hkv) * D].reshape(B, T, Hkv, D).transpose(1, 2)
    v = qkv[..., (H + Hkv) * D:].reshape(B, T, Hkv, D).transpose(1, 2)
    o = sdpa(q, k, v, causal=causal, key_mask=key_mask, mask=mask)
    return F.linear(o.transpose(1, 2).reshape(B, T, H * D), w_o.T, b_o)
