"""``crosscheck bench optim``: one AdamW step, NumPy against torch.optim.AdamW, and its state.

The parameters are ``--params`` (default 50,000,000) float32 values in ``--arrays`` (default 100)
arrays: nine in ten are matrices of odd shapes, the rest vectors (norm gains, biases). Each timed
call is one step on fixed gradients (lr 1e-3, weight decay 0.01), measured by the shared layer
(``equivalence.bench.common``): the NumPy side in one fresh child, the torch sides in another,
the same thread setting for both, warm-up, repeats, median with min and max.

- ``ref_numpy.optim.AdamW`` against ``torch.optim.AdamW(foreach=True)``, torch's fastest CPU path
  (one op over every tensor at a time): the headline, target <= 1.5;
- and against torch's CPU default (``foreach=None``, the per-tensor loop).

The ``state`` table gives the bytes of optimizer state each side holds after a step (moments and
step counts; NumPy's scratch blocks are listed on their own), counted in this process after the
timings. Quick smoke run: ``crosscheck bench optim --params 20000 --arrays 10 --min-time 0``.
"""
from __future__ import annotations

import argparse

import numpy as np

from equivalence.bench.common import (Side, add_timing_arguments, check_timing_arguments,
                                      measure, ratio_row, thread_settings, timing_row)

HERE = "equivalence.bench.optim"
FOREACH_TARGET = 1.5        # NumPy / torch.optim.AdamW(foreach=True)
HYPER = {"lr": 1e-3, "weight_decay": 0.01}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=int, default=50_000_000,
                        help="float32 parameters in all (default 50000000)")
    parser.add_argument("--arrays", type=int, default=100,
                        help="arrays they are split into (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    add_timing_arguments(parser)


def shapes(n_params: int, n_arrays: int) -> list[tuple[int, ...]]:
    """About ``n_params`` values in ``n_arrays`` arrays: vectors of up to 1021 values (one array
    in ten), the rest matrices of 1021 columns or fewer, with rows varying by array.

    >>> s = shapes(20000, 10)
    >>> len(s), s[:3], s[-1]
    (10, [(1, 1021), (2, 1021), (3, 1021)], (40,))
    """
    n_vec = n_arrays // 10
    n_mat = n_arrays - n_vec
    vec = min(1021, max(1, n_params // n_arrays // 50))
    per = max(1, (n_params - n_vec * vec) // max(n_mat, 1))
    cols = min(1021, per)
    rows = max(1, per // cols)
    return [(max(1, rows + k % 3 - 1), cols) for k in range(n_mat)] + [(vec,)] * n_vec


def _arrays(shape_list, seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s, dtype=np.float32) for s in shape_list]
    grads = [rng.standard_normal(s, dtype=np.float32) for s in shape_list]
    return params, grads


# ----------------------------------------------------------------------------- builders
# Each runs in a bench child: it makes the inputs and returns the callable that is timed.

def numpy_adamw(shape_list, seed):
    from ref_numpy import optim
    params, grads = _arrays([tuple(s) for s in shape_list], seed)
    opt = optim.AdamW(params, **HYPER)
    return lambda: opt.step(grads)


def torch_adamw(shape_list, seed, foreach):
    import torch
    params, grads = _arrays([tuple(s) for s in shape_list], seed)
    tensors = [torch.from_numpy(p) for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g)
    opt = torch.optim.AdamW(tensors, foreach=foreach, **HYPER)
    return opt.step


# ----------------------------------------------------------------------------- state bytes

def state_bytes(shape_list, seed) -> list[dict]:
    """Bytes of optimizer state after one step, ours and torch's (rows of the ``state`` table)."""
    import torch
    from ref_numpy import optim
    params, grads = _arrays(shape_list, seed)
    ours = optim.AdamW(params, **HYPER)
    ours.step(grads)
    moments = sum(v.nbytes for s in ours.state for v in s.values() if isinstance(v, np.ndarray))
    scratch = sum(b.nbytes for bufs in ours._scratch.values() for b in bufs)
    param_bytes = sum(p.nbytes for p in params)
    rows = [{"side": "numpy AdamW", "state bytes": moments + 8 * len(params),
             "state / params": (moments + 8 * len(params)) / param_bytes,
             "note": f"exp_avg, exp_avg_sq; int64 steps; plus {scratch} bytes of scratch blocks"}]
    del ours
    tensors = [torch.from_numpy(p) for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g)
    theirs = torch.optim.AdamW(tensors, foreach=True, **HYPER)
    theirs.step()
    total = sum(v.numel() * v.element_size() for s in theirs.state.values() for v in s.values()
                if torch.is_tensor(v))
    rows.append({"side": "torch AdamW(foreach=True)", "state bytes": total,
                 "state / params": total / param_bytes,
                 "note": "exp_avg, exp_avg_sq; float32 step tensors"})
    return rows


# ----------------------------------------------------------------------------- the bench

def _check(args) -> None:
    check_timing_arguments(args)
    if args.arrays < 1 or args.params < args.arrays:
        raise ValueError(f"--params, --arrays: expected 1 <= arrays <= params but got "
                         f"{args.params} parameters in {args.arrays} arrays")


def run(args) -> dict[str, list[dict]]:
    """Tables ``ratios``, ``timings`` (one row per side) and ``state``."""
    _check(args)
    shape_list = shapes(args.params, args.arrays)
    common = dict(shape_list=[list(s) for s in shape_list], seed=args.seed)
    n = sum(int(np.prod(s)) for s in shape_list)
    ctx = dict(op="AdamW step", params=n, arrays=len(shape_list), dtype="float32")
    timings, ratios = [], []
    for threads in thread_settings(args):
        (ours,) = measure([Side("numpy AdamW", f"{HERE}:numpy_adamw", common)], args, threads)
        foreach, default = measure(
            [Side("torch AdamW(foreach=True)", f"{HERE}:torch_adamw", {**common, "foreach": True}),
             Side("torch AdamW (CPU default, per-tensor)", f"{HERE}:torch_adamw",
                  {**common, "foreach": None})], args, threads)
        timings += [timing_row(t, **ctx) for t in (ours, foreach, default)]
        ratios.append(ratio_row(ours, foreach, "user's pick (headline)", FOREACH_TARGET, **ctx))
        ratios.append(ratio_row(ours, default, "torch's CPU default", **ctx))
    state = [{**ctx, **row} for row in state_bytes(shape_list, args.seed)]
    return {"ratios": ratios, "timings": timings, "state": state}
