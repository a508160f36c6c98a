"""Gradient clipping by global norm, as ``torch.nn.utils.clip_grad_norm_``.

Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks" (ICML,
arXiv:1211.5063), Algorithm 1, with torch's constants. For gradients g_1 … g_k and norm type q:

    n_i = ‖g_i‖_q                                  each array's own norm
    N   = ‖(n_1, …, n_k)‖_q                        the norm of all of them as one vector
    s   = min(max_norm / (N + 1e-6), 1)            1e-6 keeps N = 0 finite; s never exceeds 1
    g_i ← s g_i                                     in place, even when s = 1 (as torch)

q = inf takes maxima instead (n_i = max |g_i|, N = max n_i). N is returned, in the gradients'
dtype, as torch returns its total norm; with ``error_if_nonfinite`` a NaN or infinite N is an
error raised before any gradient changes.
"""
from __future__ import annotations

import math

import numpy as np

from ref_numpy._check import check_float
from ref_numpy.optimizer import check_flag, check_number


def _norm(a: np.ndarray, q: float):
    """‖a‖_q of a flattened array in its own dtype (q = inf: the largest magnitude)."""
    if q == math.inf:
        return np.max(np.abs(a)) if a.size else a.dtype.type(0)
    if q == 2.0:
        return np.sqrt(np.dot(a, a))
    return np.sum(np.abs(a) ** q) ** (1.0 / q)


def clip_grad_norm_(grads, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False):
    """Scale ``grads`` in place so that their global ``norm_type`` norm is at most ``max_norm``.

    Args:
        grads: a list of float arrays of one dtype (``None`` entries are skipped, as torch skips
            parameters without a gradient), or one array.
        max_norm: the largest global norm kept, >= 0.
        norm_type: q > 0, or ``float("inf")``.
        error_if_nonfinite: raise ValueError, leaving the gradients as they were, when the
            global norm is NaN or infinite.
    Returns:
        the global norm before clipping, a NumPy scalar of the gradients' dtype.

    >>> g = [np.array([3.0]), np.array([4.0])]
    >>> float(clip_grad_norm_(g, 1.0)), [float(x[0]) for x in g]
    (5.0, [0.599999880000024, 0.799999840000032])
    """
    if isinstance(grads, np.ndarray):
        grads = [grads]
    if not isinstance(grads, (list, tuple)):
        raise TypeError(f"grads: expected a list of arrays but got {type(grads).__name__}")
    max_norm = check_number("max_norm", max_norm)
    q = float(norm_type) if isinstance(norm_type, (int, float)) else norm_type
    if isinstance(q, bool) or not isinstance(q, float) or not q > 0:
        raise ValueError(f"norm_type: expected a number > 0 or inf but got {norm_type!r}")
    error_if_nonfinite = check_flag("error_if_nonfinite", error_if_nonfinite)
    present = [(i, g) for i, g in enumerate(grads) if g is not None]
    for i, g in present:
        check_float(f"grads[{i}]", g, allow_nan=True)
        if g.dtype != present[0][1].dtype:
            raise TypeError(f"grads[{i}]: expected dtype {present[0][1].dtype} (the dtype of "
                            f"grads[{present[0][0]}]) but got {g.dtype}")
    if not present:
        return np.float32(0.0)                       # torch: tensor(0.) for no gradients
    dtype = present[0][1].dtype
    # n_i = ‖g_i‖_q
    norms = np.array([_norm(g.reshape(-1), q) for _, g in present], dtype=dtype)
    # N = ‖(n_1, …, n_k)‖_q
    total = dtype.type(_norm(norms, q))
    if error_if_nonfinite and not np.isfinite(total):
        raise ValueError(f"grads: the total norm of order {q} is {float(total)}, so it cannot "
                         f"be clipped; pass error_if_nonfinite=False to scale by it anyway")
    # s = min(max_norm / (N + 1e-6), 1)   (torch forms (1 / (N + 1e-6)) · max_norm)
    coef = np.minimum(np.reciprocal(total + dtype.type(1e-6)) * dtype.type(max_norm),
                      dtype.type(1.0))
    with np.errstate(invalid="ignore"):               # inf · 0 = NaN, as in torch
        for _, g in present:
            # g_i ← s g_i
            g *= coef
    return total
