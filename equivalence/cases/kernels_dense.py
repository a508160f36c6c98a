"""Cases for the dense kernels on OpenCL (PoCL) and CuPy: the activations
(gpu_cupy.elementwise), the embedding (gpu_cupy.embedding), the linear layer's products
(gpu_cupy.gemm) and RoPE (gpu_cupy.rope), each forward and backward beside its NumPy copy.

Names:
    gelu_gpu/<none|tanh>/<shape>, silu_gpu/<shape>, swiglu_gate_gpu/<shape>   out; grads
    embedding_gpu/<ids shape>/V..,C..                                         out; grad table
    linear_gpu/<bias|nobias>/<x shape>-><C_out>[ tiles ...]                   out; grads
    rope_gpu/<half|interleaved>/<variant>/B.._H.._Hkv.._T.._D.._R..           q_rot, k_rot; grads

Shapes are odd or prime, with single rows and single elements; the GEMM shapes cover (1, 1, 1),
ragged tiles in M, N and K ((17, 33) -> 65, (2, 67, 45) -> 77 at the default 64 x 64 x 16 tiles
and at the small 12 x 10 x 5 ones), and the vocabulary projection (128, 96) -> 50257, whose dx
sums over 50257 columns. Embedding ids repeat (the last id is the first one's) and most rows of
the larger tables are never looked up.

Oracles: ``torch_bridge.oracles`` (F.gelu, F.silu, F.linear, F.embedding; F.silu(a) * b for the
gate) and ``torch_bridge.rope``; float32 baseline: those oracles in float32. No finite
differences: the NumPy copies are the ones the ``gelu/``, ``silu/``, ``linear/``, ``embedding/``
and ``rope/`` cases gradcheck.

``SANITIZE_CASES`` (not registered) are what ``crosscheck sanitize`` runs under Oclgrind: four
small cases that chain every kernel of the four files, each with five or more tensors compared.
"""
from __future__ import annotations

import numpy as np
import torch

from equivalence.registry import Case, register, single
from gpu_cupy import elementwise as gpu_ew
from gpu_cupy import embedding as gpu_emb
from gpu_cupy import gemm as gpu_gemm
from gpu_cupy import rope as gpu_rope
from ref_numpy import activations, linear, rope
from torch_bridge import oracles
from torch_bridge import rope as rope_oracle

BACKENDS = ("opencl", "cupy")


def _kernels(make):
    """{"opencl": make("opencl"), "cupy": make("cupy")}."""
    return {b: make(b) for b in BACKENDS}


def _normal(scale=1.0, **shapes):
    return lambda rng: {n: scale * rng.standard_normal(s) for n, s in shapes.items()}


# ----------------------------------------------------------------------------- activations

def make_gelu_case(approximate: str, *shape) -> Case:
    def kernel(backend):
        def run(i, d):
            out = {"out": gpu_ew.gelu_forward(i["x"], approximate, backend=backend)}
            if d is None:
                return out, None
            return out, {"x": gpu_ew.gelu_backward(d["out"], i["x"], approximate,
                                                   backend=backend)}
        return run

    return Case(name=f"gelu_gpu/{approximate}/{shape}", inputs=_normal(3.0, x=shape),
                forward=lambda i: single(activations.gelu_forward(i["x"], approximate)),
                backward=lambda d, c: {"x": activations.gelu_backward(d["out"], c)},
                torch=lambda t: {"out": oracles.gelu(t["x"], approximate)}, grad_wrt=("x",),
                backends=_kernels(kernel), gradcheck=False)


def make_silu_case(*shape) -> Case:
    def kernel(backend):
        def run(i, d):
            out = {"out": gpu_ew.silu_forward(i["x"], backend=backend)}
            if d is None:
                return out, None
            return out, {"x": gpu_ew.silu_backward(d["out"], i["x"], backend=backend)}
        return run

    return Case(name=f"silu_gpu/{shape}", inputs=_normal(3.0, x=shape),
                forward=lambda i: single(activations.silu_forward(i["x"])),
                backward=lambda d, c: {"x": activations.silu_backward(d["out"], c)},
                torch=lambda t: {"out": oracles.silu(t["x"])}, grad_wrt=("x",),
                backends=_kernels(kernel), gradcheck=False)


