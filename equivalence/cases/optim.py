"""Cases for training numerics: optimizer trajectories, schedules, loss scaling, clipping.

A trajectory case's inputs are initial parameters ``p0 … p3`` of odd shapes and their gradient
streams ``g0 … g3`` of shape (steps, *shape), in two parameter groups with their own lr and
weight decay; its outputs are the final parameters and every state buffer (``exp_avg 0``, ...).
The oracle runs torch.optim on tensors made from the same inputs. Nothing is differentiated:
``grad_wrt=()``, ``gradcheck=False``.

float32 is a fair comparison for the trajectories: the NumPy float32 run performs torch's float32
roundings in torch's order (up to torch's fused multiply-adds), so its error against torch in
float64 is of the size of torch float32's own error, which is what the policy bounds. Two
exceptions run in float64 only:

- Lion: sign(c) is discontinuous. Where c ≈ 0 a float32 rounding can flip the sign, and that
  coordinate then moves by 2γ, an error no eps-scaled bar holds (the float32 baseline's
  included), so float32 says nothing there about the implementation.
- Schedules: torch computes them in Python floats (float64); there is no float32 computation.

Every tensor has at least 29 elements: the float32 bar is twice the baseline's largest error,
and for a one-element tensor that compares two single rounding realisations (a coin toss that
exceeds 2x about one time in four); over 29 elements and more the largest error is stable (the
worst case over 20 seeds uses under half of the bar).

Each op is referenced through its module (``optim.AdamW``), so that a test can monkeypatch it and
watch the harness fail.
"""
from __future__ import annotations

from functools import partial

import numpy as np
from torch.optim.lr_scheduler import LambdaLR

from equivalence.registry import Case, register
from ref_numpy import clip_grad, grad_scaler, optim, schedule
from torch_bridge import optim as torch_optim

SHAPES = ((7, 13), (97,), (3, 5, 11), (1, 29))
GROUPS = ({"params": [0, 2], "weight_decay": 0.1},                 # matrices: decayed
          {"params": [1, 3], "weight_decay": 0.0, "lr": 3e-3})     # vectors: not, own lr
STEPS = 100


def _stream_inputs(steps: int, bad: int = 0):
    """p0 … p3 and g0 … g3 (steps, *shape); ``bad`` steps get one inf, -inf or NaN each."""
    def make(rng):
        out = {f"p{i}": rng.standard_normal(s) for i, s in enumerate(SHAPES)}
        out.update({f"g{i}": rng.standard_normal((steps, *s)) for i, s in enumerate(SHAPES)})
        for t in rng.choice(steps, bad, replace=False):
            flat = out[f"g{rng.integers(len(SHAPES))}"][t].reshape(-1)
            flat[rng.integers(flat.size)] = rng.choice([np.inf, -np.inf, np.nan])
        return out
    return make


def _numpy_groups(params: list) -> list[dict]:
    return [{**{k: v for k, v in g.items() if k != "params"},
             "params": [params[i] for i in g["params"]],
             "param_names": [f"p{i}" for i in g["params"]]} for g in GROUPS]


def _numpy_trajectory(kind: str, options: dict, i: dict):
    params = [i[f"p{k}"].copy() for k in range(len(SHAPES))]
    opt = getattr(optim, kind)(_numpy_groups(params), **options)
    for t in range(i["g0"].shape[0]):
        opt.step({f"p{k}": i[f"g{k}"][t] for k in range(len(SHAPES))})
    out = {f"p{k}": p for k, p in enumerate(params)}
    order = [k for g in GROUPS for k in g["params"]]          # opt.state is in group order
    for k, state in zip(order, opt.state):
        out.update({f"{b} {k}": v for b, v in state.items() if b != "step"})
    return out, None


def _torch_trajectory(kind: str, options: dict, t: dict) -> dict:
    params, states = torch_optim.trajectory(
        kind, [t[f"p{k}"] for k in range(len(SHAPES))], [t[f"g{k}"] for k in range(len(SHAPES))],
        list(GROUPS), **options)
    out = {f"p{k}": p for k, p in enumerate(params)}
    for k, state in enumerate(states):
        out.update({f"{b} {k}": v for b, v in state.items() if b != "step"})
    return out


def _trajectory_case(kind: str, variant: str, dtypes=("float64", "float32"), **options):
    register(Case(
        name=f"optim/{variant}/2groups/{STEPS}steps", inputs=_stream_inputs(STEPS),
        forward=partial(_numpy_trajectory, kind, options),
        backward=lambda d, c: {},
        torch=partial(_torch_trajectory, kind, options),
        grad_wrt=(), gradcheck=False, dtypes=dtypes))


_trajectory_case("AdamW", "adamw", lr=1e-2)
_trajectory_case("AdamW", "adamw-amsgrad", lr=1e-2, amsgrad=True)
_trajectory_case("AdamW", "adamw-maximize-beta1=0.4", lr=1e-2, betas=(0.4, 0.9), maximize=True)
_trajectory_case("Adam", "adam-l2", lr=1e-2)
_trajectory_case("SGD", "sgd", lr=1e-2)
_trajectory_case("SGD", "sgd-momentum", lr=1e-2, momentum=0.9)
_trajectory_case("SGD", "sgd-momentum-dampening", lr=1e-2, momentum=0.9, dampening=0.3)
_trajectory_case("SGD", "sgd-nesterov", lr=1e-2, momentum=0.9, nesterov=True)
_trajectory_case("Lion", "lion", dtypes=("float64",), lr=1e-3)


# --- the loss scaler: AdamW under GradScaler on a stream with injected inf and NaN ---------

