"""Run a torch function under autograd and return outputs and vector-Jacobian products.

``run_autograd`` is the oracle side of every equivalence check: given ``fn`` (tensors -> dict of
output tensors), NumPy inputs and upstream gradients ``douts``, it returns the outputs and the
gradients of ``sum_k (out_k * dout_k).sum()`` with respect to the chosen inputs.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from torch_bridge.convert import to_numpy, to_torch


def run_autograd(fn: Callable[[dict], dict], inputs: dict[str, np.ndarray],
                 grad_wrt: tuple[str, ...] = (), douts: dict[str, np.ndarray] | None = None,
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Outputs of ``fn(inputs)`` and, when ``douts`` is given, d(sum out*dout)/d(input).

    An input that does not influence the outputs gets a zero gradient (not None).

    >>> out, g = run_autograd(lambda t: {"y": t["x"] ** 2}, {"x": np.array([3.0])}, ("x",),
    ...                       {"y": np.array([1.0])})
    >>> float(out["y"][0]), float(g["x"][0])
    (9.0, 6.0)
    """
    missing = [n for n in grad_wrt if n not in inputs]
    if missing:
        raise ValueError(f"grad_wrt: names {missing} are not among the inputs {sorted(inputs)}")
    tensors = {k: to_torch(v, requires_grad=(k in grad_wrt and douts is not None))
               for k, v in inputs.items()}
    with torch.enable_grad():
        outs = fn(tensors)
        out_np = {k: to_numpy(v) for k, v in outs.items()}
        if douts is None:
            return out_np, None
        total = 0
        for name, d in douts.items():
            if name not in outs:
                raise ValueError(f"douts: output {name!r} is not among {sorted(outs)}")
            if tuple(d.shape) != tuple(outs[name].shape):
                raise ValueError(f"douts[{name!r}]: expected shape {tuple(outs[name].shape)} "
                                 f"but got {tuple(d.shape)}")
            total = total + (outs[name] * to_torch(d, dtype=d.dtype).to(outs[name].dtype)).sum()
        wrt = [tensors[n] for n in grad_wrt]
        if not wrt:
            return out_np, {}
        grads = torch.autograd.grad(total, wrt, allow_unused=True)
    return out_np, {n: (np.zeros_like(inputs[n]) if g is None else to_numpy(g))
                    for n, g in zip(grad_wrt, grads)}