def gate_forward(i):
    """NumPy: h = silu(a) * b, the cache (silu's cache, silu(a), b)."""
    s, cache = activations.silu_forward(i["a"])
    return {"out": s * i["b"]}, (cache, s, i["b"])


def gate_backward(d, cache):
    """NumPy: da = silu'(a) (dh * b), db = dh * silu(a)."""
    silu_cache, s, b = cache
    return {"a": activations.silu_backward(d["out"] * b, silu_cache), "b": d["out"] * s}


def make_swiglu_gate_case(*shape) -> Case:
    def kernel(backend):
        def run(i, d):
            out = {"out": gpu_ew.swiglu_gate_forward(i["a"], i["b"], backend=backend)}
            if d is None:
                return out, None
            da, db = gpu_ew.swiglu_gate_backward(d["out"], i["a"], i["b"], backend=backend)
            return out, {"a": da, "b": db}
        return run

    return Case(name=f"swiglu_gate_gpu/{shape}", inputs=_normal(3.0, a=shape, b=shape),
                forward=gate_forward, backward=gate_backward,
                torch=lambda t: {"out": oracles.silu(t["a"]) * t["b"]}, grad_wrt=("a", "b"),
                backends=_kernels(kernel), gradcheck=False)


# ----------------------------------------------------------------------------- embedding

def _ids_inputs(ids_shape, V: int, C: int):
    def make(rng):
        ids = rng.integers(0, V, size=ids_shape)
        flat = ids.reshape(-1)
        flat[-1] = flat[0]                   # a repeated id whenever there are two or more
        return {"ids": ids, "table": rng.standard_normal((V, C))}
    return make


def make_embedding_case(ids_shape: tuple, V: int, C: int) -> Case:
    def kernel(backend):
        def run(i, d):
            ids = i["ids"].astype(np.int32)
            out = {"out": gpu_emb.embedding_forward(ids, i["table"], backend=backend)}
            if d is None:
                return out, None
            return out, {"table": gpu_emb.embedding_backward(d["out"], ids, V,
                                                             backend=backend)}
        return run

    return Case(name=f"embedding_gpu/{ids_shape}/V={V},C={C}",
                inputs=_ids_inputs(ids_shape, V, C),
                forward=lambda i: single(linear.embedding_forward(i["ids"], i["table"])),
                backward=lambda d, c: {"table": linear.embedding_backward(d["out"], c)},
                torch=lambda t: {"out": oracles.embedding(t["ids"], t["table"])},
                grad_wrt=("table",), backends=_kernels(kernel), gradcheck=False)


# ----------------------------------------------------------------------------- linear

def _linear_inputs(x_shape, c_out: int, bias: bool):
    def make(rng):
        c_in = x_shape[-1]
        out = {"x": rng.standard_normal(x_shape),
               "weight": rng.standard_normal((c_in, c_out)) / np.sqrt(c_in)}
        if bias:
            out["bias"] = rng.standard_normal(c_out)
        return out
    return make


def make_linear_case(x_shape: tuple, c_out: int, *, bias: bool, tiles=None,
                     dtypes=("float64", "float32")) -> Case:
    names = ("x", "weight", "bias") if bias else ("x", "weight")

    def kernel(backend):
        def run(i, d):
            out = {"out": gpu_gemm.linear_forward(i["x"], i["weight"], i.get("bias"),
                                                  tiles=tiles, backend=backend)}
            if d is None:
                return out, None
            grads = gpu_gemm.linear_backward(d["out"], i["x"], i["weight"], has_bias=bias,
                                             tiles=tiles, backend=backend)
            return out, dict(zip(names, grads))
        return run

    tail = "" if tiles is None else " tiles {}x{}x{}/{}x{}".format(*tiles)
    return Case(name=f"linear_gpu/{'bias' if bias else 'nobias'}/{x_shape}->{c_out}{tail}",
                inputs=_linear_inputs(x_shape, c_out, bias),
                forward=lambda i: single(linear.linear_forward(i["x"], i["weight"],
                                                               i.get("bias"))),
                backward=lambda d, c: dict(zip(names, linear.linear_backward(d["out"], c))),
                torch=lambda t: {"out": oracles.linear(t["x"], t["weight"], t.get("bias"))},
                grad_wrt=names, backends=_kernels(kernel), gradcheck=False, dtypes=dtypes)


