"""A decoder-only language model, GPT-2 style or Llama style: config, parameters, forward, backward.

    x_0 = E[ids] (+ P[positions], GPT-2)                         token (and position) embedding
    x_l = Block_l(x_{l−1}),  l = 1 … L                           ``ref_numpy.model_blocks``
    logits = N_f(x_L) Wᵀ,   W = E when tied                     final norm (pre-norm only), head
    loss = CE(logits, targets; ignore_index = −100) + Σ_l aux_l  mean over the counted targets;
                                                                 aux_l the MoE balance losses

GPT-2 (Radford et al. 2019): learned positions, LayerNorm with bias, GELU-tanh MLP, biases on
every linear layer, tied head. Llama (Touvron et al. 2023): RoPE (half-split, Hugging Face's
``rotate_half``), RMSNorm, SwiGLU, grouped-query attention, no biases, untied head; optionally a
mixture of SwiGLU experts (Mixtral's routing: softmax, top-k, renormalised).

Parameters are a dict {Hugging Face name: array}, e.g. ``model.layers.0.self_attn.q_proj.weight``
or ``transformer.h.0.attn.c_attn.weight``, so that a checkpoint maps one to one
(``ref_numpy.hf_checkpoint``). Storage convention, one for every matrix: (C_in, C_out), as
``ref_numpy.linear``, so each product reads x W. GPT-2's Conv1D weights are stored that way in
its checkpoints already; Llama's nn.Linear weights are stored (C_out, C_in) there and are
transposed when loaded and saved, nowhere else. The token embedding and the LM head are tables
(V, C), one row per token, in both this package and Hugging Face's files, so a tied head is the
embedding array itself. Llama's q, k and v projections stay three parameters; the forward joins
them into the fused (C, (H + 2·Hkv)·D) projection of ``ref_numpy.mha`` and the backward splits
its gradient again.

Backward: every gradient by its parameter's name (``model_backward``). With a tied head the
embedding's gradient is the sum of the lookup's scatter-add and the head's Wᵀ product.
Gradient checkpointing (``checkpoint_every = k``): block l with l % k == 0 keeps only its input
in the forward and runs its forward again in the backward, so its activations live only while
its own gradients are computed. The recomputation repeats the same operations on the same
numbers, so the gradients are identical, bit for bit.

Shape letters: B batch, T positions, V vocabulary, C width, L layers, H and Hkv heads, D = C/H,
F hidden width, E experts, P max_seq_len.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ref_numpy import cross_entropy, linear, model_blocks, positional
from ref_numpy._check import (FLOAT_DTYPES, check_cache, check_int, check_nonneg_int,
                              check_shape)
from ref_numpy.rope import RoPE

FAMILIES = ("gpt2", "llama")
NORM_POSITIONS = ("pre", "post")
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ModelConfig:
    """What model to build; checked on construction. Each field says why it is there."""
    family: str = "llama"            # "gpt2" or "llama": the architecture and its HF names
    vocab_size: int = 512            # V: rows of the token embedding and of the LM head
    n_layer: int = 4                 # L: transformer blocks
    n_head: int = 4                  # H: query heads
    n_kv_head: int = 4               # Hkv: key/value heads; < H is GQA (Llama only), 1 is MQA
    d_model: int = 128               # C: width of the residual stream; head dim D = C / H
    d_ff: int = 344                  # F: hidden width of the feed-forward (of each MoE expert)
    max_seq_len: int = 128           # P: GPT-2's position table rows; RoPE's trained length
    tie_embeddings: bool = False     # LM head = token embedding table (GPT-2 ties, Llama 2 not)
    norm_position: str = "pre"       # "pre" as GPT-2 and Llama; "post" as Vaswani et al. 2017
    norm_eps: float | None = None    # eps of the norms; None: HF's 1e-5 (GPT-2), 1e-6 (Llama)
    rope_theta: float = 10000.0      # RoPE base (Llama only)
    rope_scaling: dict | None = field(default=None)  # rope_scaling dict as published (Llama)
    n_experts: int = 0               # E: 0 is a dense feed-forward; > 0 SwiGLU experts (Llama)
    experts_per_token: int = 2       # k of the top-k routing (MoE only)
    moe_balance_coef: float = 0.01   # weight of the Switch balance loss in the loss (MoE only)
    init_std: float = 0.02           # std of the normal init of matrices and embeddings (GPT-2)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family: expected one of {FAMILIES} but got {self.family!r}")
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"norm_position: expected one of {NORM_POSITIONS} but got "
                             f"{self.norm_position!r}")
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff",
                     "max_seq_len", "experts_per_token"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1 but got {value!r}")
        check_nonneg_int("n_experts", self.n_experts)
        if not isinstance(self.tie_embeddings, bool):
            raise TypeError(f"tie_embeddings: expected a bool but got {self.tie_embeddings!r}")
        if self.norm_eps is None:
            object.__setattr__(self, "norm_eps", 1e-5 if self.family == "gpt2" else 1e-6)
        if isinstance(self.rope_scaling, dict):   # a copy: the caller's dict may change later
            object.__setattr__(self, "rope_scaling", dict(self.rope_scaling))
        for name in ("norm_eps", "moe_balance_coef", "init_std", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0 but got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"n_head: expected a divisor of d_model = {self.d_model} but got "
                             f"{self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head: expected a divisor of n_head = {self.n_head} but got "
                             f"{self.n_kv_head}")
        if self.family == "gpt2":
            for name, value, plain in (("n_kv_head", self.n_kv_head, self.n_head),
                                       ("n_experts", self.n_experts, 0),
                                       ("rope_scaling", self.rope_scaling, None)):
                if value != plain:
                    raise ValueError(f"{name}: GPT-2 has no such option; expected {plain!r} "
                                     f"but got {value!r} (use family='llama')")
        else:
            self.rope()                       # an odd head dim or a bad scaling dict fails here
        if self.n_experts and self.experts_per_token > self.n_experts:
            raise ValueError(f"experts_per_token: expected at most n_experts = "
                             f"{self.n_experts} but got {self.experts_per_token}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def rope(self) -> RoPE | None:
        """The RoPE of q and k (Llama), None for learned positions (GPT-2)."""
        if self.family == "gpt2":
            return None
        return RoPE(self.head_dim, base=self.rope_theta, scaling=self.rope_scaling,
                    max_position_embeddings=self.max_seq_len)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """The config from :meth:`to_dict`'s dict; an unknown key is an error naming it."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise ValueError(f"config: unknown key {key!r}; expected keys among {known}")
        return cls(**d)


