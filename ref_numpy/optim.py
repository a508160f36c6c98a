"""Update rules, each as torch.optim computes it: AdamW, Adam, SGD (momentum, Nesterov), Lion.

Every rule below is the update of one parameter θ with gradient g at its step t = 1, 2, ...;
γ is the learning rate and λ the weight decay. The code follows the order of operations of
torch's single-tensor path (torch/optim/adam.py, sgd.py) and writes each fused torch op as the
NumPy operations it performs, so that float64 trajectories agree with torch to rounding
(torch fuses some multiply-adds, which NumPy cannot). Scalars stay Python floats: NumPy then
applies them in the array's dtype, as torch does.

Every operation writes into the parameter, a state buffer or a scratch block (``out=`` and
in-place operators); the step allocates nothing per array. Usage::

    opt = AdamW(decay_groups(named_params, 0.1), lr=3e-4)
    opt.step(grads)                      # one gradient per parameter, in opt.params order
"""
from __future__ import annotations

import numpy as np

from ref_numpy.optimizer import (Optimizer, check_betas, check_flag, check_number, check_real,
                                 decay_groups)

__all__ = ["AdamW", "Adam", "SGD", "Lion", "decay_groups"]


def _signed(g, maximize: bool, out):
    """g, or −g (into ``out``) when maximizing: the rule then ascends."""
    return np.negative(g, out=out) if maximize else g


def _lerp_(m, g, weight: float, tmp) -> None:
    """m ← m + w (g − m) in place, as torch's lerp: for w >= 0.5 it computes g + (w − 1)(g − m)."""
    # d = g − m
    np.subtract(g, m, out=tmp)
    if weight < 0.5:
        # m ← m + w d
        tmp *= weight
        m += tmp
    else:
        # m ← g + (w − 1) d  (w − 1 formed in the array's dtype, exactly)
        tmp *= m.dtype.type(weight) - 1
        np.add(g, tmp, out=m)


def _adam_moments_and_step(p, g, m, v, vmax, c, t1, t2) -> None:
    """The part Adam and AdamW share: moments, bias corrections, the step (Kingma & Ba 2015)."""
    # m ← β1 m + (1 − β1) g
    _lerp_(m, g, c["1-beta1"], t1)
    # v ← β2 v + (1 − β2) g²   (torch's addcmul: β2 v + ((1 − β2) g) g)
    v *= c["beta2"]
    np.multiply(g, c["1-beta2"], out=t1)
    t1 *= g
    v += t1
    if vmax is not None:
        # v_max ← max(v_max, v); the denominator then uses v_max (amsgrad)
        np.maximum(vmax, v, out=vmax)
        v = vmax
    # denom ← √v / √(1 − β2^t) + ε   (ε after the square root and the correction)
    np.sqrt(v, out=t1)
    t1 /= c["bc2_sqrt"]
    t1 += c["eps"]
    # θ ← θ − (γ / (1 − β1^t)) m / denom   (torch's addcdiv: θ + (−step_size m) / denom)
    np.multiply(m, -c["step_size"], out=t2)
    t2 /= t1
    p += t2


class _AdamFamily(Optimizer):
    checks = {"lr": check_number, "betas": check_betas, "eps": check_number,
              "weight_decay": check_number, "amsgrad": check_flag, "maximize": check_flag}
    n_scratch = 3

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize))

    def buffers(self, group):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())

    def coefficients(self, group, step):
        beta1, beta2 = group["betas"]
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        return {"lr": group["lr"], "weight_decay": group["weight_decay"], "eps": group["eps"],
                "1-beta1": 1 - beta1, "beta2": beta2, "1-beta2": 1 - beta2,
                "step_size": group["lr"] / bias_correction1,
                "bc2_sqrt": bias_correction2 ** 0.5, "maximize": group["maximize"]}


