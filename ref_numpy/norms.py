"""RMSNorm and LayerNorm over the last dimension, with eps placed exactly as in torch.

RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization", arXiv:1910.07467), as
torch.nn.RMSNorm / F.rms_norm:

    r = 1 / sqrt(mean_c x_c^2 + eps)          (eps inside the square root)
    y = x * r * weight

LayerNorm (Ba, Kiros & Hinton 2016, "Layer Normalization", arXiv:1607.06450), as
torch.nn.LayerNorm / F.layer_norm:

    mu = mean_c x_c,   var = mean_c (x_c - mu)^2   (biased: divide by C, not C - 1)
    r  = 1 / sqrt(var + eps)                  (eps inside the square root)
    y  = (x - mu) * r * weight + bias         (bias optional)

eps = 0 is allowed (exact checks use it); a row with nothing to divide by (all zeros for RMSNorm,
constant for LayerNorm) then raises ValueError instead of returning NaN.

Shapes: x (..., C): C is the normalised (last) dimension and (...) any leading dims (B, T, ...);
weight and bias are (C,).
"""
from __future__ import annotations

import numpy as np

from ref_numpy._check import check_cache, check_float, check_same_dtype, check_shape


def _check_inputs(x, weight, bias, eps) -> float:
    """Validate x (..., C), weight (C,), optional bias (C,) and eps >= 0; return eps as a float."""
    check_float("x", x)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected shape (..., C) with C >= 1 but got {x.shape}")
    c = x.shape[-1]
    check_float("weight", weight)
    check_shape("weight", weight, (c,), "(C,)")
    check_same_dtype(x=x, weight=weight)
    if bias is not None:
        check_float("bias", bias)
        check_shape("bias", bias, (c,), "(C,)")
        check_same_dtype(x=x, bias=bias)
    if (isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating))
            or not eps >= 0):
        raise ValueError(f"eps: expected a number >= 0 but got {eps!r}")
    # a Python float keeps float32 arithmetic in float32 (a NumPy float64 scalar would not)
    return float(eps)


def _check_positive(name: str, denom: np.ndarray, what: str, eps: float, hint: str) -> None:
    """With eps = 0 a row whose mean square (variance) is 0 has no normalisation (0 / 0)."""
    if denom.dtype.type(eps) > 0:   # denom = (a mean square or variance, >= 0) + eps >= eps
        return
    if np.any(denom <= 0):
        idx = tuple(int(i) for i in np.argwhere(denom <= 0)[0][:-1])
        raise ValueError(f"{name}: row {idx} has {what} 0 and eps={eps}; expected eps > 0 "
                         f"or {hint}")


def _check_dout(dout, x):
    check_float("dout", dout)
    check_shape("dout", dout, x.shape)
    check_same_dtype(x=x, dout=dout)


def _sum_leading(a: np.ndarray) -> np.ndarray:
    """Sum over every axis but the last: (..., C) -> (C,)."""
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


def rmsnorm_forward(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6,
                    ) -> tuple[np.ndarray, dict]:
    """RMSNorm over the last dim: y = x / sqrt(mean(x^2) + eps) * weight.

    Args:
        x: (..., C) float32 or float64.
        weight: (C,) same dtype.
        eps: added to the mean square inside the square root (torch's placement), >= 0.
            The default 1e-6 is LLaMA's; torch's default (None) means finfo(dtype).eps.
    Returns:
        out: (..., C).
        cache: {"op": "rmsnorm_forward", "xhat": x * r (..., C), "r": 1 / rms (..., 1),
            "weight": (C,)}.
    """
    eps = _check_inputs(x, weight, None, eps)
    ms = np.mean(x * x, axis=-1, keepdims=True)                       # (..., 1)
    _check_positive("x", ms + eps, "mean square", eps, "a row that is not all zeros")
    # r = (mean_c x_c^2 + eps)^(-1/2)
    r = 1.0 / np.sqrt(ms + eps)                                       # (..., 1)
    xhat = x * r
    return xhat * weight, {"op": "rmsnorm_forward", "xhat": xhat, "r": r, "weight": weight}