CONFIGS = {   # the tiny models of ``crosscheck train``; vocab_size is the tokenizer's
    "tiny-llama": ModelConfig(family="llama", vocab_size=512, n_layer=4, n_head=4, n_kv_head=2,
                              d_model=128, d_ff=344, max_seq_len=128),
    "tiny-gpt2": ModelConfig(family="gpt2", vocab_size=512, n_layer=4, n_head=4, n_kv_head=4,
                             d_model=128, d_ff=512, max_seq_len=128, tie_embeddings=True),
}


# ----------------------------------------------------------------------------------------------
# Parameters: names, shapes, init, count, checks


def embed_name(config: ModelConfig) -> str:
    return "transformer.wte.weight" if config.family == "gpt2" else "model.embed_tokens.weight"


def head_name(config: ModelConfig) -> str:
    """The parameter the LM head multiplies by: the embedding when tied, else lm_head.weight."""
    return embed_name(config) if config.tie_embeddings else "lm_head.weight"


def final_norm_names(config: ModelConfig) -> list[str]:
    """The final norm's parameters; none after post-norm blocks, whose outputs are normed."""
    if config.norm_position == "post":
        return []
    if config.family == "gpt2":
        return ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    return ["model.norm.weight"]


def param_shapes(config: ModelConfig) -> dict[str, tuple]:
    """Every parameter's name and shape, in a fixed order (embeddings, blocks, norm, head)."""
    C, V = config.d_model, config.vocab_size
    shapes = {embed_name(config): (V, C)}
    if config.family == "gpt2":
        shapes["transformer.wpe.weight"] = (config.max_seq_len, C)
    for i in range(config.n_layer):
        for _, parts in model_blocks.block_layout(config, i).values():
            shapes.update(parts)
    shapes.update({n: (C,) for n in final_norm_names(config)})
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def param_count(config: ModelConfig) -> int:
    """The number of parameters, from the config alone:

        N = V·C                                  token embedding
          + P·C                                  learned positions (GPT-2)
          + L · (2·n·C                           two norms; n = 2 for LayerNorm (gain, bias),
                                                 n = 1 for RMSNorm
                 + C·(H + 2·Hkv)·D + H·D·C       q, k, v and output projections
                 + b·((H + 2·Hkv)·D + C)         their biases (b = 1 for GPT-2, 0 for Llama)
                 + FFN)                          GELU: 2·C·F + F + C;  SwiGLU: 3·C·F;
                                                 MoE: C·E + E·3·C·F
          + n·C                                  final norm (pre-norm only)
          + V·C                                  LM head (untied only)

    >>> param_count(CONFIGS["tiny-gpt2"]) == sum(
    ...     math.prod(s) for s in param_shapes(CONFIGS["tiny-gpt2"]).values())
    True
    """
    V, C, L, P = config.vocab_size, config.d_model, config.n_layer, config.max_seq_len
    H, Hkv, D, F, E = (config.n_head, config.n_kv_head, config.head_dim, config.d_ff,
                       config.n_experts)
    gpt2 = config.family == "gpt2"
    n, b = (2, 1) if gpt2 else (1, 0)
    if gpt2:
        ffn = 2 * C * F + F + C
    elif E:
        ffn = C * E + E * 3 * C * F
    else:
        ffn = 3 * C * F
    block = 2 * n * C + C * (H + 2 * Hkv) * D + H * D * C + b * ((H + 2 * Hkv) * D + C) + ffn
    return (V * C + (P * C if gpt2 else 0) + L * block
            + (n * C if config.norm_position == "pre" else 0)
            + (0 if config.tie_embeddings else V * C))


