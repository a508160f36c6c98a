"""Torch oracles for training numerics: optimizers, schedules, clipping and loss scaling.

Everything here runs torch's own implementation (``torch.optim.AdamW``, ``Adam``, ``SGD``,
``torch.optim.lr_scheduler``, ``torch.nn.utils.clip_grad_norm_``, ``torch.amp.GradScaler("cpu")``)
on tensors, so that a NumPy trajectory is compared with what a torch user gets. torch has no
Lion, so :class:`Lion` writes the paper's Program 1 in torch ops.

Parameter groups are given as an index spec shared with the NumPy side:
``[{"params": [0, 2], "weight_decay": 0.1}, {"params": [1], "weight_decay": 0.0}]`` (``None``:
one group of every parameter). Gradient streams are tensors of shape (steps, *param shape).
"""
from __future__ import annotations

import math

import torch
from torch.optim import lr_scheduler


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
    arXiv:2302.06675, Program 1) in torch ops:

        c ← β1 m + (1 − β1) g;   θ ← θ − γ (sign(c) + λ θ);   m ← β2 m + (1 − β2) g
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m, g = state["exp_avg"], p.grad
                c = m * beta1 + g * (1 - beta1)
                p.mul_(1 - lr * wd)
                p.add_(torch.sign(c), alpha=-lr)
                m.mul_(beta2).add_(g * (1 - beta2))


OPTIMIZERS = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam, "SGD": torch.optim.SGD,
              "Lion": Lion}


def make_optimizer(kind: str, params: list, groups: list[dict] | None = None, **options):
    """torch's optimizer ``kind`` over ``params`` grouped by the index spec ``groups``."""
    spec = params if groups is None else [
        {**{k: v for k, v in g.items() if k != "params"},
         "params": [params[i] for i in g["params"]]} for g in groups]
    return OPTIMIZERS[kind](spec, **options)


def trajectory(kind: str, params: list, grads: list, groups: list[dict] | None = None,
               **options) -> tuple[list, list[dict]]:
    """``len(grads[0])`` steps of torch's ``kind`` from ``params`` (initial values, copied) on
    the gradient streams ``grads``; returns the final parameters and each one's state dict."""
    ps = [p.detach().clone() for p in params]
    opt = make_optimizer(kind, ps, groups, **options)
    for t in range(grads[0].shape[0]):
        for p, g in zip(ps, grads):
            p.grad = g[t].clone()
        opt.step()
    return ps, [opt.state[p] for p in ps]


def scaled_trajectory(kind: str, params: list, grads: list, groups: list[dict] | None = None,
                      scaler_options: dict | None = None, **options) -> dict:
    """The loop of torch.amp's GradScaler on CPU: each step's gradient is ``scaler.scale(g)``,
    then ``scaler.step(opt)`` and ``scaler.update()``.

    Returns the final parameters ``params``, the scale after each update ``scale`` (steps,),
    whether each step was skipped ``skipped`` (steps,), the growth tracker after each update
    ``tracker`` (steps,) and the scaler's ``state_dict``.
    """
    ps = [p.detach().clone() for p in params]
    opt = make_optimizer(kind, ps, groups, **options)
    scaler = torch.amp.GradScaler("cpu", **(scaler_options or {}))
    taken = []
    step = opt.step
    opt.step = lambda *a, **k: (taken.append(True), step(*a, **k))[1]
    scales, skipped, tracker = [], [], []
    for t in range(grads[0].shape[0]):
        for p, g in zip(ps, grads):
            p.grad = scaler.scale(g[t].clone())
        before = len(taken)
        scaler.step(opt)
        scaler.update()
        skipped.append(len(taken) == before)
        scales.append(scaler.get_scale())
        tracker.append(scaler.state_dict()["_growth_tracker"])
    return {"params": ps, "scale": torch.tensor(scales, dtype=torch.float64),
            "skipped": torch.tensor(skipped), "tracker": torch.tensor(tracker),
            "state_dict": scaler.state_dict()}


