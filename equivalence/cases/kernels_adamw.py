"""Cases for the fused AdamW step (gpu_cupy.adamw) on OpenCL (PoCL) and CuPy: a trajectory of
many steps over several parameter arrays in three parameter groups, beside ref_numpy.optim.AdamW
and torch.optim.AdamW.

Names:
    adamw_gpu/<variant>/3groups/<steps>steps      param, exp_avg, exp_avg_sq (, max_exp_avg_sq)

Inputs are initial parameters ``p0 … p6`` of odd shapes, one of a single element and one empty,
and their gradient streams ``g0 … g6`` of shape (steps, *shape). The groups differ in lr, weight
decay, betas and eps, so every segment of the flat buffer has its own coefficient row and the
segments cross block boundaries (the buffer is 910 elements, four blocks of 256). The outputs
are the final flat buffers, the arrays end to end in index order: a comparison over the whole
buffer, so that no tensor of a single element decides a float32 bar on one rounding.

Each step of the kernel candidate is one launch over every array; the NumPy candidate steps
ref_numpy.optim.AdamW, the oracle torch.optim.AdamW (torch_bridge.optim.trajectory). Nothing is
differentiated: ``grad_wrt=()``, ``gradcheck=False``. float32 is a fair comparison, for the
reason ``equivalence.cases.optim`` gives: every side performs torch's float32 roundings in
torch's order, up to fused multiply-adds.

``SANITIZE_CASES`` (not registered) are what ``crosscheck sanitize`` runs under Oclgrind: three
steps over a buffer of two blocks with an empty segment, once with amsgrad (every buffer is
touched) and once with maximize, seven tensors compared.
"""
from __future__ import annotations

import numpy as np
import torch

from equivalence.registry import Case, register
from gpu_cupy import adamw as gpu_adamw
from gpu_cupy import runtime
from ref_numpy import optim
from torch_bridge import optim as torch_optim

BACKENDS = ("opencl", "cupy")
SHAPES = ((7, 13), (17, 31), (97,), (1,), (0,), (3, 5, 11), (1, 29))
GROUPS = ({"params": [0, 1], "weight_decay": 0.1},                             # decayed
          {"params": [2, 3, 4], "weight_decay": 0.0, "lr": 3e-3},              # not, own lr
          {"params": [5, 6], "weight_decay": 0.05, "betas": (0.8, 0.95), "eps": 1e-6})
DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}
STEPS = 60


def _inputs(shapes, steps: int):
    def make(rng):
        out = {f"p{i}": rng.standard_normal(s) for i, s in enumerate(shapes)}
        out.update({f"g{i}": rng.standard_normal((steps, *s)) for i, s in enumerate(shapes)})
        return out
    return make


def _segment_options(shapes, groups, options: dict) -> dict:
    """Each hyper-parameter as one value per array (segment), from the groups and options."""
    base = {**DEFAULTS, **{k: v for k, v in options.items() if k in DEFAULTS}}
    per = {k: [None] * len(shapes) for k in DEFAULTS}
    for g in groups:
        for i in g["params"]:
            for k in DEFAULTS:
                per[k][i] = g.get(k, base[k])
    return per


def _flat_state(states: list, names) -> dict:
    """The state buffers of every array, end to end in index order."""
    return {b: gpu_adamw.flatten([s[b] for s in states])[0] for b in names}


def _cupy_asarray():
    import cupy
    return cupy.asarray


def _buffers(amsgrad: bool) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())