def _is_residual_out(name: str) -> bool:
    """The projections that write into the residual stream (GPT-2 scales their init)."""
    return name.endswith(("attn.c_proj.weight", "mlp.c_proj.weight", "o_proj.weight",
                          "down_proj.weight", ".w2.weight"))


def init_params(config: ModelConfig, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Fresh parameters as GPT-2 initialises them (Radford et al. 2019, §2.3): matrices and
    embeddings N(0, init_std²), the projections into the residual stream N(0, (init_std /
    √(2L))²), biases 0, norm gains 1. Drawn in float64 from ``seed``, then cast to ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype: expected float32 or float64 but got {dtype}")
    rng = np.random.default_rng(check_nonneg_int("seed", seed))
    params = {}
    for name, shape in param_shapes(config).items():
        if len(shape) == 1:
            is_gain = name.endswith("weight")                          # norm gains
            a = np.ones(shape) if is_gain else np.zeros(shape)
        else:
            std = config.init_std / (math.sqrt(2 * config.n_layer) if _is_residual_out(name)
                                     else 1.0)
            a = std * rng.standard_normal(shape)
        params[name] = a.astype(dtype)
    return params


def check_params(params, config: ModelConfig) -> np.dtype:
    """Require exactly the config's parameters, each of its shape, all of one float dtype."""
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict {{name: array}} but got "
                        f"{type(params).__name__}")
    shapes = param_shapes(config)
    for name in shapes:
        if name not in params:
            raise ValueError(f"params: {name!r} is missing (the config expects it)")
    for name in params:
        if name not in shapes:
            raise ValueError(f"params: {name!r} is not a parameter of this config")
    dtype = None
    for name, shape in shapes.items():
        a = params[name]
        if not isinstance(a, np.ndarray) or a.dtype not in FLOAT_DTYPES:
            what = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise TypeError(f"{name}: expected a float32 or float64 array but got {what}")
        check_shape(name, a, shape)
        dtype = a.dtype if dtype is None else dtype
        if a.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} (the dtype of "
                            f"{next(iter(shapes))}) but got {a.dtype}")
    return dtype


