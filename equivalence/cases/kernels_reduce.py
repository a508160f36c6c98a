"""Cases for the row-reduction kernels on OpenCL (PoCL) and CuPy: softmax, log-softmax and the
online softmax (gpu_cupy.softmax), cross-entropy (gpu_cupy.cross_entropy), RMSNorm and LayerNorm
(gpu_cupy.norms), each beside its NumPy copy and checked against torch autograd.

Names read ``<op>_gpu/<variant>/<shape>``:

- ``softmax_gpu``, ``log_softmax_gpu``: the three-pass kernel (version 1), ``online_softmax_gpu``
  the online one (version 2, beside ``ref_numpy.online_softmax``); ``log_softmax_gpu/online``
  is log-softmax through version 2. ``masked`` inputs have ~1/4 of the entries -inf and two rows
  entirely -inf (zeros, or -inf for log-softmax, and zero gradient).
- ``cross_entropy_gpu/<reduction>``: forward through ``cross_entropy_forward``, forward and
  gradient through the fused kernel (``cross_entropy_fused``); ``ignored`` inputs have ~40 % of
  the targets at ignore_index = -100.
- ``rmsnorm_gpu``, ``layernorm_gpu``: forward, then dx and the weight (and bias) gradients; the
  gradients of the (301, 13) shape are summed in 101 row chunks of 3, the last one of 1 row.

Shapes are odd or prime, with one row, rows longer than a block (N > 256 threads) and GPT-2's
vocabulary of 50257 classes (3 rows). Oracles: ``torch_bridge.oracles`` (F.softmax,
F.log_softmax, F.cross_entropy, F.rms_norm, F.layer_norm) with the fully-masked-row convention
(``oracles.masked_softmax`` and :func:`masked_log_softmax`). float32 baseline: torch in float32.
No finite differences here: the NumPy copies are those the core cases gradcheck.

``make_*_step_case`` build the sanitizer's cases (``equivalence.sanitize``; not registered): one
case per kernel file that runs every kernel of the file in one go, at tiny shapes (``SANITIZE``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from equivalence.registry import Case, register, single
from gpu_cupy import cross_entropy as gpu_ce
from gpu_cupy import norms as gpu_norms
from gpu_cupy import softmax as gpu_softmax
from ref_numpy import cross_entropy, norms, online_softmax, softmax
from torch_bridge import oracles

BACKENDS = ("opencl", "cupy")


def masked_log_softmax(x: torch.Tensor) -> torch.Tensor:
    """F.log_softmax over the last axis with the fully-masked-row convention: such a row gives
    -inf and zero gradient (torch alone gives NaN); every other row is plain F.log_softmax."""
    dead = torch.isneginf(x).all(dim=-1, keepdim=True)
    z = F.log_softmax(torch.where(dead, torch.zeros_like(x), x), dim=-1)
    return torch.where(dead, torch.full_like(z, -torch.inf), z)


# ----------------------------------------------------------------------------- inputs

def _rows(shape, *, masked: bool = False):
    """x of ``shape``, 3 standard normals; masked: ~1/4 of the entries -inf (the first of each
    row kept) and the second and last rows entirely -inf."""
    def make(rng):
        x = 3.0 * rng.standard_normal(shape)
        if masked:
            rows = x.reshape(-1, shape[-1])
            rows[rng.random(rows.shape) < 0.25] = -np.inf
            rows[:, 0] = 3.0 * rng.standard_normal(rows.shape[0])
            rows[[1, -1]] = -np.inf
        return {"x": x}
    return make


def _ce_inputs(N, C, *, ignored: float = 0.0):
    """logits (N, C) and int64 targets (N,), a share ``ignored`` of them -100 (never the
    first)."""
    def make(rng):
        targets = rng.integers(0, C, size=N)
        targets[rng.random(N) < ignored] = -100
        targets[0] = rng.integers(0, C)
        return {"logits": 2.0 * rng.standard_normal((N, C)), "targets": targets}
    return make


def _norm_inputs(shape, *, bias: bool = False):
    def make(rng):
        C = shape[-1]
        out = {"x": 2.0 * rng.standard_normal(shape) + 0.5,
               "weight": 1.0 + 0.3 * rng.standard_normal(C)}
        if bias:
            out["bias"] = rng.standard_normal(C)
        return out
    return make


def _name(shape) -> str:
    return str(tuple(shape))


# ----------------------------------------------------------------------------- softmax

def make_softmax_case(shape, *, log: bool = False, version: int = 1,
                      masked: bool = False) -> Case:
    """softmax or log-softmax of x (..., N) over the last axis through kernel ``version``."""
    if log:
        ref_forward, ref_backward = softmax.log_softmax_forward, softmax.log_softmax_backward
        oracle = masked_log_softmax
        gpu_forward = gpu_softmax.log_softmax_forward
        gpu_backward = gpu_softmax.log_softmax_backward
    else:
        online = version == 2
        ref_forward = online_softmax.online_softmax_forward if online else softmax.softmax_forward
        ref_backward = (online_softmax.online_softmax_backward if online
                        else softmax.softmax_backward)
        oracle = oracles.masked_softmax
        gpu_forward, gpu_backward = gpu_softmax.softmax_forward, gpu_softmax.softmax_backward

    def kernel(backend):
        def run(i, d):
            y = gpu_forward(i["x"], version=version, backend=backend)
            if d is None:
                return {"out": y}, None
            return {"out": y}, {"x": gpu_backward(d["out"], y, backend=backend)}
        return run

    if log:
        family = "log_softmax_gpu" + ("/online" if version == 2 else "")
    else:
        family = "online_softmax_gpu" if version == 2 else "softmax_gpu"
    return Case(
        name=f"{family}/{'masked/' if masked else ''}{_name(shape)}",
        inputs=_rows(shape, masked=masked),
        forward=lambda i: single(ref_forward(i["x"])),
        backward=lambda d, c: {"x": ref_backward(d["out"], c)},
        torch=lambda t: {"out": oracle(t["x"])}, grad_wrt=("x",),
        backends={b: kernel(b) for b in BACKENDS}, gradcheck=False)


def make_softmax_step_case(shape) -> Case:
    """Every kernel of softmax.cu on one masked x: softmax and log-softmax through versions 1
    and 2 (four outputs), and dx of both backward kernels summed (upstream gradients for the
    version-1 outputs)."""
    def forward(i):
        y, cy = softmax.softmax_forward(i["x"])
        z, cz = softmax.log_softmax_forward(i["x"])
        y2, _ = online_softmax.online_softmax_forward(i["x"])
        return {"softmax": y, "log_softmax": z, "online_softmax": y2,
                "online_log_softmax": z}, (cy, cz)

    def backward(d, caches):
        return {"x": softmax.softmax_backward(d["softmax"], caches[0])
                + softmax.log_softmax_backward(d["log_softmax"], caches[1])}

    def torch_fn(t):
        y, z = oracles.masked_softmax(t["x"]), masked_log_softmax(t["x"])
        return {"softmax": y, "log_softmax": z, "online_softmax": y, "online_log_softmax": z}

    def kernel(backend):
        def run(i, d):
            k = gpu_softmax
            outs = {"softmax": k.softmax_forward(i["x"], backend=backend),
                    "log_softmax": k.log_softmax_forward(i["x"], backend=backend),
                    "online_softmax": k.softmax_forward(i["x"], version=2, backend=backend),
                    "online_log_softmax": k.log_softmax_forward(i["x"], version=2,
                                                                backend=backend)}
            if d is None:
                return outs, None
            return outs, {"x": k.softmax_backward(d["softmax"], outs["softmax"], backend=backend)
                          + k.log_softmax_backward(d["log_softmax"], outs["log_softmax"],
                                                   backend=backend)}
        return run

    return Case(name=f"softmax_gpu/step/{_name(shape)}", inputs=_rows(shape, masked=True),
                forward=forward, backward=backward, torch=torch_fn, grad_wrt=("x",),
                dout_for=("softmax", "log_softmax"), backends={b: kernel(b) for b in BACKENDS},
                gradcheck=False)


# ----------------------------------------------------------------------------- cross-entropy

def _gpu_targets(i) -> np.ndarray:
    return i["targets"].astype(np.int32)


def make_cross_entropy_case(N: int, C: int, reduction: str, *, ignored: float = 0.0) -> Case:
    """Cross-entropy of (N, C) logits: the forward kernel, and the fused one for the gradient."""
    def kernel(backend):
        def run(i, d):
            t = _gpu_targets(i)
            if d is None:
                return {"loss": gpu_ce.cross_entropy_forward(i["logits"], t, reduction=reduction,
                                                             backend=backend)}, None
            loss, dlogits = gpu_ce.cross_entropy_fused(i["logits"], t, d["loss"],
                                                       reduction=reduction, backend=backend)
            return {"loss": loss}, {"logits": dlogits}
        return run

    return Case(
        name=f"cross_entropy_gpu/{reduction}/{'ignored/' if ignored else ''}{_name((N, C))}",
        inputs=_ce_inputs(N, C, ignored=ignored),
        forward=lambda i: single(cross_entropy.cross_entropy_forward(
            i["logits"], i["targets"], reduction=reduction), "loss"),
        backward=lambda d, c: {"logits": cross_entropy.cross_entropy_backward(d["loss"], c)},
        torch=lambda t: {"loss": oracles.cross_entropy(t["logits"], t["targets"],
                                                       reduction=reduction)},
        grad_wrt=("logits",), backends={b: kernel(b) for b in BACKENDS}, gradcheck=False)


_STEP_REDUCTIONS = ("mean", "sum", "none")


def make_cross_entropy_step_case(N: int, C: int) -> Case:
    """Every kernel of cross_entropy.cu on one input with ignored targets: the fused kernel for
    each reduction (outputs ``mean``, ``sum``, ``none`` with upstream gradients; dlogits summed)
    and the forward kernel alone (``forward mean``, ``forward none``)."""
    def forward(i):
        runs = {r: cross_entropy.cross_entropy_forward(i["logits"], i["targets"], reduction=r)
                for r in _STEP_REDUCTIONS}
        outs = {r: loss for r, (loss, _) in runs.items()}
        return {**outs, "forward mean": outs["mean"], "forward none": outs["none"]}, \
            {r: cache for r, (_, cache) in runs.items()}

    def backward(d, caches):
        return {"logits": sum(cross_entropy.cross_entropy_backward(d[r], caches[r])
                              for r in _STEP_REDUCTIONS)}

    def torch_fn(t):
        outs = {r: oracles.cross_entropy(t["logits"], t["targets"], reduction=r)
                for r in _STEP_REDUCTIONS}
        return {**outs, "forward mean": outs["mean"], "forward none": outs["none"]}

    def kernel(backend):
        def run(i, d):
            t = _gpu_targets(i)
            forward = {r: gpu_ce.cross_entropy_forward(i["logits"], t, reduction=r,
                                                       backend=backend)
                       for r in _STEP_REDUCTIONS}
            outs = {"forward mean": forward["mean"], "forward none": forward["none"]}
            if d is None:
                return {**forward, **outs}, None
            dlogits = 0
            for r in _STEP_REDUCTIONS:
                outs[r], g = gpu_ce.cross_entropy_fused(i["logits"], t, d[r], reduction=r,
                                                        backend=backend)
                dlogits = dlogits + g
            return outs, {"logits": dlogits}
        return run

    return Case(name=f"cross_entropy_gpu/step/ignored/{_name((N, C))}",
                inputs=_ce_inputs(N, C, ignored=0.4), forward=forward, backward=backward,
                torch=torch_fn, grad_wrt=("logits",), dout_for=_STEP_REDUCTIONS,
                backends={b: kernel(b) for b in BACKENDS}, gradcheck=False)


# ----------------------------------------------------------------------------- norms

def make_rmsnorm_case(shape, *, dtypes=("float64", "float32")) -> Case:
    """RMSNorm (eps 1e-6) of x (..., C): forward, then dx and dweight."""
    def kernel(backend):
        def run(i, d):
            out, rstd = gpu_norms.rmsnorm_forward(i["x"], i["weight"], eps=1e-6, backend=backend)
            if d is None:
                return {"out": out}, None
            dx, dw = gpu_norms.rmsnorm_backward(d["out"], i["x"], i["weight"], rstd,
                                                backend=backend)
            return {"out": out}, {"x": dx, "weight": dw}
        return run

    return Case(
        name=f"rmsnorm_gpu/{_name(shape)}", inputs=_norm_inputs(shape),
        forward=lambda i: single(norms.rmsnorm_forward(i["x"], i["weight"], eps=1e-6)),
        backward=lambda d, c: dict(zip(("x", "weight"), norms.rmsnorm_backward(d["out"], c))),
        torch=lambda t: {"out": oracles.rmsnorm(t["x"], t["weight"], eps=1e-6)},
        grad_wrt=("x", "weight"), backends={b: kernel(b) for b in BACKENDS}, gradcheck=False,
        dtypes=dtypes)


def make_layernorm_case(shape, *, bias: bool) -> Case:
    """LayerNorm (eps 1e-5) of x (..., C) with or without a bias: forward, then dx, dweight and
    dbias."""
    names = ("x", "weight", "bias") if bias else ("x", "weight")

    def kernel(backend):
        def run(i, d):
            out, mean, rstd = gpu_norms.layernorm_forward(i["x"], i["weight"], i.get("bias"),
                                                          eps=1e-5, backend=backend)
            if d is None:
                return {"out": out}, None
            grads = gpu_norms.layernorm_backward(d["out"], i["x"], i["weight"], mean, rstd,
                                                 has_bias=bias, backend=backend)
            return {"out": out}, dict(zip(names, grads))
        return run

    return Case(
        name=f"layernorm_gpu/{'bias' if bias else 'nobias'}/{_name(shape)}",
        inputs=_norm_inputs(shape, bias=bias),
        forward=lambda i: single(norms.layernorm_forward(i["x"], i["weight"], i.get("bias"),
                                                         eps=1e-5)),
        backward=lambda d, c: dict(zip(names, norms.layernorm_backward(d["out"], c))),
        torch=lambda t: {"out": oracles.layernorm(t["x"], t["weight"], t.get("bias"),
                                                  eps=1e-5)},
        grad_wrt=names, backends={b: kernel(b) for b in BACKENDS}, gradcheck=False)


def make_norms_step_case(shape, rows_per_chunk: int) -> Case:
    """Every kernel of norms.cu on one x (..., C): RMSNorm, LayerNorm with a bias and LayerNorm
    without one (sharing its weight), the gradients summed in chunks of ``rows_per_chunk``
    rows."""
    def inputs(rng):
        C = shape[-1]
        return {"x": 2.0 * rng.standard_normal(shape) + 0.5,
                "rms_weight": 1.0 + 0.3 * rng.standard_normal(C),
                "ln_weight": 1.0 + 0.3 * rng.standard_normal(C), "ln_bias": rng.standard_normal(C)}

    def forward(i):
        rms, c_rms = norms.rmsnorm_forward(i["x"], i["rms_weight"], eps=1e-6)
        ln, c_ln = norms.layernorm_forward(i["x"], i["ln_weight"], i["ln_bias"], eps=1e-5)
        ln0, c_ln0 = norms.layernorm_forward(i["x"], i["ln_weight"], eps=1e-5)
        return {"rmsnorm": rms, "layernorm": ln, "layernorm_nobias": ln0}, (c_rms, c_ln, c_ln0)

    def backward(d, caches):
        dx_r, dw_r = norms.rmsnorm_backward(d["rmsnorm"], caches[0])
        dx_l, dw_l, db_l = norms.layernorm_backward(d["layernorm"], caches[1])
        dx_0, dw_0, _ = norms.layernorm_backward(d["layernorm_nobias"], caches[2])
        return {"x": dx_r + dx_l + dx_0, "rms_weight": dw_r, "ln_weight": dw_l + dw_0,
                "ln_bias": db_l}

    def torch_fn(t):
        return {"rmsnorm": oracles.rmsnorm(t["x"], t["rms_weight"], eps=1e-6),
                "layernorm": oracles.layernorm(t["x"], t["ln_weight"], t["ln_bias"], eps=1e-5),
                "layernorm_nobias": oracles.layernorm(t["x"], t["ln_weight"], eps=1e-5)}

    def kernel(backend):
        def run(i, d):
            k, kw = gpu_norms, {"backend": backend}
            rms, rstd = k.rmsnorm_forward(i["x"], i["rms_weight"], eps=1e-6, **kw)
            ln, mean, rstd_l = k.layernorm_forward(i["x"], i["ln_weight"], i["ln_bias"],
                                                   eps=1e-5, **kw)
            ln0, mean0, rstd_0 = k.layernorm_forward(i["x"], i["ln_weight"], eps=1e-5, **kw)
            outs = {"rmsnorm": rms, "layernorm": ln, "layernorm_nobias": ln0}
            if d is None:
                return outs, None
            kw["rows_per_chunk"] = rows_per_chunk
            dx_r, dw_r = k.rmsnorm_backward(d["rmsnorm"], i["x"], i["rms_weight"], rstd, **kw)
            dx_l, dw_l, db_l = k.layernorm_backward(d["layernorm"], i["x"], i["ln_weight"], mean,
                                                    rstd_l, **kw)
            dx_0, dw_0, _ = k.layernorm_backward(d["layernorm_nobias"], i["x"], i["ln_weight"],
                                                 mean0, rstd_0, has_bias=False, **kw)
            return outs, {"x": dx_r + dx_l + dx_0, "rms_weight": dw_r, "ln_weight": dw_l + dw_0,
                          "ln_bias": db_l}
        return run

    return Case(name=f"norms_gpu/step/{_name(shape)} chunks of {rows_per_chunk}", inputs=inputs,
                forward=forward, backward=backward, torch=torch_fn,
                grad_wrt=("x", "rms_weight", "ln_weight", "ln_bias"),
                backends={b: kernel(b) for b in BACKENDS}, gradcheck=False)


# ----------------------------------------------------------------------------- registry

for _shape in [(1,), (7, 13), (3, 5, 97), (2, 1000)]:
    register(make_softmax_case(_shape))
    register(make_softmax_case(_shape, version=2))
    register(make_softmax_case(_shape, log=True))
for _shape in [(5, 11), (3, 517)]:
    register(make_softmax_case(_shape, masked=True))
    register(make_softmax_case(_shape, version=2, masked=True))
    register(make_softmax_case(_shape, log=True, masked=True))
    register(make_softmax_case(_shape, log=True, version=2, masked=True))

register(make_cross_entropy_case(7, 13, "mean"))
register(make_cross_entropy_case(16, 11, "sum", ignored=0.4))
register(make_cross_entropy_case(5, 7, "none", ignored=0.4))
register(make_cross_entropy_case(1, 97, "mean"))
register(make_cross_entropy_case(4, 300, "mean", ignored=0.3))
register(make_cross_entropy_case(3, 50257, "mean"))
register(make_cross_entropy_case(3, 50257, "none"))

# C = 1 is float64 only, as in the core rmsnorm cases: its exact dx is O(eps / x^2), rounding
# noise in float32.
register(make_rmsnorm_case((1,), dtypes=("float64",)))
for _shape in [(1, 1, 5), (7, 13), (3, 5, 97), (2, 517), (301, 13)]:
    register(make_rmsnorm_case(_shape))
for _shape, _bias in [((7, 13), True), ((3, 5, 97), False), ((2, 1, 6), True), ((2, 517), True),
                      ((301, 13), True)]:
    register(make_layernorm_case(_shape, bias=_bias))

# The sanitizer's cases (equivalence.sanitize runs them under Oclgrind): every kernel of each
# file at shapes small enough for the simulator, rows longer than the 256-thread block and a
# ragged last row chunk (5 rows in chunks of 2) included.
SANITIZE = [make_softmax_step_case((3, 300)), make_cross_entropy_step_case(3, 300),
            make_norms_step_case((5, 300), rows_per_chunk=2)]