def make_trajectory_case(variant: str, shapes=SHAPES, groups=GROUPS, steps: int = STEPS,
                         dtypes=("float64", "float32"), **options) -> Case:
    n = len(shapes)
    amsgrad = bool(options.get("amsgrad", False))
    maximize = bool(options.get("maximize", False))
    per = _segment_options(shapes, groups, options)
    names = _buffers(amsgrad)

    def numpy(i):
        params = [i[f"p{k}"].copy() for k in range(n)]
        opt = optim.AdamW([{**{k: v for k, v in g.items() if k != "params"},
                            "params": [params[j] for j in g["params"]]} for g in groups],
                          **options)
        for t in range(steps):
            opt.step([i[f"g{k}"][t] for g in groups for k in g["params"]])
        order = [k for g in groups for k in g["params"]]            # opt.state: group order
        states = [opt.state[order.index(k)] for k in range(n)]
        return {"param": gpu_adamw.flatten(params)[0], **_flat_state(states, names)}, None

    def torch_fn(t):
        ps, states = torch_optim.trajectory("AdamW", [t[f"p{k}"] for k in range(n)],
                                            [t[f"g{k}"] for k in range(n)], list(groups),
                                            **options)
        return {"param": torch.cat([p.reshape(-1) for p in ps]),
                **{b: torch.cat([s[b].reshape(-1) for s in states]) for b in names}}

    def kernel(backend):
        def run(i, d):
            # cupy: the buffers stay on the device for the whole trajectory
            put = _cupy_asarray() if backend == "cupy" else (lambda x: x)
            param, offsets = gpu_adamw.flatten([i[f"p{k}"] for k in range(n)])
            state = {b: put(np.zeros_like(param)) for b in names}
            param, offsets = put(param), put(offsets)
            for t in range(steps):
                grad = put(gpu_adamw.flatten([i[f"g{k}"][t] for k in range(n)])[0])
                gpu_adamw.adamw_step(param, grad, state["exp_avg"], state["exp_avg_sq"],
                                     offsets, t + 1, lr=per["lr"], betas=per["betas"],
                                     eps=per["eps"], weight_decay=per["weight_decay"],
                                     max_exp_avg_sq=state.get("max_exp_avg_sq"),
                                     maximize=maximize, backend=backend)
            return ({"param": runtime.to_host(param),
                     **{b: runtime.to_host(x) for b, x in state.items()}}, None)
        return run

    return Case(name=f"adamw_gpu/{variant}/{len(groups)}groups/{steps}steps",
                inputs=_inputs(shapes, steps), forward=numpy, backward=lambda d, c: {},
                torch=torch_fn, grad_wrt=(), backends={b: kernel(b) for b in BACKENDS},
                gradcheck=False, dtypes=dtypes)


register(make_trajectory_case("adamw", lr=1e-2))
register(make_trajectory_case("adamw-amsgrad", lr=1e-2, amsgrad=True))
# betas (0.4, 0.9) in the first two groups: 1 - beta1 = 0.6 takes lerp's second branch.
register(make_trajectory_case("adamw-maximize-beta1=0.4", lr=1e-2, betas=(0.4, 0.9),
                              maximize=True))


# ----------------------------------------------------------------------------- sanitizer cases

def make_sanitize_case(shapes, groups, steps: int) -> Case:
    """Two trajectories from the same inputs in one case: one with amsgrad (every buffer is
    touched), one with maximize and beta1 = 0.4 (lerp's second branch); seven tensors compared,
    each named by its trajectory ("amsgrad param", "maximize exp_avg", ...)."""
    parts = {"amsgrad": make_trajectory_case("amsgrad", shapes, groups, steps, lr=1e-2,
                                             amsgrad=True),
             "maximize": make_trajectory_case("maximize", shapes, groups, steps, lr=1e-2,
                                              betas=(0.4, 0.9), maximize=True)}

    def merged(run):
        return {f"{label} {name}": x for label, part in parts.items()
                for name, x in run(part).items()}

    def kernel(backend):
        return lambda i, d: (merged(lambda part: part.backends[backend](i, d)[0]), None)

    return Case(name=f"adamw_gpu/sanitize-amsgrad+maximize/{len(groups)}groups/{steps}steps",
                inputs=_inputs(shapes, steps),
                forward=lambda i: (merged(lambda part: part.forward(i)[0]), None),
                backward=lambda d, c: {}, torch=lambda t: merged(lambda part: part.torch(t)),
                grad_wrt=(), backends={b: kernel(b) for b in BACKENDS}, gradcheck=False)


# Two blocks (300 elements, the second ragged), an empty segment between two others.
SANITIZE_CASES = [make_sanitize_case(
    shapes=((5, 7), (0,), (1,), (3, 88)),
    groups=({"params": [0, 1], "weight_decay": 0.1}, {"params": [2, 3], "lr": 3e-3}), steps=3)]
