"""One transformer block of ``ref_numpy.model``: norm, attention, feed-forward, residuals.

    pre-norm  (GPT-2, Llama):     x1 = x + Attn(N1(x)),    y = x1 + FFN(N2(x1))
    post-norm (Vaswani et al.):   x1 = N1(x + Attn(x)),    y  = N2(x1 + FFN(x1))

The parts are the verified ops of this package, composed: N is ``norms.layernorm_forward``
(GPT-2, with bias) or ``norms.rmsnorm_forward`` (Llama); Attn is ``mha.mha_forward`` with the
causal mask, a key mask for padding, and RoPE for Llama; FFN is GELU-tanh between two
``linear`` layers (GPT-2), ``swiglu`` (Llama) or the mixture of SwiGLU experts of ``moe``.

The backward runs the same lines in reverse. A residual x1 = x + a passes its gradient to both
terms unchanged, so each gradient entering a block is the sum of the one coming back through
the branch and the one passed along the skip connection:

    pre:   dx1 = dy + N2ᵀ(FFNᵀ(dy)),          dx = dx1 + N1ᵀ(Attnᵀ(dx1))
    post:  ds2 = N2ᵀ(dy),  dx1 = ds2 + FFNᵀ(ds2),   ds1 = N1ᵀ(dx1),  dx = ds1 + Attnᵀ(ds1)

where Fᵀ(g) is the vector-Jacobian product of F (its backward). A block's weights come as a
dict with the generic keys below; :func:`block_layout` names the Hugging Face parameters behind
each key, :func:`block_weights` gathers them and :func:`split_grads` hands the gradients back.
Every matrix is stored (C_in, C_out), as ``ref_numpy.linear``:

    n1_w, n1_b, n2_w, n2_b    norm gains (C,) and biases (C,) (None for RMSNorm)
    w_qkv (C, E), b_qkv (E,)  the fused [q | k | v] projection, E = (H + 2·Hkv)·D; b None (Llama)
    w_o (H·D, C), b_o (C,)    the output projection
    GELU:    w_fc (C, F), b_fc (F,), w_proj (F, C), b_proj (C,)
    SwiGLU:  w1, w3 (C, F), w2 (F, C)
    MoE:     w_router (C, E), w1, w3 (E, C, F), w2 (E, F, C)

Shape letters: B batch, T positions, C width, H and Hkv heads, D head dim, F hidden width.
"""
from __future__ import annotations

import numpy as np

from ref_numpy import activations, attention, linear, mha, moe, norms, swiglu
from ref_numpy import rope as rope_mod
from ref_numpy._check import check_cache, check_float, check_same_dtype, check_shape

MOE_GATE = "softmax_topk_renorm"     # Mixtral's: softmax over all experts, top-k, renormalised


# ----------------------------------------------------------------------------------------------
# Parameter layout