# ----------------------------------------------------------------------------- rope

def _position_ids(rng, B: int, T: int, top: int) -> np.ndarray:
    """Sorted ids per row with a repeated one (as left padding gives), row 0 from 0."""
    ids = np.sort(rng.integers(0, top, size=(B, T)), axis=1)
    ids[0] = np.arange(T)
    if T > 1:
        ids[-1, 1] = ids[-1, 0]
    return ids


def _torch_positions(T: int, offset: int, ids):
    return ids if ids is not None else torch.arange(offset, offset + T)


def make_rope_case(variant: str, B: int, H: int, Hkv: int, T: int, D: int, R: int | None = None,
                   *, interleaved: bool = False, offset: int = 0, ids: bool = False,
                   scaling: dict | None = None) -> Case:
    R = D if R is None else R
    conv = "interleaved" if interleaved else "half"
    config = rope.RoPE(D, rotary_dim=R, interleaved=interleaved, scaling=scaling)

    def inputs(rng):
        i = {"q": rng.standard_normal((B, H, T, D)), "k": rng.standard_normal((B, Hkv, T, D))}
        if ids:
            i["position_ids"] = _position_ids(rng, B, T, 4 * T)
        return i

    def positions(i):
        return rope.rope_positions(T, offset=offset, position_ids=i.get("position_ids"),
                                   batch=B)

    def forward(i):
        q, k, caches = rope.rope_qk(i["q"], i["k"], config, positions(i))
        return {"q_rot": q, "k_rot": k}, caches

    def backward(d, caches):
        dq, dk = rope.rope_qk_grads(d["q_rot"], d["k_rot"], caches)
        return {"q": dq, "k": dk}

    def torch_fn(t):
        pos = _torch_positions(T, offset, t.get("position_ids"))
        freqs, factor = rope_oracle.inv_freq(scaling, R, seq_len=int(pos.max()) + 1)
        return {name: rope_oracle.rope(t[x], pos, freqs, factor, interleaved=interleaved)
                for name, x in (("q_rot", "q"), ("k_rot", "k"))}

    def kernel(backend):
        def run(i, d):
            cos, sin = config.tables(positions(i), i["q"].dtype)
            kw = {"interleaved": interleaved, "backend": backend}
            out = {"q_rot": gpu_rope.rope_forward(i["q"], cos, sin, **kw),
                   "k_rot": gpu_rope.rope_forward(i["k"], cos, sin, **kw)}
            if d is None:
                return out, None
            return out, {"q": gpu_rope.rope_backward(d["q_rot"], cos, sin, **kw),
                         "k": gpu_rope.rope_backward(d["k_rot"], cos, sin, **kw)}
        return run

    return Case(name=f"rope_gpu/{conv}/{variant}/B{B}_H{H}_Hkv{Hkv}_T{T}_D{D}_R{R}",
                inputs=inputs, forward=forward, backward=backward, torch=torch_fn,
                grad_wrt=("q", "k"), backends=_kernels(kernel), gradcheck=False)


# ----------------------------------------------------------------------------- registered

for _shape in ((7, 13), (3, 5, 97), (1,)):
    register(make_gelu_case("none", *_shape))
    register(make_gelu_case("tanh", *_shape))
    register(make_silu_case(*_shape))
    register(make_swiglu_gate_case(*_shape))

for _ids_shape, _V, _C in (((2, 9), 7, 5), ((1,), 3, 4), ((3, 4, 5), 11, 13), ((8, 31), 101, 67)):
    register(make_embedding_case(_ids_shape, _V, _C))

#            x shape      C_out   bias
LINEAR = [((1, 1),          1,    True),
          ((17, 33),       65,    True),
          ((3, 5, 97),     11,    False),
          ((2, 67, 45),    77,    True),
          ((128, 96),   50257,    True)]
# The vocabulary projection runs in float32 only: float32 is where its 50257-term sums of dx
# test the kernels' summation (the float64 run, 7e-14 from torch, adds ~10 s and nothing that
# the smaller cases do not already show).
for _x_shape, _c_out, _bias in LINEAR:
    register(make_linear_case(_x_shape, _c_out, bias=_bias,
                              dtypes=("float32",) if _c_out == 50257 else ("float64", "float32")))
