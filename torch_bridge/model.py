"""The model of ``ref_numpy.model`` written in torch: the oracle of its forward, loss and
gradients, the peer of its training step and of its KV-cache generation in the benchmarks.

Written from the papers and Hugging Face's modelling code with torch's own ops, not from the
NumPy copy: ``F.embedding``, ``F.layer_norm`` / ``F.rms_norm``, ``F.linear``,
``F.scaled_dot_product_attention`` (``enable_gqa``), RoPE as transformers' ``rotate_half``
(q·cos + rotate_half(q)·sin on (B, H, T, D) with the frequencies repeated twice), ``F.gelu``
(tanh), ``F.silu``, the dense MoE oracle of ``torch_bridge.moe`` and ``F.cross_entropy``. The
parameters are the same dict {Hugging Face name: tensor} in the same storage convention
(matrices (C_in, C_out), embedding and head (V, C)), so autograd's gradients compare with the
NumPy ones name by name.

Shapes as in ``ref_numpy.model``: ids (B, T), logits (B, T, V); B batch, T positions, C width,
H and Hkv heads, D head dim, V vocabulary.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from torch_bridge import moe as torch_moe
from torch_bridge import rope as torch_rope
from torch_bridge.oracles import masked_softmax

NO_DECAY = ("bias", "norm", "embed", "wte", "wpe")


def _p(config, i: int) -> str:
    return f"transformer.h.{i}." if config.family == "gpt2" else f"model.layers.{i}."


def _norm(x, params, prefix, config):
    if config.family == "gpt2":
        return F.layer_norm(x, (x.shape[-1],), params[prefix + "weight"], params[prefix + "bias"],
                            eps=config.norm_eps)
    return F.rms_norm(x, (x.shape[-1],), params[prefix + "weight"], eps=config.norm_eps)


def rope_cos_sin(config, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (1|B, 1, T, D) for positions (T,) or (B, T): HF's layout, frequencies twice."""
    seq_len = int(positions.max()) + 1
    inv, factor = torch_rope.inv_freq(config.rope_scaling, config.head_dim, config.rope_theta,
                                      max_position_embeddings=config.max_seq_len,
                                      seq_len=seq_len)
    a = torch_rope.angles(positions, inv)                              # (1|B, 1, T, D/2)
    a = torch.cat([a, a], dim=-1)                                      # (1|B, 1, T, D)
    return (factor * a.cos()).to(dtype), (factor * a.sin()).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(a, b) -> (−b, a) on the two halves of the last dim (transformers' ``rotate_half``)."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def _qkv(h, params, p, config):
    B, T, _ = h.shape
    H, Hkv, D = config.n_head, config.n_kv_head, config.head_dim
    if config.family == "gpt2":
        qkv = F.linear(h, params[p + "attn.c_attn.weight"].T, params[p + "attn.c_attn.bias"])
        q, k, v = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
    else:
        a = p + "self_attn."
        q, k, v = (F.linear(h, params[a + n + "_proj.weight"].T) for n in "qkv")
    return (q.reshape(B, T, H, D).transpose(1, 2), k.reshape(B, T, Hkv, D).transpose(1, 2),
            v.reshape(B, T, Hkv, D).transpose(1, 2))


def _out_proj(o, params, p, config):
    B, H, T, D = o.shape
    o = o.transpose(1, 2).reshape(B, T, H * D)
    if config.family == "gpt2":
        return F.linear(o, params[p + "attn.c_proj.weight"].T, params[p + "attn.c_proj.bias"])
    return F.linear(o, params[p + "self_attn.o_proj.weight"].T)


def _attend(q, k, v, allowed, sdpa):
    """Causal attention of q (B, H, Tq, D) on k, v (B, Hkv, Tk, D), bottom-right aligned;
    ``allowed`` (B, 1, Tq, Tk) bool or None. ``sdpa``: F.scaled_dot_product_attention (a fused
    kernel), else softmax(q kᵀ / √D) v written out."""
    H, Hkv, Tq, Tk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    if sdpa and allowed is None:
        # a single query attends every cached key; a prompt starts at position 0
        return F.scaled_dot_product_attention(q, k, v, is_causal=Tq > 1, enable_gqa=H != Hkv)
    if allowed is None:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)[None, None]
    k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~allowed, float("-inf"))
    return masked_softmax(s, axis=-1) @ v