def block_layout(config, i: int) -> dict[str, tuple[str | None, list]]:
    """Block i's generic keys (``model_blocks``) -> (join, [(parameter name, shape), ...]):
    join None for one parameter, "concat" for q, k, v joined along the columns, "stack" for
    the experts stacked on a new axis 0."""
    C, F, H, Hkv, D, E = (config.d_model, config.d_ff, config.n_head, config.n_kv_head,
                          config.head_dim, config.n_experts)
    if config.family == "gpt2":
        p = f"transformer.h.{i}."
        names = {"n1_w": ("ln_1.weight", (C,)), "n1_b": ("ln_1.bias", (C,)),
                 "w_qkv": ("attn.c_attn.weight", (C, 3 * C)),
                 "b_qkv": ("attn.c_attn.bias", (3 * C,)),
                 "w_o": ("attn.c_proj.weight", (C, C)), "b_o": ("attn.c_proj.bias", (C,)),
                 "n2_w": ("ln_2.weight", (C,)), "n2_b": ("ln_2.bias", (C,)),
                 "w_fc": ("mlp.c_fc.weight", (C, F)), "b_fc": ("mlp.c_fc.bias", (F,)),
                 "w_proj": ("mlp.c_proj.weight", (F, C)), "b_proj": ("mlp.c_proj.bias", (C,))}
        return {k: (None, [(p + n, s)]) for k, (n, s) in names.items()}
    p = f"model.layers.{i}."
    a = p + "self_attn."
    out = {"n1_w": (None, [(p + "input_layernorm.weight", (C,))]),
           "w_qkv": ("concat", [(a + "q_proj.weight", (C, H * D)),
                                (a + "k_proj.weight", (C, Hkv * D)),
                                (a + "v_proj.weight", (C, Hkv * D))]),
           "w_o": (None, [(a + "o_proj.weight", (H * D, C))]),
           "n2_w": (None, [(p + "post_attention_layernorm.weight", (C,))])}
    if E:
        m = p + "block_sparse_moe."
        out["w_router"] = (None, [(m + "gate.weight", (C, E))])
        for key, shape in (("w1", (C, F)), ("w3", (C, F)), ("w2", (F, C))):
            out[key] = ("stack", [(f"{m}experts.{e}.{key}.weight", shape) for e in range(E)])
    else:
        out.update({"w1": (None, [(p + "mlp.gate_proj.weight", (C, F))]),
                    "w3": (None, [(p + "mlp.up_proj.weight", (C, F))]),
                    "w2": (None, [(p + "mlp.down_proj.weight", (F, C))])})
    return out


def block_weights(params: dict, config, i: int) -> dict:
    """Block i's weights by the generic keys of ``model_blocks`` (q, k, v joined; experts
    stacked); the biases a family has not are None."""
    w = dict.fromkeys(("n1_b", "n2_b", "b_qkv", "b_o"))
    for key, (join, parts) in block_layout(config, i).items():
        arrays = [params[n] for n, _ in parts]
        if join is None:
            w[key] = arrays[0]
        elif join == "concat":
            w[key] = np.concatenate(arrays, axis=1)                    # (C, (H + 2·Hkv)·D)
        else:
            w[key] = np.stack(arrays)                                  # (E, ...)
    return w


def split_grads(g: dict, config, i: int, out: dict) -> None:
    """Write block i's generic gradients into ``out`` under the parameter names."""
    for key, (join, parts) in block_layout(config, i).items():
        if join is None:
            out[parts[0][0]] = g[key]
        elif join == "concat":
            cuts = np.cumsum([shape[1] for _, shape in parts])[:-1]
            for (name, _), piece in zip(parts, np.split(g[key], cuts, axis=1)):
                out[name] = np.ascontiguousarray(piece)
        else:
            for e, (name, _) in enumerate(parts):
                out[name] = g[key][e]


# ----------------------------------------------------------------------------------------------
# The block


def norm(x, w, b, config):
    """The block's norm: LayerNorm (GPT-2) or RMSNorm (Llama); (out, cache)."""
    if config.family == "gpt2":
        return norms.layernorm_forward(x, w, b, eps=config.norm_eps)
    return norms.rmsnorm_forward(x, w, eps=config.norm_eps)


def norm_grads(dy, cache, config):
    """(dx, dw, db or None) of the block's norm."""
    if config.family == "gpt2":
        return norms.layernorm_backward(dy, cache)
    return (*norms.rmsnorm_backward(dy, cache), None)


def _ffn(x, w, config):
    """The feed-forward: (out, cache, aux_loss)."""
    if config.n_experts:
        out, cache = moe.moe_forward(x, w["w_router"], w["w1"], w["w3"], w["w2"],
                                     k=config.experts_per_token, gate=MOE_GATE,
                                     balance_coef=config.moe_balance_coef)
        return out.y, cache, out.aux_loss
    if config.family == "llama":
        out, cache = swiglu.swiglu_forward(x, w["w1"], w["w3"], w["w2"])
        return out, cache, None
    h, c_fc = linear.linear_forward(x, w["w_fc"], w["b_fc"])          # (B, T, F)
    g, c_act = activations.gelu_forward(h, "tanh")                   # (B, T, F)
    out, c_proj = linear.linear_forward(g, w["w_proj"], w["b_proj"])  # (B, T, C)
    return out, (c_fc, c_act, c_proj), None


