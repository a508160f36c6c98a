"""Cross-entropy from logits with ignored targets, as torch.nn.functional.cross_entropy.

    loss_n = -log_softmax(logits_n)[t_n]       for every position n whose target t_n is not ignored
    mean:  L = sum_n loss_n / (number of non-ignored positions)
    sum:   L = sum_n loss_n
    none:  L_n = loss_n, and 0 at ignored positions

Positions whose target equals ``ignore_index`` (default -100, torch's default, used for padding
and prompt tokens) contribute nothing and are not counted in the mean.

All-ignored batch: with reduction="mean" torch computes 0 / 0 = NaN. Here the mean over no
positions is defined as 0 and its gradient as 0 (nothing was predicted, so nothing is learned);
"sum" gives 0 as in torch.

The log-softmax uses max subtraction (ref_numpy.softmax), so large logits do not overflow.

Shapes: N batch, C classes, and optional extra dims (d...) after the class dim, as torch:
logits (N, C) or (N, C, d1, ...), targets (N,) or (N, d1, ...).
"""
from __future__ import annotations

import numpy as np

from ref_numpy import softmax
from ref_numpy._check import (check_cache, check_float, check_int, check_same_dtype,
                              check_shape)

REDUCTIONS = ("mean", "sum", "none")


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray, *, ignore_index: int = -100,
                          reduction: str = "mean") -> tuple[np.ndarray, dict]:
    """Cross-entropy of ``targets`` under softmax(logits) over the class dim (dim 1).

    L = reduce_n( -log_softmax(logits, dim=1)[n, t_n] ),  ignored positions excluded.

    Args:
        logits: (N, C) or (N, C, d...) float32 or float64; finite (-inf allowed), no NaN.
        targets: (N,) or (N, d...) integer; each in [0, C) or equal to ``ignore_index``.
        ignore_index: target value that marks a position to skip.
        reduction: "mean" (over non-ignored positions; 0 if there are none), "sum" or "none".
    Returns:
        loss: () for "mean"/"sum", (N, d...) for "none"; dtype of logits.
        cache: {"op": "cross_entropy_forward", "logp": (N, C, d...) log-probabilities,
            "targets": (N, d...) with ignored entries replaced by 0, "valid": (N, d...) bool,
            "reduction": str, "n_valid": int}.
    """
    check_float("logits", logits)
    if logits.ndim < 2:
        raise ValueError(f"logits: expected shape (N, C) or (N, C, d...) but got {logits.shape}")
    softmax.check_no_posinf("logits", logits)
    check_int("targets", targets)
    n, c, extra = logits.shape[0], logits.shape[1], logits.shape[2:]
    check_shape("targets", targets, (n, *extra), "(N, d...)" if extra else "(N,)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS} but got {reduction!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"ignore_index: expected an int but got {type(ignore_index).__name__}")
    valid = targets != ignore_index                                  # (N, d...)
    bad = valid & ((targets < 0) | (targets >= c))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"targets: expected class ids in [0, {c}) or ignore_index="
                         f"{ignore_index} but got {int(targets[idx])} at index {idx}")

    logp, _ = softmax.log_softmax_forward(logits, axis=1)            # (N, C, d...)
    # ignored positions point at class 0 so the gather is in range; their loss is zeroed below
    safe_t = np.where(valid, targets, 0)                             # (N, d...)
    picked = np.take_along_axis(logp, safe_t[:, None], axis=1)[:, 0]   # (N, d...)
    # loss_n = -log p[n, t_n] at valid positions, 0 elsewhere
    loss_n = np.where(valid, -picked, 0.0)                           # (N, d...)
    n_valid = int(valid.sum())
    if reduction == "none":
        loss = loss_n
    elif reduction == "sum":
        loss = np.asarray(loss_n.sum(), dtype=logits.dtype)          # ()
    else:
        # mean over non-ignored positions; an all-ignored batch gives 0 (torch: NaN)
        loss = np.asarray(loss_n.sum() / max(n_valid, 1), dtype=logits.dtype)   # ()
    cache = {"op": "cross_entropy_forward", "logp": logp, "targets": safe_t, "valid": valid,
             "reduction": reduction, "n_valid": n_valid}
    return loss, cache


def cross_entropy_backward(dout: np.ndarray, cache: dict) -> np.ndarray:
    """Gradient of the cross-entropy with respect to the logits.

    Per position: loss_n = -z[n, t_n] with z = log_softmax(logits_n), and
        dz_i/dlogits_j = delta_ij - p_j  (p = softmax(logits_n) = exp(z)), so
        dloss_n/dlogits[n, j] = -(delta_{t_n j} - p_j) = p_j - onehot(t_n)_j.
    The reduction weighs position n by
        g_n = dout_n (none),  dout (sum),  dout / n_valid (mean),   and g_n = 0 where ignored
    (for the all-ignored mean g = 0 as well). Closed form:
        dlogits[n, :] = g_n * (p[n, :] - onehot(t_n)).

    Args:
        dout: () for "mean"/"sum", (N, d...) for "none"; dtype of the logits.
        cache: from :func:`cross_entropy_forward`.
    Returns:
        dlogits: (N, C, d...) like the logits.
    """
    check_cache(cache, "cross_entropy_forward")
    logp, t, valid = cache["logp"], cache["targets"], cache["valid"]
    check_float("dout", dout)
    check_shape("dout", dout, valid.shape if cache["reduction"] == "none" else ())
    check_same_dtype(logits=logp, dout=dout)
    if cache["reduction"] == "none":
        g = dout                                                     # (N, d...)
    elif cache["reduction"] == "sum":
        g = np.broadcast_to(dout, valid.shape)                       # (N, d...)
    else:
        g = np.broadcast_to(dout / max(cache["n_valid"], 1), valid.shape)   # (N, d...)
    g = np.where(valid, g, 0.0)
    # p = softmax recomputed as exp(log_softmax) (cheap); onehot(t) has a 1 at each target class
    p = np.exp(logp)                                                 # (N, C, d...)
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, t[:, None], 1.0, axis=1)
    # dlogits = g * (p - onehot(t))
    return (p - onehot) * g[:, None]                                 # (N, C, d...)
