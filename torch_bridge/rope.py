"""Torch oracles for position encodings: sinusoidal, learned, RoPE in both conventions, the RoPE
frequency scalings, and RoPE inside multi-head attention.

Each is written from its paper (or the reference code its checkpoints run with) in torch ops,
in a form different from ``ref_numpy``'s, so the two can disagree:

* interleaved RoPE as complex multiplication, x_i ↦ x_i · e^{i m θ_i}, the way RoFormer and
  Meta's Llama code write it (``torch.view_as_complex`` / ``torch.polar``);
* half-split RoPE as the block rotation matrix R_Θ,m of Su et al. 2021 (eq. 13), built in full
  (R, R) per position, with pairs (i, i + R/2), multiplying x;
* the frequency scalings vectorised differently (Llama 3.1's three branches as one clamp, the
  YaRN ramp as a mix of two frequency sets).

Angles m·θ are formed in float64 and the rotation is cast to the dtype of x, so a float32 run of
an oracle is the plain float32 baseline of the harness. Shapes as in ``ref_numpy.rope``:
x (B, H, T, D), positions (T,) or (B, T), inv_freq (R/2,).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from torch_bridge.attention import sdpa

# ----------------------------------------------------------------------------------------------
# Absolute encodings


def sinusoidal(positions: torch.Tensor, d: int, base: float = 10000.0,
               dtype=torch.float64) -> torch.Tensor:
    """(..., d): sin at even features, cos at odd ones, of pos / base^(2i/d) (Vaswani §3.5)."""
    i = torch.arange(d // 2, dtype=torch.float64)
    angle = positions.to(torch.float64)[..., None] / base ** (2 * i / d)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2).to(dtype)


def learned(position_ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """F.embedding of the position ids into the (L, C) table (GPT-2's ``wpe``)."""
    return F.embedding(position_ids.long(), table)


# ----------------------------------------------------------------------------------------------
# Frequencies


def inv_freq(scaling: dict | None, rotary_dim: int, base: float = 10000.0, *,
             max_position_embeddings: int | None = None, seq_len: int | None = None,
             ) -> tuple[torch.Tensor, float]:
    """(θ' (R/2,) float64, attention factor) for a rope_scaling dict (no argument checks)."""
    cfg = scaling or {}
    kind = cfg.get("rope_type", cfg.get("type", "default"))
    base = float(cfg.get("rope_theta", base))
    R = rotary_dim
    # Su et al. 2021, eq. 15: θ_j = base^(−2(j − 1)/R), j = 1 … R/2
    j = torch.arange(1, R // 2 + 1, dtype=torch.float64)

    def theta(b):
        return b ** (-2 * (j - 1) / R)

    if kind == "default":
        return theta(base), 1.0
    s = float(cfg["factor"])
    if kind == "linear":                          # Chen et al. 2023: m -> m / s
        return theta(base) / s, 1.0
    if kind == "ntk":                             # bloc97 2023: b' = b s^(R/(R-2))
        return theta(base * s ** (R / (R - 2))), 1.0
    if kind == "dynamic":                         # emozilla 2023, as transformers' "dynamic"
        L0 = max_position_embeddings
        L = max(L0 if seq_len is None else seq_len, L0)
        return theta(base * (s * L / L0 - (s - 1)) ** (R / (R - 2))), 1.0
    if kind == "yarn":
        return _yarn(cfg, theta(base), R, base, s)
    if kind == "llama3":
        return _llama3(cfg, theta(base), s), 1.0
    raise ValueError(f"rope_type: no oracle for {kind!r}")


def _yarn(cfg: dict, th: torch.Tensor, R: int, base: float, s: float):
    """YaRN as its reference code computes it (github.com/jquesnelle/yarn): a ramp over the pair
    index between the pairs that turn beta_fast and beta_slow times over the original length."""
    L = cfg["original_max_position_embeddings"]

    def pair_turning(n):   # solve L θ_i / (2π) = n for i, with θ_i = base^(−2i/R)
        return math.log(L / (2 * math.pi * n)) / math.log(base) * R / 2

    lo, hi = pair_turning(cfg.get("beta_fast", 32)), pair_turning(cfg.get("beta_slow", 1))
    if cfg.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, R - 1)
    hi = hi + 0.001 if hi == lo else hi
    i = torch.arange(R // 2, dtype=torch.float64)
    interpolate = ((i - lo) / (hi - lo)).clamp(0, 1)       # 0: keep θ, 1: θ / s
    mixed = torch.lerp(th, th / s, interpolate)

    def m(scale, k=1.0):
        return 1.0 if scale <= 1 else 1.0 + 0.1 * k * math.log(scale)

    if "attention_factor" in cfg:
        return mixed, float(cfg["attention_factor"])
    if "mscale" in cfg:
        return mixed, m(s, cfg["mscale"]) / m(s, cfg["mscale_all_dim"])
    return mixed, m(s)


def _llama3(cfg: dict, th: torch.Tensor, s: float) -> torch.Tensor:
    """Meta's ``apply_scaling`` (llama-models): keep, blend or divide by s, by wavelength. The
    three branches are one clamp: the blend weight is 1 below L/β and 0 above L/α."""
    L = cfg["original_max_position_embeddings"]
    a, b = cfg["low_freq_factor"], cfg["high_freq_factor"]
    turns = L * th / (2 * math.pi)                          # L / wavelength
    keep = ((turns - a) / (b - a)).clamp(0, 1)
    return keep * th + (1 - keep) * th / s


# ----------------------------------------------------------------------------------------------
# Rotations


def angles(positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """m θ_i in float64: (T, R/2) or (B, T, R/2), then viewed as (1|B, 1, T, R/2)."""
    a = positions.to(torch.float64)[..., None] * freqs.to(torch.float64)
    return a[None, None] if positions.ndim == 1 else a[:, None]


def rope_interleaved(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor,
                     attention_factor: float = 1.0) -> torch.Tensor:
    """Pairs (2i, 2i + 1) as complex numbers times e^{i m θ_i} (RoFormer, Meta's Llama)."""
    R = 2 * freqs.shape[-1]
    cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    a = angles(positions, freqs)
    rot = torch.polar(torch.full_like(a, attention_factor), a).to(cdtype)
    z = torch.view_as_complex(x[..., :R].reshape(*x.shape[:-1], R // 2, 2).contiguous())
    turned = torch.view_as_real(z * rot).flatten(-2)
    return torch.cat([turned, x[..., R:]], dim=-1)


def rope_half_split(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor,
                    attention_factor: float = 1.0) -> torch.Tensor:
    """R_Θ,m x with the (R, R) rotation matrix of pairs (i, i + R/2) built in full (Su eq. 13)."""
    h = freqs.shape[-1]
    R = 2 * h
    a = angles(positions, freqs)                                       # (1|B, 1, T, R/2)
    c, s = attention_factor * a.cos(), attention_factor * a.sin()
    M = torch.zeros(*a.shape[:-1], R, R, dtype=torch.float64)          # (1|B, 1, T, R, R)
    i = torch.arange(h)
    M[..., i, i] = c
    M[..., i, i + h] = -s
    M[..., i + h, i] = s
    M[..., i + h, i + h] = c
    turned = (M.to(x.dtype) @ x[..., :R, None])[..., 0]
    return torch.cat([turned, x[..., R:]], dim=-1)


def rope(x, positions, freqs, attention_factor=1.0, *, interleaved=False):
    """One of the two conventions."""
    f = rope_interleaved if interleaved else rope_half_split
    return f(x, positions, freqs, attention_factor)


# ----------------------------------------------------------------------------------------------
# RoPE inside multi-head attention


def mha_rope(x, w_qkv, b_qkv, w_o, b_o, *, n_head, n_kv_head, positions, freqs,
             attention_factor=1.0, interleaved=False, causal=True):
    """Self-attention with RoPE on q and k: F.linear projections, the oracle rotation, SDPA
    (``enable_gqa``), F.linear out. ``positions`` (T,) or (B, T)."""
    B, T, C = x.shape
    H, Hkv = n_head, n_kv_head
    D = w_qkv.shape[1] // (H + 2 * Hkv)
    qkv = F.linear(x, w_qkv.T, b_qkv)
    q = qkv[..., : H * D].reshape(B, T, H, D).transpose(1, 2)
    k = qkv[..., H * D: (H + Hkv) * D].reshape(B, T, Hkv, D).transpose(1, 2)
    v = qkv[..., (H + Hkv) * D:].reshape(B, T, Hkv, D).transpose(1, 2)
    q = rope(q, positions, freqs, attention_factor, interleaved=interleaved)
    k = rope(k, positions, freqs, attention_factor, interleaved=interleaved)
    o = sdpa(q, k, v, causal=causal)
    return F.linear(o.transpose(1, 2).reshape(B, T, H * D), w_o.T, b_o)