for _x_shape, _c_out, _bias in LINEAR[1:4]:
    register(make_linear_case(_x_shape, _c_out, bias=_bias, tiles=gpu_gemm.SMALL_TILES))

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
for _inter in (False, True):
    register(make_rope_case("plain", 2, 2, 2, 1, 8, interleaved=_inter))
    register(make_rope_case("gqa/offset5", 1, 6, 2, 7, 40, 24, interleaved=_inter, offset=5))
    register(make_rope_case("plain", 1, 2, 1, 97, 64, interleaved=_inter))
    register(make_rope_case("position_ids", 2, 4, 2, 7, 64, 32, interleaved=_inter, ids=True))
    register(make_rope_case("decode/offset1000", 2, 2, 1, 1, 40, interleaved=_inter,
                            offset=1000))
register(make_rope_case("yarn", 1, 4, 2, 97, 64, scaling=YARN))


# ----------------------------------------------------------------------------- sanitizer cases

def make_activations_step_case(*shape) -> Case:
    """Every kernel of elementwise.cu once: gelu (erf) of x, gelu (tanh) of y, silu of z and
    the gate silu(a) * b, forward and backward."""
    names = ("x", "y", "z", "a", "b")

    def forward(i):
        outs, caches = {}, {}
        for out, x, fn in (("gelu", "x", lambda v: activations.gelu_forward(v, "none")),
                           ("gelu_tanh", "y", lambda v: activations.gelu_forward(v, "tanh")),
                           ("silu", "z", activations.silu_forward)):
            outs[out], caches[out] = fn(i[x])
        gate, caches["gate"] = gate_forward(i)
        return {**outs, "gate": gate["out"]}, caches

    def backward(d, c):
        grads = gate_backward({"out": d["gate"]}, c["gate"])
        return {"x": activations.gelu_backward(d["gelu"], c["gelu"]),
                "y": activations.gelu_backward(d["gelu_tanh"], c["gelu_tanh"]),
                "z": activations.silu_backward(d["silu"], c["silu"]), **grads}

    def torch_fn(t):
        return {"gelu": oracles.gelu(t["x"], "none"), "gelu_tanh": oracles.gelu(t["y"], "tanh"),
                "silu": oracles.silu(t["z"]), "gate": oracles.silu(t["a"]) * t["b"]}

    def kernel(backend):
        def run(i, d):
            kw = {"backend": backend}
            out = {"gelu": gpu_ew.gelu_forward(i["x"], "none", **kw),
                   "gelu_tanh": gpu_ew.gelu_forward(i["y"], "tanh", **kw),
                   "silu": gpu_ew.silu_forward(i["z"], **kw),
                   "gate": gpu_ew.swiglu_gate_forward(i["a"], i["b"], **kw)}
            if d is None:
                return out, None
            da, db = gpu_ew.swiglu_gate_backward(d["gate"], i["a"], i["b"], **kw)
            return out, {"x": gpu_ew.gelu_backward(d["gelu"], i["x"], "none", **kw),
                         "y": gpu_ew.gelu_backward(d["gelu_tanh"], i["y"], "tanh", **kw),
                         "z": gpu_ew.silu_backward(d["silu"], i["z"], **kw), "a": da, "b": db}
        return run

    return Case(name=f"activations_gpu/step/{shape}",
                inputs=_normal(3.0, **{n: shape for n in names}), forward=forward,
                backward=backward, torch=torch_fn, grad_wrt=names, backends=_kernels(kernel),
                gradcheck=False)


