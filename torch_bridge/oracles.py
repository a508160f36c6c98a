"""Torch oracles: each op written with torch's own functions, taking and returning tensors.

These are the "ref" side of the equivalence checks: torch autograd differentiates them, so the
gradients the NumPy backwards are compared with come from torch, not from this project.
Weights follow the NumPy layout (W stored (C_in, C_out)); where torch stores the transpose
(F.linear), the oracle passes ``weight.T``.

Shapes as in the matching ref_numpy modules: x (..., C); logits (N, C[, d...]);
targets (N[, d...]); ids (...); table (V, C); W1, W3 (C, F); W2 (F, C).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """F.softmax along ``axis`` (torch gives NaN for a fully -inf row; see masked_softmax)."""
    return F.softmax(x, dim=axis)


def masked_softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """F.softmax with the attention convention: a fully -inf row returns zeros, zero gradient.

    Such rows are replaced by zeros before F.softmax (so no NaN reaches autograd) and their
    output is set to zero afterwards; every other row is plain F.softmax.
    """
    dead = torch.isneginf(x).all(dim=axis, keepdim=True)             # x.shape with 1 at axis
    y = F.softmax(torch.where(dead, torch.zeros_like(x), x), dim=axis)
    return torch.where(dead, torch.zeros_like(y), y)


def log_softmax(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """F.log_softmax along ``axis``."""
    return F.log_softmax(x, dim=axis)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100,
                  reduction: str = "mean") -> torch.Tensor:
    """F.cross_entropy from logits (N, C[, d...]) and int64 targets (N[, d...])."""
    return F.cross_entropy(logits, targets.long(), ignore_index=ignore_index,
                           reduction=reduction)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """F.rms_norm over the last dim (the functional form of nn.RMSNorm)."""
    return F.rms_norm(x, (x.shape[-1],), weight=weight, eps=eps)


def layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              eps: float = 1e-5) -> torch.Tensor:
    """F.layer_norm over the last dim (the functional form of nn.LayerNorm)."""
    return F.layer_norm(x, (x.shape[-1],), weight=weight, bias=bias, eps=eps)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """F.gelu, exact ("none") or tanh-approximate ("tanh")."""
    return F.gelu(x, approximate=approximate)


def silu(x: torch.Tensor) -> torch.Tensor:
    """F.silu."""
    return F.silu(x)


def swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor,
           ) -> torch.Tensor:
    """(silu(x W1) * (x W3)) W2 from F.linear and F.silu; W1, W3 (C, F), W2 (F, C)."""
    return F.linear(F.silu(F.linear(x, w1.T)) * F.linear(x, w3.T), w2.T)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           ) -> torch.Tensor:
    """F.linear(x, W^T, b) = x W + b for W stored (C_in, C_out)."""
    return F.linear(x, weight.T, bias)


def embedding(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """F.embedding (the functional form of nn.Embedding): rows of table (V, C) at ids (...)."""
    return F.embedding(ids.long(), table)
