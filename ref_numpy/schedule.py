"""Learning-rate schedules: linear warmup then cosine decay to a floor, and warmup-stable-decay.

A schedule here is a multiplier f(t) of each group's base learning rate, t = 0, 1, ... the number
of :meth:`Scheduler.step` calls so far (``torch.optim.lr_scheduler.LambdaLR``'s convention: the
lr of the optimizer step that follows t scheduler steps is base_lr · f(t)).

Warmup then cosine (Loshchilov & Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm
Restarts", ICLR, arXiv:1608.03983, one cycle without restart; linear warmup as Goyal et al. 2017,
"Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", arXiv:1706.02677), with W warmup
steps, T steps in all, start factor s and floor r:

    f(t) = s + (1 − s) t / W                                    0 <= t < W
    f(t) = r + (1 − r) (1 + cos(π (t − W) / (T − W))) / 2       W <= t < T
    f(t) = r                                                    t >= T

Warmup-stable-decay (Hu et al. 2024, "MiniCPM: Unveiling the Potential of Small Language Models
with Scalable Training Strategies", arXiv:2404.06395; the 1 − sqrt shape of Hägele et al. 2024,
"Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations", arXiv:2405.18392),
with D decay steps at the end, starting at S = T − D:

    f(t) = s + (1 − s) t / W                                    0 <= t < W
    f(t) = 1                                                    W <= t < S
    f(t) = 1 − (1 − r) h((t − S) / D)                           S <= t < T
    f(t) = r                                                    t >= T

with h(x) = x ("linear") or h(x) = √x ("1-sqrt").
"""
from __future__ import annotations

import math

import numpy as np

from ref_numpy._check import check_nonneg_int, check_positive_int
from ref_numpy.optimizer import check_number

WSD_SHAPES = ("linear", "1-sqrt")


def _check_common(warmup, total, start_factor, min_ratio) -> tuple[int, int, float, float]:
    warmup = check_nonneg_int("warmup", warmup)
    total = check_positive_int("total", total)
    if warmup >= total:
        raise ValueError(f"warmup: expected fewer steps than total ({total}) but got {warmup}")
    return (warmup, total, check_number("start_factor", start_factor, high=1.0, high_open=False),
            check_number("min_ratio", min_ratio, high=1.0, high_open=False))


def warmup_cosine(t: int, *, warmup: int, total: int, start_factor: float = 0.0,
                  min_ratio: float = 0.0) -> float:
    """The multiplier f(t) of linear warmup then cosine decay to ``min_ratio`` (see the module).

    >>> [round(warmup_cosine(t, warmup=2, total=6, min_ratio=0.1), 4) for t in range(8)]
    [0.0, 0.5, 1.0, 0.8682, 0.55, 0.2318, 0.1, 0.1]
    """
    t = check_nonneg_int("t", t)
    warmup, total, s, r = _check_common(warmup, total, start_factor, min_ratio)
    if t < warmup:
        # f = s + (1 − s) t / W
        return s + (1 - s) * t / warmup
    if t < total:
        # f = r + (1 − r) (1 + cos(π progress)) / 2
        progress = (t - warmup) / (total - warmup)
        return r + (1 - r) * (1 + math.cos(math.pi * progress)) / 2
    # f = r after the last step
    return r


def wsd(t: int, *, warmup: int, total: int, decay: int, start_factor: float = 0.0,
        min_ratio: float = 0.0, shape: str = "linear") -> float:
    """The multiplier f(t) of warmup-stable-decay with ``decay`` final steps (see the module).

    >>> [wsd(t, warmup=2, total=8, decay=4) for t in range(9)]
    [0.0, 0.5, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    t = check_nonneg_int("t", t)
    warmup, total, s, r = _check_common(warmup, total, start_factor, min_ratio)
    decay = check_positive_int("decay", decay)
    if warmup + decay > total:
        raise ValueError(f"decay: expected at most total - warmup = {total - warmup} steps but "
                         f"got {decay}")
    if shape not in WSD_SHAPES:
        raise ValueError(f"shape: expected one of {WSD_SHAPES} but got {shape!r}")
    start = total - decay
    if t < warmup:
        # f = s + (1 − s) t / W
        return s + (1 - s) * t / warmup
    if t < start:
        # f = 1 while stable
        return 1.0
    if t < total:
        # f = 1 − (1 − r) h(progress)
        progress = (t - start) / decay
        return 1 - (1 - r) * (progress if shape == "linear" else math.sqrt(progress))
    # f = r after the last step
    return r


class Scheduler:
    """Sets every group's ``lr`` to base_lr · f(t), as ``torch.optim.lr_scheduler.LambdaLR``.

    The base learning rates are the groups' ``lr`` when the scheduler is made; the first lr is
    set at once (t = 0), and each :meth:`step` (after the optimizer's step) moves to t + 1.

    >>> from ref_numpy.optim import SGD
    >>> opt = SGD([np.zeros(3)], lr=0.5)
    >>> sched = Scheduler(opt, lambda t: warmup_cosine(t, warmup=2, total=4))
    >>> lrs = []
    >>> for _ in range(4):
    ...     lrs.append(opt.param_groups[0]["lr"]); sched.step()
    >>> lrs
    [0.0, 0.25, 0.5, 0.25]
    """

    def __init__(self, optimizer, fn):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable t -> multiplier but got "
                            f"{type(fn).__name__}")
        self.optimizer = optimizer
        self.fn = fn
        self.base_lrs = [check_number(f"param_groups[{i}].lr", g["lr"])
                         for i, g in enumerate(optimizer.param_groups)]
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        factor = self.fn(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            # lr = base_lr · f(t)
            group["lr"] = base * factor

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"kind": np.array("Scheduler"), "last_step": np.array(self.last_step),
                "base_lrs": np.array(self.base_lrs, dtype=np.float64)}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.prepare_load(arrays)()

    def prepare_load(self, arrays: dict[str, np.ndarray]):
        """Check ``arrays`` and return the function that applies them."""
        expected = {"kind", "last_step", "base_lrs"}
        if set(arrays) != expected:
            key = sorted(expected ^ set(arrays))[0]
            raise ValueError(f"{key}: {'missing from' if key in expected else 'unexpected in'} "
                             f"the state of a Scheduler")
        if arrays["kind"].shape != () or str(arrays["kind"]) != "Scheduler":
            raise ValueError(f"kind: expected 'Scheduler' but got {arrays['kind']!r}")
        last = arrays["last_step"]
        if last.shape != () or last.dtype.kind not in "iu" or int(last) < 0:
            raise ValueError(f"last_step: expected an int >= 0 but got {last!r}")
        n = len(self.optimizer.param_groups)
        base = arrays["base_lrs"]
        if base.shape != (n,) or base.dtype != np.float64:
            raise ValueError(f"base_lrs: expected shape ({n},) float64 (one per parameter group)"
                             f" but got {base.shape} {base.dtype}")
        base_lrs = [check_number(f"base_lrs[{i}]", b) for i, b in enumerate(base.tolist())]

        def apply() -> None:
            self.base_lrs, self.last_step = base_lrs, int(last)
            self._apply()
        return apply