def make_lm_head_case(ids_shape: tuple, V: int, C: int, tiles=None) -> Case:
    """Token embedding, then a projection back to the vocabulary with bias: h = table[ids],
    logits = h W + b. Every kernel of embedding.cu and gemm.cu runs; dtable sums the gradient
    that reaches h directly and the one through the projection."""
    names = ("table", "weight", "bias")

    def inputs(rng):
        i = _ids_inputs(ids_shape, V, C)(rng)
        return {**i, "weight": rng.standard_normal((C, V)) / np.sqrt(C),
                "bias": rng.standard_normal(V)}

    def forward(i):
        h, emb_cache = linear.embedding_forward(i["ids"], i["table"])
        logits, lin_cache = linear.linear_forward(h, i["weight"], i["bias"])
        return {"h": h, "logits": logits}, (emb_cache, lin_cache)

    def backward(d, caches):
        dh, dw, db = linear.linear_backward(d["logits"], caches[1])
        return {"table": linear.embedding_backward(d["h"] + dh, caches[0]), "weight": dw,
                "bias": db}

    def torch_fn(t):
        h = oracles.embedding(t["ids"], t["table"])
        return {"h": h, "logits": oracles.linear(h, t["weight"], t["bias"])}

    def kernel(backend):
        def run(i, d):
            ids = i["ids"].astype(np.int32)
            kw = {"tiles": tiles, "backend": backend}
            h = gpu_emb.embedding_forward(ids, i["table"], backend=backend)
            out = {"h": h, "logits": gpu_gemm.linear_forward(h, i["weight"], i["bias"], **kw)}
            if d is None:
                return out, None
            dh, dw, db = gpu_gemm.linear_backward(d["logits"], h, i["weight"], has_bias=True,
                                                  **kw)
            return out, {"table": gpu_emb.embedding_backward(d["h"] + dh, ids, V,
                                                             backend=backend),
                         "weight": dw, "bias": db}
        return run

    return Case(name=f"embedding_gpu/lm-head/{ids_shape}/V={V},C={C}", inputs=inputs,
                forward=forward, backward=backward, torch=torch_fn, grad_wrt=names,
                backends=_kernels(kernel), gradcheck=False)


def make_swiglu_ffn_case(x_shape: tuple, F: int, tiles=None) -> Case:
    """A SwiGLU feed-forward with biases on the two outer products: a = x W1 + b1, b = x W3,
    h = silu(a) * b, out = h W2 + b2, through the gemm and gate kernels."""
    C = x_shape[-1]
    names = ("x", "w1", "b1", "w3", "w2", "b2")

    def inputs(rng):
        return {"x": rng.standard_normal(x_shape),
                "w1": rng.standard_normal((C, F)) / np.sqrt(C), "b1": rng.standard_normal(F),
                "w3": rng.standard_normal((C, F)) / np.sqrt(C),
                "w2": rng.standard_normal((F, C)) / np.sqrt(F), "b2": rng.standard_normal(C)}

    def forward(i):
        a, ca = linear.linear_forward(i["x"], i["w1"], i["b1"])
        b, cb = linear.linear_forward(i["x"], i["w3"])
        h, cg = gate_forward({"a": a, "b": b})
        out, co = linear.linear_forward(h["out"], i["w2"], i["b2"])
        return {"out": out}, (ca, cb, cg, co)

    def backward(d, caches):
        ca, cb, cg, co = caches
        dh, dw2, db2 = linear.linear_backward(d["out"], co)
        g = gate_backward({"out": dh}, cg)
        dxa, dw1, db1 = linear.linear_backward(g["a"], ca)
        dxb, dw3, _ = linear.linear_backward(g["b"], cb)
        return {"x": dxa + dxb, "w1": dw1, "b1": db1, "w3": dw3, "w2": dw2, "b2": db2}

    def torch_fn(t):
        a = oracles.linear(t["x"], t["w1"], t["b1"])
        b = oracles.linear(t["x"], t["w3"])
        return {"out": oracles.linear(oracles.silu(a) * b, t["w2"], t["b2"])}

    def kernel(backend):
        def run(i, d):
            kw = {"tiles": tiles, "backend": backend}
            a = gpu_gemm.linear_forward(i["x"], i["w1"], i["b1"], **kw)
            b = gpu_gemm.linear_forward(i["x"], i["w3"], **kw)
            h = gpu_ew.swiglu_gate_forward(a, b, backend=backend)
            out = {"out": gpu_gemm.linear_forward(h, i["w2"], i["b2"], **kw)}
            if d is None:
                return out, None
            dh, dw2, db2 = gpu_gemm.linear_backward(d["out"], h, i["w2"], has_bias=True, **kw)
            da, db = gpu_ew.swiglu_gate_backward(dh, a, b, backend=backend)
            dxa, dw1, db1 = gpu_gemm.linear_backward(da, i["x"], i["w1"], has_bias=True, **kw)
            dxb, dw3, _ = gpu_gemm.linear_backward(db, i["x"], i["w3"], **kw)
            return out, {"x": dxa + dxb, "w1": dw1, "b1": db1, "w3": dw3, "w2": dw2,
                         "b2": db2}
        return run

    tail = "" if tiles is None else " tiles {}x{}x{}/{}x{}".format(*tiles)
    return Case(name=f"linear_gpu/swiglu-ffn/{x_shape}/F={F}{tail}", inputs=inputs,
                forward=forward, backward=backward, torch=torch_fn, grad_wrt=names,
                backends=_kernels(kernel), gradcheck=False)