SCALER = {"init_scale": 2.0 ** 10, "growth_factor": 3.0, "backoff_factor": 0.3,
          "growth_interval": 4}


def _numpy_scaled(i: dict):
    params = [i[f"p{k}"].copy() for k in range(len(SHAPES))]
    opt = optim.AdamW(_numpy_groups(params), lr=1e-2)
    scaler = grad_scaler.GradScaler(**SCALER)
    scales, skipped, tracker = [], [], []
    for t in range(i["g0"].shape[0]):
        grads = {f"p{k}": scaler.scale(i[f"g{k}"][t]) for k in range(len(SHAPES))}
        skipped.append(not scaler.step(opt, grads))
        scaler.update()
        scales.append(scaler.get_scale())
        tracker.append(scaler.state_dict()["_growth_tracker"])
    out = {f"p{k}": p for k, p in enumerate(params)}
    out.update(scale=np.array(scales, dtype=params[0].dtype), skipped=np.array(skipped, int),
               tracker=np.array(tracker))
    return out, None


def _torch_scaled(t: dict) -> dict:
    r = torch_optim.scaled_trajectory(
        "AdamW", [t[f"p{k}"] for k in range(len(SHAPES))], [t[f"g{k}"] for k in range(len(SHAPES))],
        list(GROUPS), scaler_options=SCALER, lr=1e-2)
    out = {f"p{k}": p for k, p in enumerate(r["params"])}
    out.update(scale=r["scale"].to(t["p0"].dtype), skipped=r["skipped"].long(),
               tracker=r["tracker"])
    return out


register(Case(
    name=f"grad_scaler/adamw/inf-nan/{STEPS}steps", inputs=_stream_inputs(STEPS, bad=15),
    forward=_numpy_scaled, backward=lambda d, c: {}, torch=_torch_scaled,
    grad_wrt=(), gradcheck=False))


# --- clipping by global norm --------------------------------------------------------------

def _clip_inputs(scale: float):
    return lambda rng: {f"g{k}": scale * rng.standard_normal(s) for k, s in enumerate(SHAPES)}


def _clip_case(variant: str, max_norm: float, norm_type: float, scale: float):
    def numpy(i):
        grads = [i[f"g{k}"].copy() for k in range(len(SHAPES))]
        total = clip_grad.clip_grad_norm_(grads, max_norm, norm_type)
        return {"total_norm": np.asarray(total), **{f"g{k}": g for k, g in enumerate(grads)}}, None

    def torch_fn(t):
        total, grads = torch_optim.clip_grad_norm([t[f"g{k}"] for k in range(len(SHAPES))],
                                                  max_norm, norm_type)
        return {"total_norm": total, **{f"g{k}": g for k, g in enumerate(grads)}}

    register(Case(name=f"clip_grad_norm/{variant}/max_norm={max_norm:g}",
                  inputs=_clip_inputs(scale), forward=numpy, backward=lambda d, c: {},
                  torch=torch_fn, grad_wrt=(), gradcheck=False))


_clip_case("l2-clipped", 1.0, 2.0, 1.0)
_clip_case("l2-unclipped", 100.0, 2.0, 1.0)
_clip_case("inf-clipped", 0.5, float("inf"), 3.0)


# --- schedules (float64 only: torch computes them in Python floats) -----------------------

def _numpy_lrs(fn, steps: int, i: dict):
    opt = optim.SGD([{"params": [np.zeros(1)], "lr": float(b)} for b in i["base_lrs"]])
    sched = schedule.Scheduler(opt, fn)
    rows = []
    for _ in range(steps):
        rows.append(sched.get_last_lr())
        sched.step()
    return {"lr": np.array(rows)}, None


def _schedule_case(name: str, n_groups: int, steps: int, numpy_fn, torch_scheduler):
    register(Case(
        name=f"schedule/{name}", inputs=lambda rng: {"base_lrs": rng.uniform(1e-4, 1e-2,
                                                                            n_groups)},
        forward=partial(_numpy_lrs, numpy_fn, steps), backward=lambda d, c: {},
        torch=lambda t: {"lr": torch_optim.lr_history(t["base_lrs"].tolist(), steps,
                                                      torch_scheduler)},
        grad_wrt=(), gradcheck=False, dtypes=("float64",)))


_W, _T, _D, _S = 23, 180, 50, 0.01
_schedule_case("warmup-cosine/LambdaLR/2groups", 2, 200,
               partial(schedule.warmup_cosine, warmup=_W, total=_T, start_factor=_S,
                       min_ratio=0.1),
               lambda o: LambdaLR(o, torch_optim.warmup_cosine_lambda(_W, _T, _S, 0.1)))
_schedule_case("warmup-cosine/SequentialLR/1group", 1, 200,
               partial(schedule.warmup_cosine, warmup=_W, total=_T, start_factor=_S,
                       min_ratio=0.1),
               lambda o: torch_optim.warmup_cosine_sequential(o, _W, _T, _S, 0.1))
_schedule_case("wsd-linear/SequentialLR/2groups", 2, 200,
               partial(schedule.wsd, warmup=_W, total=_T, decay=_D, start_factor=_S,
                       min_ratio=0.1),
               lambda o: torch_optim.wsd_sequential(o, _W, _T, _D, _S, 0.1))
_schedule_case("wsd-1-sqrt/LambdaLR/2groups", 2, 200,
               partial(schedule.wsd, warmup=_W, total=_T, decay=_D, start_factor=_S,
                       min_ratio=0.0, shape="1-sqrt"),
               lambda o: LambdaLR(o, torch_optim.wsd_lambda(_W, _T, _D, _S, 0.0, "1-sqrt")))
