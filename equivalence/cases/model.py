"""Cases for the whole model (``ref_numpy.model``) against its torch copy (``torch_bridge.model``).

A case's inputs are every parameter (by its Hugging Face name) and the token ids and targets;
its outputs are the loss and the logits, and every parameter gets a gradient. The models are
tiny (V = 29, C = 16, two blocks, B = 2, T = 8) so that the harness, the finite differences
included, stays fast: B·T·V = 464 logits, so the gradcheck takes random projections. The
parameters are GPT-2's init plus N(0, 0.1²) noise, so that no norm gain is 1 and no bias 0.
The torch side writes attention out (softmax(q kᵀ/√D) v), the plain float32 implementation
whose error sets the float32 bar; larger weights make the model's Jacobian ill-conditioned
enough (LayerNorm's 1/σ times the gains) that a single tensor's float32 error varies by a factor
of several from seed to seed, in torch and NumPy alike.

- Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention (H = 4, Hkv = 2), untied head;
- GPT-2: learned positions, LayerNorm, GELU-tanh, biases, tied head;
- Llama, multi-query (Hkv = 1), tied head, post-norm blocks, a left-padded row (key mask
  and position ids) and ignored targets (−100).
"""
from __future__ import annotations

import numpy as np

from equivalence.registry import Case, register
from ref_numpy import model
from torch_bridge import model as torch_model

V, C, B, T = 29, 16, 2, 8


def _inputs(config, padded):
    def make(rng):
        params = model.init_params(config, int(rng.integers(1 << 31)), np.float64)
        d = {n: p + 0.1 * rng.standard_normal(p.shape) for n, p in params.items()}
        d["ids"] = rng.integers(0, V, (B, T))
        targets = rng.integers(0, V, (B, T))
        if padded:
            targets[0, 1] = targets[1, :2] = model.IGNORE_INDEX
        d["targets"] = targets
        return d
    return make


def _masks(padded):
    """(key_mask, position_ids): row 1 left-padded by two positions, or (None, None)."""
    if not padded:
        return None, None
    key_mask = np.ones((B, T), dtype=bool)
    key_mask[1, :2] = False
    return key_mask, np.maximum(np.cumsum(key_mask, axis=1) - 1, 0)


def _case(name, config, padded=False):
    names = tuple(model.param_shapes(config))
    key_mask, position_ids = _masks(padded)

    def forward(i):
        out, cache = model.model_forward({n: i[n] for n in names}, config, i["ids"],
                                         i["targets"], key_mask=key_mask,
                                         position_ids=position_ids)
        return {"loss": out.loss, "logits": out.logits}, cache

    def backward(d, cache):
        return model.model_backward(d["loss"], cache, dlogits=d["logits"])

    def oracle(t):
        import torch
        logits, loss = torch_model.forward(
            {n: t[n] for n in names}, config, t["ids"], t["targets"],
            key_mask=None if key_mask is None else torch.from_numpy(key_mask),
            position_ids=None if position_ids is None else torch.from_numpy(position_ids))
        return {"loss": loss, "logits": logits}

    register(Case(name=f"model/{name}/(B, T, V, C) = {(B, T, V, C)}",
                  inputs=_inputs(config, padded), forward=forward, backward=backward,
                  torch=oracle, grad_wrt=names))


_SIZES = dict(vocab_size=V, n_layer=2, n_head=4, d_model=C, d_ff=24, max_seq_len=T)
_case("llama-gqa-untied", model.ModelConfig(family="llama", n_kv_head=2, **_SIZES))
_case("gpt2-tied", model.ModelConfig(family="gpt2", n_kv_head=4, tie_embeddings=True, **_SIZES))
_case("llama-tied-postnorm-padded",
      model.ModelConfig(family="llama", n_kv_head=1, tie_embeddings=True, norm_position="post",
                        **_SIZES), padded=True)