# ----------------------------------------------------------------------------------------------
# Forward and backward


class ModelOutput(NamedTuple):
    logits: np.ndarray              # (B, T, V)
    loss: np.ndarray | None         # () cross-entropy + aux_loss; None without targets
    aux_loss: np.ndarray            # () the MoE balance losses summed over blocks (0 if dense)


def check_ids(ids, config: ModelConfig) -> None:
    """Require (B, T) token ids in [0, V), T <= max_seq_len with learned positions."""
    check_int("ids", ids, ndim=2)
    V = config.vocab_size
    bad = (ids < 0) | (ids >= V)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"ids: expected token ids in [0, {V}) (vocab_size) but got "
                         f"{int(ids[idx])} at index {idx}")
    if config.family == "gpt2" and ids.shape[1] > config.max_seq_len:
        raise ValueError(f"ids: expected at most max_seq_len = {config.max_seq_len} positions "
                         f"(the rows of the learned position table transformer.wpe.weight) but "
                         f"got T = {ids.shape[1]}")


def model_forward(params: dict, config: ModelConfig, ids: np.ndarray,
                  targets: np.ndarray | None = None, *, key_mask: np.ndarray | None = None,
                  position_ids: np.ndarray | None = None, checkpoint_every: int = 0,
                  ) -> tuple[ModelOutput, dict]:
    """Logits and loss of the model (module docstring) on a batch of token ids.

    Args:
        params: {name: array} of :func:`param_shapes`, one float dtype.
        config: the :class:`ModelConfig`.
        ids: (B, T) ints in [0, V); T <= max_seq_len with learned positions.
        targets: (B, T) ints in [0, V) or −100 (not counted), or None for no loss.
        key_mask: (B, T) bool, False = padding (never attended), or None.
        position_ids: (B, T) ints, each token's position (default 0 … T − 1).
        checkpoint_every: k >= 1 recomputes block l in the backward when l % k == 0; 0 keeps
            every block's activations.
    Returns:
        out: :class:`ModelOutput` (logits (B, T, V), loss () or None, aux_loss ()).
        cache: {"op": "model_forward", ...} for :func:`model_backward`.
    """
    dtype = check_params(params, config)
    check_ids(ids, config)
    every = check_nonneg_int("checkpoint_every", checkpoint_every)
    B, T = ids.shape
    if targets is not None:
        check_int("targets", targets, ndim=2)
        check_shape("targets", targets, (B, T), "(B, T), the shape of ids")
    if position_ids is not None:
        check_int("position_ids", position_ids, ndim=2)
        check_shape("position_ids", position_ids, (B, T), "(B, T), the shape of ids")
    rope = config.rope()
    x, c_emb = linear.embedding_forward(ids, params[embed_name(config)])   # (B, T, C)
    c_pos = None
    if config.family == "gpt2":
        pos = np.broadcast_to(np.arange(T), (B, T)) if position_ids is None else position_ids
        p, c_pos = positional.learned_position_forward(params["transformer.wpe.weight"], pos)
        x = x + p
    kw = dict(rope=rope, key_mask=key_mask, position_ids=position_ids if rope else None)
    aux = np.zeros((), dtype)
    blocks = []
    for i in range(config.n_layer):
        w = model_blocks.block_weights(params, config, i)
        y, c = model_blocks.block_forward(x, w, config, **kw)
        if c["aux_loss"] is not None:
            aux = aux + c["aux_loss"]
        blocks.append(("recompute", x) if every and i % every == 0 else ("cache", c))
        x = y
    c_final = None
    if config.norm_position == "pre":
        names = final_norm_names(config)
        bias = params[names[1]] if len(names) > 1 else None
        x, c_final = model_blocks.norm(x, params[names[0]], bias, config)
    head = params[head_name(config)]                                   # (V, C)
    logits = linear.rows_matmul(x, head.T)                             # (B, T, V)
    loss, c_ce = None, None
    if targets is not None:
        ce, c_ce = cross_entropy.cross_entropy_forward(
            logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=IGNORE_INDEX)
        loss = np.asarray(ce + aux, dtype=dtype)
    cache = {"op": "model_forward", "params": params, "config": config, "emb": c_emb,
             "pos": c_pos, "blocks": blocks, "final": c_final, "hf": x, "ce": c_ce, "kw": kw,
             "dtype": dtype, "shape": (B, T)}
    return ModelOutput(logits, loss, aux), cache