def _ffn_grads(dy, cache, config, daux):
    """(dx, {key: gradient}) of the feed-forward."""
    if config.n_experts:
        g = moe.moe_backward(dy, cache, daux=daux)
        return g.x, {"w_router": g.w_router, "w1": g.w1, "w3": g.w3, "w2": g.w2}
    if config.family == "llama":
        dx, dw1, dw3, dw2 = swiglu.swiglu_backward(dy, cache)
        return dx, {"w1": dw1, "w3": dw3, "w2": dw2}
    c_fc, c_act, c_proj = cache
    dg, dw_proj, db_proj = linear.linear_backward(dy, c_proj)
    dh = activations.gelu_backward(dg, c_act)
    dx, dw_fc, db_fc = linear.linear_backward(dh, c_fc)
    return dx, {"w_fc": dw_fc, "b_fc": db_fc, "w_proj": dw_proj, "b_proj": db_proj}


def _run(x, w, config, attend):
    """The block's lines, pre- or post-norm, with ``attend(h) -> (a, cache)`` as attention.
    Returns (y, caches, aux_loss); the caches are what the backward reads."""
    c = {}
    if config.norm_position == "pre":
        h, c["n1"] = norm(x, w["n1_w"], w["n1_b"], config)
        a, c["attn"] = attend(h)
        x1 = x + a                                                     # (B, T, C)
        h2, c["n2"] = norm(x1, w["n2_w"], w["n2_b"], config)
        f, c["ffn"], aux = _ffn(h2, w, config)
        return x1 + f, c, aux
    a, c["attn"] = attend(x)
    x1, c["n1"] = norm(x + a, w["n1_w"], w["n1_b"], config)
    f, c["ffn"], aux = _ffn(x1, w, config)
    y, c["n2"] = norm(x1 + f, w["n2_w"], w["n2_b"], config)
    return y, c, aux


def block_forward(x: np.ndarray, w: dict, config, *, rope=None, key_mask=None,
                  position_ids=None) -> tuple[np.ndarray, dict]:
    """One causal transformer block (module docstring).

    Args:
        x: (B, T, C) float32/float64, the residual stream.
        w: the block's weights by the generic keys of the module docstring, dtype of x.
        config: the ``ref_numpy.model.ModelConfig`` (family, norm position, MoE, heads).
        rope: a ``ref_numpy.rope.RoPE`` for q and k (Llama) or None (GPT-2).
        key_mask: (B, T) bool, False = padding, or None.
        position_ids: (B, T) RoPE positions (default 0 … T − 1); needs rope.
    Returns:
        y: (B, T, C).
        cache: {"op": "block_forward", "caches": the parts' caches, "aux_loss": the MoE
            balance loss () or None, "config", "x_shape", "dtype"}.
    """
    check_float("x", x, ndim=3)
    check_shape("n1_w", w["n1_w"], (x.shape[2],), "(C,)")

    def attend(h):
        return mha.mha_forward(h, w["w_qkv"], w["b_qkv"], w["w_o"], w["b_o"],
                               n_head=config.n_head, n_kv_head=config.n_kv_head, causal=True,
                               key_mask=key_mask, rope=rope, position_ids=position_ids)

    y, caches, aux = _run(x, w, config, attend)
    return y, {"op": "block_forward", "caches": caches, "aux_loss": aux, "config": config,
               "x_shape": x.shape, "dtype": x.dtype}