def clip_grad_norm(grads: list, max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False, foreach: bool | None = None):
    """``torch.nn.utils.clip_grad_norm_`` on parameters holding copies of ``grads``; returns
    (total norm, the clipped gradients)."""
    params = [torch.zeros_like(g) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type,
                                           error_if_nonfinite=error_if_nonfinite,
                                           foreach=foreach)
    return total, [p.grad for p in params]


# ----------------------------------------------------------------------------- schedules

def warmup_cosine_lambda(warmup: int, total: int, start_factor: float = 0.0,
                         min_ratio: float = 0.0):
    """The multiplier for ``LambdaLR``: linear warmup, cosine to ``min_ratio``, then flat."""
    def f(t):
        if t < warmup:
            return start_factor + (1 - start_factor) * t / warmup
        if t < total:
            cos = math.cos(math.pi * (t - warmup) / (total - warmup))
            return min_ratio + (1 - min_ratio) * (1 + cos) / 2
        return min_ratio
    return f


def wsd_lambda(warmup: int, total: int, decay: int, start_factor: float = 0.0,
               min_ratio: float = 0.0, shape: str = "linear"):
    """The multiplier for ``LambdaLR``: linear warmup, flat, then a decay over ``decay`` steps."""
    def f(t):
        if t < warmup:
            return start_factor + (1 - start_factor) * t / warmup
        if t < total - decay:
            return 1.0
        if t < total:
            x = (t - (total - decay)) / decay
            return 1 - (1 - min_ratio) * (x if shape == "linear" else math.sqrt(x))
        return min_ratio
    return f


def _one_base_lr(opt, min_ratio: float) -> float:
    base = {g["lr"] for g in opt.param_groups}
    if min_ratio and len(base) > 1:
        raise ValueError("min_ratio: torch's CosineAnnealingLR has one eta_min for every group; "
                         "with a floor above 0 give the groups one base lr")
    return base.pop()


def warmup_cosine_sequential(opt, warmup: int, total: int, start_factor: float,
                             min_ratio: float = 0.0):
    """The same schedule from torch's own schedulers: ``SequentialLR`` of ``LinearLR`` (warmup),
    ``CosineAnnealingLR`` (to the floor) and ``ConstantLR`` (the floor after ``total``)."""
    floor = min_ratio * _one_base_lr(opt, min_ratio)
    parts = [lr_scheduler.LinearLR(opt, start_factor=start_factor, end_factor=1.0,
                                   total_iters=warmup),
             lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=floor),
             lr_scheduler.ConstantLR(opt, factor=min_ratio, total_iters=10 ** 9)]
    return lr_scheduler.SequentialLR(opt, parts, milestones=[warmup, total])


def wsd_sequential(opt, warmup: int, total: int, decay: int, start_factor: float,
                   min_ratio: float = 0.0):
    """Linear warmup-stable-decay from torch's own schedulers: ``SequentialLR`` of ``LinearLR``
    (warmup), ``ConstantLR`` (factor 1) and ``LinearLR`` (1 to ``min_ratio``, then held)."""
    parts = [lr_scheduler.LinearLR(opt, start_factor=start_factor, end_factor=1.0,
                                   total_iters=warmup),
             lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0),
             lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=min_ratio,
                                   total_iters=decay)]
    return lr_scheduler.SequentialLR(opt, parts, milestones=[warmup, total - decay])


def lr_history(base_lrs: list[float], steps: int, make_scheduler) -> torch.Tensor:
    """(steps, groups): each group's lr before each optimizer step, under the scheduler
    ``make_scheduler(optimizer)`` (one group per base lr, SGD, no gradients)."""
    params = [torch.zeros(1, requires_grad=True) for _ in base_lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)])
    sched = make_scheduler(opt)
    rows = []
    for _ in range(steps):
        rows.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return torch.tensor(rows, dtype=torch.float64)