def make_rope_step_case(B: int, H: int, Hkv: int, T: int, D: int, R: int, offset: int) -> Case:
    """Both kernels of rope.cu in both conventions: q and k half-split with partial rotary at
    offset positions ((T, R/2) tables), and q2 interleaved at per-row position ids
    ((B, T, D/2) tables)."""
    half = rope.RoPE(D, rotary_dim=R)
    inter = rope.RoPE(D, interleaved=True)
    names = ("q", "k", "q2")

    def inputs(rng):
        return {"q": rng.standard_normal((B, H, T, D)), "k": rng.standard_normal((B, Hkv, T, D)),
                "q2": rng.standard_normal((B, H, T, D)),
                "position_ids": _position_ids(rng, B, T, 3 * T)}

    def tables(i, dtype):
        return (half.tables(offset + np.arange(T), dtype),
                inter.tables(i["position_ids"], dtype))

    def forward(i):
        (c, s), (c2, s2) = tables(i, i["q"].dtype)
        outs, caches = {}, {}
        for x, cos, sin, conv in (("q", c, s, False), ("k", c, s, False), ("q2", c2, s2, True)):
            outs[f"{x}_rot"], caches[x] = rope.rope_forward(i[x], cos, sin, interleaved=conv)
        return outs, caches

    def backward(d, caches):
        return {x: rope.rope_backward(d[f"{x}_rot"], caches[x]) for x in names}

    def torch_fn(t):
        f_half, _ = rope_oracle.inv_freq(None, R)
        f_inter, _ = rope_oracle.inv_freq(None, D)
        pos = torch.arange(offset, offset + T)
        return {"q_rot": rope_oracle.rope(t["q"], pos, f_half),
                "k_rot": rope_oracle.rope(t["k"], pos, f_half),
                "q2_rot": rope_oracle.rope(t["q2"], t["position_ids"], f_inter,
                                           interleaved=True)}

    def kernel(backend):
        def run(i, d):
            (c, s), (c2, s2) = tables(i, i["q"].dtype)
            how = {"q": (c, s, False), "k": (c, s, False), "q2": (c2, s2, True)}
            out = {f"{x}_rot": gpu_rope.rope_forward(i[x], cos, sin, interleaved=conv,
                                                     backend=backend)
                   for x, (cos, sin, conv) in how.items()}
            if d is None:
                return out, None
            return out, {x: gpu_rope.rope_backward(d[f"{x}_rot"], cos, sin, interleaved=conv,
                                                   backend=backend)
                         for x, (cos, sin, conv) in how.items()}
        return run

    return Case(name=f"rope_gpu/both/B{B}_H{H}_Hkv{Hkv}_T{T}_D{D}_R{R}_offset{offset}",
                inputs=inputs, forward=forward, backward=backward, torch=torch_fn,
                grad_wrt=names, backends=_kernels(kernel), gradcheck=False)


# Rows of 300 elements (two blocks of 256, the second ragged); an embedding of 38 positions at
# the default GEMM tiles (dW sums them in three steps, bias_grad in two row slices); a
# feed-forward at the small tiles, ragged in every direction; RoPE over two blocks with both
# table layouts.
SANITIZE_CASES = [make_activations_step_case(3, 100),
                  make_lm_head_case((2, 19), 13, 5),
                  make_swiglu_ffn_case((2, 7, 13), 19, tiles=gpu_gemm.SMALL_TILES),
                  make_rope_step_case(2, 3, 1, 5, 12, 8, 3)]