class AdamW(_AdamFamily):
    """AdamW: Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization" (ICLR, arXiv:1711.05101),
    Algorithm 2; the moments of Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization"
    (ICLR, arXiv:1412.6980); amsgrad from Reddi, Kale & Kumar 2018, "On the Convergence of Adam
    and Beyond" (ICLR). At step t:

        g ← −g                                     if maximize
        θ ← θ − γ λ θ                              decay first, outside the moments
        m ← β1 m + (1 − β1) g
        v ← β2 v + (1 − β2) g²
        v_max ← max(v_max, v), v ← v_max           if amsgrad (the max of the raw v)
        θ ← θ − γ / (1 − β1^t) · m / (√v / √(1 − β2^t) + ε)

    Defaults as torch's: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)

    def update(self, p, g, buffers, c, created, scratch):
        t1, t2, t3 = scratch
        g = _signed(g, c["maximize"], t3)
        if c["weight_decay"] != 0:
            # θ ← θ (1 − γ λ)   (decoupled: the decay never enters m or v)
            p *= 1 - c["lr"] * c["weight_decay"]
        _adam_moments_and_step(p, g, buffers["exp_avg"], buffers["exp_avg_sq"],
                               buffers.get("max_exp_avg_sq"), c, t1, t2)


class Adam(_AdamFamily):
    """Adam with L2 weight decay coupled into the gradient, as ``torch.optim.Adam``.

    Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization" (ICLR, arXiv:1412.6980),
    Algorithm 1, with torch's L2 term. The only difference from :class:`AdamW` is where λ acts:

        g ← −g                                     if maximize
        g ← g + λ θ                                L2: the decay goes through m and v
        m, v, v_max and θ as in AdamW

    Defaults as torch's: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.
    """

    def update(self, p, g, buffers, c, created, scratch):
        t1, t2, t3 = scratch
        g = _signed(g, c["maximize"], t3)
        if c["weight_decay"] != 0:
            # g ← g + λ θ   (coupled: λ θ is averaged into the moments like any gradient)
            np.multiply(p, c["weight_decay"], out=t1)
            g = np.add(g, t1, out=t3)
        _adam_moments_and_step(p, g, buffers["exp_avg"], buffers["exp_avg_sq"],
                               buffers.get("max_exp_avg_sq"), c, t1, t2)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening and Nesterov, as ``torch.optim.SGD``.

    Momentum of Polyak 1964, "Some methods of speeding up the convergence of iteration methods";
    the Nesterov form of Sutskever, Martens, Dahl & Hinton 2013, "On the importance of
    initialization and momentum in deep learning" (ICML). With momentum μ and dampening τ:

        g ← −g                                     if maximize
        g ← g + λ θ                                L2 weight decay
        b ← g                                      at the first step: b is g, not dampened
        b ← μ b + (1 − τ) g                        at later steps
        g ← g + μ b  if nesterov,  else  g ← b     (only when μ ≠ 0)
        θ ← θ − γ g

    Defaults as torch's: lr 1e-3, momentum 0, dampening 0, weight_decay 0. Nesterov needs
    μ > 0 and τ = 0.
    """
    checks = {"lr": check_number, "momentum": check_number,
              "dampening": check_real,
              "weight_decay": check_number, "nesterov": check_flag, "maximize": check_flag}
    n_scratch = 3

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _check_combination(self, group, prefix):
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{prefix}nesterov: expected momentum > 0 and dampening 0 with "
                             f"nesterov=True but got momentum {group['momentum']} and "
                             f"dampening {group['dampening']}")

    def buffers(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def coefficients(self, group, step):
        return dict(group)

    def update(self, p, g, buffers, c, created, scratch):
        t1, t2, t3 = scratch
        g = _signed(g, c["maximize"], t3)
        if c["weight_decay"] != 0:
            # g ← g + λ θ
            np.multiply(p, c["weight_decay"], out=t1)
            g = np.add(g, t1, out=t3)
        if c["momentum"] != 0:
            b = buffers["momentum_buffer"]
            if "momentum_buffer" in created:
                # b ← g   (the first step, as torch's buffer = grad.clone())
                np.copyto(b, g)
            else:
                # b ← μ b + (1 − τ) g
                b *= c["momentum"]
                np.multiply(g, 1 - c["dampening"], out=t1)
                b += t1
            if c["nesterov"]:
                # g ← g + μ b
                np.multiply(b, c["momentum"], out=t1)
                g = np.add(g, t1, out=t3)
            else:
                # g ← b
                g = b
        # θ ← θ − γ g
        np.multiply(g, -c["lr"], out=t2)
        p += t2


class Lion(Optimizer):
    """Lion, EvoLved Sign Momentum.

    Chen, Liang, Huang, Real, Wang, Pham, Dong, Luong, Hsieh, Lu & Le 2023, "Symbolic Discovery
    of Optimization Algorithms" (NeurIPS, arXiv:2302.06675), Program 1:

        c ← β1 m + (1 − β1) g                      the interpolation that is signed
        θ ← θ − γ λ θ                              decoupled weight decay
        θ ← θ − γ sign(c)                          every coordinate moves by exactly γ (or 0)
        m ← β2 m + (1 − β2) g                      the momentum, with the second beta

    Defaults as the paper's: lr 1e-4, betas (0.9, 0.99), weight_decay 0.
    """
    checks = {"lr": check_number, "betas": check_betas, "weight_decay": check_number}

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    def buffers(self, group):
        return ("exp_avg",)

    def coefficients(self, group, step):
        beta1, beta2 = group["betas"]
        return {"lr": group["lr"], "weight_decay": group["weight_decay"], "beta1": beta1,
                "1-beta1": 1 - beta1, "beta2": beta2, "1-beta2": 1 - beta2}

    def update(self, p, g, buffers, c, created, scratch):
        t1, t2 = scratch
        m = buffers["exp_avg"]
        # c ← β1 m + (1 − β1) g
        np.multiply(m, c["beta1"], out=t1)
        np.multiply(g, c["1-beta1"], out=t2)
        t1 += t2
        if c["weight_decay"] != 0:
            # θ ← θ (1 − γ λ)
            p *= 1 - c["lr"] * c["weight_decay"]
        # θ ← θ − γ sign(c)
        np.sign(t1, out=t1)
        t1 *= c["lr"]
        p -= t1
        # m ← β2 m + (1 − β2) g
        m *= c["beta2"]
        np.multiply(g, c["1-beta2"], out=t2)
        m += t2
