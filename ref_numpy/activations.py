"""Elementwise activations: GELU (erf and tanh forms) and SiLU, as torch's F.gelu and F.silu.

GELU (Hendrycks & Gimpel 2016, "Gaussian Error Linear Units", arXiv:1606.08415):

    exact ("none"): gelu(x) = x * Phi(x),  Phi(x) = 0.5 (1 + erf(x / sqrt(2)))
    "tanh":         gelu(x) ~ 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)

SiLU / Swish (Elfwing, Uchibe & Doya 2017, arXiv:1702.03118; Ramachandran et al. 2017):

    silu(x) = x * sigmoid(x)

Evaluation in floating point (same functions, fewer cancellations):
- Phi is scipy.special.ndtr, which uses erfc in the left tail: 0.5 (1 + erf(-6 / sqrt 2)) is
  1 - 1 = 0 in float32, while ndtr(-6) = 9.9e-10 to full relative precision.
- the tanh form uses the identities 0.5 (1 + tanh u) = sigmoid(2u) and
  1 - tanh(u)^2 = 4 sigmoid(2u) sigmoid(-2u). In float32, tanh(-9.7) rounds to -1 + 6e-8, so
  1 - t^2 leaves only rounding noise (1.2e-7 instead of 1.5e-8) where sigmoid(-2u) keeps every
  digit.
- sigmoid(z) is 1 / (1 + exp(-z)) (:func:`sigmoid`) and sigmoid(-z) is 1 / (1 + exp(z)), each
  a few ulps from the exact value in both tails (exp overflowing to inf gives 1 / inf = 0), in
  four of NumPy's vectorised passes: scipy.special.expit gives the same digits 2.5x slower in
  float32, where it was a quarter of a SwiGLU forward.

Shapes: x (...) any shape; outputs and gradients have the shape of x.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from ref_numpy._check import check_cache, check_float, check_same_dtype, check_shape

GELU_FORMS = ("none", "tanh")   # torch's names for the exact and the tanh-approximate form
_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))
_INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))
_KAPPA = 0.044715               # the cubic coefficient of the tanh form


def _check_dout(dout, x):
    check_float("dout", dout)
    check_shape("dout", dout, x.shape)
    check_same_dtype(x=x, dout=dout)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """sigmoid(z) = 1 / (1 + exp(-z)), a new array of z's dtype.

    Where z is very negative, exp(-z) overflows to inf and the result is 1 / inf = 0, the
    correctly rounded value up to the subnormal range (z < -87 in float32); elsewhere every step
    is rounded once, so the result is within a few ulps of the exact value in both tails.

    >>> sigmoid(np.array([-30.0, 0.0, 30.0]))          # exp(-30) / (1 + exp(-30)) = 9.3576e-14
    array([9.35762297e-14, 5.00000000e-01, 1.00000000e+00])
    """
    return _inv_one_plus_exp_(np.negative(z))


def _inv_one_plus_exp_(w: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(w)) = sigmoid(-w), in place in ``w`` (which it returns)."""
    with np.errstate(over="ignore"):
        np.exp(w, out=w)
    w += 1
    return np.reciprocal(w, out=w)


def gelu_forward(x: np.ndarray, approximate: str = "none") -> tuple[np.ndarray, dict]:
    """GELU, exact (erf) or tanh-approximate, as F.gelu(x, approximate=...).

    "none": y = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
    "tanh": y = 0.5 x (1 + tanh(u)) = x sigmoid(2u),  u = sqrt(2/pi) (x + 0.044715 x^3)

    Args:
        x: (...) float32 or float64.
        approximate: "none" (erf form) or "tanh".
    Returns:
        out: (...) like x.
        cache: {"op": "gelu_forward", "x": x, "approximate": str} -- the backward recomputes
            Phi / sigmoid (cheap).
    """
    check_float("x", x)
    if approximate not in GELU_FORMS:
        raise ValueError(f"approximate: expected one of {GELU_FORMS} but got {approximate!r}")
    if approximate == "none":
        y = x * ndtr(x)
    else:
        # 0.5 (1 + tanh(u)) = sigmoid(2u),  2u = x (2 sqrt(2/pi) + 2 sqrt(2/pi) 0.044715 x^2)
        y = sigmoid(_two_u(x, x * x))
        y *= x
    return y, {"op": "gelu_forward", "x": x, "approximate": approximate}


def gelu_backward(dout: np.ndarray, cache: dict) -> np.ndarray:
    """Gradient of GELU with respect to x.

    erf form: y = x Phi(x), Phi' = phi, phi(x) = exp(-x^2 / 2) / sqrt(2 pi), so
        dy/dx = Phi(x) + x phi(x).
    tanh form: y = 0.5 x (1 + t), t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3),
        du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2),  dt/dx = (1 - t^2) du/dx, so
        dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx.
      With s = sigmoid(2u): 0.5 (1 + t) = s and 1 - t^2 = 4 s (1 - s) = 4 s sigmoid(-2u):
        dy/dx = s + 2 x s sigmoid(-2u) du/dx.
    dx = dout * dy/dx.

    Args:
        dout: (...) like x.
        cache: from :func:`gelu_forward`.
    Returns:
        dx: (...) like x.
    """
    check_cache(cache, "gelu_forward")
    x = cache["x"]
    _check_dout(dout, x)
    if cache["approximate"] == "none":
        dydx = ndtr(x) + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x)
    else:
        x2 = x * x
        z = _two_u(x, x2)                             # 2u
        s = sigmoid(z)                                # sigmoid(2u)
        s_sn = _inv_one_plus_exp_(z)                  # sigmoid(-2u), in z's place
        s_sn *= s
        # dy/dx = s + 2 x s sigmoid(-2u) du/dx,  2 du/dx = 2 sqrt(2/pi) (1 + 3 0.044715 x^2)
        term = x2                                     # in x2's place:
        term *= 6.0 * _SQRT_2_OVER_PI * _KAPPA
        term += 2.0 * _SQRT_2_OVER_PI                 # 2 du/dx
        term *= x
        term *= s_sn                                  # 2 x s sigmoid(-2u) du/dx
        dydx = s
        dydx += term
    dydx *= dout
    return dydx


def _two_u(x: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """2u = x (2 sqrt(2/pi) + 2 sqrt(2/pi) 0.044715 x^2), a new array (x2 = x * x)."""
    z = x2 * (2.0 * _SQRT_2_OVER_PI * _KAPPA)
    z += 2.0 * _SQRT_2_OVER_PI
    z *= x
    return z


def silu_forward(x: np.ndarray) -> tuple[np.ndarray, dict]:
    """SiLU: y = x * sigmoid(x), as F.silu.

    Args:
        x: (...) float32 or float64.
    Returns:
        out: (...) like x.
        cache: {"op": "silu_forward", "x": x, "sig": sigmoid(x)}.
    """
    check_float("x", x)
    sig = sigmoid(x)
    return x * sig, {"op": "silu_forward", "x": x, "sig": sig}


def silu_backward(dout: np.ndarray, cache: dict) -> np.ndarray:
    """Gradient of SiLU with respect to x.

    y = x s,  s = sigmoid(x),  ds/dx = s (1 - s), so
    dy/dx = s + x s (1 - s) = s (1 + x (1 - s)),  and dx = dout * dy/dx.

    Args:
        dout: (...) like x.
        cache: from :func:`silu_forward`.
    Returns:
        dx: (...) like x.
    """
    check_cache(cache, "silu_forward")
    x, sig = cache["x"], cache["sig"]
    _check_dout(dout, x)
    return dout * sig * (1.0 + x * (1.0 - sig))