def rmsnorm_backward(dout: np.ndarray, cache: dict) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of RMSNorm with respect to x and weight.

    Forward: y_j = w_j * xhat_j,  xhat_j = x_j * r,  r = (mean_k x_k^2 + eps)^(-1/2).
    dweight_j = sum over rows of dout_j * xhat_j.
    With g_j = dout_j * w_j (the gradient reaching xhat):
        dr/dx_j = -1/2 (mean x^2 + eps)^(-3/2) * 2 x_j / C = -r^3 x_j / C
        dx_j = sum_i g_i d(x_i r)/dx_j
             = g_j r + sum_i g_i x_i (-r^3 x_j / C)           (term 1, term 2)
             = r * (g_j - xhat_j * mean_i(g_i xhat_i)).

    Args:
        dout: (..., C).
        cache: from :func:`rmsnorm_forward`.
    Returns:
        (dx (..., C), dweight (C,)).
    """
    check_cache(cache, "rmsnorm_forward")
    xhat, r, w = cache["xhat"], cache["r"], cache["weight"]
    _check_dout(dout, xhat)
    g = dout * w                                                      # (..., C)
    dx = r * (g - xhat * np.mean(g * xhat, axis=-1, keepdims=True))
    dweight = _sum_leading(dout * xhat)                               # (C,)
    return dx, dweight


def layernorm_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                      eps: float = 1e-5) -> tuple[np.ndarray, dict]:
    """LayerNorm over the last dim: y = (x - mean) / sqrt(var + eps) * weight + bias.

    Args:
        x: (..., C) float32 or float64.
        weight: (C,) same dtype.
        bias: (C,) same dtype, or None for no bias (torch's nn.LayerNorm(bias=False)).
        eps: added to the biased variance inside the square root (torch's placement), >= 0.
    Returns:
        out: (..., C).
        cache: {"op": "layernorm_forward", "xhat": (x - mu) * r (..., C), "r": (..., 1),
            "weight": (C,), "has_bias": bool}.
    """
    eps = _check_inputs(x, weight, bias, eps)
    mu = np.mean(x, axis=-1, keepdims=True)                           # (..., 1)
    xc = x - mu
    var = np.mean(xc * xc, axis=-1, keepdims=True)                    # (..., 1)
    _check_positive("x", var + eps, "variance", eps, "a row that is not constant")
    # r = (var + eps)^(-1/2), var the biased variance (divide by C)
    r = 1.0 / np.sqrt(var + eps)                                      # (..., 1)
    xhat = xc * r
    out = xhat * weight
    if bias is not None:
        out = out + bias
    return out, {"op": "layernorm_forward", "xhat": xhat, "r": r, "weight": weight,
                 "has_bias": bias is not None}


def layernorm_backward(dout: np.ndarray, cache: dict,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of LayerNorm with respect to x, weight and bias.

    Forward: y_j = w_j xhat_j + b_j,  xhat_j = (x_j - mu) r,  r = (var + eps)^(-1/2).
    dweight_j = sum over rows of dout_j xhat_j;  dbias_j = sum over rows of dout_j.
    With g_j = dout_j w_j and the row derivatives
        dmu/dx_j = 1/C,   dvar/dx_j = 2 (x_j - mu) / C,   dr/dx_j = -r^3 (x_j - mu) / C:
        dx_j = sum_i g_i d((x_i - mu) r)/dx_j
             = r g_j  -  r mean_i g_i  -  r xhat_j mean_i(g_i xhat_i)    (terms 1, 2, 3)
             = r * (g_j - mean_i g_i - xhat_j * mean_i(g_i xhat_i)).

    Args:
        dout: (..., C).
        cache: from :func:`layernorm_forward`.
    Returns:
        (dx (..., C), dweight (C,), dbias (C,) or None when the forward had no bias).
    """
    check_cache(cache, "layernorm_forward")
    xhat, r, w = cache["xhat"], cache["r"], cache["weight"]
    _check_dout(dout, xhat)
    g = dout * w                                                      # (..., C)
    dx = r * (g - np.mean(g, axis=-1, keepdims=True)
              - xhat * np.mean(g * xhat, axis=-1, keepdims=True))
    dweight = _sum_leading(dout * xhat)                               # (C,)
    dbias = _sum_leading(dout) if cache["has_bias"] else None         # (C,)
    return dx, dweight, dbias