def model_backward(dloss, cache: dict, *, dlogits: np.ndarray | None = None,
                   ) -> dict[str, np.ndarray]:
    """Gradients of the loss (and of any ⟨dlogits, logits⟩ term) for every parameter.

    Back through the forward's lines, last first:

        logits = h Wᵀ        →  dW = dlogitsᵀ h (V, C),  dh = dlogits W
        h = N_f(x_L)         →  dx_L = N_fᵀ(dh)                 (pre-norm; else dx_L = dh)
        x_l = Block_l(x_l−1) →  dx_l−1, dW_l = Block_lᵀ(dx_l)   (``block_backward``; a
                                                                 checkpointed block first runs
                                                                 its forward again)
        x_0 = E[ids] + P[pos] → dE = scatter-add of dx_0 by id, dP by position
        tied head (W = E)    →  dE += dW

    where dlogits = dloss · ∂CE/∂logits + the given ``dlogits``, and every MoE balance loss
    receives dloss.

    Args:
        dloss: the gradient of the objective with respect to ``out.loss`` (1.0 to train), or
            None when the forward had no targets.
        cache: from :func:`model_forward`.
        dlogits: (B, T, V), an upstream gradient of the logits, or None.
    Returns:
        {name: gradient}, every parameter, in the order of :func:`param_shapes`.
    """
    check_cache(cache, "model_forward")
    config, params, dtype = cache["config"], cache["params"], cache["dtype"]
    B, T = cache["shape"]
    V, C = config.vocab_size, config.d_model
    if dloss is None and dlogits is None:
        raise ValueError("dloss, dlogits: expected at least one upstream gradient but got none")
    if dloss is not None and cache["ce"] is None:
        raise ValueError("dloss: the forward computed no loss (targets=None); pass dloss=None "
                         "and dlogits")
    g = np.zeros((B * T, V), dtype)                                    # (B·T, V)
    if dlogits is not None:
        if not isinstance(dlogits, np.ndarray) or dlogits.dtype != dtype:
            raise TypeError(f"dlogits: expected a {dtype} array (the dtype of the parameters)")
        check_shape("dlogits", dlogits, (B, T, V), "(B, T, V), the shape of logits")
        g += dlogits.reshape(B * T, V)
    daux = 0.0
    if dloss is not None:
        dloss = np.asarray(dloss, dtype=dtype)
        check_shape("dloss", dloss, ())
        g += cross_entropy.cross_entropy_backward(dloss, cache["ce"])
        daux = dloss
    grads = {}
    head = params[head_name(config)]
    h2 = cache["hf"].reshape(B * T, C)
    dhead = g.T @ h2                                                   # (V, C)
    dx = (g @ head).reshape(B, T, C)                                   # (B, T, C)
    names = final_norm_names(config)
    if cache["final"] is not None:
        dx, dw, db = model_blocks.norm_grads(dx, cache["final"], config)
        grads.update(zip(names, (dw, db)))
    for i in reversed(range(config.n_layer)):
        kind, entry = cache["blocks"][i]
        if kind == "recompute":
            w = model_blocks.block_weights(params, config, i)
            _, entry = model_blocks.block_forward(entry, w, config, **cache["kw"])
        dx, gb = model_blocks.block_backward(dx, entry, daux)
        del entry
        model_blocks.split_grads(gb, config, i, grads)
    demb = linear.embedding_backward(dx, cache["emb"])                 # (V, C)
    if config.family == "gpt2":
        grads["transformer.wpe.weight"] = positional.learned_position_backward(dx, cache["pos"])
    if config.tie_embeddings:
        demb += dhead
    else:
        grads["lm_head.weight"] = dhead
    grads[embed_name(config)] = demb
    return {name: grads[name] for name in param_shapes(config)}