def _ffn(h, params, p, config):
    """(out, aux_loss or None)."""
    if config.family == "gpt2":
        u = F.gelu(F.linear(h, params[p + "mlp.c_fc.weight"].T, params[p + "mlp.c_fc.bias"]),
                   approximate="tanh")
        return F.linear(u, params[p + "mlp.c_proj.weight"].T, params[p + "mlp.c_proj.bias"]), None
    if config.n_experts:
        m = p + "block_sparse_moe."
        w = {n: torch.stack([params[f"{m}experts.{e}.{n}.weight"]
                             for e in range(config.n_experts)]) for n in ("w1", "w3", "w2")}
        out = torch_moe.moe(h.reshape(-1, h.shape[-1]), params[m + "gate.weight"], w["w1"],
                            w["w3"], w["w2"], k=config.experts_per_token,
                            gate="softmax_topk_renorm", balance_coef=config.moe_balance_coef)
        return out["y"].reshape(h.shape), out["aux_loss"]
    gate = F.linear(h, params[p + "mlp.gate_proj.weight"].T)
    up = F.linear(h, params[p + "mlp.up_proj.weight"].T)
    return F.linear(F.silu(gate) * up, params[p + "mlp.down_proj.weight"].T), None


def _block(x, params, config, i, attention):
    """One block, pre- or post-norm; ``attention(h) -> a``. Returns (y, aux or None)."""
    p = _p(config, i)
    n1, n2 = (p + "ln_1.", p + "ln_2.") if config.family == "gpt2" else (
        p + "input_layernorm.", p + "post_attention_layernorm.")
    if config.norm_position == "pre":
        x = x + attention(_norm(x, params, n1, config))
        f, aux = _ffn(_norm(x, params, n2, config), params, p, config)
        return x + f, aux
    x = _norm(x + attention(x), params, n1, config)
    f, aux = _ffn(x, params, p, config)
    return _norm(x + f, params, n2, config), aux


def _embed(params, config, ids, positions):
    wte = "transformer.wte.weight" if config.family == "gpt2" else "model.embed_tokens.weight"
    x = F.embedding(ids, params[wte])
    if config.family == "gpt2":
        x = x + F.embedding(positions, params["transformer.wpe.weight"])
    return x


def _head(x, params, config):
    if config.norm_position == "pre":
        x = _norm(x, params, "transformer.ln_f." if config.family == "gpt2" else "model.norm.",
                  config)
    if config.tie_embeddings:
        head = (params["transformer.wte.weight"] if config.family == "gpt2"
                else params["model.embed_tokens.weight"])
    else:
        head = params["lm_head.weight"]
    return F.linear(x, head)                                           # (B, T, V)


def forward(params: dict, config, ids: torch.Tensor, targets: torch.Tensor | None = None, *,
            key_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
            sdpa: bool = False):
    """(logits (B, T, V), loss () or None): cross-entropy (ignore_index −100) plus the MoE
    balance losses, as ``ref_numpy.model.model_forward``. ``sdpa``: attention by torch's fused
    kernel (what a torch user calls) instead of the written-out softmax (the plain float32
    implementation that sets the harness's bar)."""
    B, T = ids.shape
    ids = ids.long()
    positions = torch.arange(T) if position_ids is None else position_ids.long()
    x = _embed(params, config, ids, positions)
    cos_sin = None if config.family == "gpt2" else rope_cos_sin(config, positions, x.dtype)
    allowed = None
    if key_mask is not None:
        allowed = torch.ones(T, T, dtype=torch.bool).tril()[None, None] & key_mask[:, None, None]

    aux = torch.zeros((), dtype=x.dtype)
    for i in range(config.n_layer):
        def attention(h, i=i):
            q, k, v = _qkv(h, params, _p(config, i), config)
            if cos_sin is not None:
                cos, sin = cos_sin
                q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            return _out_proj(_attend(q, k, v, allowed, sdpa), params, _p(config, i), config)
        x, a = _block(x, params, config, i, attention)
        if a is not None:
            aux = aux + a
    logits = _head(x, params, config)
    if targets is None:
        return logits, None
    ce = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1).long(), ignore_index=-100)
    return logits, ce + aux