def block_backward(dy: np.ndarray, cache: dict, daux=0.0) -> tuple[np.ndarray, dict]:
    """Gradients of one block (the derivation is in the module docstring).

    Args:
        dy: (B, T, C), the gradient of the loss with respect to the block's output.
        cache: from :func:`block_forward`.
        daux: the gradient of the loss with respect to the block's MoE balance loss.
    Returns:
        (dx (B, T, C), {generic key: gradient} for every weight of the block).
    """
    check_cache(cache, "block_forward")
    check_float("dy", dy, ndim=3)
    check_shape("dy", dy, cache["x_shape"], "(B, T, C), the shape of x")
    if dy.dtype != cache["dtype"]:
        raise TypeError(f"dy: expected dtype {cache['dtype']} (the dtype of x) but got {dy.dtype}")
    c, config = cache["caches"], cache["config"]
    g = {}
    if config.norm_position == "pre":
        # y = x1 + FFN(N2(x1)): the skip passes dy to x1, the branch adds N2ᵀ(FFNᵀ(dy))
        dh2, ffn_g = _ffn_grads(dy, c["ffn"], config, daux)
        dn2, g["n2_w"], g["n2_b"] = norm_grads(dh2, c["n2"], config)
        dx1 = dy + dn2
        # x1 = x + Attn(N1(x))
        dh, g["w_qkv"], g["b_qkv"], g["w_o"], g["b_o"] = mha.mha_backward(dx1, c["attn"])
        dn1, g["n1_w"], g["n1_b"] = norm_grads(dh, c["n1"], config)
        dx = dx1 + dn1
    else:
        # y = N2(x1 + FFN(x1))
        ds2, g["n2_w"], g["n2_b"] = norm_grads(dy, c["n2"], config)
        df, ffn_g = _ffn_grads(ds2, c["ffn"], config, daux)
        dx1 = ds2 + df
        # x1 = N1(x + Attn(x))
        ds1, g["n1_w"], g["n1_b"] = norm_grads(dx1, c["n1"], config)
        da, g["w_qkv"], g["b_qkv"], g["w_o"], g["b_o"] = mha.mha_backward(ds1, c["attn"])
        dx = ds1 + da
    g.update(ffn_g)
    return dx, g


def block_decode(x_new: np.ndarray, w: dict, config, kv, *, rope=None, key_mask=None,
                 position_ids=None) -> np.ndarray:
    """The block on t new positions against the block's key/value cache (no backward).

    q, k, v of the new positions are projected, k and v rotated (RoPE) at ``position_ids`` and
    appended to ``kv``; the new queries attend every cached key that ``key_mask`` allows
    (causal, aligned bottom-right). Equal, to rounding, to the last t rows of
    :func:`block_forward` over the whole sequence.

    Args:
        x_new: (B, t, C) the new positions' residual stream.
        kv: the ``ref_numpy.kv_cache.KVCache`` of this block (appended to).
        key_mask: (B, length + t) bool over every cached position, False = padding, or None.
        position_ids: (B, t) positions of the new tokens (RoPE), or None for GPT-2.
    Returns:
        y: (B, t, C).
    """
    def attend(h):
        q, k, v = mha.project_qkv(h, w["w_qkv"], w["b_qkv"], config.n_head, config.n_kv_head)
        if rope is not None:
            q, k, _ = rope_mod.rope_qk(q, k, rope, position_ids)
        k_all, v_all = kv.append(k, v)                                 # (B, Hkv, length, D)
        o, _ = attention.attention_forward(q, k_all, v_all, causal=True, key_mask=key_mask)
        a = mha.merge_heads(o) @ w["w_o"]                              # (B, t, C)
        if w["b_o"] is not None:
            a += w["b_o"]
        return a, None

    check_float("x_new", x_new, ndim=3)
    check_same_dtype(x_new=x_new, w_qkv=w["w_qkv"])
    y, _, _ = _run(x_new, w, config, attend)
    return y
