"""SwiGLU feed-forward: out = (silu(x W1) * (x W3)) W2.

Shazeer 2020, "GLU Variants Improve Transformer" (arXiv:2002.05202), eq. for FFN_SwiGLU with the
biases dropped as in LLaMA: a gate branch x W1 through SiLU, multiplied elementwise by a linear
branch x W3, projected back by W2.

    a = x W1,   b = x W3,   h = silu(a) * b,   out = h W2

Shapes: x (..., C) with (...) any leading dims (B, T); W1, W3 (C, F); W2 (F, C); C the model
width and F the hidden width. Weights are stored (in, out) so that every product reads x W.
"""
from __future__ import annotations

import numpy as np

from ref_numpy import activations
from ref_numpy._check import check_cache, check_float, check_same_dtype, check_shape
from ref_numpy.linear import rows_matmul


def swiglu_forward(x: np.ndarray, w1: np.ndarray, w3: np.ndarray, w2: np.ndarray,
                   ) -> tuple[np.ndarray, dict]:
    """SwiGLU feed-forward: out = (silu(x W1) * (x W3)) W2.

    Args:
        x: (..., C) float32 or float64.
        w1: (C, F) gate weight, same dtype.
        w3: (C, F) up weight, same dtype.
        w2: (F, C) down weight, same dtype.
    Returns:
        out: (..., C).
        cache: {"op": "swiglu_forward", "x", "w1", "w3", "w2", "b": x W3 (..., F),
            "s": silu(x W1) (..., F), "h": (..., F), "silu": the cache of silu_forward(x W1)}.
    """
    check_float("x", x)
    if x.ndim < 1:
        raise ValueError(f"x: expected shape (..., C) but got {x.shape}")
    c = x.shape[-1]
    for name, w in (("w1", w1), ("w3", w3), ("w2", w2)):
        check_float(name, w, ndim=2)
    f = w1.shape[1]
    check_shape("w1", w1, (c, None), "(C, F)")
    check_shape("w3", w3, (c, f), "(C, F)")
    check_shape("w2", w2, (f, c), "(F, C)")
    check_same_dtype(x=x, w1=w1, w3=w3, w2=w2)
    a = rows_matmul(x, w1)                                            # (..., F)
    b = rows_matmul(x, w3)                                            # (..., F)
    s, silu_cache = activations.silu_forward(a)                      # (..., F)
    h = s * b                                                         # (..., F)
    out = rows_matmul(h, w2)                                          # (..., C)
    cache = {"op": "swiglu_forward", "x": x, "w1": w1, "w3": w3, "w2": w2, "b": b, "s": s,
             "h": h, "silu": silu_cache}
    return out, cache


def swiglu_backward(dout: np.ndarray, cache: dict,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of the SwiGLU feed-forward with respect to x, W1, W3 and W2.

    Forward: a = x W1, b = x W3, s = silu(a), h = s * b, out = h W2.
    Back through each line, last first (rows of (...) flattened into one dim M for the weights):
        dW2 = h^T dout                      dh = dout W2^T
        ds  = dh * b                        db = dh * s
        da  = ds * silu'(a)                 (silu'(a) = sig(a) (1 + a (1 - sig(a))))
        dW1 = x^T da,   dW3 = x^T db,       dx = da W1^T + db W3^T  (x feeds both branches).

    Args:
        dout: (..., C).
        cache: from :func:`swiglu_forward`.
    Returns:
        (dx (..., C), dw1 (C, F), dw3 (C, F), dw2 (F, C)).
    """
    check_cache(cache, "swiglu_forward")
    x, w1, w3, w2, b, s, h = (cache[k] for k in ("x", "w1", "w3", "w2", "b", "s", "h"))
    check_float("dout", dout)
    check_shape("dout", dout, x.shape)
    check_same_dtype(x=x, dout=dout)
    c, f = w1.shape
    x2 = x.reshape(-1, c)                                             # (M, C)
    dw2 = h.reshape(-1, f).T @ dout.reshape(-1, c)                    # (F, C)
    dh = rows_matmul(dout, w2.T)                                      # (..., F)
    db = dh * s                                                       # (..., F)
    da = activations.silu_backward(dh * b, cache["silu"])            # (..., F)
    dw1 = x2.T @ da.reshape(-1, f)                                    # (C, F)
    dw3 = x2.T @ db.reshape(-1, f)                                    # (C, F)
    dx = rows_matmul(da, w1.T) + rows_matmul(db, w3.T)                # (..., C)
    return dx, dw1, dw3, dw2