def decay_groups(params: dict, weight_decay: float) -> list[dict]:
    """torch.optim parameter groups: matrices decay; biases, norms and embeddings do not."""
    decay = [n for n, t in params.items() if t.ndim >= 2 and not any(
        s in n.lower() for s in NO_DECAY)]
    rest = [n for n in params if n not in decay]
    return [{"params": [params[n] for n in decay], "weight_decay": weight_decay},
            {"params": [params[n] for n in rest], "weight_decay": 0.0}]


class KVCache:
    """Preallocated keys and values per block, (B, Hkv, L, D) each, for greedy decoding."""

    def __init__(self, config, batch: int, max_len: int, dtype):
        shape = (batch, config.n_kv_head, max_len, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0


@torch.no_grad()
def decode(params: dict, config, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits (B, t, V) of t new tokens (no padding) after the ``cache.length`` cached ones."""
    B, t = ids.shape
    start = cache.length
    positions = torch.arange(start, start + t)
    x = _embed(params, config, ids.long(), positions)
    cos_sin = None if config.family == "gpt2" else rope_cos_sin(config, positions, x.dtype)
    for i in range(config.n_layer):
        def attention(h, i=i):
            q, k, v = _qkv(h, params, _p(config, i), config)
            if cos_sin is not None:
                cos, sin = cos_sin
                q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            cache.k[i][:, :, start:start + t] = k
            cache.v[i][:, :, start:start + t] = v
            o = _attend(q, cache.k[i][:, :, :start + t], cache.v[i][:, :, :start + t], None,
                        sdpa=True)
            return _out_proj(o, params, _p(config, i), config)
        x, _ = _block(x, params, config, i, attention)
    cache.length = start + t
    return _head(x, params, config)


@torch.no_grad()
def generate_greedy(params: dict, config, prompt: torch.Tensor, max_new_tokens: int,
                    ) -> torch.Tensor:
    """Greedy continuation (B, max_new_tokens) of ``prompt`` (B, P) with a KV cache."""
    cache = KVCache(config, prompt.shape[0], prompt.shape[1] + max_new_tokens,
                    params[next(iter(params))].dtype)
    logits = decode(params, config, prompt, cache)
    out = []
    for step in range(max_new_tokens):
        nxt = logits[:, -1].argmax(dim=-1, keepdim=True)              # (B, 1)
        out.append(nxt)
        if step < max_new_tokens - 1:
            logits = decode(params, config, nxt, cache)
    return torch.cat(out, dim=1)


def train_losses(params: dict, config, batches, *, lr: float, betas, eps: float,
                 weight_decay: float, clip: float, warmup: int, total: int,
                 min_lr_ratio: float) -> list[float]:
    """The losses of a torch training run from NumPy weights ``params`` on ``batches`` (a list
    of (x, y) int arrays (B, T)): each step ``zero_grad``, forward, backward,
    ``clip_grad_norm_``, ``torch.optim.AdamW`` with the matrices decayed, and ``LambdaLR`` of
    linear warmup then cosine to ``min_lr_ratio`` (``torch_bridge.optim``). The peer of
    ``ref_numpy.train.Trainer``."""
    from torch.optim.lr_scheduler import LambdaLR

    from torch_bridge.optim import warmup_cosine_lambda
    tp = {n: torch.from_numpy(a.copy()).requires_grad_(True) for n, a in params.items()}
    opt = torch.optim.AdamW(decay_groups(tp, weight_decay), lr=lr, betas=tuple(betas), eps=eps)
    sched = LambdaLR(opt, warmup_cosine_lambda(warmup, total, min_ratio=min_lr_ratio))
    losses = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        _, loss = forward(tp, config, torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(tp.values()), clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses
